"""Bad recipes fail before any model loads, with one line naming the problem and the fix (no traceback)."""

import subprocess
import sys
from pathlib import Path

import pytest

from pdl_plugin import PDLConfigError
from pdl_plugin.recipe import parse_recipe

MAIN_RECIPE = Path(__file__).parents[2] / "recipes" / "offline" / "dialogue_lora.yaml"


def _recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_the_main_recipe_parses_with_pdl_fields():
    recipe = parse_recipe(["--config", str(MAIN_RECIPE), "--output_dir", "/tmp/never-written"])
    assert recipe.training.loss_type == "pdl" and recipe.training.assistant_only_loss
    assert recipe.model.use_peft and recipe.model.lora_r == 8
    assert Path(recipe.model.model_name_or_path).is_dir()  # embedded: resolved to the converted folder


def test_command_line_overrides_the_recipe():
    recipe = parse_recipe(["--config", str(MAIN_RECIPE), "--pdl_alpha", "1.25", "--max_steps", "3"])
    assert (recipe.training.pdl_alpha, recipe.training.max_steps) == (1.25, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loss_type: pdl\npdl_alhpa: 0.5\n", r"Unknown key `pdl_alhpa`.*Did you mean `pdl_alpha`"),
        ("loss_type: pdl\nfancy_option: 1\n", r"Unknown key `fancy_option`"),
        ("loss_type: pdl\ndata_files: train.jsonl\n", r"Unknown key `data_files`.*`datasets:` mixture.*path: json"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("loss_type: [unclosed\n", "not valid YAML"),
        ("model_name_or_path: x\noutput_dir: o\nloss_type: pdl\npdl_alpha: strong\n", r"--pdl_alpha.*invalid float value: 'strong'"),
        ("model_name_or_path: x\noutput_dir: o\nloss_type: pdl\npdl_epsilon: 0\n", "pdl_epsilon must be"),
        ("model_name_or_path: x\noutput_dir: o\nloss_type: pdl\npdl_alpha: -1\n", "pdl_alpha must be"),
        ("model_name_or_path: x\noutput_dir: o\nloss_type: focal\n", "loss_type must be one of"),
    ],
)
def test_bad_recipes_are_refused_with_a_message(tmp_path, text, message):
    with pytest.raises(PDLConfigError, match=message):
        parse_recipe(["--config", _recipe(tmp_path, text)])


def test_bad_command_line_value_is_refused():
    with pytest.raises(PDLConfigError, match="pdl_alpha"):
        parse_recipe(["--config", str(MAIN_RECIPE), "--pdl_alpha", "abc"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--pdl_alpah", "0.5"], r"Unknown key `--pdl_alpah` on the command line.*Did you mean `--pdl_alpha`"),
        (["--max-stpes=3"], r"Unknown key `--max_stpes` on the command line.*Did you mean `--max_steps`"),
        (["--data_files", "train.jsonl"], r"Unknown key `--data_files`.*`datasets:` mixture"),
        (["--max_steps", "3", "stray"], r"Unexpected 'stray' on the command line: every override is `--key value`"),
    ],
)
def test_unknown_command_line_option_is_refused_with_a_suggestion(option, message):
    with pytest.raises(PDLConfigError, match=message):
        parse_recipe(["--config", str(MAIN_RECIPE), *option])


def test_command_line_abbreviations_that_argparse_accepts_still_work():
    recipe = parse_recipe(["--config", str(MAIN_RECIPE), "--learning_rat", "1e-4", "--pdl-epsil=1e-5"])
    assert (recipe.training.learning_rate, recipe.training.pdl_epsilon) == (1e-4, 1e-5)


def test_missing_recipe_file_is_refused(tmp_path):
    with pytest.raises(PDLConfigError, match="not found"):
        parse_recipe(["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("entry_point", ["pdl_plugin.cli.sft", "pdl_plugin.cli.freq"])
def test_console_entry_points_print_one_error_line_and_exit_2(tmp_path, entry_point):
    bad = _recipe(tmp_path, "loss_type: pdl\npdl_alhpa: 0.5\n")
    extra = ["--output", str(tmp_path / "t.safetensors")] if entry_point.endswith("freq") else []
    result = subprocess.run([sys.executable, "-m", entry_point, "--config", bad, *extra], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "Unknown key `pdl_alhpa`" in result.stderr
    assert "Traceback" not in result.stderr

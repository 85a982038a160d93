"""`pdl-eval` and `pdl-compare` end to end on the embedded SmolLM2 with a tiny local data set (a few CPU seconds)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import PROMPT_COMPLETION
from pdl_plugin.cli.compare import compare
from pdl_plugin.cli.compare import main as compare_main
from pdl_plugin.cli.eval import evaluate_cli
from pdl_plugin.cli.eval import main as eval_main
from pdl_plugin.cli.sft import train

ROWS = [dict(zip(PROMPT_COMPLETION, values)) for values in zip(*PROMPT_COMPLETION.values())]


def _recipe(tmp_path) -> str:
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", ROWS), ("validation", ROWS[:3])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: embedded:SmolLM2-135M-Instruct\ndataset_name: {data}\ndataset_train_split: train\n"
        "dataset_test_split: validation\nuse_peft: true\nlora_r: 4\nlora_target_modules: [q_proj, v_proj]\n"
        "loss_type: pdl\npdl_alpha: 0.5\nmax_steps: 2\nper_device_train_batch_size: 2\nlogging_steps: 1\n"
        "learning_rate: 1.0e-3\nmax_length: 64\nbf16: false\nuse_cpu: true\nreport_to: none\nsave_strategy: 'no'\n"
        f"gradient_checkpointing: false\ndisable_tqdm: true\noutput_dir: {tmp_path / 'out'}\n"
    )
    return str(recipe)


def _direct_validation_ce(adapter, tokenizer) -> float:
    """Mean NLL of completion + eos given the prompt, from the full logits: independent of TRL's preparation."""
    from peft import PeftModel

    from pdl_plugin.data.embedded_model import resolve_embedded_model

    base = AutoModelForCausalLM.from_pretrained(resolve_embedded_model("embedded:SmolLM2-135M-Instruct"))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    nll, tokens = 0.0, 0
    for row in ROWS[:3]:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0].double()
        log_probs = torch.log_softmax(logits[:-1], -1)
        targets = torch.tensor(full[1:])
        picked = -log_probs[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :]
        nll, tokens = nll + picked.sum().item(), tokens + len(picked)
    return nll / tokens


def test_pdl_eval_scores_an_adapter_and_writes_json(tmp_path, tokenizer, capsys):
    recipe = _recipe(tmp_path)
    train(["--config", recipe])
    adapter = tmp_path / "out"
    result = evaluate_cli(["--adapter", str(adapter), "--config", recipe, "--max_prompts", "2",
                           "--max_new_tokens", "4", "--output", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text())["prompts"] == result["prompts"] == 2
    assert set(result["generation"]) == {"greedy", "sampled"}
    greedy = result["generation"]["greedy"]
    assert 0 <= greedy["rouge_l"] <= 1 and greedy["mean_tokens"] <= 4
    assert len(result["samples"]) == 2 and len(result["ranks"]["greedy"]) == round(greedy["mean_tokens"] * 2)
    # validation losses cover the same 2 validation rows; PDL at the recipe's alpha
    assert result["validation"]["rows"] == 2 and result["validation"]["pdl_alpha"] == 0.5
    assert result["validation"]["ce"] > 0 and result["validation"]["pdl"] > 0
    assert "rouge_l" in capsys.readouterr().out
    # alpha 0 as reference: the PDL is the cross-entropy
    zero = evaluate_cli(["--adapter", str(adapter), "--config", recipe, "--max_prompts", "3", "--max_new_tokens",
                         "2", "--no_sampled", "--reference_alpha", "0"])
    assert zero["validation"]["pdl"] == pytest.approx(zero["validation"]["ce"], rel=1e-5)
    assert zero["validation"]["ce"] == pytest.approx(_direct_validation_ce(adapter, tokenizer), rel=1e-4)
    assert (adapter / "eval.json").is_file() and set(zero["generation"]) == {"greedy"}


def test_pdl_eval_without_a_training_table_says_how_to_get_one(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--adapter", str(tmp_path / "empty"), "--config", recipe])
    assert exit_info.value.code == 2 and "pdl-freq" in capsys.readouterr().err


def test_pdl_compare_trains_each_arm_evaluates_reports_and_resumes(tmp_path):
    recipe = _recipe(tmp_path)
    outdir = tmp_path / "cmp"
    argv = ["--config", recipe, "--alphas", "0,1", "--seeds", "3", "--alpha_warmup_steps", "1", "--outdir",
            str(outdir), "--max_prompts", "2", "--max_new_tokens", "3", "--max_steps", "1", "--task", "toy"]
    report = compare(argv)
    runs = {p.parent.parent.name for p in outdir.glob("toy/*/seed-3/done")}
    assert runs == {"alpha-0", "alpha-1", "alpha-1-warmup-1"}
    baseline = json.loads((outdir / "toy/alpha-0/seed-3/results.json").read_text())
    assert baseline["alpha"] == 0 and baseline["seed"] == 3 and baseline["validation"]["pdl_alpha"] == 0.5
    settings = json.loads((outdir / "toy/alpha-1-warmup-1/seed-3/pdl_config.json").read_text())
    assert settings["pdl_alpha"] == 1.0 and settings["pdl_alpha_warmup_steps"] == 1
    text = report.read_text()
    assert "| alpha 0 (CE baseline) | 1 |" in text and "alpha 1, warm-up 1 steps" in text and "| references |" in text
    assert (outdir / "toy/toy-loss-curves.png").stat().st_size > 5000
    assert (outdir / "toy/toy-frequency-rank.png").stat().st_size > 5000
    # resumable: finished runs are skipped; a run whose evaluation was lost is evaluated again, not retrained
    trained = (outdir / "toy/alpha-1/seed-3/train.json").stat().st_mtime_ns
    kept = (outdir / "toy/alpha-0/seed-3/results.json").stat().st_mtime_ns
    (outdir / "toy/alpha-1/seed-3/done").unlink()
    compare(argv)
    assert (outdir / "toy/alpha-1/seed-3/done").is_file()
    assert (outdir / "toy/alpha-1/seed-3/train.json").stat().st_mtime_ns == trained
    assert (outdir / "toy/alpha-0/seed-3/results.json").stat().st_mtime_ns == kept
    # an evaluation of the base model beside the runs (pdl-eval --output OUTDIR/TASK/base-model.json) is one more row
    (outdir / "toy/base-model.json").write_text((outdir / "toy/alpha-0/seed-3/results.json").read_text())
    # --report_only redraws the report elsewhere, figures beside it, showing the command that made the runs
    elsewhere = compare([*argv, "--report_only", "--report", str(tmp_path / "docs" / "toy.md")])
    assert (tmp_path / "docs" / "toy-loss-curves.png").is_file() and "](toy-frequency-rank.png)" in elsewhere.read_text()
    assert "--report" not in elsewhere.read_text() and "--max_steps 1" in elsewhere.read_text()
    assert elsewhere.read_text().count("| base model, no finetuning (pdl-eval) | 1 |") == 2  # greedy and sampled


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alphas", "0,-1"], "finite numbers >= 0"),
        (["--alphas", "0,a"], "comma-separated numbers"),
        (["--seeds", "x"], "whole numbers"),
        (["--pdl_alpha", "0.3"], "sets --pdl_alpha itself"),
        (["--alphas", "0", "--alpha_warmup_steps", "2"], "needs an alpha > 0"),
        (["--max_prompts", "0"], "--max_prompts must be >= 1"),
    ],
)
def test_pdl_compare_refuses_bad_input_with_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--config", _recipe(tmp_path), "--outdir", str(tmp_path / "cmp"), *extra])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err

"""benchmarks/recipe_evidence.py on a hand-made study: the header lines carry the chosen arm's differences worked
out by hand, and the check names each recipe whose settings or lines do not follow, and defaults that do not."""

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

from pdl_plugin import PDLSettings
from pdl_plugin.errors import PDLConfigError

evidence = load_benchmark("recipe_evidence")
FLOOR = "alpha-0.5-exempt-min_weight-1"


def _store(root: Path, arm: str, seed: int, rouge: float, rare_ce: float) -> None:
    folder = root / "toy" / arm / f"seed-{seed}"
    folder.mkdir(parents=True)
    alpha = 0.5 if arm == FLOOR else 0.0
    greedy = {"rouge_l": rouge, "hit_token_limit": 0.0, "rare_token_recall": 0.1, "self_information_bits": 9.0}
    result = {"arm": arm, "alpha": alpha, "warmup_steps": 0, "exempt": bool(alpha), "seed": seed,
              **({"options": {"min_weight": "1"}} if alpha else {}), "prompts": 4, "references": {}, "ranks": {},
              "settings": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95}, "generation": {"greedy": greedy},
              "validation": {"ce": 2.0 + alpha / 10, "pdl": 3.0, "pdl_alpha": 0.5, "rows": 4,
                             "ce_by_bucket": [{"bucket": "1-2", "tokens": 5, "ce": rare_ce}]},
              "time": {"cpu_s": 1.0, "wall_s": 1.0}, "samples": []}
    (folder / "results.json").write_text(json.dumps(result))
    (folder / "train.json").write_text(json.dumps({"log_history": [], "global_step": 12, "cpu_s": 1.0, "wall_s": 1.0}))


def _study(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for seed, (rouge, gain) in enumerate([(0.010, -0.30), (0.012, -0.32), (0.011, -0.31)]):
        _store(results, "alpha-0", seed, 0.20, 4.0)
        _store(results, FLOOR, seed, 0.20 + rouge, 4.0 + gain)
    return results


def test_the_header_carries_the_chosen_arm_and_its_numbers(tmp_path):
    results = _study(tmp_path)
    by_task, _, arms = evidence.choices(results, ["toy"])
    text = " ".join(line.removeprefix("# ") for line in
                    evidence.header_lines(results, "toy", by_task["toy"], arms[FLOOR]))
    # ROUGE-L differences 0.010, 0.012, 0.011: mean 0.011, sd 0.001, half width t(0.975; 2) 4.3027 * 0.001 / sqrt(3)
    # = 0.0025 -> [+0.009, +0.013]; validation CE +0.05 on every seed: a zero-width interval
    assert text.startswith("PDL setting: alpha 0.5 + exemption, min_weight 1 (`--arm alpha=0.5,exempt=true,min_weight=1`)")
    assert "helps: better outputs (output +0.011 over seeds 0, 1, 2)" in text and "12 steps" in text
    assert "ROUGE-L +0.011 [+0.009, +0.013]" in text and "validation CE +0.050 [+0.050, +0.050]" in text
    assert "CE of tokens seen 1-2 times -0.310 [-0.335, -0.285]" in text


def test_the_check_names_each_recipe_and_default_that_does_not_follow(tmp_path):
    results, recipes = _study(tmp_path), tmp_path / "recipes"
    recipes.mkdir()
    by_task, _, arms = evidence.choices(results, ["toy"])
    header = "\n".join(evidence.header_lines(results, "toy", by_task["toy"], arms[FLOOR]))
    # every loss variant spelt out, so that the recipes mean the same whatever the defaults
    follows = "loss_type: pdl\npdl_alpha: 0.5\npdl_exempt_special_tokens: true\npdl_min_weight: 1\npdl_ce_mix: 0\n"
    (recipes / "toy_lora.yaml").write_text(header + "\n" + follows)
    (recipes / "offline_toy_qlora.yaml").write_text(header + "\nloss_type: pdl\npdl_alpha: 0.5\npdl_exempt_special_tokens: "
                                                    "false\npdl_min_weight: 0\npdl_ce_mix: 0\n")
    (recipes / "toy_qlora.yaml").write_text("# an older header\n" + follows)
    (recipes / "offline_toy_lora.yaml").write_text(header + "\n" + follows + "pdl_max_weight: null\n")
    floor = PDLSettings(pdl_exempt_special_tokens=True, pdl_min_weight=1, pdl_ce_mix=0)
    assert evidence.check(results, ["toy"], recipes, defaults=floor) == [
        f"{recipes}/offline_toy_qlora.yaml: trains with pdl_exempt_special_tokens False (wanted True), "
        "pdl_min_weight 0.0 (wanted 1.0)",
        f"{recipes}/toy_qlora.yaml: lacks the header lines `recipe_evidence.py` prints for toy"]
    no_floor = PDLSettings(pdl_exempt_special_tokens=True, pdl_min_weight=0, pdl_ce_mix=0)
    assert evidence.check(results, ["toy"], recipes, defaults=no_floor)[-1] == \
        "PDLSettings() defaults to pdl_min_weight 0.0 (wanted 1.0)"


RECIPE = """# A toy recipe: its header stays
model_name_or_path: embedded:SmolLM2-135M-Instruct
max_length: 256                # a comment of the recipe's own

# PDL
loss_type: pdl
pdl_alpha: 0.75                # a claim nobody measured
pdl_epsilon: 1.0e-6
pdl_normalize: weighted

learning_rate: 2.0e-4
"""


def test_write_spells_out_the_chosen_setting_and_keeps_the_rest(tmp_path):
    results, recipes = _study(tmp_path), tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "toy_lora.yaml").write_text(RECIPE)
    (recipes / "other_lora.yaml").write_text(RECIPE)  # a task the study did not run: left alone
    assert evidence.write(results, ["toy"], recipes) == [recipes / "toy_lora.yaml"]
    by_task, _, arms = evidence.choices(results, ["toy"])
    header = "\n".join(evidence.header_lines(results, "toy", by_task["toy"], arms[FLOOR]))
    assert (recipes / "toy_lora.yaml").read_text() == (
        "# A toy recipe: its header stays\nmodel_name_or_path: embedded:SmolLM2-135M-Instruct\n"
        "max_length: 256                # a comment of the recipe's own\n\n" + header + "\n"
        "loss_type: pdl\npdl_alpha: 0.5\npdl_epsilon: 1.0e-6\npdl_normalize: weighted\n"
        "pdl_exempt_special_tokens: true # end-of-turn token at the mean weight, so replies end\n"
        "pdl_min_weight: 1              # floor, x the mean trained weight (0: none)\n"
        "pdl_ce_mix: 0                  # share of each step's loss that is plain CE (0: none)\n"
        "\nlearning_rate: 2.0e-4\n")
    assert (recipes / "other_lora.yaml").read_text() == RECIPE
    (recipes / "other_lora.yaml").unlink()
    floor = PDLSettings(pdl_exempt_special_tokens=True, pdl_min_weight=1, pdl_ce_mix=0)
    assert evidence.check(results, ["toy"], recipes, defaults=floor) == []
    assert evidence.write(results, ["toy"], recipes) == []  # a second write finds nothing to change


def test_write_refuses_a_pdl_key_outside_the_block(tmp_path):
    results, recipes = _study(tmp_path), tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "toy_lora.yaml").write_text(RECIPE + "pdl_min_weight: 2\n")
    with pytest.raises(PDLConfigError, match="stands apart from the `loss_type:` line"):
        evidence.write(results, ["toy"], recipes)
    assert (recipes / "toy_lora.yaml").read_text() == RECIPE + "pdl_min_weight: 2\n"

"""Stage 1's order (`pdl_plugin.study.screen.stage1_order`) on hand-made seed-0 differences, and `Arm.spec`, the
`--arm` text a later stage is run with."""

import pytest

from pdl_plugin.study.arms import Arm, parse_arm
from pdl_plugin.study.screen import stage1_order

CE = {"rouge_l": 0.200, "hit_token_limit": 0.050, "rare_token_recall": 0.030, "self_information_bits": 10.0}


def _run(name, alpha, seed, **differences):
    greedy = {key: CE[key] + differences.get(key, 0.0) for key in CE}
    options = {"min_weight": "1"} if alpha else {}
    return {"arm": name, "alpha": alpha, "warmup_steps": 0, "exempt": alpha > 0, "options": options, "seed": seed,
            "generation": {"greedy": greedy}}


def test_arms_whose_outputs_hold_come_first_then_summed_output_then_rare_recall():
    runs = {
        "alpha-0": [_run("alpha-0", 0.0, 0), _run("alpha-0", 0.0, 1)],
        # ROUGE-L 0.030 better, but 3 points more replies at the limit (tolerance 2): does not hold
        "w": [_run("w", 0.5, 0, rouge_l=0.030, hit_token_limit=0.030)],
        # 0.006 worse (tolerance 0.005): does not hold, though the most specific
        "y": [_run("y", 0.5, 0, rouge_l=-0.006, rare_token_recall=0.100)],
        # both hold with the same ROUGE-L (-0.004) and limit share (+0.01): the higher rare recall (z) first
        "x": [_run("x", 0.5, 0, rouge_l=-0.004, hit_token_limit=0.010, rare_token_recall=0.020)],
        "z": [_run("z", 0.5, 0, rouge_l=-0.004, hit_token_limit=0.010, rare_token_recall=0.050)],
        # no seed-0 run: not screened
        "v": [_run("v", 0.5, 1, rouge_l=0.100)],
    }
    assert stage1_order(runs) == ["z", "x", "w", "y"]


def test_no_order_without_ce():
    assert stage1_order({"x": [_run("x", 0.5, 0, rouge_l=0.01)]}) == []


@pytest.mark.parametrize("spec", [
    "alpha=0.25,exempt=true",
    "alpha=0.5,exempt=true,min_weight=1",
    "alpha=1,warmup_steps=75",
    "alpha=0.5,exempt=true,prior_path=docs/results/study2/priors/code/model_prior.safetensors,prior_mix=0.5",
    "alpha=0.30000000000000004,ce_mix=0.5",
])
def test_spec_gives_the_arm_back(spec):
    arm = parse_arm(spec)
    assert arm.spec == spec and parse_arm(arm.spec) == arm


def test_spec_of_a_run_written_by_pdl_compare():
    result = {"alpha": 0.5, "warmup_steps": 0, "exempt": True, "options": {"ce_mix": "0.5"}}
    assert Arm.of(result).spec == "alpha=0.5,exempt=true,ce_mix=0.5"

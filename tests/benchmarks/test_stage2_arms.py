"""benchmarks/stage2_arms.py: the two first arms of stage 1's order go on to stage 2, and it refuses while a stage-1
arm has no seed-0 results."""

import json
from pathlib import Path

from conftest import load_benchmark

stage2_arms = load_benchmark("stage2_arms")

ARMS = ["alpha=0.25,exempt=true", "alpha=0.5,exempt=true,min_weight=1", "alpha=0.5,exempt=true,ce_mix=0.5"]


def _store(root: Path, arm, seed: int, rouge: float, at_limit: float, recall: float) -> None:
    folder = root / arm.name / f"seed-{seed}"
    folder.mkdir(parents=True)
    result = {
        "arm": arm.name, "alpha": arm.alpha, "warmup_steps": 0, "exempt": arm.exempt, "options": dict(arm.options),
        "seed": seed, "prompts": 4, "settings": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.95},
        "generation": {"greedy": {"rouge_l": rouge, "hit_token_limit": at_limit, "rare_token_recall": recall,
                                  "self_information_bits": 10.0}},
        "references": {}, "validation": {"ce": 2.0, "pdl": 3.0, "pdl_alpha": 0.5, "rows": 4}, "ranks": {},
        "time": {"cpu_s": 1.0, "wall_s": 1.0}, "samples": [],
    }
    (folder / "results.json").write_text(json.dumps(result))
    (folder / "train.json").write_text(json.dumps({"log_history": [], "global_step": 4, "cpu_s": 1.0, "wall_s": 1.0}))


def test_the_two_first_of_stage_one_go_on(tmp_path, capsys):
    ce, a1, a2, a3 = (stage2_arms.parse_arm(text) for text in ["alpha=0", *ARMS])
    _store(tmp_path, ce, 0, 0.200, 0.05, 0.03)
    _store(tmp_path, a1, 0, 0.188, 0.05, 0.06)  # -0.012: does not hold
    _store(tmp_path, a2, 0, 0.196, 0.06, 0.07)  # -0.004, +1 point at the limit: holds
    _store(tmp_path, a3, 0, 0.187, 0.06, 0.04)  # -0.013: does not hold, below a1
    assert stage2_arms.main([str(tmp_path), *(f"--arm={text}" for text in ARMS)]) == 0
    assert capsys.readouterr().out.split() == [ARMS[1], ARMS[0]]


def test_refuses_while_stage_one_is_unfinished(tmp_path, capsys):
    ce, a1 = (stage2_arms.parse_arm(text) for text in ["alpha=0", ARMS[0]])
    _store(tmp_path, ce, 0, 0.200, 0.05, 0.03)
    _store(tmp_path, a1, 0, 0.188, 0.05, 0.06)
    assert stage2_arms.main([str(tmp_path), *(f"--arm={text}" for text in ARMS)]) == 2
    err = capsys.readouterr().err
    assert "stage 1 is not finished" in err and ARMS[1] in err and ARMS[2] in err and "alpha=0.25" not in err


def test_an_arm_that_goes_on_in_every_other_task_gets_seeds_here_too(tmp_path, capsys):
    ce, a1, a2, a3 = (stage2_arms.parse_arm(text) for text in ["alpha=0", *ARMS])
    rouge_by_task = {"one": (0.190, 0.199, 0.198), "two": (0.199, 0.198, 0.190), "three": (0.199, 0.190, 0.198)}
    for task, rouges in rouge_by_task.items():
        _store(tmp_path / task, ce, 0, 0.200, 0.05, 0.03)
        for arm, rouge in zip((a1, a2, a3), rouges):
            _store(tmp_path / task, arm, 0, rouge, 0.05, 0.03)
    # stage 2 takes a2, a3 on "one"; a1, a2 on "two"; a1, a3 on "three": each arm goes on in two tasks
    third = [str(tmp_path / "two"), str(tmp_path / "three")]
    assert stage2_arms.main([str(tmp_path / "one"), *(f"--arm={text}" for text in ARMS), "--third", *third]) == 0
    assert capsys.readouterr().out.split() == [ARMS[0]]  # a1: on both others, not here
    assert stage2_arms.main([str(tmp_path / "two"), *(f"--arm={text}" for text in ARMS), "--third",
                             str(tmp_path / "one"), str(tmp_path / "three")]) == 0
    assert capsys.readouterr().out.split() == [ARMS[2]]  # a3

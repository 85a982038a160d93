"""benchmarks/reproduce_check.py: a re-run agrees with a committed run when every figure agrees to 3 decimals."""

import json
from pathlib import Path

from conftest import load_benchmark

reproduce_check = load_benchmark("reproduce_check")


def _run(folder: Path, ce: float, step_loss: float, text: str) -> Path:
    folder.mkdir(parents=True)
    result = {"validation": {"ce": ce, "pdl": 2.0, "ce_by_bucket": [{"bucket": "1-2", "ce": 3.0}]},
              "generation": {"greedy": {"rouge_l": 0.25}}, "samples": [{"greedy": text, "sampled": "x"}]}
    (folder / "results.json").write_text(json.dumps(result))
    (folder / "train.json").write_text(json.dumps({"log_history": [{"step": 4, "loss": step_loss}]}))
    return folder


def test_agreement_to_three_decimals(tmp_path, capsys):
    committed = _run(tmp_path / "a", 1.76851, 2.5, "hello")
    assert reproduce_check.main([str(committed), str(_run(tmp_path / "b", 1.76849, 2.5001, "hello"))]) == 0
    rows, differing = reproduce_check.compare(committed, _run(tmp_path / "c", 1.7705, 2.5, "hello!"))
    assert differing == 1  # validation CE 1.769 vs 1.771 (0.002 apart); the step loss agrees and is not listed
    assert any(row.startswith("| validation CE | 1.7685 | 1.7705") and "**no**" in row for row in rows)
    assert not any(row.startswith("| step 4") for row in rows)
    assert rows[-1].startswith("| generated texts identical | 2 | 2 | 1 same | **no**")
    assert reproduce_check.main([str(committed), str(tmp_path / "c")]) == 1


def _with_end_of_reply(folder: Path, probability: float) -> Path:
    result = json.loads((folder / "results.json").read_text())
    result["validation"]["end_of_reply"] = {"rows": 4, "ce": 0.9, "probability": probability, "other_ce": 1.8}
    (folder / "results.json").write_text(json.dumps(result))
    return folder


def test_end_of_reply_kept_beside_a_run_only_when_it_reproduces(tmp_path):
    committed = _run(tmp_path / "a", 1.76851, 2.5, "hello")
    rerun = _with_end_of_reply(_run(tmp_path / "b", 1.76849, 2.5, "hello"), 0.836)
    drifted = _with_end_of_reply(_run(tmp_path / "c", 1.7705, 2.5, "hello"), 0.5)
    assert reproduce_check.main([str(committed), str(drifted), "--keep_end_of_reply"]) == 1
    assert not (committed / "end_of_reply.json").exists()
    assert reproduce_check.main([str(committed), str(rerun), "--keep_end_of_reply"]) == 0
    kept = json.loads((committed / "end_of_reply.json").read_text())
    assert kept["probability"] == 0.836 and str(rerun) in kept["source"]
    # a second call keeps what is there
    assert reproduce_check.keep_end_of_reply(committed, drifted) is None
    assert json.loads((committed / "end_of_reply.json").read_text())["probability"] == 0.836

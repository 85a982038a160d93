"""benchmarks/study_cost.py: runs counted and CPU hours summed by hand on a tiny results folder, where a run reused
from an earlier study (no provenance) is not counted."""

import json
from pathlib import Path

from conftest import load_benchmark

study_cost = load_benchmark("study_cost")


def _run(folder: Path, steps: int, train_cpu: float, eval_cpu: float, provenance: bool) -> None:
    folder.mkdir(parents=True)
    train = {"global_step": steps, "examples_seen": steps * 8, "cpu_s": train_cpu}
    if provenance:
        train["provenance"] = {"commit": "abc"}
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "results.json").write_text(json.dumps({"time": {"cpu_s": eval_cpu}}))


def test_new_runs_are_counted_and_summed_by_hand(tmp_path):
    _run(tmp_path / "toy" / "alpha-0" / "seed-0", 150, 9000.0, 360.0, provenance=False)  # reused: not counted
    _run(tmp_path / "toy" / "alpha-0.5" / "seed-0", 150, 3600.0, 180.0, provenance=True)
    _run(tmp_path / "toy" / "alpha-0.5" / "seed-1", 150, 5400.0, 360.0, provenance=True)
    _run(tmp_path / "toy" / "alpha-1" / "seed-0", 100, 1800.0, 0.0, provenance=True)
    (tmp_path / "toy" / "alpha-1" / "seed-1").mkdir()  # unfinished: no files
    _run(tmp_path / "reproduction" / "toy" / "alpha-0" / "seed-0", 150, 7200.0, 720.0, provenance=True)
    # toy: 3 runs, 1 + 1.5 + 0.5 = 3.00 training hours, 0.05 + 0.1 + 0 = 0.15 evaluation hours; reproduction 2, 0.2
    assert study_cost.table(tmp_path, ["toy"]).splitlines()[2:] == [
        "| toy | 3 | 100 to 150 | 800 to 1,200 | 3.00 | 0.15 |",
        "| toy (reproduction of CE) | 1 | 150 | 1,200 | 2.00 | 0.20 |",
        "| all | 4 | | | 5.00 | 0.35 |",
    ]


def test_the_table_in_docs_is_drawn_from_the_committed_results():
    root = Path(__file__).resolve().parents[2]
    drawn = study_cost.table(root / "docs" / "results" / "study2", ["dialogue", "summarization", "code"])
    assert drawn in (root / "docs" / "results.md").read_text(), (
        "redraw it: python benchmarks/study_cost.py docs/results/study2 dialogue summarization code "
        "--update docs/results.md")

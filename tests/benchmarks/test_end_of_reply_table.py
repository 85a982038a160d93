"""benchmarks/end_of_reply_table.py: the share column by hand on a tiny results folder, and docs/results.md's table
is exactly what the script draws from the committed data (so the table cannot drift from its data again)."""

import json
from pathlib import Path

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
end_of_reply_table = load_benchmark("end_of_reply_table")


def _run(root: Path, arm: str, alpha: float, seed: int, val_ce: float, end_ce: float, in_results: bool) -> None:
    folder = root / "toy" / arm / f"seed-{seed}"
    folder.mkdir(parents=True)
    ends = {"rows": 4, "ce": end_ce, "probability": 0.5, "other_ce": 2.0}
    result = {"arm": arm, "alpha": alpha, "warmup_steps": 0, "seed": seed,
              "validation": {"ce": val_ce, "tokens": 40, **({"end_of_reply": ends} if in_results else {})}}
    (folder / "results.json").write_text(json.dumps(result))
    if not in_results:
        (folder / "end_of_reply.json").write_text(json.dumps(ends))


def test_share_by_hand(tmp_path):
    _run(tmp_path, "alpha-0", 0.0, 0, 2.0, 1.0, in_results=True)
    _run(tmp_path, "alpha-0.5", 0.5, 0, 2.5, 3.0, in_results=False)  # the first study's side file
    rows = end_of_reply_table.task_rows("toy", end_of_reply_table.end_of_reply_runs(tmp_path / "toy"))
    # end part: 4 rows x (3.0 - 1.0) / 40 tokens = 0.2 of the +0.5 validation CE difference: 40%
    assert rows == ["| toy, seed 0 | CE | 1.000 | 0.5 | 2.000 |  |",
                    "|  | alpha 0.5 | 3.000 | 0.5 | 2.000 | 40% (+0.200 of +0.500) |"]


def test_the_table_in_docs_is_drawn_from_the_committed_data():
    drawn = end_of_reply_table.table(ROOT / "docs" / "results" / "study", ["summarization", "code"])
    assert drawn in (ROOT / "docs" / "results.md").read_text()

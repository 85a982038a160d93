"""What a study's new runs cost, from their committed results: per task, how many runs it trained (those that record
their provenance; runs reused from an earlier study do not), the steps and examples of each, and the CPU hours of
training and of the final evaluation (the processes' CPU time, one thread each), with the reproduction runs
(RESULTS_DIR/reproduction/TASK) in their own rows.

    python benchmarks/study_cost.py docs/results/study2 dialogue summarization code
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import table_command  # noqa: E402

HEAD = ("| task | runs | steps | examples per run | training CPU hours | evaluation CPU hours |\n"
        "|---|---|---|---|---|---|")


def new_runs(task_dir: Path) -> list[tuple[dict, dict]]:
    """(train.json, results.json) of every finished run under `task_dir` that records its provenance."""
    runs = []
    for train_file in sorted(task_dir.glob("*/seed-*/train.json")):
        train = json.loads(train_file.read_text())
        results_file = train_file.with_name("results.json")
        if train.get("provenance") and results_file.is_file():
            runs.append((train, json.loads(results_file.read_text())))
    return runs


def _hours(runs: list[tuple[dict, dict]]) -> str:
    """The runs' training and final-evaluation CPU hours, as two table cells."""
    training = sum(train["cpu_s"] for train, _ in runs) / 3600
    evaluation = sum(results["time"]["cpu_s"] for _, results in runs) / 3600
    return f"{training:.2f} | {evaluation:.2f}"


def _row(label: str, runs: list[tuple[dict, dict]]) -> str:
    def spread(values) -> str:
        low, high = min(values), max(values)
        return f"{low:,}" if low == high else f"{low:,} to {high:,}"

    steps = spread([train["global_step"] for train, _ in runs])
    examples = spread([train["examples_seen"] for train, _ in runs])
    return f"| {label} | {len(runs)} | {steps} | {examples} | {_hours(runs)} |"


def table(results_dir: Path, tasks: list[str]) -> str:
    """One row per task (and per task's reproductions), then the total."""
    rows, every = [], []
    for task in tasks:
        for label, folder in ((task, Path(results_dir) / task),
                              (f"{task} (reproduction of CE)", Path(results_dir) / "reproduction" / task)):
            runs = new_runs(folder)
            if runs:
                rows.append(_row(label, runs))
                every += runs
    if every:
        rows.append(f"| all | {len(every)} | | | {_hours(every)} |")
    return HEAD + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    table_command(__doc__.split("\n\n")[0], table, argv)


if __name__ == "__main__":
    main()

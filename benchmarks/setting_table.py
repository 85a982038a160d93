"""The second study's table of settings, drawn from its committed results: for each arm and task, what the setting
did against CE on the same seeds (arm − CE: the mean, and its 95% t-interval once two or more seeds are paired) to
validation CE, to the CE of the tokens seen 1-2 times in training, to the outputs, to the share of replies cut at the
length limit and to the end-of-reply probability, with the pre-registered rule's verdict. docs/results.md and the
README's "Choosing a setting" carry what this prints; a test keeps them equal to it.

    python benchmarks/setting_table.py docs/results/study2 dialogue summarization code \
        [--update docs/results.md README.md]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import table_command  # noqa: E402
from pdl_plugin.study import rule  # noqa: E402
from pdl_plugin.study.arms import Arm  # noqa: E402
from pdl_plugin.study.results import baseline_name, load_runs  # noqa: E402
from pdl_plugin.study.screen import is_code, paired_stats, rule_keys  # noqa: E402
from pdl_plugin.study.statistics import bucket_ce, generation_metric, paired_differences  # noqa: E402

# (column title, value of one run, digits)
COLUMNS = [
    ("validation CE", lambda r: r["validation"]["ce"], 3),
    ("CE of tokens seen 1-2 times", bucket_ce("1-2"), 3),
    ("ROUGE-L", generation_metric("rouge_l"), 3),
    ("parse rate (code)", generation_metric("parse_rate"), 3),
    ("replies at the length limit", generation_metric("hit_token_limit"), 3),
    ("end-of-reply probability", lambda r: (r["validation"].get("end_of_reply") or {}).get("probability", math.nan), 3),
]
HEAD = ("| arm | task | seeds | " + " | ".join(f"{title} − CE" for title, _, _ in COLUMNS) + " | rule |\n"
        + "|" + "---|" * (len(COLUMNS) + 4))


def cell(stats: dict, digits: int) -> str:
    """`+0.034` from one seed, `+0.034 [+0.020, +0.048]` from two or more; `-` when not recorded on both sides."""
    if not stats["n"]:
        return "-"
    text = f"{stats['mean']:+.{digits}f}"
    return text if stats["n"] < 2 else f"{text} [{stats['low']:+.{digits}f}, {stats['high']:+.{digits}f}]"


def arm_cells(runs: dict[str, list[dict]], name: str, code: bool) -> dict[str, str]:
    """Column title -> arm `name` − CE over the seeds it shares with CE (`cell`); the parse rate only on code."""
    baseline = baseline_name(runs)
    cells = {}
    for title, get, digits in COLUMNS:
        if title.endswith("(code)") and not code:
            continue
        stats = paired_differences({r["seed"]: get(r) for r in runs[baseline]}, {r["seed"]: get(r) for r in runs[name]})
        cells[title] = cell(stats, digits)
    return cells


def task_rows(task: str, runs: dict[str, list[dict]]) -> dict[str, str]:
    """Arm label -> its row for one task (every arm but CE; none without a CE arm)."""
    baseline = baseline_name(runs)
    if baseline is None:
        return {}
    code = is_code(runs)
    rows = {}
    for name, results in runs.items():
        if name == baseline:
            continue
        seeds = sorted({r["seed"] for r in results} & {r["seed"] for r in runs[baseline]})
        cells = arm_cells(runs, name, code)
        verdict = rule.verdict(paired_stats(runs, name, set(seeds), rule_keys(code)), code)
        label = Arm.of(results[0]).label.replace(", special tokens exempt", " + exemption")
        rows[label] = (f"| {label} | {task} | {', '.join(map(str, seeds))} | "
                       + " | ".join(cells.get(title, "") for title, _, _ in COLUMNS) + f" | {verdict} |")
    return rows


def table(results_dir: Path, tasks: list[str]) -> str:
    """Rows grouped by arm (in the order the arms first appear), tasks in the order given."""
    by_task = {task: task_rows(task, load_runs(Path(results_dir) / task)) for task in tasks}
    labels = list(dict.fromkeys(label for rows in by_task.values() for label in rows))
    lines = [by_task[task][label] for label in labels for task in tasks if label in by_task[task]]
    return HEAD + "\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    table_command(__doc__.split("\n\n")[0], table, argv)


if __name__ == "__main__":
    main()

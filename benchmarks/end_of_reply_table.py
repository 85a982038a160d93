"""The end-of-reply table of docs/results.md, drawn from data beside the run results.

Each run's end-of-reply figures come from its `results.json` (`validation.end_of_reply`, recorded by every evaluation
since 2026-12-07) or, for the first study's runs measured afterwards on their adapters, from `end_of_reply.json` in
the run's folder (`pdl_plugin.study.results.end_of_reply_figures`, as the reports read them); validation CE and its
token count always from `results.json`. Per task, arms are grouped by the seeds measured; each arm's row gives the
means over those seeds and, against CE on the same seeds, the share of the arm's validation CE difference that the
end-of-reply positions carry: `rows x (end CE of the arm - end CE of CE) / validation tokens`, over `val CE of the arm
- val CE of CE`.

    python benchmarks/end_of_reply_table.py docs/results/study summarization code [--output FILE.md]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import table_command  # noqa: E402
from pdl_plugin.study.results import end_of_reply_figures  # noqa: E402

HEAD = ("| task | arm | CE of the end-of-reply token | its mean probability | CE of the other tokens | share of the "
        "arm − CE validation CE difference due to the end token |\n|---|---|---|---|---|---|")


def end_of_reply_runs(task_dir: Path) -> dict[str, dict[int, dict]]:
    """Arm name -> seed -> {ce, probability, other_ce, rows, validation_ce, tokens} for runs that measured it."""
    runs: dict[str, dict[int, dict]] = {}
    for results_file in sorted(Path(task_dir).glob("*/seed-*/results.json")):
        result = json.loads(results_file.read_text())
        ends = end_of_reply_figures(results_file.parent, result)
        if not ends:
            continue
        runs.setdefault(result["arm"], {})[result["seed"]] = {
            **{key: ends[key] for key in ("ce", "probability", "other_ce", "rows")},
            "validation_ce": result["validation"]["ce"], "tokens": result["validation"]["tokens"],
            "label": _label(result)}
    return runs


def _label(result: dict) -> str:
    from pdl_plugin.study.arms import Arm

    arm = Arm.of(result)
    return "CE" if arm == Arm(0.0) else arm.label.replace("special tokens exempt", "exempt")


def _probability(value: float) -> str:
    return np.format_float_positional(value, precision=2, unique=False, fractional=False, trim="k")


def task_rows(task: str, runs: dict[str, dict[int, dict]]) -> list[str]:
    """The rows of one task: arms grouped by the seeds measured, CE first in each group."""
    ce = runs.get("alpha-0", {})
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, seeds in sorted(runs.items(), key=lambda kv: (kv[0] != "alpha-0", _order(kv[0]))):
        paired, unpaired = sorted(set(seeds) & set(ce)), sorted(set(seeds) - set(ce))
        for group in (paired, unpaired):  # seeds with a CE run to pair with, and those without
            if group:
                groups.setdefault(tuple(group), []).append(name)
    rows = []
    for seeds, names in sorted(groups.items(), key=lambda kv: (-len(kv[0]), not set(kv[0]) <= set(ce), kv[0])):
        title = (f"{task}, mean of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"{task}, seed {seeds[0]}")
        for index, name in enumerate(names):
            figures = [runs[name][seed] for seed in seeds]
            mean = lambda key: float(np.mean([f[key] for f in figures]))  # noqa: E731
            rows.append(f"| {title if index == 0 else ''} | {figures[0]['label']} | {mean('ce'):.3f} | "
                        f"{_probability(mean('probability'))} | {mean('other_ce'):.3f} | {_share(name, seeds, runs, ce)} |")
    return rows


def _order(name: str) -> tuple:
    return ("warmup" in name, "exempt" in name, name)


def _share(name: str, seeds: tuple[int, ...], runs: dict, ce: dict) -> str:
    if name == "alpha-0":
        return ""
    missing = [seed for seed in seeds if seed not in ce]
    if missing:
        return f"(CE seed {', '.join(map(str, missing))} not kept)"
    end_parts, totals, shares = [], [], []
    for seed in seeds:
        arm, base = runs[name][seed], ce[seed]
        end_part = arm["rows"] * (arm["ce"] - base["ce"]) / arm["tokens"]
        total = arm["validation_ce"] - base["validation_ce"]
        end_parts.append(end_part)
        totals.append(total)
        shares.append(f"{end_part / total:.0%}")
    if len(seeds) == 1:
        return f"{shares[0]} ({end_parts[0]:+.3f} of {totals[0]:+.3f})"
    return f"{', '.join(shares)} (mean {np.mean(end_parts):+.3f} of {np.mean(totals):+.3f})"


def table(results_dir: Path, tasks: list[str]) -> str:
    rows = [row for task in tasks for row in task_rows(task, end_of_reply_runs(Path(results_dir) / task))]
    return HEAD + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    table_command(__doc__.split("\n\n")[0], table, argv)


if __name__ == "__main__":
    main()

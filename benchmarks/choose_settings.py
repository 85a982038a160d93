"""The settings the recipes and `PDLSettings` ship, read off the second study's committed results by the rule
registered before it ran (docs/results.md, "What the defaults will follow"; `pdl_plugin.study.choice`): each task's
recipe, then the default, with the reason and the `--arm` text of each. Nothing is chosen from one seed.

    python benchmarks/choose_settings.py docs/results/study2 dialogue summarization code
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import table_command  # noqa: E402
from pdl_plugin.study.arms import Arm  # noqa: E402
from pdl_plugin.study.choice import Choice, default_choice, judge_task, recipe_choice  # noqa: E402
from pdl_plugin.study.results import load_runs  # noqa: E402

HEAD = "| ships in | setting | `--arm` | why |\n|---|---|---|---|"


def _row(where: str, choice: Choice, arms: dict[str, Arm]) -> str:
    if choice.arm is None:
        setting, spec = ("plain cross-entropy", "alpha=0") if choice.decided else ("-", "-")
    else:
        arm = arms[choice.arm]
        setting, spec = arm.label.replace(", special tokens exempt", " + exemption"), f"`{arm.spec}`"
    return f"| {where} | {setting} | {spec} | {choice.reason}{' (warning)' if choice.warning else ''} |"


def choices(results_dir: Path, tasks: list[str]) -> tuple[dict[str, Choice], Choice, dict[str, Arm]]:
    """Each task's recipe choice, the default's, and every arm seen (name -> Arm)."""
    runs = {task: load_runs(Path(results_dir) / task) for task in tasks}
    arms = {name: Arm.of(results[0]) for task_runs in runs.values() for name, results in task_runs.items()}
    judged = {task: judge_task(task, runs[task]) for task in tasks}
    by_task = {task: recipe_choice(judged[task]) if judged[task]
               else Choice(None, "undecided: no arm has two or more seeds paired with CE", decided=False)
               for task in tasks}
    return by_task, default_choice(judged), arms


def table(results_dir: Path, tasks: list[str]) -> str:
    """One row per task's recipe, then the default's."""
    by_task, default, arms = choices(results_dir, tasks)
    rows = [_row(f"the {task} recipes", choice, arms) for task, choice in by_task.items()]
    rows.append(_row("`PDLSettings`' default", default, arms))
    return HEAD + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    table_command(__doc__.split("\n\n")[0], table, argv)


if __name__ == "__main__":
    main()

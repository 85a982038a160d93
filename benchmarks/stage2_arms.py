"""Which arms of a task go on to stage 2 of the second study: the first `--count` of stage 1's order (the rule
registered in docs/results.md, `pdl_plugin.study.screen.stage1_order`) among the stage-1 arms given, read from the
committed seed-0 results. Prints one `--arm` text per line, best first, for `benchmarks/study2.sh stage2`.

    python benchmarks/stage2_arms.py docs/results/study2/dialogue --arm alpha=0.25,exempt=true --arm ...

With `--third OTHER_TASK_DIR ...` (the other tasks' results), it prints instead the arms that stage 2 takes on every
other task but not on this one: they get seeds 1 and 2 here too, so that the default is chosen among arms judged on
every task (docs/results.md, "How that rule is applied"). Arms are matched by name across tasks.
Exit status 2, naming them, when a stage-1 arm or CE has no finished seed-0 run there yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdl_plugin.errors import PDLConfigError
from pdl_plugin.study.arms import Arm, parse_arm
from pdl_plugin.study.results import load_runs
from pdl_plugin.study.screen import stage1_order


def stage2_arms(task_dir: Path, arms: list[Arm], count: int) -> list[Arm]:
    """The first `count` of `arms` in stage 1's order; refuses while any of them, or CE, lacks its seed-0 run."""
    runs = load_runs(task_dir)
    missing = [arm.spec for arm in [Arm(0.0), *arms]
               if 0 not in {r["seed"] for r in runs.get(arm.name, [])}]
    if missing:
        raise PDLConfigError(f"{task_dir}: stage 1 is not finished; no seed-0 results for {', '.join(missing)}. Run "
                             f"`bash benchmarks/study2.sh stage1 {task_dir.name}` (and commit its results) first.")
    names = {arm.name for arm in arms}
    chosen = [name for name in stage1_order(runs) if name in names][:count]
    return [Arm.of(runs[name][0]) for name in chosen]


def third_task_arms(task_dir: Path, others: list[Path], arms: list[Arm], count: int) -> list[Arm]:
    """The arms (of `arms`, in their order) that stage 2 takes on every task of `others` and not on `task_dir`'s."""
    here = {arm.name for arm in stage2_arms(task_dir, arms, count)}
    elsewhere = [{arm.name for arm in stage2_arms(other, arms, count)} for other in others]
    return [arm for arm in arms if arm.name not in here and all(arm.name in names for names in elsewhere)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task_dir", type=Path, help="the task's results folder, e.g. docs/results/study2/dialogue")
    parser.add_argument("--arm", action="append", required=True, help="a stage-1 arm, as given to pdl-compare")
    parser.add_argument("--count", type=int, default=2, help="how many arms go on (the plan says 2)")
    parser.add_argument("--third", type=Path, nargs="+", default=None, metavar="OTHER_TASK_DIR",
                        help="print the arms stage 2 takes on all of these tasks but not on this one")
    args = parser.parse_args(argv)
    try:
        arms = [parse_arm(text) for text in args.arm]
        arms = (third_task_arms(args.task_dir, args.third, arms, args.count) if args.third
                else stage2_arms(args.task_dir, arms, args.count))
    except PDLConfigError as err:
        print(f"stage2_arms: {err}", file=sys.stderr)
        return 2
    print("\n".join(arm.spec for arm in arms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

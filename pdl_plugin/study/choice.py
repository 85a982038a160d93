"""What the shipped settings follow (issue 25, item 7): the rule registered in docs/results.md ("What the defaults
will follow") applied to a study's committed results, so that the recipes and `PDLSettings`' defaults are read off
the evidence rather than picked by hand.

Only arms judged on two or more seeds paired with CE enter (one seed has no interval). For each arm and task:
the rule's verdict (`rule.verdict`), the summed output difference arm − CE (the mean; ROUGE-L, plus the parse rate on
code) and whether it keeps the rare-token gain (CE of the tokens seen 1-2 times in training below CE's with an
interval that excludes 0).

- **A task's recipe**: the arm that helps the task (of two, the larger output difference); where none helps, the arm
  that neither harms it nor loses the rare-token gain with the smallest output loss; where every such arm harms it,
  the least harmful one that keeps the gain, with a warning; where none keeps it, no PDL setting (CE).
- **The default**, among the arms judged on every task: the one that helps on the most tasks and harms none (ties:
  the larger mean output difference); where none helps, the one that harms no task and keeps the gain on every task
  with the smallest mean output loss; where every arm harms some task, the one that harms the fewest (then the
  smallest mean output loss), with a warning. None is chosen while no arm is judged on every task, nor while an arm
  judged on two or more tasks is not yet judged on every one (its third-task seeds are planned: docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import rule
from .results import baseline_name
from .screen import is_code, paired_stats, rule_keys
from .statistics import bucket_ce, paired_differences

RARE_BUCKET = "1-2"


@dataclass(frozen=True)
class Judged:
    """One arm on one task, over the seeds it shares with CE."""

    arm: str
    task: str
    seeds: tuple[int, ...]
    verdict: str  # rule.verdict: helps, harms or neither
    output: float  # summed mean output difference arm − CE (larger is better)
    rare_gain: bool  # CE of the tokens seen 1-2 times below CE's, interval excluding 0
    better_outputs: bool = False  # an output metric above CE's with an interval that excludes 0 (else, when it
    # helps, it helps by specificity: rare-token recall or self-information up, outputs held)


@dataclass(frozen=True)
class Choice:
    """The arm chosen (None: plain CE, or nothing yet when not `decided`) and why, in words a recipe header or the
    README can carry."""

    arm: str | None
    reason: str
    warning: bool = False
    decided: bool = True


def judge_task(task: str, runs: dict[str, list[dict]]) -> list[Judged]:
    """Every arm of one task's runs that shares two or more seeds with CE, judged by the registered rule."""
    baseline = baseline_name(runs)
    if baseline is None:
        return []
    code = is_code(runs)
    judged = []
    for name, results in runs.items():
        seeds = {r["seed"] for r in results} & {r["seed"] for r in runs[baseline]}
        if name == baseline or len(seeds) < 2:
            continue
        stats = paired_stats(runs, name, seeds, rule_keys(code))
        verdict = rule.verdict(stats, code)
        if verdict == "too few seeds":
            continue
        rare = paired_differences({r["seed"]: bucket_ce(RARE_BUCKET)(r) for r in runs[baseline] if r["seed"] in seeds},
                                  {r["seed"]: bucket_ce(RARE_BUCKET)(r) for r in results if r["seed"] in seeds})
        output = sum(stats[key]["mean"] for key in rule.output_metrics(code))
        better = any(stats[key]["low"] > 0 for key in rule.output_metrics(code))
        judged.append(Judged(name, task, tuple(sorted(seeds)), verdict, output,
                             rare["n"] >= 2 and not math.isnan(rare["high"]) and rare["high"] < 0, better))
    return judged


def recipe_choice(judged: list[Judged]) -> Choice:
    """A task's recipe, from its judged arms (module docstring)."""
    helping = [j for j in judged if j.verdict == "helps"]
    if helping:
        best = max(helping, key=lambda j: j.output)
        how = "better outputs" if best.better_outputs else "more specific replies, outputs held"
        return Choice(best.arm, f"helps: {how} (output {best.output:+.3f} over seeds {_seeds(best)})")
    holding = [j for j in judged if j.verdict == "neither" and j.rare_gain]
    if holding:
        best = max(holding, key=lambda j: j.output)
        return Choice(best.arm, f"no arm helps; the best output difference ({best.output:+.3f} over seeds "
                      f"{_seeds(best)}) among the arms that harm nothing and keep the rare-token gain")
    gaining = [j for j in judged if j.rare_gain]
    if gaining:
        best = max(gaining, key=lambda j: j.output)
        return Choice(best.arm, f"every arm that keeps the rare-token gain harms the outputs; this one least "
                      f"({best.output:+.3f})", warning=True)
    return Choice(None, "no arm keeps the rare-token gain: plain cross-entropy", warning=True)


def default_choice(by_task: dict[str, list[Judged]]) -> Choice:
    """`PDLSettings`' default, from every task's judged arms (module docstring)."""
    judged_on = _tasks_judged(by_task)
    arms = [arm for arm, tasks in judged_on.items() if len(tasks) == len(by_task)]
    if not by_task or not arms:
        return Choice(None, "undecided: no arm is judged on every task (seeds 1 and 2 of one arm on each task)",
                      decided=False)
    # the arms judged on two or more tasks but not every one: their third-task seeds are the registered plan's
    waiting = [f"{arm} is not yet judged on {', '.join(task for task in by_task if task not in tasks)}"
               for arm, tasks in judged_on.items() if 1 < len(tasks) < len(by_task)]
    if waiting:
        return Choice(None, f"undecided: {'; '.join(waiting)} (the arms stage 2 judged on two or more tasks are "
                      "judged on every task before the default is chosen among them)", decided=False)
    rows = {arm: [next(j for j in js if j.arm == arm) for js in by_task.values()] for arm in arms}

    def mean_output(arm: str) -> float:
        return sum(j.output for j in rows[arm]) / len(rows[arm])

    harmless = [arm for arm in arms if not any(j.verdict == "harms" for j in rows[arm])]
    helping = [arm for arm in harmless if any(j.verdict == "helps" for j in rows[arm])]
    if helping:
        best = max(helping, key=lambda arm: (sum(j.verdict == "helps" for j in rows[arm]), mean_output(arm)))
        tasks = [j.task for j in rows[best] if j.verdict == "helps"]
        return Choice(best, f"helps {', '.join(tasks)} and harms no task")
    keeping = [arm for arm in harmless if all(j.rare_gain for j in rows[arm])]
    if keeping:
        best = max(keeping, key=mean_output)
        return Choice(best, f"no arm helps any task; the least mean output loss ({mean_output(best):+.3f}) among the "
                      "arms that harm no task and keep the rare-token gain on every task")
    best = max(arms, key=lambda arm: (-sum(j.verdict == "harms" for j in rows[arm]), mean_output(arm)))
    return Choice(best, f"every arm harms some task or loses the rare-token gain; this one is the least harmful "
                  f"(mean output {mean_output(best):+.3f})", warning=True)


def _tasks_judged(by_task: dict[str, list[Judged]]) -> dict[str, list[str]]:
    """Each arm (in the order first judged) with the tasks it is judged on."""
    arms = dict.fromkeys(j.arm for js in by_task.values() for j in js)
    return {arm: [task for task, js in by_task.items() if any(j.arm == arm for j in js)] for arm in arms}


def _seeds(judged: Judged) -> str:
    return ", ".join(map(str, judged.seeds))

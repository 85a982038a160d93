"""The pre-registered rule applied to a study's runs: each arm's paired differences against CE on the metrics the rule
reads, and stage 1's order (seed 0, `rule.screen_key`), which picks the arms that go on to more seeds in stage 2."""

from __future__ import annotations

from . import rule
from .results import baseline_name
from .statistics import generation_metric, paired_differences


def is_code(runs: dict[str, list[dict]]) -> bool:
    """Whether the runs are of a code task (their greedy replies were parsed), which has two output metrics."""
    return any("parse_rate" in r["generation"].get("greedy", {}) for rs in runs.values() for r in rs)


def rule_keys(code: bool) -> tuple[str, ...]:
    """The metrics the rule reads: the output metrics, the share at the length limit, then the specificity ones."""
    return (*rule.output_metrics(code), rule.LIMIT, *rule.SPECIFICITY)


def paired_stats(runs: dict[str, list[dict]], name: str, seeds: set[int], keys: tuple[str, ...]) -> dict[str, dict]:
    """Arm `name` − CE on the given seeds, per metric (`paired_differences`: mean, interval, n, seeds)."""
    baseline = baseline_name(runs)
    return {key: paired_differences(
        {r["seed"]: generation_metric(key)(r) for r in runs[baseline] if r["seed"] in seeds},
        {r["seed"]: generation_metric(key)(r) for r in runs[name] if r["seed"] in seeds}) for key in keys}


def stage1_order(runs: dict[str, list[dict]]) -> list[str]:
    """The arms that have a seed-0 run paired with CE's, best first by `rule.screen_key` (ties keep the runs' order);
    empty without a CE arm."""
    baseline = baseline_name(runs)
    if baseline is None:
        return []
    code = is_code(runs)
    keys = rule_keys(code)
    screened = []
    for name, results in runs.items():
        if name == baseline or 0 not in {r["seed"] for r in results}:
            continue
        first = paired_stats(runs, name, {0}, keys)
        if all(first[key]["n"] for key in keys[:-len(rule.SPECIFICITY)]):
            means = {key: first[key]["mean"] for key in keys if first[key]["n"]}
            screened.append((rule.screen_key(means, code), name))
    return [name for _, name in sorted(screened, key=lambda item: item[0], reverse=True)]

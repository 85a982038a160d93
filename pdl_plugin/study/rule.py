"""The rule that decides whether an arm helps a task, registered in docs/results.md before the second study's first
run (issue 25), applied to paired differences arm - CE (mean and 95% t-interval over seeds).

An arm **helps** when its replies end no worse (share at the length limit at most `LIMIT_TOLERANCE` above CE's, in
the mean) and either
- an output metric is better than CE's with an interval that excludes 0, the task's other output metric (code has
  two) no worse than CE's by more than `OUTPUT_TOLERANCE` in the mean; or
- its specificity (rare-token recall or self-information of the greedy replies) is above CE's with an interval that
  excludes 0, every output metric no worse than CE's by more than `OUTPUT_TOLERANCE` in the mean.
It **harms** when an output metric is below CE's, or its share at the length limit above CE's, with an interval that
excludes 0. One seed has no interval: stage 1 ranks arms by `screen_key` instead.
"""

from __future__ import annotations

import math

OUTPUT_TOLERANCE = 0.005
LIMIT_TOLERANCE = 0.02  # 2 points; with 64 prompts one reply is 1.6 points
SPECIFICITY = ("rare_token_recall", "self_information_bits")
LIMIT = "hit_token_limit"


def output_metrics(code: bool) -> tuple[str, ...]:
    """The task's output metrics: ROUGE-L for text, parse rate and ROUGE-L for code."""
    return ("parse_rate", "rouge_l") if code else ("rouge_l",)


def verdict(stats: dict[str, dict], code: bool) -> str:
    """"helps", "harms", "neither" or "too few seeds", from each metric's paired statistics (`paired_differences`:
    mean, low, high, n), keyed by the generation metric's name."""
    outputs = output_metrics(code)
    needed = [*outputs, LIMIT]
    if any(stats.get(key, {}).get("n", 0) < 2 or math.isnan(stats[key]["low"]) for key in needed):
        return "too few seeds"
    if any(stats[key]["high"] < 0 for key in outputs) or stats[LIMIT]["low"] > 0:
        return "harms"
    ends_as_well = stats[LIMIT]["mean"] <= LIMIT_TOLERANCE
    for key in outputs:
        others_hold = all(stats[other]["mean"] >= -OUTPUT_TOLERANCE for other in outputs if other != key)
        if stats[key]["low"] > 0 and others_hold and ends_as_well:
            return "helps"
    outputs_hold = all(stats[key]["mean"] >= -OUTPUT_TOLERANCE for key in outputs)
    more_specific = any(key in stats and stats[key]["n"] >= 2 and stats[key]["low"] > 0 for key in SPECIFICITY)
    return "helps" if more_specific and outputs_hold and ends_as_well else "neither"


def screen_key(differences: dict[str, float], code: bool) -> tuple:
    """Stage 1's order (one seed, no interval; larger is better): first the arms whose outputs hold (every output
    metric at most `OUTPUT_TOLERANCE` below CE's) and whose replies end (at-limit share at most `LIMIT_TOLERANCE`
    above), then by the summed output difference, then by rare-token recall."""
    outputs = output_metrics(code)
    holds = (all(differences[key] >= -OUTPUT_TOLERANCE for key in outputs)
             and differences[LIMIT] <= LIMIT_TOLERANCE)
    return holds, sum(differences[key] for key in outputs), differences.get("rare_token_recall", -math.inf)

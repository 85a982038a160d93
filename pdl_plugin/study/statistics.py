"""A study's paired statistics: every arm against the CE arm (alpha 0) on the same seed (same LoRA initialisation,
same batches), the per-seed difference and its mean with a 95% t-interval over seeds; the same by training-frequency
bucket; and whether the CE arm's validation cross-entropy had flattened."""

from __future__ import annotations

import math

import numpy as np

from ..eval import metrics
from .results import arm_label, baseline_name

# Two-sided 95% quantiles of Student's t, t(0.975; df), for df = 1..30 (standard tables, 4 decimals)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t(0.975; df): the table for df <= 30, the Cornish-Fisher expansion beyond (error < 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def t_interval(values: list[float]) -> dict:
    """Mean and its two-sided 95% t-interval, ``mean ± t(0.975; n-1) * sd / sqrt(n)`` (sample sd); NaN bounds for
    fewer than 2 values. NaNs are dropped."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(clean)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan}
    mean = float(np.mean(clean))
    if n < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    sd = float(np.std(clean, ddof=1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired_differences(baseline: dict[int, float], arm: dict[int, float]) -> dict:
    """Per seed present (and not NaN) in both, ``arm - baseline``, and their mean with its 95% t-interval."""
    seeds = sorted(s for s in set(baseline) & set(arm)
                   if not math.isnan(float(baseline[s])) and not math.isnan(float(arm[s])))
    differences = [float(arm[s]) - float(baseline[s]) for s in seeds]
    return {"seeds": seeds, "differences": differences, **t_interval(differences)}


def bucket_ce(name: str):
    """The getter of one run's validation CE on the tokens of a training-frequency bucket (NaN when not recorded)."""
    def get(result: dict) -> float:
        for bucket in result["validation"].get("ce_by_bucket", []):
            if bucket["bucket"] == name:
                return bucket["ce"]
        return math.nan
    return get


def generation_metric(key: str, mode: str = "greedy"):
    """The getter of one run's generation metric `key` under decoding `mode` (NaN when not recorded)."""
    return lambda result: result["generation"].get(mode, {}).get(key, math.nan)


def _end_of_reply(result: dict, key: str) -> float:
    """The end-of-reply token's validation figure (runs evaluated before 2026-12-07 did not record it)."""
    return (result["validation"].get("end_of_reply") or {}).get(key, math.nan)


# (row title, value of one run, higher is better?) for the paired table; rows whose values are all missing are left out
PAIRED_METRICS = [
    ("val CE", lambda r: r["validation"]["ce"], False),
    *[(f"val CE, tokens seen {name} times" if name != "unseen" else "val CE, tokens unseen in training",
       bucket_ce(name), False) for name, _, _ in metrics.FREQUENCY_BUCKETS],
    ("val PDL (unseen: rarest)", lambda r: r["validation"]["pdl"] if "pdl_unseen_weight" in r["validation"]
     else math.nan, False),
    ("ROUGE-L (greedy)", generation_metric("rouge_l"), True),
    ("ROUGE-L 1st line (greedy)", generation_metric("rouge_l_first_line"), True),
    ("pass@1 (greedy)", generation_metric("pass_at_1"), True),
    ("parse rate (greedy)", generation_metric("parse_rate"), True),
    ("body parses, cut (greedy)", generation_metric("body_parse_rate"), True),
    ("distinct-1 (greedy)", generation_metric("distinct_1"), True),
    ("distinct-2 (greedy)", generation_metric("distinct_2"), True),
    ("rep-3 (greedy)", generation_metric("repetition_3"), False),
    ("rare-token recall (greedy)", generation_metric("rare_token_recall"), True),
    ("self-information, bits (greedy)", generation_metric("self_information_bits"), None),
    ("replies at the length limit (greedy)", generation_metric("hit_token_limit"), False),
    ("end-of-reply probability (validation)", lambda r: _end_of_reply(r, "probability"), True),
    ("end-of-reply CE (validation)", lambda r: _end_of_reply(r, "ce"), False),
]


def bucket_differences(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per arm other than CE, per training-frequency bucket: the paired difference of validation CE (arm - CE, same
    seed) with its mean and 95% t-interval, and the bucket's validation token count. Empty without a CE arm or
    buckets."""
    baseline = baseline_name(runs)
    first = next(iter(runs.values()))[0]
    buckets = first["validation"].get("ce_by_bucket")
    if baseline is None or not buckets:
        return {}
    out = {}
    for name, results in runs.items():
        if name == baseline:
            continue
        rows = []
        for bucket in buckets:
            get = bucket_ce(bucket["bucket"])
            stats = paired_differences({r["seed"]: get(r) for r in runs[baseline]},
                                       {r["seed"]: get(r) for r in results})
            rows.append({"bucket": bucket["bucket"], "tokens": bucket["tokens"], **stats})
        out[arm_label(results[0])] = rows
    return out


def eval_curve(result: dict) -> list[tuple[int, float]]:
    """A run's validation CE at each evaluation of its training log, as (step, CE) in step order."""
    history = result["train"].get("log_history", [])
    key = "eval_ce_loss" if any("eval_ce_loss" in e for e in history) else "eval_loss"
    return sorted((int(e["step"]), float(e[key])) for e in history if key in e and "step" in e)


def flattening(result: dict, threshold: float = 0.02) -> dict:
    """Whether a run's validation CE had flattened: its relative improvement over the last quarter of the run, from
    the last evaluation at or before 3/4 of the final step to the last evaluation, is under `threshold`."""
    curve = eval_curve(result)
    final_step = max([result["train"].get("global_step", 0), *[step for step, _ in curve]] or [0])
    start = [point for point in curve if point[0] <= 0.75 * final_step]
    if len(curve) < 2 or not start or start[-1] == curve[-1]:
        return {"available": False, "evaluations": len(curve), "final_step": final_step}
    (step_a, value_a), (step_b, value_b) = start[-1], curve[-1]
    improvement = (value_a - value_b) / value_a
    return {"available": True, "evaluations": len(curve), "final_step": final_step, "from_step": step_a,
            "from_ce": value_a, "to_step": step_b, "to_ce": value_b, "improvement": improvement,
            "flattened": improvement < threshold}

"""A study's figures: training curves, validation curves, the generated tokens' frequency ranks against the
references', and validation CE by training frequency against CE."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import pyplot, save_figure
from .results import arm_label
from .statistics import bucket_differences, eval_curve


def _curve(result: dict, key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in result["train"]["log_history"] if key in e and "step" in e}


def _band(axis, curves, label, color=None):
    """Mean over the curves on the steps they share, with the range as a band; the line's colour (None: no step)."""
    steps = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
    if not steps:
        return None
    values = np.array([[c[s] for s in steps] for c in curves])
    line, = axis.plot(steps, values.mean(0), marker=".", label=label, color=color)
    if len(curves) > 1:
        axis.fill_between(steps, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
    return line.get_color()


def plot_loss_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Training CE and loss per step (mean over seeds, band = seed range), and each arm's training CE minus the
    baseline's on the same seed: same seed, same batches, so the batch-to-batch noise cancels."""
    plt = pyplot()

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.4))
    baseline = next((results for results in runs.values() if results[0]["alpha"] == 0), None)
    baseline_by_seed = {r["seed"]: _curve(r, "ce_loss") for r in baseline} if baseline else {}

    for results in runs.values():
        label = arm_label(results[0])
        color = _band(left, [_curve(r, "ce_loss") for r in results], label)
        _band(middle, [_curve(r, "loss") for r in results], label, color)
        paired = []
        for r in results:
            base = baseline_by_seed.get(r["seed"])
            if base is not None:
                ce = _curve(r, "ce_loss")
                paired.append({s: ce[s] - base[s] for s in ce if s in base})
        if paired:
            _band(right, paired, label, color)
    left.set(xlabel="optimizer step", ylabel="cross-entropy of the step's trained tokens",
             title="Training cross-entropy (mean over seeds, band = range)")
    middle.set(xlabel="optimizer step", ylabel="training loss", title="Training loss (each arm's own PDL)")
    right.axhline(0, color="grey", linewidth=0.8)
    right.set(xlabel="optimizer step", ylabel="CE minus the alpha-0 run's CE, same seed",
              title="Training CE against the baseline, same batches")
    for axis in (left, middle, right):
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    return save_figure(figure, path)


def plot_rank_distribution(runs: dict[str, list[dict]], path: Path, mode: str = "greedy") -> Path:
    """Cumulative share of tokens by training-frequency rank (log x), generations of each arm against references."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 4.6))

    def draw(ranks, label, **style):
        ranks = np.asarray(ranks)
        seen = np.sort(ranks[ranks > 0])
        if seen.size == 0:
            return
        unseen = float((ranks == 0).mean())
        axis.step(seen, np.arange(1, seen.size + 1) / ranks.size, where="post",
                  label=f"{label} (unseen {unseen:.0%})", **style)

    first = next(iter(runs.values()))[0]
    draw(first["ranks"]["references"], "references", color="black", linewidth=2)
    for results in runs.values():
        draw([k for r in results for k in r["ranks"][mode]], arm_label(results[0]))
    axis.set_xscale("log")
    axis.set(xlabel="training-frequency rank of the token (1 = most frequent trained token)",
             ylabel="cumulative share of tokens", title=f"Frequency-rank distribution of {mode} generations")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    return save_figure(figure, path, dpi=110)


def plot_bucket_differences(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """PDL's mechanism in one figure: per frequency bucket, each arm's mean paired difference of validation CE to CE
    with its 95% t-interval (no bar with a single seed). None when there is nothing to draw."""
    differences = bucket_differences(runs)
    if not differences:
        return None
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    rows = next(iter(differences.values()))
    positions = np.arange(len(rows))
    width = 0.8 / len(differences)
    for index, (label, arm_rows) in enumerate(differences.items()):
        means = np.array([row["mean"] for row in arm_rows])
        low = np.array([row["low"] for row in arm_rows])
        high = np.array([row["high"] for row in arm_rows])
        seeds = max(row["n"] for row in arm_rows)
        errors = None if np.isnan(low).all() else np.vstack([means - low, high - means])
        axis.errorbar(positions + (index - (len(differences) - 1) / 2) * width, means, yerr=errors, fmt="o",
                      capsize=3, label=f"{label} (n = {seeds} seeds)")
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xticks(positions, [f"{row['bucket']}\n({row['tokens']} tokens)" for row in rows])
    axis.set(xlabel="how often the token was trained (training table count)",
             ylabel="validation CE, arm minus CE (same seed)",
             title="Validation CE by training frequency against CE (mean, 95% t-interval)")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def plot_validation_curves(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """Validation CE per evaluation step (mean over seeds, band = range), from the training logs; None without any."""
    if not any(eval_curve(r) for rs in runs.values() for r in rs):
        return None
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    for results in runs.values():
        curves = [dict(eval_curve(r)) for r in results if eval_curve(r)]
        steps = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if not steps:
            continue
        values = np.array([[c[s] for s in steps] for c in curves])
        line, = axis.plot(steps, values.mean(0), marker=".", label=arm_label(results[0]))
        if len(curves) > 1:
            axis.fill_between(steps, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
    axis.set(xlabel="optimizer step", ylabel="validation cross-entropy",
             title="Validation CE during training (mean over seeds, band = range)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)

"""Human-readable views of a frequency table and its weights: a rich table and a log-log plot."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.table import Table

from .figures import pyplot, save_figure
from .frequency import FrequencyTable


def relative_weights(table: FrequencyTable, weights: torch.Tensor) -> torch.Tensor:
    """Weights divided by the mean weight of a counted token: 1.0 is an average trained token."""
    counts = table.counts.to(torch.float64)
    mean = (weights.to(torch.float64) * counts).sum() / counts.sum()
    return weights.to(torch.float64) / mean


def ranked_token_ids(table: FrequencyTable) -> torch.Tensor:
    """Ids of the counted tokens, most frequent first (ties by id, so the order is deterministic)."""
    seen = torch.nonzero(table.counts > 0).flatten()
    return seen[torch.argsort(table.counts[seen], descending=True, stable=True)]


def weight_summary_table(table: FrequencyTable, weights: torch.Tensor, tokenizer, k: int = 8) -> Table:
    """The k most down-weighted and k most up-weighted trained tokens, by weight (with a floor, a cap or a prior the
    weight order is not the frequency order); ties in the task table's frequency order."""
    order = ranked_token_ids(table)
    relative = relative_weights(table, weights)
    down = order[torch.argsort(relative[order], stable=True)]
    up = order.flip(0)[torch.argsort(relative[order.flip(0)], descending=True, stable=True)]
    rows = [("down", down[:k]), ("up", up[:k])]
    view = Table(title=f"PDL weights: most down- and up-weighted of {len(order):,} distinct trained tokens")
    for column in ("", "token", "id", "count", "freq", "weight / mean"):
        view.add_column(column, justify="left" if column in ("", "token") else "right")
    for label, ids in rows:
        for token_id in ids.tolist():
            view.add_row(
                label,
                repr(tokenizer.decode([token_id])) if tokenizer is not None else "",
                str(token_id),
                _count(table.counts[token_id]),
                f"{float(table.frequencies[token_id]):.2e}",
                f"{float(relative[token_id]):.3f}",
            )
        view.add_section()
    return view


def _count(value) -> str:
    """A whole count as is, a model prior's expected count with one decimal."""
    return f"{float(value):,.1f}" if value.is_floating_point() else f"{int(value):,}"


def plot_rank_curves(table: FrequencyTable, weights: torch.Tensor, alpha: float, path: str | Path) -> Path:
    """Rank-frequency and rank-weight of the trained tokens on log-log axes, written as a PNG."""
    plt = pyplot()

    order = ranked_token_ids(table)
    ranks = torch.arange(1, len(order) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.loglog(ranks, table.frequencies[order], ".", markersize=2)
    left.set(xlabel="rank", ylabel="frequency among trained tokens", title="Rank-frequency")
    right.loglog(ranks, relative_weights(table, weights)[order], ".", markersize=2, color="tab:orange")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    right.set(xlabel="rank", ylabel="weight / mean weight", title=f"Rank-weight (alpha={alpha})")
    for axis in (left, right):
        axis.grid(True, which="major", alpha=0.3)
    what = {"all_tokens": "corpus tokens", "model_prior": "expected trained tokens (model prior)"}.get(table.kind,
                                                                                                    "trained tokens")
    total = f"{table.total:,.1f}" if isinstance(table.total, float) else f"{table.total:,}"
    figure.suptitle(f"{total} {what} ({table.masking}), {len(order):,} distinct")
    return save_figure(figure, path, dpi=120)

"""The token that ends a reply, measured apart: PDL weights it down (it is trained once per row, so the training table
counts it among the most frequent tokens), and a model that unlearns it writes replies that run to the length limit.
Every evaluation records its CE and probability beside the CE of the other trained tokens."""

from __future__ import annotations

import numpy as np


def end_of_reply_mask(label_rows) -> np.ndarray:
    """Over the trained positions of all rows, concatenated row by row as `token_nll` returns them: True at the last
    trained position of each row (the token that ends the reply).

    A row's trained positions are the j >= 1 with `labels[j] != -100` (the first label is never predicted)."""
    mask = []
    for labels in label_rows:
        trained = sum(1 for label in list(labels)[1:] if label != -100)
        mask.extend([False] * (trained - 1) + [True] if trained else [])
    return np.array(mask, dtype=bool)


def end_of_reply_summary(targets: np.ndarray, nll: np.ndarray, mask: np.ndarray) -> dict:
    """CE and mean probability at the end-of-reply positions, the CE of the other trained tokens, and the end
    positions' share of the summed CE."""
    if mask.shape != targets.shape or not mask.any():
        raise ValueError("need one end-of-reply position per scored row, over the same positions as the targets")
    return {
        "rows": int(mask.sum()),
        "end_tokens": [int(i) for i in np.unique(targets[mask])],
        "ce": float(nll[mask].mean()),
        "probability": float(np.exp(-nll[mask]).mean()),
        "other_ce": float(nll[~mask].mean()) if (~mask).any() else float("nan"),
        "share_of_ce": float(nll[mask].sum() / nll.sum()) if nll.sum() > 0 else float("nan"),
    }

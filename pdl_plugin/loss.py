"""The PDL loss on per-token log-probabilities. Pure functions: the trainer decides the denominator."""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = -100  # the label of a position that is not trained (the Hugging Face convention)


def target_weights(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``w(y_i)`` at every position, 0 where the label is ignored (-100). ``labels`` are already shifted."""
    mask = labels != IGNORE_INDEX
    return weights.to(labels.device)[labels.clamp(min=0)] * mask


class PDLSums(NamedTuple):
    """Sums over the trained tokens of one micro-batch; the loss is ``weighted_nll / denominator``."""

    weighted_nll: torch.Tensor  # sum w(y_i) * -log p(y_i), carries the gradient
    nll: torch.Tensor  # sum -log p(y_i): the plain cross-entropy numerator (carries the gradient with `plain_grad`)
    weight: torch.Tensor  # sum w(y_i)
    tokens: torch.Tensor  # number of trained tokens
    marked_weight: torch.Tensor  # sum w(y_i) over the targets equal to `marked` (0 without one)


def pdl_sums(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    plain_grad: bool = False,
    marked: int | None = None,
) -> PDLSums:
    """Per-token log-probs (aligned with the shifted ``labels``) -> the sums PDL and its metrics need.

    ``plain_grad`` keeps the gradient of the plain nll sum (a cross-entropy anchor trains on it); ``marked`` is a
    token id (the end-of-turn token) whose share of the weight is reported.
    """
    mask = labels != IGNORE_INDEX
    w = target_weights(labels, weights).float()
    nll = -log_probs.float().masked_fill(~mask, 0)
    marked_weight = (w.detach() * (labels == marked)).sum() if marked is not None else w.new_zeros(())
    return PDLSums(
        weighted_nll=(w * nll).sum(),
        nll=nll.sum() if plain_grad else nll.detach().sum(),
        weight=w.detach().sum(),
        tokens=mask.sum(),
        marked_weight=marked_weight,
    )

"""Token frequencies -> PDL weights. Pure tensor maths, no framework code (the settings' checks live in settings.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import PDLConfigError
from .settings import NORMALIZE_MODES, UNSEEN_POLICIES, check_alpha_epsilon


def pdl_weights(freq: torch.Tensor, alpha: float, epsilon: float) -> torch.Tensor:
    """Equation (3) of the paper: ``w(t) = 1 / (freq(t) + epsilon) ** alpha``.

    Computed in float64 so that tiny frequencies and large alphas do not lose precision, returned as float32.
    """
    check_alpha_epsilon(alpha, epsilon)
    freq = _as_float64(freq, "frequencies")
    if not torch.isfinite(freq).all() or (freq < 0).any():
        raise PDLConfigError("Token frequencies must be finite and >= 0; got a NaN, infinite or negative entry.")
    return (freq + epsilon).pow(-alpha).to(torch.float32)


def token_weights_from_counts(
    counts: torch.Tensor,
    alpha: float,
    epsilon: float,
    normalize: str = "weighted",
    max_weight: float | None = None,
    unseen: str = "rarest",
    exempt: Sequence[int] = (),
    min_weight: float | None = None,
    prior: torch.Tensor | None = None,
    prior_mix: float = 0.0,
) -> torch.Tensor:
    """The per-vocabulary-row weights the loss uses, from raw counts of trained tokens.

    ``freq`` is the normalised frequency ``counts / counts.sum()`` (so ``epsilon`` has the same meaning whatever the
    dataset size); with a ``prior`` (normalised frequencies of a prior table) it is
    ``(1 - prior_mix) * freq + prior_mix * prior``. ``unseen`` sets the weight of a token the table never counted: ``"rarest"`` gives it the weight of
    the rarest counted token (a token unseen in training is not infinitely informative; with equation (3) as it
    stands, epsilon 1e-6 and alpha 0.75 it would weigh ~31,600, more than a whole reply), ``"formula"`` keeps
    equation (3), ``epsilon ** -alpha`` (with a prior, "unseen" is counted by neither table). ``max_weight`` caps a
    weight at that multiple of the mean weight of the counted tokens and ``min_weight`` raises it to at least that
    multiple of the same mean (with 1, no trained token weighs less than the average one). The rows in ``exempt`` (the special tokens, with `pdl_exempt_special_tokens`) then get the mean
    weight of a counted token, so that each of their occurrences counts as much, against the average trained token, as
    under plain cross-entropy: the end-of-reply token is trained once per reply, so it is among the most frequent
    trained tokens, and PDL's weight for it teaches the model to stop less. With ``normalize="token"`` the weights are
    finally rescaled so that their mean over the counted tokens is exactly 1, so the loss is on the scale of plain
    cross-entropy.
    """
    if unseen not in UNSEEN_POLICIES:
        raise PDLConfigError(f"pdl_unseen_weight must be one of {UNSEEN_POLICIES}, got {unseen!r}.")
    if normalize not in NORMALIZE_MODES:
        raise PDLConfigError(f"pdl_normalize must be one of {NORMALIZE_MODES}, got {normalize!r}.")
    counts = _as_float64(counts, "counts")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise PDLConfigError("Token counts must be finite and >= 0; got a NaN, infinite or negative entry.")
    total = counts.sum()
    if total <= 0:
        raise PDLConfigError(
            "The frequency table counts no trained token, so PDL weights are undefined. Check that the dataset "
            "has tokens whose label is not -100 (completion or assistant tokens)."
        )
    freq = _mixed_frequencies(counts / total, prior, prior_mix)
    if unseen == "rarest":
        freq = torch.where(freq > 0, freq, freq[freq > 0].min())
    weights = pdl_weights(freq, alpha, epsilon).to(torch.float64)
    if max_weight is not None or min_weight is not None:
        mean = _mean_over_counted(weights, counts)
        weights = weights.clamp(min=None if min_weight is None else _multiple("pdl_min_weight", min_weight, 0) * mean,
                                max=None if max_weight is None else _multiple("pdl_max_weight", max_weight) * mean)
    exempt = _as_rows(exempt, len(weights))
    if exempt.numel():
        weights[exempt] = _mean_over_counted(weights, counts)
    if normalize == "token":
        weights = weights / _mean_over_counted(weights, counts)
    return weights.to(torch.float32)


def _mixed_frequencies(task: torch.Tensor, prior: torch.Tensor | None, mix: float) -> torch.Tensor:
    """``(1 - mix) * task + mix * prior``, both normalised frequencies over the same vocabulary rows."""
    if prior is None:
        return task
    prior = _as_float64(prior, "prior frequencies")
    if prior.shape != task.shape:
        raise PDLConfigError(f"The prior has {prior.numel()} rows but the task table {task.numel()}: they must count "
                             "the same vocabulary. Make the prior with this model's tokenizer.")
    if not torch.isfinite(prior).all() or (prior < 0).any() or not prior.sum() > 0:
        raise PDLConfigError("Prior frequencies must be finite, >= 0 and not all 0.")
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix <= 1:
        raise PDLConfigError(f"pdl_prior_mix must be a number in [0, 1], got {mix!r}.")
    return (1 - mix) * task + mix * (prior / prior.sum())


def _multiple(name: str, value, lowest: float | None = None) -> float:
    """A multiple of the mean weight: finite and > 0, or >= `lowest` (a floor of 0 is no floor: weights are > 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (0 < value if lowest is None else lowest <= value) and value < math.inf):
        raise PDLConfigError(f"{name} must be a finite number {'> 0' if lowest is None else f'>= {lowest}'} or unset, "
                             f"got {value!r}.")
    return float(value)


def _as_float64(values, name: str) -> torch.Tensor:
    """A tensor or a sequence of numbers as float64; anything else is a clear error, not a torch traceback."""
    try:
        return torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise PDLConfigError(f"Token {name} must be a tensor or a sequence of numbers, got {values!r:.80}.") from None


def _as_rows(rows: Sequence[int], size: int) -> torch.Tensor:
    """Vocabulary rows as an index tensor; a row outside the vocabulary is a clear error."""
    rows = torch.as_tensor(list(rows), dtype=torch.int64)
    if rows.numel() and not ((rows >= 0) & (rows < size)).all():
        raise PDLConfigError(f"Exempt token ids must be rows of the {size}-row vocabulary, got {rows.tolist()}.")
    return rows


def _mean_over_counted(weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean weight of one trained token drawn from the counted data (count-weighted mean)."""
    return (weights * counts).sum() / counts.sum()

"""Token frequencies -> PDL weights. Pure tensor maths, no framework code."""

from __future__ import annotations

import torch

from .errors import PDLConfigError

NORMALIZE_MODES = ("weighted", "token")
UNSEEN_POLICIES = ("rarest", "formula")


def pdl_weights(freq: torch.Tensor, alpha: float, epsilon: float) -> torch.Tensor:
    """Equation (3) of the paper: ``w(t) = 1 / (freq(t) + epsilon) ** alpha``.

    Computed in float64 so that tiny frequencies and large alphas do not lose precision, returned as float32.
    """
    check_alpha_epsilon(alpha, epsilon)
    freq = torch.as_tensor(freq, dtype=torch.float64)
    if (freq < 0).any():
        raise PDLConfigError("Token frequencies must be >= 0; got a negative entry. Pass counts or probabilities.")
    return (freq + epsilon).pow(-alpha).to(torch.float32)


def as_number(name: str, value) -> float:
    """A recipe value as a float: YAML reads `1e-6` as a string and the CLI passes strings; refuse anything else."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise PDLConfigError(f"{name} must be a number, got {value!r}. Write e.g. `{name}: 0.5`.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PDLConfigError(f"{name} must be a number, got {value!r}. Write e.g. `{name}: 0.5`.")
    return float(value)


def check_alpha_epsilon(alpha: float, epsilon: float) -> None:
    """Refuse values that would silently turn PDL into something else (negative alpha up-weights frequent tokens)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise PDLConfigError(f"pdl_alpha must be a number >= 0, got {alpha!r}. Set e.g. `pdl_alpha: 0.5`.")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise PDLConfigError(f"pdl_epsilon must be a number > 0, got {epsilon!r}. Set e.g. `pdl_epsilon: 1.0e-6`.")
    if not alpha >= 0 or alpha == float("inf"):
        raise PDLConfigError(
            f"pdl_alpha must be a finite number >= 0, got {alpha}. Use 0 for plain cross-entropy, "
            "or a value in [0.25, 1.5] as the paper suggests."
        )
    if not epsilon > 0 or epsilon == float("inf"):
        raise PDLConfigError(
            f"pdl_epsilon must be a finite number > 0, got {epsilon}. It keeps the weight of unseen tokens finite; "
            "use a small value such as 1e-6."
        )


def token_weights_from_counts(
    counts: torch.Tensor,
    alpha: float,
    epsilon: float,
    normalize: str = "weighted",
    max_weight: float | None = None,
    unseen: str = "rarest",
) -> torch.Tensor:
    """The per-vocabulary-row weights the loss uses, from raw counts of trained tokens.

    ``freq`` is the normalised frequency ``counts / counts.sum()`` (so ``epsilon`` has the same meaning whatever the
    dataset size). ``unseen`` sets the weight of a token the table never counted: ``"rarest"`` gives it the weight of
    the rarest counted token (a token unseen in training is not infinitely informative; with equation (3) as it
    stands, epsilon 1e-6 and alpha 0.75 it would weigh ~31,600, more than a whole reply), ``"formula"`` keeps
    equation (3), ``epsilon ** -alpha``. ``max_weight`` caps a weight at that multiple of the mean weight of the
    counted tokens. With ``normalize="token"`` the weights are then rescaled so that their mean over the counted tokens
    is exactly 1, so the loss is on the scale of plain cross-entropy.
    """
    if unseen not in UNSEEN_POLICIES:
        raise PDLConfigError(f"pdl_unseen_weight must be one of {UNSEEN_POLICIES}, got {unseen!r}.")
    if normalize not in NORMALIZE_MODES:
        raise PDLConfigError(f"pdl_normalize must be one of {NORMALIZE_MODES}, got {normalize!r}.")
    counts = torch.as_tensor(counts, dtype=torch.float64)
    total = counts.sum()
    if total <= 0:
        raise PDLConfigError(
            "The frequency table counts no trained token, so PDL weights are undefined. Check that the dataset "
            "has tokens whose label is not -100 (completion or assistant tokens)."
        )
    freq = counts / total
    if unseen == "rarest":
        freq = torch.where(counts > 0, freq, freq[counts > 0].min())
    weights = pdl_weights(freq, alpha, epsilon).to(torch.float64)
    if max_weight is not None:
        if not max_weight > 0:
            raise PDLConfigError(f"pdl_max_weight must be > 0 or unset, got {max_weight}.")
        weights = weights.clamp(max=max_weight * _mean_over_counted(weights, counts))
    if normalize == "token":
        weights = weights / _mean_over_counted(weights, counts)
    return weights.to(torch.float32)


def _mean_over_counted(weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean weight of one trained token drawn from the counted data (count-weighted mean)."""
    return (weights * counts).sum() / counts.sum()

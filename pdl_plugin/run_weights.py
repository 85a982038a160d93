"""Settings + tables -> the weights a PDL run trains with: the one place that reads `PDLSettings` for weights.

The engine (training, both hosts), `pdl-freq` (the printed and plotted weights) and `pdl-eval` (validation PDL) all
call `weights_for_settings`, so a setting that changes the weights (floor, cap, prior, exemption) changes them
everywhere at once. Also here: loading a prior table, and finding and guarding the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from .errors import FrequencyTableError, PDLConfigError
from .frequency import TABLE_FILENAME, FrequencyTable
from .settings import PDLSettings
from .weights import token_weights_from_counts

PRIOR_FILENAME = "pdl_prior_table.safetensors"
# Below this multiple of the mean weight the end-of-turn token is under-trained (docs/results.md: from alpha 0.5 on
# its weight fell below a quarter of the mean and the models stopped predicting it)
END_OF_TURN_GUARD = 0.25


def weights_for_settings(
    settings: PDLSettings,
    table: FrequencyTable,
    *,
    prior: FrequencyTable | None = None,
    exempt: Iterable[int] = (),
    alpha: float | None = None,
) -> torch.Tensor:
    """The float32 weight of every output row for `settings` (at `alpha`, default `pdl_alpha`)."""
    s = settings
    if s.pdl_prior_path is not None and prior is None:
        raise PDLConfigError(f"pdl_prior_path is {s.pdl_prior_path} but no prior table was loaded (load_prior).")
    return token_weights_from_counts(
        table.counts, s.pdl_alpha if alpha is None else alpha, s.pdl_epsilon, s.pdl_normalize, s.pdl_max_weight,
        s.pdl_unseen_weight, tuple(exempt), min_weight=s.pdl_min_weight,
        prior=None if prior is None else prior.frequencies, prior_mix=s.pdl_prior_mix or 0.0,
    )


def load_prior(settings: PDLSettings, tokenizer_fp: str, rows: int, recount: str = "pdl-freq") -> FrequencyTable | None:
    """The table `pdl_prior_path` names, refused when it is of another tokenizer or vocabulary, or empty."""
    if settings.pdl_prior_path is None:
        return None
    prior = read_prior_file(settings.pdl_prior_path, recount)
    try:
        prior.check_compatible(tokenizer_fp, rows, source=f"The prior table {settings.pdl_prior_path}")
    except FrequencyTableError as err:
        raise FrequencyTableError(f"{str(err).split(' Recount it')[0]} {_make_prior(recount)}") from None
    return prior


def read_prior_file(path: str, recount: str = "pdl-freq") -> FrequencyTable:
    """The prior table at `path`, refused with one line when it is missing, damaged or empty (before any data is
    prepared: a run must not spend its preparation to find out)."""
    make = _make_prior(recount)
    if not Path(path).exists():
        raise FrequencyTableError(f"pdl_prior_path {path} does not exist. {make}")
    if Path(path).is_dir() and not (Path(path) / TABLE_FILENAME).is_file():
        raise FrequencyTableError(f"pdl_prior_path {path} is a folder with no table in it ({TABLE_FILENAME}): name "
                                  f"the prior's table file. {make}")
    try:
        prior = FrequencyTable.load(path)
    except FrequencyTableError as err:
        raise FrequencyTableError(f"pdl_prior_path: {str(err).split(' Recount it')[0].split(' It may be')[0]} "
                                  f"{make}") from None
    if not prior.total > 0:
        raise FrequencyTableError(f"The prior table {path} counts nothing (total 0), so it has no frequencies to mix. "
                                  f"{make}")
    return prior


def load_prior_for(settings: PDLSettings, tokenizer, rows: int) -> FrequencyTable | None:
    """`load_prior` for a tokenizer object (the commands that print, plot or evaluate weights)."""
    from .frequency import tokenizer_fingerprint

    return None if settings.pdl_prior_path is None else load_prior(settings, tokenizer_fingerprint(tokenizer), rows)


def settings_weights(table: FrequencyTable, settings: PDLSettings, tokenizer) -> torch.Tensor:
    """The weights a run with these settings trains with at full alpha (for tables printed, plotted, evaluated)."""
    from .frequency import special_token_ids

    exempt = exempt_ids(settings, table, special_token_ids(tokenizer, len(table.counts)))
    prior = load_prior_for(settings, tokenizer, len(table.counts))
    return weights_for_settings(settings, table, prior=prior, exempt=exempt)


def _make_prior(recount: str) -> str:
    return (f"Make one for this model with `{recount} --all-tokens ...` or `{recount} --model-prior ...`, or remove "
            "pdl_prior_path.")


def exempt_ids(settings: PDLSettings, table: FrequencyTable, special_token_ids: Iterable[int]) -> tuple[int, ...]:
    """The rows `pdl_exempt_special_tokens` exempts: the special tokens inside the model's output rows."""
    if not settings.pdl_exempt_special_tokens:
        return ()
    rows = len(table.counts)
    ids = tuple(sorted({int(i) for i in special_token_ids if 0 <= int(i) < rows}))
    if not ids:
        raise PDLConfigError(
            "pdl_exempt_special_tokens is true, but the tokenizer declares no special token among the model's "
            f"{rows} output rows, so nothing would be exempt. Check the tokenizer, or remove the setting."
        )
    return ids


def end_of_turn_id(table: FrequencyTable, special_token_ids: Iterable[int]) -> int | None:
    """The token that closes a reply: the most trained of the special tokens (eos, `<|im_end|>`, ...).

    Whatever the chat template or completion format, the token that ends each trained reply is a special token
    trained once per reply; no other special token is trained as often. None when no special token is trained.
    """
    counts = table.counts
    trained = [int(i) for i in special_token_ids if 0 <= int(i) < len(counts) and counts[int(i)] > 0]
    return max(trained, key=lambda i: (float(counts[i]), -i)) if trained else None


def end_of_turn_warning(
    table: FrequencyTable, weights: torch.Tensor, token: int | None, exempt: Iterable[int]
) -> str | None:
    """One line when the end-of-turn token is not exempt and weighs under a quarter of the mean trained weight."""
    if token is None or token in set(exempt):
        return None
    counts = table.counts.double()
    mean = float((weights.double() * counts).sum() / counts.sum())
    relative = float(weights[token]) / mean
    if relative >= END_OF_TURN_GUARD:
        return None
    rank = int((counts > counts[token]).sum()) + 1
    return (
        f"the end-of-turn token (id {token}) weighs {relative:.3g} of the mean trained token (weight "
        f"{float(weights[token]):.4g}; it is the {_ordinal(rank)} most frequent of {int((counts > 0).sum()):,} trained "
        "tokens). In our study (docs/results.md) weights this low made the models stop predicting it and replies ran "
        "to the length limit. Set `pdl_exempt_special_tokens: true` (or `pdl_min_weight: 1`) to keep the ending."
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


_FLOAT32_MAX = torch.finfo(torch.float32).max


def check_weights(settings: PDLSettings, table: FrequencyTable, weights: torch.Tensor) -> None:
    """Refuse settings whose float32 weights would overflow, vanish, or make a step's weight sum overflow.

    Warm-up alphas lie between 0 and `pdl_alpha`, and `(f + eps) ** -alpha` is monotone in alpha, so the full
    alpha is the extreme case.
    """
    trained = weights[table.counts > 0]
    total = (weights.double() * table.counts.double()).sum()
    problem = None
    if not torch.isfinite(weights).all():
        problem = "some weights overflow float32 (infinite)"
    elif not (trained > 0).all():
        problem = "the weights of frequent tokens underflow to 0 in float32, so they would not be trained at all"
    elif not total < _FLOAT32_MAX:
        problem = f"the weights of the counted tokens sum to {float(total):.3g}, beyond float32"
    if problem:
        raise PDLConfigError(
            f"pdl_alpha {settings.pdl_alpha} with pdl_epsilon {settings.pdl_epsilon} gives unusable weights: {problem} "
            f"(counted weights from {float(trained.min()):.3g} to {float(trained.max()):.3g}). Training would "
            "produce NaN. Use an alpha in the paper's range [0.25, 1.5] and a small epsilon such as 1e-6, or cap "
            "the weights with pdl_max_weight."
        )


def check_bounds_leave_a_reweighting(settings: PDLSettings, table: FrequencyTable, weights: torch.Tensor,
                                     prior: FrequencyTable | None, exempt: Iterable[int]) -> None:
    """Refuse a cap or floor so tight that every trained token weighs the same: PDL would silently be plain
    cross-entropy (the exempt tokens left aside, they weigh the mean anyway)."""
    s = settings
    if s.pdl_alpha == 0 or (s.pdl_max_weight is None and s.pdl_min_weight is None):
        return
    kept = table.counts > 0
    kept[list(exempt)] = False
    bounded = weights[kept]
    unbounded = weights_for_settings(replace(s, pdl_max_weight=None, pdl_min_weight=None), table, prior=prior)[kept]
    if bounded.numel() > 1 and torch.allclose(bounded, bounded[0]) and not torch.allclose(unbounded, unbounded[0]):
        bounds = ", ".join(f"{name} {getattr(s, name)}" for name in ("pdl_min_weight", "pdl_max_weight")
                           if getattr(s, name) is not None)
        raise PDLConfigError(
            f"{bounds} give every trained token the same weight, so the loss would be plain cross-entropy "
            "without a word. The weights are multiples of the mean weight: a cap must lie above 1 and a floor "
            "below the largest weight / mean (e.g. pdl_max_weight: 20, pdl_min_weight: 1), or set pdl_alpha: 0 "
            "for cross-entropy on purpose."
        )

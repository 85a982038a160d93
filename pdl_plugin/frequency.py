"""The frequency table: counts per vocabulary row with their metadata, its file (safetensors), its weights, and
merging shard tables (the counting itself: counting.py)."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .counting import (MIN_DISTINCT_TRAINED_IDS, PACKED_LENGTHS, count_label_array,  # noqa: F401  (re-exported)
                       count_trained_tokens, data_fingerprint, few_trained_ids_warning)
from .errors import FrequencyTableError
from .files import write_atomically
from .loss import IGNORE_INDEX  # noqa: F401  (re-exported: the label of an untrained position)
from .weights import token_weights_from_counts

TABLE_FORMAT = "pdl-frequency-table/1"
TABLE_FILENAME = "pdl_frequency_table.safetensors"
# What a table counts (metadata `kind`; files written before it existed count trained tokens):
#   trained_tokens: the trained targets of a training set (labels != -100), whole counts: a task table
#   all_tokens:     every token of a text corpus (a general corpus has no completions), whole counts: a prior
#   model_prior:    a base model's expected count of each token over the trained positions, sum of p(t | context):
#                   fractional counts (float64), the whole vocabulary: a prior
TABLE_KINDS = ("trained_tokens", "all_tokens", "model_prior")
FRACTIONAL_KINDS = ("model_prior",)
_REQUIRED_METADATA = ("format", "tokenizer_fingerprint", "total_tokens", "masking", "data_fingerprint")
_INT64_MAX = int(np.iinfo(np.int64).max)
# The training hosts' other way out of a table that does not fit; commands without `pdl_freq_path` pass their own
FREQ_PATH_HINT = "or unset `pdl_freq_path` to count on the training set"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the token -> id map (added tokens included): two tokenizers that agree on it count alike."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def special_token_ids(tokenizer, rows: int | None = None) -> list[int]:
    """The ids of a tokenizer's special tokens (eos, the chat template's end-of-turn token, ...), for
    `pdl_exempt_special_tokens`; with `rows`, only those inside the model's `rows` output rows. A processor
    (multimodal models) is asked for its tokenizer's."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    return sorted(i for i in ids if rows is None or 0 <= i < rows)


_COUNTS_TYPE_HELP = (
    "FrequencyTable counts must be a 1-D list, numpy array or torch tensor of whole numbers >= 0, one per row of the "
    "model's output embedding"
)


def _as_counts(values, fractional: bool = False) -> torch.Tensor:
    """`values` as a 1-D int64 tensor (float64 with `fractional`: a model prior's expected counts), refusing anything
    that is not a list of whole, finite, non-negative counts.

    Raises `TypeError` for a value of the wrong kind (a string, None, a dict, complex numbers) and
    `FrequencyTableError` for numbers that cannot be counts (NaN, infinite, fractional, negative, beyond int64, or
    whose sum does not fit in int64). Nothing is rounded or wrapped silently.
    """
    tensor = _as_tensor(values)
    if tensor.is_complex():
        raise TypeError(f"{_COUNTS_TYPE_HELP}; got a complex {tensor.dtype} tensor.")
    if tensor.dim() != 1:
        raise FrequencyTableError(f"counts must be a 1-D tensor, got shape {tuple(tensor.shape)}.")
    if tensor.numel() == 0:
        raise FrequencyTableError("counts is empty: a table has one entry per row of the model's output embedding.")
    if tensor.is_floating_point():
        tensor = tensor.double()
        _check_finite(tensor)
        if fractional:
            return _as_expected_counts(tensor)
        _check_whole(tensor)
    if tensor.dtype == torch.uint64 and int(tensor.max()) > _INT64_MAX:
        raise FrequencyTableError(f"counts has the entry {int(tensor.max())}, beyond what int64 holds.")
    if fractional:
        return _as_expected_counts(tensor.double())
    tensor = tensor.to(torch.int64)
    if (tensor < 0).any():
        first = int((tensor < 0).nonzero()[0])
        raise FrequencyTableError(
            f"counts has negative entries (token id {first}: {int(tensor[first])}): the table is corrupt. Recount it "
            "with pdl-freq."
        )
    _check_total_fits(tensor)
    return tensor


def _as_tensor(values) -> torch.Tensor:
    """A CPU tensor of `values` (a tensor, a numpy array or a list), refusing what holds no numbers."""
    if values is None or isinstance(values, (str, bytes, dict, set, numbers.Number)):
        raise TypeError(f"{_COUNTS_TYPE_HELP}; got {type(values).__name__} {values!r:.60}.")
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{_COUNTS_TYPE_HELP}; got {type(values).__name__} that is not one ({err}).") from None
    if array.dtype == object:
        flat = array.ravel().tolist()
        if flat and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in flat):
            big = max(flat, key=abs)
            raise FrequencyTableError(f"counts has the entry {big}, beyond what int64 holds: not a real count.")
        raise TypeError(f"{_COUNTS_TYPE_HELP}; got {type(values).__name__} with non-numeric entries.")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{_COUNTS_TYPE_HELP}; got {type(values).__name__} of {array.dtype}.")
    if array.dtype.kind == "u" and array.size and int(array.max()) > _INT64_MAX:
        raise FrequencyTableError(f"counts has the entry {int(array.max())}, beyond what int64 holds.")
    if array.dtype.kind == "u":
        array = array.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array))


def _check_finite(tensor: torch.Tensor) -> None:
    for bad, what in ((torch.isnan(tensor), "NaN"), (torch.isinf(tensor), "infinite")):
        if bad.any():
            raise FrequencyTableError(
                f"counts has {int(bad.sum())} {what} entries (the first at token id {int(bad.nonzero()[0])}): counts "
                "must be whole numbers. Recount the table with pdl-freq."
            )


def _check_whole(tensor: torch.Tensor) -> None:
    not_whole = tensor != torch.floor(tensor)
    if not_whole.any():
        first = int(not_whole.nonzero()[0])
        raise FrequencyTableError(
            f"counts must be whole numbers, but token id {first} has {float(tensor[first])!r} "
            f"({int(not_whole.sum())} fractional entries). They are refused rather than truncated; pass integer "
            "counts (e.g. from pdl-freq or count_trained_tokens)."
        )
    if (tensor.abs() >= 2.0**63).any():
        raise FrequencyTableError(f"counts has the entry {float(tensor.abs().max()):.3g}, beyond what int64 holds.")


def _as_expected_counts(tensor: torch.Tensor) -> torch.Tensor:
    """A model prior's expected counts: finite (checked by the caller) and >= 0, kept as float64."""
    if (tensor < 0).any():
        first = int((tensor < 0).nonzero()[0])
        raise FrequencyTableError(
            f"expected counts have negative entries (token id {first}: {float(tensor[first])}): the table is corrupt. "
            "Recount it with `pdl-freq --model-prior`."
        )
    return tensor.to(torch.float64)


def _check_total_fits(counts: torch.Tensor) -> None:
    """Refuse counts whose sum overflows int64 (the sum would silently wrap to a negative total)."""
    approximate = float(counts.sum(dtype=torch.float64))
    if approximate < 2.0**62:
        return  # far from the limit: the exact int64 sum is right
    exact = sum(int(value) for value in counts.tolist())
    if exact > _INT64_MAX:
        raise FrequencyTableError(
            f"counts sum to {exact}, beyond what int64 holds ({_INT64_MAX}): these are not real token counts. "
            "Recount the table with pdl-freq."
        )


@dataclass
class FrequencyTable:
    """How often each vocabulary row is a trained target (label != -100) in a dataset.

    ``counts`` has one entry per row of the model's output embedding, so it indexes directly with labels: int64
    counts, or float64 expected counts for a `model_prior` table. ``kind`` says what was counted (`TABLE_KINDS`).
    """

    counts: torch.Tensor
    tokenizer_fingerprint: str
    masking: str
    data_fingerprint: str
    extra: dict[str, str] = field(default_factory=dict)
    kind: str = "trained_tokens"

    def __post_init__(self) -> None:
        if self.kind not in TABLE_KINDS:
            raise FrequencyTableError(f"A table's kind must be one of {TABLE_KINDS}, got {self.kind!r}.")
        self.counts = _as_counts(self.counts, fractional=self.kind in FRACTIONAL_KINDS)
        for name in ("tokenizer_fingerprint", "masking", "data_fingerprint"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"FrequencyTable {name} must be a string, got {type(getattr(self, name)).__name__}.")
        if not isinstance(self.extra, dict):
            raise TypeError(f"FrequencyTable extra must be a dict of strings, got {type(self.extra).__name__}.")

    @property
    def vocab_size(self) -> int:
        return int(self.counts.numel())

    @property
    def total(self) -> int | float:
        """Tokens counted (a float for a model prior's expected counts, summed exactly rounded with `math.fsum`: a
        float64 `torch.sum` depends on the number of threads, and the file's recorded total must not)."""
        if self.counts.is_floating_point():
            return math.fsum(self.counts.tolist())
        return int(self.counts.sum())

    @property
    def frequencies(self) -> torch.Tensor:
        """Normalised frequencies (the ``freq`` of equation 3), float64; all 0 for an empty table. (A model prior's
        expected counts may sum to less than 1, so the total is not floored at 1.)"""
        counts = self.counts.to(torch.float64)
        total = counts.sum()
        return counts / total if total > 0 else counts

    def weights(self, alpha: float, epsilon: float, **options) -> torch.Tensor:
        """The loss's weights from this table's counts: equation (3), with any option of `token_weights_from_counts`
        (normalize, max_weight, unseen, exempt, min_weight, prior, prior_mix), so a user reads the same weights the
        loss uses."""
        return token_weights_from_counts(self.counts, alpha, epsilon, **options)

    # ---- compatibility ---------------------------------------------------------------------------------------------

    def check_compatible(self, tokenizer_fp: str, vocab_size: int, source: str = "the table",
                         hint: str = FREQ_PATH_HINT) -> None:
        """Refuse a table made for another tokenizer or vocabulary size: its ids would point at other tokens.
        `hint` ends the advice to recount it: the caller's other way out (training: unset `pdl_freq_path`)."""
        if self.tokenizer_fingerprint != tokenizer_fp:
            raise FrequencyTableError(
                f"{source} was counted with another tokenizer (fingerprint {self.tokenizer_fingerprint}, this "
                f"model's tokenizer is {tokenizer_fp}): its token ids mean other tokens. Recount it for this model "
                f"with `pdl-freq --config RECIPE.yaml --output TABLE`, {hint}."
            )
        if self.vocab_size != vocab_size:
            raise FrequencyTableError(
                f"{source} has {self.vocab_size} entries but the model's output embedding has {vocab_size} rows. "
                f"Recount it for this model with `pdl-freq`, {hint}."
            )

    # ---- file ------------------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        return {
            **self.extra,
            "format": TABLE_FORMAT,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "total_tokens": str(self.total),
            "vocab_size": str(self.vocab_size),
            "masking": self.masking,
            "data_fingerprint": self.data_fingerprint,
            "kind": self.kind,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a crash or a full disk leaves either the old file or the new one, never half of one.

        A folder `path` gets the standard name inside it. Raises `PDLWriteError` (an `OSError`) if it cannot write.
        """
        path = Path(path)
        if path.is_dir():
            path = path / TABLE_FILENAME
        counts, metadata = self.counts.contiguous(), self.metadata()
        return write_atomically(path, lambda tmp: save_file({"counts": counts}, tmp, metadata=metadata),
                                what="frequency table")

    @classmethod
    def load(cls, path: str | os.PathLike, hint: str = FREQ_PATH_HINT) -> FrequencyTable:
        """Read a table file (a folder: its `TABLE_FILENAME`); `hint` as in `check_compatible`."""
        path = Path(path)
        if path.is_dir():
            path = path / TABLE_FILENAME
        if not path.is_file():
            raise FrequencyTableError(
                f"No frequency table at {path}. Create one with `pdl-freq --config RECIPE.yaml --output {path}`, "
                f"{hint}."
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise FrequencyTableError(
                f"{path} is not a readable safetensors frequency table ({err}). It may be truncated or not a table: "
                "recount it with `pdl-freq`."
            ) from None
        missing = [key for key in _REQUIRED_METADATA if key not in metadata]
        if "counts" not in tensors or missing or metadata.get("format") != TABLE_FORMAT:
            raise FrequencyTableError(
                f"{path} is a safetensors file but not a pdl-plugin frequency table (missing "
                f"{missing or ['counts'] if 'counts' not in tensors else ['format ' + TABLE_FORMAT]}). "
                "Recount it with `pdl-freq`."
            )
        counts, kind = tensors["counts"], metadata.get("kind", "trained_tokens")
        wanted = torch.float64 if kind in FRACTIONAL_KINDS else torch.int64
        if counts.dtype != wanted:
            raise FrequencyTableError(f"{path}: `counts` of a {kind!r} table must be {wanted}, got {counts.dtype}. "
                                      "Recount it with pdl-freq.")
        try:
            table = cls(
                counts=counts,
                tokenizer_fingerprint=metadata["tokenizer_fingerprint"],
                masking=metadata["masking"],
                data_fingerprint=metadata["data_fingerprint"],
                extra={k: v for k, v in metadata.items()
                       if k not in _REQUIRED_METADATA and k not in ("vocab_size", "kind")},
                kind=kind,
            )
        except FrequencyTableError as err:
            raise FrequencyTableError(f"{path}: {err}") from None
        if not _same_total(table.total, metadata["total_tokens"]):
            raise FrequencyTableError(
                f"{path}: counts sum to {table.total} but the metadata says {metadata['total_tokens']}: the file is "
                "corrupt. Recount it with `pdl-freq`."
            )
        return table


def _same_total(total: int | float, recorded: str) -> bool:
    """Whole counts must sum to the recorded total exactly; expected counts (float64) to 1e-9 relative, as tables
    written before totals were summed exactly recorded a threaded `torch.sum`, whose last digits vary."""
    if isinstance(total, int):
        return str(total) == recorded
    try:
        return math.isclose(total, float(recorded), rel_tol=1e-9, abs_tol=1e-9)
    except ValueError:
        return False


def merge_tables(tables: list[FrequencyTable]) -> FrequencyTable:
    """Add tables counted on disjoint shards of one dataset: the result is the table of the whole."""
    if not tables:
        raise FrequencyTableError("No tables to merge: pass at least one table file.")
    first = tables[0]
    for other in tables[1:]:
        other.check_compatible(first.tokenizer_fingerprint, first.vocab_size, source="A table to merge")
        if other.kind != first.kind:
            raise FrequencyTableError(
                f"Cannot merge a {other.kind!r} table into a {first.kind!r} one: they count different things."
            )
        if other.masking != first.masking:
            raise FrequencyTableError(
                f"Cannot merge a table counted with masking {other.masking!r} into one counted with {first.masking!r}: "
                "they count different tokens. Recount the shards with the same recipe."
            )
    extra = {"merged_from": str(len(tables)), **_merged_shard_places(tables)}
    parts = "+".join(table.data_fingerprint for table in tables)
    return FrequencyTable(
        counts=torch.stack([table.counts for table in tables]).sum(0),
        tokenizer_fingerprint=first.tokenizer_fingerprint,
        masking=first.masking,
        data_fingerprint=hashlib.sha256(parts.encode()).hexdigest()[:16],
        extra=extra,
        kind=first.kind,
    )


def shard_place(table: FrequencyTable) -> tuple[set[int], int] | None:
    """The shards of the whole a table holds, from its `shard` ("I/N") or `shards` ("I,J/N") metadata; None: all."""
    mark = table.extra.get("shard") or table.extra.get("shards")
    if not mark:
        return None
    indices, _, count = mark.partition("/")
    return {int(i) for i in indices.split(",")}, int(count)


def _merged_shard_places(tables: list[FrequencyTable]) -> dict[str, str]:
    """Refuse a merge that would count tokens twice (a table twice, a shard twice, the whole with a shard of it); the
    merged table's place among the shards (none once every shard is in)."""
    fingerprints = [t.data_fingerprint for t in tables]
    twice = sorted({f for f in fingerprints if fingerprints.count(f) > 1})
    if twice:
        raise FrequencyTableError(f"Cannot merge: the same data (fingerprint {twice[0]}) is given twice, so its tokens "
                                  "would count twice. Pass each shard's table once.")
    places = [shard_place(t) for t in tables]
    if all(p is None for p in places):
        return {}
    if any(p is None for p in places):
        raise FrequencyTableError("Cannot merge a whole table (counted without --shard) with shard tables: the shards' "
                                  "tokens are already in the whole, so they would count twice. Merge the shards only.")
    counts = {n for _, n in places}
    if len(counts) > 1:
        raise FrequencyTableError(f"Cannot merge shards of different splits ({sorted(counts)} shards): recount them "
                                  "with one --shard I/N count.")
    seen: set[int] = set()
    for indices, n in places:
        if seen & indices:
            raise FrequencyTableError(f"Cannot merge: shard {min(seen & indices)}/{n} is given twice, so its tokens "
                                      "would count twice. Pass each shard once.")
        seen |= indices
    n = counts.pop()
    return {} if len(seen) == n else {"shards": f"{','.join(map(str, sorted(seen)))}/{n}"}

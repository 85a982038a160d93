"""Counting trained tokens and the frequency-table file (safetensors + metadata)."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tqdm.auto import tqdm

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
# Fewer distinct trained ids than this is almost surely a data problem (empty replies train `<|im_end|>` alone)
MIN_DISTINCT_TRAINED_IDS = 10
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
    if values is None or isinstance(values, (str, bytes, dict, set, numbers.Number)):
        raise TypeError(f"{_COUNTS_TYPE_HELP}; got {type(values).__name__} {values!r:.60}.")
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu()
    else:
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
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex():
        raise TypeError(f"{_COUNTS_TYPE_HELP}; got a complex {tensor.dtype} tensor.")
    if tensor.dim() != 1:
        raise FrequencyTableError(f"counts must be a 1-D tensor, got shape {tuple(tensor.shape)}.")
    if tensor.numel() == 0:
        raise FrequencyTableError("counts is empty: a table has one entry per row of the model's output embedding.")
    if tensor.is_floating_point():
        tensor = tensor.double()
        nan = torch.isnan(tensor)
        if nan.any():
            raise FrequencyTableError(
                f"counts has {int(nan.sum())} NaN entries (the first at token id {int(nan.nonzero()[0])}): counts "
                "must be whole numbers. Recount the table with pdl-freq."
            )
        inf = torch.isinf(tensor)
        if inf.any():
            raise FrequencyTableError(
                f"counts has {int(inf.sum())} infinite entries (the first at token id {int(inf.nonzero()[0])}): counts "
                "must be whole numbers. Recount the table with pdl-freq."
            )
        if fractional:
            return _as_expected_counts(tensor)
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
    if tensor.dtype == torch.uint64:
        if int(tensor.max()) > _INT64_MAX:
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
        """Tokens counted (a float for a model prior's expected counts)."""
        return float(self.counts.sum()) if self.counts.is_floating_point() else int(self.counts.sum())

    @property
    def frequencies(self) -> torch.Tensor:
        """Normalised frequencies (the ``freq`` of equation 3), float64; all 0 for an empty table. (A model prior's
        expected counts may sum to less than 1, so the total is not floored at 1.)"""
        counts = self.counts.to(torch.float64)
        total = counts.sum()
        return counts / total if total > 0 else counts

    def weights(
        self,
        alpha: float,
        epsilon: float,
        normalize: str = "weighted",
        max_weight: float | None = None,
        unseen: str = "rarest",
        exempt: Sequence[int] = (),
    ) -> torch.Tensor:
        return token_weights_from_counts(self.counts, alpha, epsilon, normalize, max_weight, unseen, exempt)

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
        if str(table.total) != metadata["total_tokens"]:
            raise FrequencyTableError(
                f"{path}: counts sum to {table.total} but the metadata says {metadata['total_tokens']}: the file is "
                "corrupt. Recount it with `pdl-freq`."
            )
        return table


# ---- counting --------------------------------------------------------------------------------------------------------


def count_label_array(labels: pa.Array, vocab_size: int, seq_lengths: pa.Array | None = None) -> np.ndarray:
    """Count the trained targets in a chunk of label lists, vectorised.

    A position is trained when its label is not -100 and it does not start a sequence: a causal LM predicts label
    ``i`` from positions ``< i``, so the first label of a row is never a target (as in TRL's and transformers' shift).
    `seq_lengths` (TRL's bfd packing: the lengths of the sequences packed into each row) marks more starts: TRL's
    padding-free collator sets the label of every packed sequence's first token to -100 (`position_ids == 0`).
    """
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    if isinstance(seq_lengths, pa.ChunkedArray):
        seq_lengths = seq_lengths.combine_chunks()
    values = labels.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    lengths = labels.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    trained = values != IGNORE_INDEX
    if seq_lengths is None:
        starts = (np.cumsum(lengths) - lengths)[lengths > 0]
    else:
        sequences = seq_lengths.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        packed = np.zeros(len(lengths), np.int64)
        np.add.at(packed, np.repeat(np.arange(len(lengths)), seq_lengths.value_lengths().fill_null(0)), sequences)
        if (packed != lengths).any():
            row = int(np.flatnonzero(packed != lengths)[0])
            raise FrequencyTableError(
                f"A packed row's `seq_lengths` sum to {int(packed[row])} but the row has {int(lengths[row])} labels: "
                "the `seq_lengths` column does not describe the rows. Let TRL pack the data (`packing: true`), or "
                "drop the column."
            )
        starts = (np.cumsum(sequences) - sequences)[sequences > 0]
    trained[starts] = False
    targets = values[trained]
    if targets.size and (targets.min() < 0 or targets.max() >= vocab_size):
        bad = int(targets.min() if targets.min() < 0 else targets.max())
        raise FrequencyTableError(
            f"Label id {bad} is outside the model's {vocab_size} output rows. The dataset was tokenized with another "
            "tokenizer, or the model's embeddings were not resized after adding tokens."
        )
    return np.bincount(targets, minlength=vocab_size)


PACKED_LENGTHS = "seq_lengths"  # TRL's bfd packing: the lengths of the sequences packed into each row


def _label_chunks(dataset, batch_size: int) -> Iterator[tuple[pa.Array, pa.Array | None, int]]:
    """Yield (labels chunk, seq_lengths chunk or None, rows) for an in-memory or streaming `datasets` dataset,
    honouring indices mappings."""
    from datasets import Dataset

    columns = getattr(dataset, "column_names", None) or []
    packed = PACKED_LENGTHS in columns
    if isinstance(dataset, Dataset) and _reorders_whole_table(dataset):
        # A shuffle only reorders rows and counts ignore order: read the stored columns without gathering rows
        labels = dataset.data.table.column("labels")
        lengths = dataset.data.table.column(PACKED_LENGTHS) if packed else None
        for start in range(0, len(labels), batch_size):
            chunk = labels.slice(start, batch_size)
            yield chunk, lengths.slice(start, batch_size) if packed else None, len(chunk)
    elif isinstance(dataset, Dataset):
        names = ["labels", PACKED_LENGTHS] if packed else ["labels"]
        for batch in dataset.select_columns(names).with_format("arrow").iter(batch_size=batch_size):
            yield batch["labels"], batch[PACKED_LENGTHS] if packed else None, batch.num_rows
    else:
        for batch in dataset.iter(batch_size=batch_size):
            lengths = batch.get(PACKED_LENGTHS)
            yield (pa.array(batch["labels"], type=pa.list_(pa.int64())),
                   None if lengths is None else pa.array(lengths, type=pa.list_(pa.int64())), len(batch["labels"]))


def _reorders_whole_table(dataset) -> bool:
    """True when the dataset's rows are every stored row exactly once (no mapping, or a permutation of them)."""
    indices = dataset._indices  # datasets' indices mapping (shuffle, select, filter); None when rows are stored in order
    if indices is None:
        return True
    stored = dataset.data.num_rows
    if len(indices) != stored:
        return False
    order = indices.column(0).to_numpy()
    return bool(np.array_equal(np.sort(order), np.arange(stored)))


def count_trained_tokens(
    dataset, vocab_size: int, *, batch_size: int = 4096, desc: str = "Counting trained tokens"
) -> torch.Tensor:
    """Counts of trained targets per vocabulary row over a prepared dataset (one with a `labels` column).

    `dataset` is a `datasets.Dataset` or `IterableDataset` as TRL's preparation leaves it (e.g. the trainer's
    `train_dataset`). Raises `TypeError` for anything else (a list, a dict, a pandas frame) and
    `FrequencyTableError` when it has no `labels` column or a label outside `vocab_size`.
    """
    from datasets import Dataset, IterableDataset

    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(
            "count_trained_tokens counts a prepared `datasets.Dataset` or `IterableDataset` with a `labels` column "
            f"(e.g. the trainer's train_dataset), got {type(dataset).__name__}. For label lists in memory, pass "
            "`datasets.Dataset.from_dict({'labels': rows})`."
        )
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
        raise TypeError(f"vocab_size must be a whole number (the rows of the output embedding), got {vocab_size!r}.")
    if vocab_size < 1:
        raise FrequencyTableError(f"vocab_size must be at least 1 (the rows of the output embedding), got {vocab_size}.")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "labels" not in columns:
        raise FrequencyTableError(
            f"The prepared dataset has no `labels` column (columns: {columns}). PDL counts the positions whose label "
            "is not -100; prepare the dataset with TRL's SFTTrainer or provide `labels`."
        )
    counts = np.zeros(int(vocab_size), dtype=np.int64)
    total_rows = len(dataset) if hasattr(dataset, "__len__") else None
    with tqdm(total=total_rows, desc=desc, unit="rows") as progress:
        for labels, seq_lengths, rows in _label_chunks(dataset, batch_size):
            counts += count_label_array(labels, int(vocab_size), seq_lengths)
            progress.update(rows)
    return torch.from_numpy(counts)


def few_trained_ids_warning(table: FrequencyTable, tokenizer=None, minimum: int = MIN_DISTINCT_TRAINED_IDS,
                            source: str | None = None) -> str | None:
    """A warning when fewer than `minimum` distinct token ids are trained (None otherwise).

    Data whose replies are all empty trains the end-of-turn token alone; PDL then has (almost) nothing to weight and
    the finetune learns only those ids. Call it on the table in use, before training; `tokenizer` names the ids.
    `source`: the file of a reused table (`pdl_freq_path`), which is then the culprit, not the data set.
    """
    distinct = int((table.counts > 0).sum())
    if table.total == 0 or distinct >= minimum:
        return None
    ids = table.counts.nonzero().flatten().tolist()
    shown = ", ".join(
        repr(tokenizer.convert_ids_to_tokens(i)) if tokenizer is not None else str(i) for i in ids[:minimum]
    )
    if source:
        return (f"The table {source} counts only {distinct} distinct token id{'s' if distinct != 1 else ''} "
                f"({table.total:,} tokens: {shown}), and PDL weights this run's tokens by it: it was not counted on "
                "this run's training data. Recount it with `pdl-freq --config RECIPE.yaml --output TABLE`, or unset "
                "`pdl_freq_path` to count the training set.")
    return (
        f"Only {distinct} distinct token id{'s are' if distinct != 1 else ' is'} trained ({table.total:,} trained "
        f"tokens: {shown}). The replies or completions may be empty or all alike, or masking / `max_length` may cut "
        "them: check the dataset, `assistant_only_loss` / `completion_only_loss` and `max_length`."
    )


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


def data_fingerprint(dataset) -> str:
    """The prepared dataset's identity for the table's metadata: a hash of its label column, row by row.

    Computed from the labels alone, so the trainer and the host's pdl-freq command, which prepare the same tokens
    through different code paths (other columns, other `map` calls, hence other `datasets` fingerprints), record the
    same value for the same data.
    """
    if not hasattr(dataset, "select_columns") or "labels" not in (getattr(dataset, "column_names", None) or []):
        return getattr(dataset, "_fingerprint", None) or "unavailable"
    digest = hashlib.sha256()
    for batch in dataset.select_columns(["labels"]).with_format("arrow").iter(batch_size=65536):
        labels = batch["labels"].combine_chunks() if hasattr(batch["labels"], "combine_chunks") else batch["labels"]
        digest.update(labels.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
        digest.update(labels.flatten().to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    return digest.hexdigest()[:16]

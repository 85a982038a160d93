"""Counting the trained tokens of a prepared data set: the positions whose label is not -100 and that do not start a
sequence, per vocabulary row, vectorised over Arrow chunks, with TRL's packed rows (`seq_lengths`) honoured; and the
data set's identity (`data_fingerprint`) recorded beside the counts."""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .errors import FrequencyTableError
from .loss import IGNORE_INDEX

if TYPE_CHECKING:
    from .frequency import FrequencyTable

# Fewer distinct trained ids than this is almost surely a data problem (empty replies train `<|im_end|>` alone)
MIN_DISTINCT_TRAINED_IDS = 10


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

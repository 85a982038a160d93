"""A prior from the base model: its expected count of each token over the trained positions of the training set.

``counts[t] = sum over trained positions i of p_base(t | context_i)``: what the model, before finetuning, expects to
see where the finetune trains. Fractional (float64), the whole vocabulary, no unseen token. One no-grad forward per
batch of rows; the softmax is computed at the trained positions only: their hidden states are gathered, then the LM
head's product, the softmax (in float64) and the sum over positions run in chunks of positions (one bounded
`(chunk, vocab)` tile at a time, as `pdl_plugin.ops.linear_cross_entropy` does), summed into a float64 vector.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import PDLConfigError
from ..counting import PACKED_LENGTHS
from ..loss import IGNORE_INDEX
from ..fused_head import pdl_head_unsupported
from ..ops.cross_entropy import _chunk_tokens

SORT_WINDOW = 64  # batches whose rows are sorted by length together, so that little of a batch is padding


def _rows(prepared, read_rows: int = 256) -> Iterator[tuple[list, list, list | None]]:
    """(input ids, labels, packed sequence lengths or None) of each row of a `datasets` data set or a list of dicts."""
    if isinstance(prepared, list):
        yield from ((row["input_ids"], row["labels"], row.get(PACKED_LENGTHS)) for row in prepared)
        return
    columns = getattr(prepared, "column_names", None) or []
    names = ["input_ids", "labels"] + ([PACKED_LENGTHS] if PACKED_LENGTHS in columns else [])
    for batch in prepared.select_columns(names).iter(batch_size=read_rows):
        yield from zip(batch["input_ids"], batch["labels"], batch.get(PACKED_LENGTHS) or [None] * len(batch["labels"]))


def _sequences(rows) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input ids, trained mask of the labels) per sequence of the rows (as `_rows` yields them), in order.

    A packed row (TRL's bfd packing, `seq_lengths`) is split into its sequences: each is its own context, as the
    padding-free collator keeps them. A label is trained when it is not -100 and does not start a sequence, exactly
    as `count_label_array` counts it.
    """
    for ids, labels, packed in rows:
        ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        if len(ids) != len(labels):
            raise PDLConfigError(f"A prepared row has {len(ids)} input ids but {len(labels)} labels: the prepared "
                                 "data set is inconsistent.")
        start = 0
        for length in packed or [len(ids)]:
            trained = labels[start : start + length] != IGNORE_INDEX
            trained[:1] = False  # the first label of a sequence is never predicted
            yield ids[start : start + length], trained
            start += length


def _batches(sequences, batch_size: int, progress) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Batches of sequences with trained positions, of similar lengths (sorted within a window of batches); a
    sequence with none is counted done on `progress` at once."""
    window = []
    for sequence in sequences:
        if sequence[1].any():
            window.append(sequence)
        else:
            progress.update(1)
        if len(window) >= batch_size * SORT_WINDOW:
            yield from _cut(window, batch_size)
            window = []
    yield from _cut(window, batch_size)


def _cut(window, batch_size: int):
    window.sort(key=lambda sequence: len(sequence[0]))
    for start in range(0, len(window), batch_size):
        yield window[start : start + batch_size]


def _padded(batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and which positions predict a trained label (position j - 1 for a
    trained label j)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    keep = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, trained) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.from_numpy(ids)
        attention[row, : len(ids)] = 1
        keep[row, : len(ids) - 1] = torch.from_numpy(trained[1:])
    return input_ids.to(device), attention.to(device), keep.to(device)


def _tile_rows(vocab: int) -> int:
    """Positions per tile: a float64 tile of probabilities takes what a float32 tile of logits does in the CE kernel."""
    return max(8, _chunk_tokens(vocab) // 2)


def _add_probabilities(total: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """total += the sum over rows of softmax(hidden @ weight.T), a bounded tile of positions at a time.

    The softmax runs in float64: float32 softmax kernels trade accuracy for speed (PyTorch's CPU one left rows summing
    to 1 +- 1.5e-5 on SmolLM2), and the tile costs little beside the model's forward."""
    chunk = _tile_rows(weight.shape[0])
    for start in range(0, hidden.shape[0], chunk):
        logits = hidden[start : start + chunk] @ weight.T
        total += torch.softmax(logits, dim=-1, dtype=torch.float64).sum(0)


def _add_logit_probabilities(total: torch.Tensor, logits: torch.Tensor) -> None:
    """The same from logits the model's own head computed (a head with a bias, scaled or soft-capped logits)."""
    chunk = _tile_rows(logits.shape[1])
    for start in range(0, logits.shape[0], chunk):
        total += torch.softmax(logits[start : start + chunk], dim=-1, dtype=torch.float64).sum(0)


def _count_sequences(prepared) -> int | None:
    """How many sequences the rows hold, for the progress bar: the rows, unless some are packed (or unknown)."""
    if isinstance(prepared, list):
        return sum(len(row.get(PACKED_LENGTHS) or [0]) for row in prepared)
    packed = PACKED_LENGTHS in (getattr(prepared, "column_names", None) or [])
    return len(prepared) if hasattr(prepared, "__len__") and not packed else None


@torch.inference_mode()
def model_prior_counts(model, prepared, batch_size: int = 8, desc: str = "Model prior") -> tuple[torch.Tensor, int]:
    """(float64 expected counts per output row, trained positions) of `model` over the prepared rows (a `datasets`
    Dataset or IterableDataset with `input_ids` and `labels`, as TRL's preparation leaves them, or a list of such
    dicts). `batch_size` sequences go through the model at once."""
    weight = model.get_output_embeddings().weight
    vocab, device = weight.shape[0], weight.device
    own_head = pdl_head_unsupported(model) is not None
    total = torch.zeros(vocab, dtype=torch.float64, device=device)
    positions = 0
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=_count_sequences(prepared), desc=desc, unit="seqs") as progress:
            for batch in _batches(_sequences(_rows(prepared)), batch_size, progress):
                top = max(int(ids.max()) for ids, _ in batch)
                if top >= vocab:
                    raise PDLConfigError(f"Token id {top} is outside the model's {vocab} output rows: the data was "
                                         "tokenized with another tokenizer.")
                input_ids, attention, keep = _padded(batch, device)
                if own_head:
                    _add_logit_probabilities(total, model(input_ids=input_ids, attention_mask=attention).logits[keep])
                else:
                    hidden = model.base_model(input_ids=input_ids, attention_mask=attention, use_cache=False)
                    _add_probabilities(total, hidden.last_hidden_state[keep], weight)
                positions += int(keep.sum())
                progress.update(len(batch))
    finally:
        model.train(was_training)
    return total.cpu(), positions


def load_base_model(recipe, device: str | None = None):
    """The recipe's base model as `pdl-eval` loads it (no adapter, the recipe's dtype, float32 for `auto`), on the GPU
    when there is one and the recipe does not ask for the CPU."""
    from transformers import AutoModelForCausalLM

    dtype = recipe.model.dtype if recipe.model.dtype not in (None, "auto") else torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(
        recipe.model.model_name_or_path, dtype=dtype, revision=recipe.model.model_revision,
        trust_remote_code=recipe.training.trust_remote_code, attn_implementation=recipe.model.attn_implementation,
    )
    if device is None:
        device = "cuda" if torch.cuda.is_available() and not recipe.training.use_cpu else "cpu"
    return model.to(device).eval()


def model_prior_table(recipe, tokenizer, shard: tuple[int, int] | None = None):
    """The `model_prior` table of the recipe's training split (or one contiguous shard of it, as `pdl-freq --shard`
    cuts it), prepared exactly as `count_recipe` prepares it for the task table, so both record the same masking and
    data fingerprint. Returns a `CountResult` (table, preparation report, warnings)."""
    from ..counting import data_fingerprint
    from ..frequency import FrequencyTable, tokenizer_fingerprint
    from ..preparation import prepare_with_report
    from ..recipe import CountResult, load_recipe_datasets, model_vocab_rows

    vocab_rows = model_vocab_rows(recipe)
    train_dataset, _ = load_recipe_datasets(recipe)
    if shard is not None:
        train_dataset = train_dataset.shard(num_shards=shard[1], index=shard[0], contiguous=True)
    prepared, masking, report = prepare_with_report(train_dataset, tokenizer, recipe.training)
    model = load_base_model(recipe)
    rows = model.get_output_embeddings().weight.shape[0]
    if rows != vocab_rows:
        raise PDLConfigError(f"The model's output embedding has {rows} rows but its config says {vocab_rows}.")
    counts, positions = model_prior_counts(model, prepared, recipe.training.per_device_eval_batch_size)
    if positions == 0:
        raise PDLConfigError(
            "No token of the training set is trained (every label is -100), so there is no position to take the "
            "model's expectation at: check the completion / assistant turns, `max_length` and the masking settings."
        )
    extra = {"model": str(recipe.model.model_name_or_path), "dtype": str(next(model.parameters()).dtype),
             "trained_positions": str(positions)}
    if shard is not None:
        extra["shard"] = f"{shard[0]}/{shard[1]}"
    table = FrequencyTable(counts, tokenizer_fingerprint(tokenizer), masking, data_fingerprint(prepared), extra=extra,
                           kind="model_prior")
    return CountResult(table, report, [])

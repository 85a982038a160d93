"""What TRL's dataset preparation decides, shared by the trainer and `pdl-freq` so both count the same tokens, and the
report of what truncation cut (the checks of the raw data before it: data_checks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from trl import SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers
from trl.data_utils import get_dataset_column_names

from .data_checks import (check_assistant_turns, check_chat_template, check_dataset_columns,  # noqa: F401
                          explain_template_errors, is_conversational_data, masking_mode)  # (re-exported)
from .errors import PDLConfigError


class ArgsView:
    """`args` with a few attributes replaced, without rebuilding (and re-validating) a TrainingArguments."""

    def __init__(self, args, **overrides) -> None:
        self._args, self._overrides = args, overrides

    def __getattr__(self, name):
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_args"], name)


def _preparer(dataset, tokenizer, args, first=None):
    """The three attributes of an `SFTTrainer` that `_prepare_dataset` reads, set by the rules of TRL's `__init__`."""
    if args.chat_template_path is not None:
        if not str(args.chat_template_path).endswith((".jinja", ".j2")):
            raise PDLConfigError(
                "pdl-freq reads `chat_template_path` only as a .jinja/.j2 file; a template cloned from another "
                "tokenizer changes the model's vocabulary. Count with the trainer instead (leave `pdl_freq_path` "
                "unset) or pass a .jinja file."
            )
        try:
            with open(args.chat_template_path, encoding="utf-8") as handle:
                tokenizer.chat_template = handle.read()
        except (OSError, UnicodeDecodeError) as err:
            raise PDLConfigError(f"Cannot read `chat_template_path` {args.chat_template_path}: {err}.") from None
    if args.eos_token is not None:
        tokenizer.eos_token = args.eos_token
    _check_before_preparing(dataset, tokenizer, args)
    first = next(iter(dataset)) if first is None else first
    needs_template = args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template)
    with explain_template_errors(dataset, tokenizer):
        chat_template = get_training_chat_template(tokenizer) if needs_template else None
    completion_only = (
        "prompt" in first and "completion" in first if args.completion_only_loss is None else args.completion_only_loss
    )
    return SimpleNamespace(_tokenizer=tokenizer, chat_template=chat_template, completion_only_loss=completion_only)


def _check_before_preparing(dataset, tokenizer, args) -> None:
    check_chat_template(tokenizer, dataset)
    if args.assistant_only_loss:
        from datasets import Dataset

        if isinstance(dataset, Dataset):  # a stream is checked only if TRL fails on it (reading it costs)
            check_assistant_turns(dataset)


def prepare_like_sft_trainer(dataset, tokenizer, args, formatting_func=None, name: str = "train"):
    """Tokenize and mask `dataset` exactly as `SFTTrainer.__init__` would, without loading a model.

    Calls TRL's own `_prepare_dataset` with the three attributes it reads, set by the same rules as in TRL's
    `__init__`; a test checks that the result equals the trainer's own prepared dataset. Returns (prepared, masking).
    """
    prepared, masking, _ = prepare_with_report(dataset, tokenizer, args, formatting_func, name, report=False)
    return prepared, masking


def prepare_untruncated(dataset, tokenizer, args, formatting_func=None, name: str = "train"):
    """TRL's preparation up to the `labels` column: tokenized and masked, not yet truncated, filtered, packed or
    shuffled. Passing the result to `SFTTrainer` (or `finish_preparation`) gives exactly the fully prepared dataset:
    TRL sees `input_ids` and `labels` and only truncates, drops fully masked rows, packs and shuffles."""
    preparer = _preparer(dataset, tokenizer, args)
    first_pass = ArgsView(args, max_length=None, shuffle_dataset=False)
    with explain_template_errors(dataset, tokenizer):
        return SFTTrainer._prepare_dataset(preparer, dataset, tokenizer, first_pass, False, formatting_func, name)


def finish_preparation(untruncated, tokenizer, args, name: str = "train", packing: bool | None = None):
    """The rest of TRL's preparation on `prepare_untruncated`'s result: truncation, dropping of rows left with no
    trained token, packing and shuffling, by TRL's own code."""
    preparer = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=None)
    packing = args.packing if packing is None else packing
    return SFTTrainer._prepare_dataset(preparer, untruncated, tokenizer, args, packing, None, name)


def prepare_with_report(dataset, tokenizer, args, formatting_func=None, name: str = "train", report: bool = True):
    """`prepare_like_sft_trainer` that also says what truncation and TRL's filter did to the rows.

    Returns (prepared, masking, PreparationReport or None). The report costs no second tokenization: the dataset is
    prepared in two steps (`prepare_untruncated`, then `finish_preparation`) whose result equals TRL's single pass.
    A streaming dataset is prepared in one pass and gets no report (it would have to be read twice).
    """
    from datasets import Dataset

    columns = get_dataset_column_names(dataset)
    masking = masking_mode(columns, args.assistant_only_loss, args.completion_only_loss)
    if report and isinstance(dataset, Dataset):
        untruncated = prepare_untruncated(dataset, tokenizer, args, formatting_func, name)
        summary = truncation_report(untruncated, args, rows=len(dataset))
        return finish_preparation(untruncated, tokenizer, args, name), masking, summary
    preparer = _preparer(dataset, tokenizer, args)
    with explain_template_errors(dataset, tokenizer):
        prepared = SFTTrainer._prepare_dataset(preparer, dataset, tokenizer, args, args.packing, formatting_func, name)
    return prepared, masking, None


# ---- what preparation drops ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparationReport:
    """What TRL's preparation did to the rows of a dataset, beyond tokenizing and masking them.

    A row "trains" a token where its label is not -100 (TRL's own criterion for dropping a row).
    """

    rows: int  # rows given to preparation
    rows_without_trained_tokens: int  # rows with no trained token at all, before any truncation
    rows_emptied_by_truncation: int  # rows that had trained tokens, all cut by `max_length`
    rows_cut: int  # rows that kept some trained tokens but lost others to `max_length`
    trained_tokens: int  # trained tokens before truncation, over all rows
    trained_tokens_cut: int  # of which cut by `max_length`
    max_length: int | None
    truncation: str  # 'keep_start', 'keep_end' (TRL's truncation), 'packing' (bfd keeps the start) or 'none'
    drops_rows: bool  # TRL drops the rows left with no trained token (it does when it truncates, not when packing)

    @property
    def rows_dropped(self) -> int:
        return self.rows_without_trained_tokens + self.rows_emptied_by_truncation if self.drops_rows else 0

    @property
    def has_losses(self) -> bool:
        return bool(self.rows_without_trained_tokens or self.rows_emptied_by_truncation or self.rows_cut)

    def lines(self) -> list[str]:
        """Sentences for a summary: empty when preparation lost nothing."""
        lines = []
        fate = "dropped by TRL" if self.drops_rows else "kept, but they train nothing"
        if self.rows_without_trained_tokens:
            lines.append(
                f"{_rows(self.rows_without_trained_tokens)} of {self.rows:,} have no trained token at all (no "
                f"completion / assistant tokens after masking): {fate}."
            )
        if self.rows_emptied_by_truncation:
            lines.append(
                f"{_rows(self.rows_emptied_by_truncation)} lost every trained token to max_length {self.max_length} "
                f"({self.truncation}): {fate}."
            )
        if self.rows_cut:
            lines.append(
                f"{_rows(self.rows_cut)} lost part of their trained tokens to max_length {self.max_length} "
                f"({self.truncation}), often the end of a reply and its end-of-turn token."
            )
        if self.trained_tokens_cut:
            lines.append(
                f"In all {self.trained_tokens_cut:,} of {self.trained_tokens:,} trained tokens were cut: raise "
                "`max_length`, or shorten the prompts, to keep them."
            )
        return lines

    def summary(self) -> str | None:
        """One paragraph for a log or a console, or None when nothing was lost."""
        return " ".join(self.lines()) or None


def _rows(count: int) -> str:
    return f"{count:,} row{'s' if count != 1 else ''}"


def truncation_report(untruncated, args, rows: int | None = None, packing: bool | None = None) -> PreparationReport:
    """The `PreparationReport` of a dataset as `prepare_untruncated` leaves it (with a `labels` column), for the
    `max_length`, `truncation_mode`, `packing` and `packing_strategy` of `args`. Vectorised over the Arrow labels."""
    packing = args.packing if packing is None else packing
    max_length = args.max_length
    if packing:
        mode = "packing" if (args.packing_strategy == "bfd" and max_length is not None) else "none"
        drops = False
    else:
        mode = args.truncation_mode if max_length is not None else "none"
        drops = max_length is not None
    totals = np.zeros(5, dtype=np.int64)  # without, emptied, cut, trained, trained_cut
    for batch in untruncated.select_columns(["labels"]).with_format("arrow").iter(batch_size=65536):
        totals += _truncation_counts(batch["labels"], max_length if mode != "none" else None, mode)
    without, emptied, cut, trained, trained_cut = (int(value) for value in totals)
    return PreparationReport(
        rows=len(untruncated) if rows is None else rows,
        rows_without_trained_tokens=without,
        rows_emptied_by_truncation=emptied,
        rows_cut=cut,
        trained_tokens=trained,
        trained_tokens_cut=trained_cut,
        max_length=max_length,
        truncation=mode,
        drops_rows=drops,
    )


def _truncation_counts(labels, max_length: int | None, mode: str) -> np.ndarray:
    if isinstance(labels, pa.ChunkedArray):
        return sum((_truncation_counts(chunk, max_length, mode) for chunk in labels.chunks), np.zeros(5, np.int64))
    rows = len(labels)
    lengths = labels.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
    parents = np.repeat(np.arange(rows), lengths)
    position = np.arange(values.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    trained = values != -100
    per_row = np.bincount(parents[trained], minlength=rows)
    if max_length is None:
        kept_per_row = per_row
    else:
        if mode == "keep_end":
            kept = position >= np.repeat(lengths, lengths) - max_length
        else:  # keep_start, and bfd packing (which truncates long sequences at the end)
            kept = position < max_length
        kept_per_row = np.bincount(parents[trained & kept], minlength=rows)
    without = int((per_row == 0).sum())
    emptied = int(((per_row > 0) & (kept_per_row == 0)).sum())
    cut = int(((kept_per_row > 0) & (kept_per_row < per_row)).sum())
    return np.array([without, emptied, cut, int(per_row.sum()), int((per_row - kept_per_row).sum())], dtype=np.int64)


def preparation_report(dataset, tokenizer, args, formatting_func=None, name: str = "train") -> PreparationReport | None:
    """The `PreparationReport` of a raw training dataset, for a trainer that prepared it by other means.

    Costs one more tokenization of the dataset (TRL's, without truncation). Cheaper for a trainer: prepare with
    `prepare_untruncated`, call `truncation_report` on it and hand that dataset to `SFTTrainer`, which then only
    truncates, filters, packs and shuffles. None for a streaming dataset.
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        return None
    untruncated = prepare_untruncated(dataset, tokenizer, args, formatting_func, name)
    return truncation_report(untruncated, args, rows=len(dataset))

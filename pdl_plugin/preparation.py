"""What TRL's dataset preparation decides, shared by the trainer and `pdl-freq` so both count the same tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from trl import SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers
from trl.data_utils import get_dataset_column_names

from .errors import PDLConfigError, PDLDataError

_TEMPLATE_FIX = (
    "Use a chat template whose assistant turns are wrapped in {% generation %}...{% endgeneration %} (content and "
    "end-of-turn token), e.g. set `chat_template_path: path/to/template.jinja` in the recipe, or set "
    "`assistant_only_loss: false` to train (and count) every token."
)


def masking_mode(raw_columns: list[str], assistant_only_loss: bool, completion_only_loss: bool | None) -> str:
    """Which tokens are trained, in words stored in the table: 'assistant_only', 'completion_only' or 'all_tokens'."""
    if assistant_only_loss:
        return "assistant_only"
    is_prompt_completion = "prompt" in raw_columns and "completion" in raw_columns
    if is_prompt_completion and completion_only_loss is not False:
        return "completion_only"
    return "all_tokens"


def check_dataset_columns(columns: list[str], dataset_text_field: str, name: str = "training") -> None:
    """Refuse, before any work, a dataset whose columns fit none of the formats TRL's SFT preparation reads."""
    known = {"input_ids", "messages", "conversations", dataset_text_field, "image", "images"}
    if known & set(columns) or {"prompt", "completion"} <= set(columns):
        return
    if "prompt" in columns or "completion" in columns:
        missing = "completion" if "prompt" in columns else "prompt"
        raise PDLConfigError(
            f"The {name} dataset has a `{'prompt' if missing == 'completion' else 'completion'}` column but no "
            f"`{missing}` column (columns: {columns}). Prompt/completion data needs both; rename the columns with "
            "`dataset.rename_column(...)` or prepare the data in that format."
        )
    raise PDLConfigError(
        f"The {name} dataset's columns {columns} fit no format the SFT trainer reads: `messages` (conversational: "
        f"dialogue), `prompt` + `completion` (e.g. summarization, code), or `{dataset_text_field}` (plain text, see "
        "`dataset_text_field`). Rename the columns, or point `dataset_text_field` at the text column."
    )


_CONVERSATION_COLUMNS = ("messages", "conversations")
_NO_TEMPLATE_FIX = (
    "Set `chat_template_path: path/to/template.jinja` in the recipe, use a chat (-Instruct) model whose tokenizer has "
    "a template, or give the data as `prompt`/`completion` strings or a `text` column instead of messages."
)


def is_conversational_data(dataset) -> bool:
    """True when TRL will render the rows with the tokenizer's chat template (lists of role/content messages)."""
    from trl.data_utils import is_conversational, is_conversational_from_value

    try:
        first = next(iter(dataset))
    except (StopIteration, TypeError):
        return False
    return bool(is_conversational(first) or is_conversational_from_value(first))


def check_chat_template(tokenizer, dataset, model_name: str | None = None) -> None:
    """Refuse, before preparation, conversational data with a tokenizer that has no chat template.

    Without this, TRL fails deep in its tokenization with `TypeError: expected string or bytes-like object, got
    'NoneType'` (assistant-only loss) or transformers' `ValueError: Cannot use chat template functions...`.
    """
    if getattr(tokenizer, "chat_template", None) is None and is_conversational_data(dataset):
        name = f" of {model_name}" if model_name else ""
        raise PDLConfigError(
            f"The tokenizer{name} has no chat template, but the training data is conversational (lists of "
            f"role/content messages), which needs one to become text. {_NO_TEMPLATE_FIX}"
        )


def _assistant_flags(messages: pa.Array) -> np.ndarray:
    """For a chunk of message lists: whether each row has at least one message whose role is `assistant`."""
    if isinstance(messages, pa.ChunkedArray):
        parts = [_assistant_flags(chunk) for chunk in messages.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    rows = len(messages)
    if not pa.types.is_list(messages.type) and not pa.types.is_large_list(messages.type):
        return np.ones(rows, dtype=bool)
    items = pc.list_flatten(messages)
    if not pa.types.is_struct(items.type):
        return np.ones(rows, dtype=bool)
    field = next((name for name in ("role", "from") if items.type.get_field_index(name) >= 0), None)
    if field is None:
        return np.ones(rows, dtype=bool)
    is_assistant = pc.fill_null(pc.equal(pc.struct_field(items, field), "assistant"), False)
    parents = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
    hits = parents[is_assistant.to_numpy(zero_copy_only=False)]
    return np.bincount(hits, minlength=rows)[:rows] > 0


def rows_without_assistant_turn(dataset, limit: int = 5) -> tuple[int, list[int]]:
    """How many conversations of `dataset` have no `assistant` message, and the indices of the first `limit`.

    Vectorised over the Arrow column of an in-memory `Dataset`; an `IterableDataset` is read row by row and only
    until `limit` such rows are found (the count is then a lower bound). Data that is not conversational: (0, []).
    """
    from datasets import Dataset

    columns = get_dataset_column_names(dataset) or []
    column = next((name for name in _CONVERSATION_COLUMNS if name in columns), None)
    if column is None:
        return 0, []
    if isinstance(dataset, Dataset):
        missing, first, offset = 0, [], 0
        for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=65536):
            flags = _assistant_flags(batch[column])
            rows = np.flatnonzero(~flags)
            missing += int(rows.size)
            first.extend(int(offset + row) for row in rows[: max(limit - len(first), 0)])
            offset += len(flags)
        return missing, first
    first = []
    for index, row in enumerate(dataset):
        roles = [message.get("role", message.get("from")) for message in row.get(column) or []]
        if "assistant" not in roles:
            first.append(index)
            if len(first) >= limit:
                break
    return len(first), first


def check_assistant_turns(dataset, name: str = "training") -> None:
    """Refuse, with assistant-only loss, conversations that have no assistant turn: they have nothing to train."""
    missing, first = rows_without_assistant_turn(dataset)
    if missing:
        raise PDLDataError(
            f"`assistant_only_loss: true` trains only the assistant turns, but {missing:,} conversation"
            f"{'s' if missing != 1 else ''} of the {name} dataset {'have' if missing != 1 else 'has'} no assistant "
            f"message (role `assistant`; rows {', '.join(map(str, first))}{', ...' if missing > len(first) else ''}). "
            "Remove or fix those rows (e.g. `dataset.filter(...)`), or set `assistant_only_loss: false` to train "
            "every token."
        )


@contextlib.contextmanager
def explain_template_errors(dataset=None, tokenizer=None) -> Iterator[None]:
    """Turn TRL's errors about chat templates and assistant masks into one message that blames the right thing.

    Pass the raw `dataset` and the `tokenizer` when available: TRL says "at least one example has no assistant
    tokens" both for a template that does not mark assistant tokens and for a conversation with no assistant turn;
    with the dataset at hand, a conversation without an assistant message is named as the cause.
    """
    try:
        yield
    except PDLConfigError:
        raise
    except TypeError as err:
        text = str(err)
        no_template = tokenizer is not None and getattr(tokenizer, "chat_template", None) is None
        if no_template or "expected string or bytes-like object, got 'NoneType'" in text:
            raise PDLConfigError(
                "The tokenizer has no chat template, so the conversational training data cannot be rendered "
                f"(TRL: {text.splitlines()[0] if text else type(err).__name__}). {_NO_TEMPLATE_FIX}"
            ) from None
        raise
    except (ValueError, RuntimeError) as err:
        text = str(err)
        if "chat_template is not set" in text or "no chat template" in text.lower():
            raise PDLConfigError(
                "The tokenizer has no chat template, so the conversational training data cannot be rendered "
                f"(transformers: {text.splitlines()[0]}). {_NO_TEMPLATE_FIX}"
            ) from None
        if "has no assistant tokens" in text:
            if dataset is not None:
                check_assistant_turns(dataset)  # raises when a conversation has no assistant message
                raise PDLConfigError(
                    "`assistant_only_loss: true` needs a chat template that marks the assistant tokens, and this "
                    f"tokenizer's template does not mark them although every conversation has an assistant message "
                    f"(TRL: {text.splitlines()[0]}). {_TEMPLATE_FIX}"
                ) from None
            raise PDLConfigError(
                "`assistant_only_loss: true`, but at least one example has no assistant tokens: either a conversation "
                "has no assistant message (remove or fix those rows, e.g. with `dataset.filter(...)`), or the chat "
                f"template does not mark assistant tokens with {{% generation %}} (TRL: {text.splitlines()[0]}). "
                f"{_TEMPLATE_FIX}"
            ) from None
        if "not training-compatible" in text:
            raise PDLConfigError(
                "`assistant_only_loss: true` needs a chat template that marks the assistant tokens, and this "
                f"tokenizer's template does not (TRL: {text.splitlines()[0]}). {_TEMPLATE_FIX}"
            ) from None
        raise


# ---- preparation -----------------------------------------------------------------------------------------------------


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

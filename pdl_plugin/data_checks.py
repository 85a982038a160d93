"""Checks of a training data set before TRL prepares it: its columns, its masking mode, the chat template's
assistant markers, conversations without an assistant turn, and TRL's template errors turned into one message that
blames the right thing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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

"""What TRL's dataset preparation decides, shared by the trainer and `pdl-freq` so both count the same tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

from trl import SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers
from trl.data_utils import get_dataset_column_names

from .errors import PDLConfigError

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


@contextlib.contextmanager
def explain_template_errors() -> Iterator[None]:
    """Turn TRL's errors about chat templates that cannot mark assistant tokens into one message with the fix."""
    try:
        yield
    except (ValueError, RuntimeError) as err:
        text = str(err)
        if "not training-compatible" in text or "has no assistant tokens" in text:
            raise PDLConfigError(
                "`assistant_only_loss: true` needs a chat template that marks the assistant tokens, and this "
                f"tokenizer's template does not (TRL: {text.splitlines()[0]}). {_TEMPLATE_FIX}"
            ) from None
        raise


def prepare_like_sft_trainer(dataset, tokenizer, args, formatting_func=None, name: str = "train"):
    """Tokenize and mask `dataset` exactly as `SFTTrainer.__init__` would, without loading a model.

    Calls TRL's own `_prepare_dataset` with the three attributes it reads, set by the same rules as in TRL's
    `__init__`; a test checks that the result equals the trainer's own prepared dataset.
    """
    if args.chat_template_path is not None:
        if not str(args.chat_template_path).endswith((".jinja", ".j2")):
            raise PDLConfigError(
                "pdl-freq reads `chat_template_path` only as a .jinja/.j2 file; a template cloned from another "
                "tokenizer changes the model's vocabulary. Count with the trainer instead (leave `pdl_freq_path` "
                "unset) or pass a .jinja file."
            )
        with open(args.chat_template_path, encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()
    if args.eos_token is not None:
        tokenizer.eos_token = args.eos_token
    first = next(iter(dataset))
    needs_template = args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template)
    with explain_template_errors():
        chat_template = get_training_chat_template(tokenizer) if needs_template else None
        columns = get_dataset_column_names(dataset)
        completion_only = (
            "prompt" in first and "completion" in first
            if args.completion_only_loss is None
            else args.completion_only_loss
        )
        preparer = SimpleNamespace(_tokenizer=tokenizer, chat_template=chat_template, completion_only_loss=completion_only)
        prepared = SFTTrainer._prepare_dataset(preparer, dataset, tokenizer, args, args.packing, formatting_func, name)
    return prepared, masking_mode(columns, args.assistant_only_loss, args.completion_only_loss)

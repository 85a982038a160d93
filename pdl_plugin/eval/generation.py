"""Validation prompts and batched, seeded generation (greedy or sampled) with a progress bar.

The prompt a model is evaluated on is, token for token, the context it was trained to continue: the prompt ids are
taken from TRL's own preparation of the row (the part before the trained completion / last assistant turn), not from
tokenizing the prompt text again. The two differ when the prompt's last tokens merge with the completion's first ones
(a prompt ending in a newline before an indented body, TRL's "prompt is not a prefix" warning): training then never
saw the prompt's last token, and a generation fed the full prompt starts by repeating it (a blank line).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import PDLConfigError

# Where a function-completion generation ends: the next top-level statement (HumanEval's stop sequences)
CODE_STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass
class Example:
    """One validation prompt as the model sees it, and the reference the generation is scored against."""

    prompt: str  # text fed to the tokenizer (chat template applied for conversational data)
    reference: str
    chat: bool  # whether `prompt` is a rendered chat template (so special tokens are already in the text)
    source_prompt: str = ""  # the prompt before templating (code: signature + docstring, parsed with the body)
    test: str | None = None  # Python tests for pass@1, when the dataset ships a `test` column
    entry_point: str | None = None  # the function `check(candidate)` tests are called on (`entry_point` column)
    prompt_ids: list[int] | None = None  # the ids generation starts from: the trained context of the reference
    prompt_cut: str = ""  # end of the prompt text that training left out (merged into the completion's first token)

    @property
    def trained_source_prompt(self) -> str:
        """`source_prompt` without the part training left out: prepend it to a generation to get the program."""
        if self.prompt_cut and self.source_prompt.endswith(self.prompt_cut):
            return self.source_prompt[: len(self.source_prompt) - len(self.prompt_cut)]
        return self.source_prompt


@dataclass
class Generation:
    text: str
    token_ids: list[int] = field(default_factory=list)  # generated ids, end-of-turn/eos and padding removed
    hit_limit: bool = False  # stopped by max_new_tokens, not by an end token or a stop sequence


def _last_assistant(messages) -> int | None:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    return None if last is None or last == 0 else last  # nothing to answer, or nothing to answer it from


def validation_examples(dataset, tokenizer, max_prompts: int | None = None, args=None) -> list[Example]:
    """The first `max_prompts` rows of a validation split as prompts and references.

    Conversational rows (`messages`): the prompt is every turn before the last assistant turn (with the generation
    prompt), the reference is that last assistant turn. Prompt/completion rows: the prompt and the completion. The
    prompt ids are the trained context of the reference in TRL's preparation of the row with the training settings
    `args` (an `SFTConfig`; default: TRL's defaults), see `training_prompt_ids`.
    """
    from ..recipe_data import first_rows

    columns = set(dataset.column_names)
    rows = first_rows(dataset, max_prompts) if max_prompts else dataset
    if "messages" in columns:
        keep = [i for i, row in enumerate(rows) if _last_assistant(row["messages"]) is not None]
        rows = rows.select(keep) if len(keep) < len(rows) else rows
    elif not {"prompt", "completion"} <= columns:
        raise PDLConfigError(
            f"pdl-eval needs a validation split with `messages` or `prompt`/`completion` columns; this one has "
            f"{sorted(columns)}."
        )
    if len(rows) == 0:
        raise PDLConfigError("The validation split yields no prompt to generate from (no assistant turn to answer).")
    examples = []
    for row in rows:
        test, entry_point = row.get("test"), row.get("entry_point")
        if "messages" in columns:
            messages = row["messages"]
            last = _last_assistant(messages)
            prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
            examples.append(Example(prompt, messages[last]["content"], True, messages[last - 1]["content"], test,
                                    entry_point))
        else:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):
                text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                reference = completion[-1]["content"] if isinstance(completion, list) else str(completion)
                examples.append(Example(text, reference, True, prompt[-1]["content"], test, entry_point))
            else:
                examples.append(Example(prompt, completion, False, prompt, test, entry_point))
    for example, ids in zip(examples, training_prompt_ids(rows, tokenizer, args)):
        example.prompt_ids = ids
        if not example.chat:
            example.prompt_cut = _left_out(tokenizer, example.source_prompt, ids)
    return examples


def default_training_args():
    """TRL's default SFT settings (the preparation rules of a recipe that sets none of them)."""
    from trl import SFTConfig

    return SFTConfig(output_dir="pdl-eval-unused", bf16=False, use_cpu=True, report_to=[])


def preparation_args(args, **overrides):
    """`args` as the evaluation prepares rows with it: no packing, no shuffling, in this process."""
    from ..preparation import ArgsView

    return ArgsView(args if args is not None else default_training_args(), packing=False, shuffle_dataset=False,
                    dataset_num_proc=None, **overrides)


def training_prompt_ids(rows, tokenizer, args=None) -> list[list[int]]:
    """For each row, the token ids training put before the reference, from TRL's own preparation of the row.

    Prompt/completion rows: the prepared sequence up to where the completion starts (TRL's `completion_mask`, or the
    first trained label). Conversations: up to the start of the last trained run (the last assistant turn, with
    assistant-only loss); when every token is trained, up to where the rendered prompt (with the generation prompt)
    and the prepared conversation diverge, the rule TRL applies to conversational prompt/completion rows.
    """
    from trl.data_utils import common_prefix_length

    from ..preparation import prepare_like_sft_trainer

    view = preparation_args(args, max_length=None)  # the whole prompt, as the row was before truncation
    prepared, _ = prepare_like_sft_trainer(rows, tokenizer, view, name="validation")
    if len(prepared) != len(rows):
        raise PDLConfigError(f"Preparing {len(rows)} validation rows gave {len(prepared)}; cannot align prompts.")
    columns = set(prepared.column_names)
    result = []
    for raw, row in zip(rows, prepared):
        input_ids, labels = list(row["input_ids"]), list(row["labels"])
        trained = [i for i, label in enumerate(labels) if label != -100]
        if "completion_mask" in columns:  # prompt/completion with completion_only_loss off: the mask is kept
            start = next((i for i, bit in enumerate(row["completion_mask"]) if bit), len(input_ids))
        elif "prompt" in raw and trained:
            start = trained[0]
        elif "messages" in raw and trained and len(trained) < len(input_ids):
            positions, start = set(trained), trained[-1]
            while start - 1 in positions:  # back to the start of the last trained run
                start -= 1
        else:  # every token trained: where the prompt rendered alone diverges from the conversation
            messages = raw["messages"] if "messages" in raw else raw["prompt"]
            last = _last_assistant(messages) if "messages" in raw else len(messages)
            alone = tokenizer.apply_chat_template(messages[:last], tokenize=True, add_generation_prompt=True,
                                                  return_dict=True)["input_ids"]
            start = common_prefix_length(list(alone), input_ids)
        result.append(input_ids[:start])
    return result


def _left_out(tokenizer, prompt: str, ids: list[int]) -> str:
    """The end of `prompt` the ids do not cover (e.g. its final newline), or '' when they cover it all."""
    covered = tokenizer.decode(ids, skip_special_tokens=True)
    return prompt[len(covered):] if prompt.startswith(covered) else ""


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Ids that end a generation: the tokenizer's eos, the model's eos and ChatML's `<|im_end|>` when present."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None:
        ids.add(int(im_end))
    return sorted(ids)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    examples: list[Example],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
    stop_sequences: tuple[str, ...] | list[str] | None = None,
    desc: str = "Generating",
) -> list[Generation]:
    """Generate one continuation per example, in batches of similar prompt length, left-padded.

    Each example starts from its `prompt_ids` (the trained context; the tokenized `prompt` text when unset). A
    generation ends at an end token, or at the first of `stop_sequences` in its text (the text is cut before it, the
    token ids after the last token that starts before it), or after `max_new_tokens` (`hit_limit`).
    Sampling is seeded per batch (`seed * 100_003 + batch index`), so a rerun with the same settings, prompts and
    batch size gives the same texts. Prompts longer than `max_prompt_tokens` keep their last tokens.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise PDLConfigError("max_new_tokens and batch_size must be >= 1.")
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    stop_sequences = tuple(stop_sequences or ())
    encoded = [list(e.prompt_ids) if e.prompt_ids is not None
               else tokenizer(e.prompt, add_special_tokens=not e.chat)["input_ids"] for e in examples]
    if any(not ids for ids in encoded):
        raise PDLConfigError("A validation prompt is empty after tokenization: there is nothing to generate from.")
    if max_prompt_tokens:
        encoded = [ids[-max_prompt_tokens:] for ids in encoded]
    order = sorted(range(len(examples)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for index, batch in enumerate(tqdm(batches, desc=desc, unit="batch")):
            input_ids, attention = _left_padded([encoded[i] for i in batch], pad_id)
            width = input_ids.shape[1]
            options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stops, pad_token_id=pad_id,
                           **(dict(temperature=temperature, top_p=top_p, top_k=0) if do_sample
                              else dict(temperature=None, top_p=None, top_k=None)))
            if stop_sequences:
                from transformers import StoppingCriteriaList

                options["stopping_criteria"] = StoppingCriteriaList(
                    [_StopSequences(tokenizer, stop_sequences, width, stops)])
            if do_sample:
                torch.manual_seed(seed * 100_003 + index)
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **options)
            for row, i in enumerate(batch):
                results[i] = _generation_of(tokenizer, output[row, width:].tolist(), stops, stop_sequences)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows as one left-padded batch of input ids, and its attention mask."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return input_ids, attention


def _generation_of(tokenizer, new: list[int], stops, stop_sequences) -> Generation:
    """One continuation's kept tokens and text: up to its first end token, cut before its first stop sequence."""
    ended = next((k for k, token in enumerate(new) if token in stops), None)
    kept = new if ended is None else new[:ended]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    cut = first_stop(text, stop_sequences)
    if cut is not None:
        text, kept = text[:cut], _tokens_before(tokenizer, kept, cut)
    return Generation(text, kept, ended is None and cut is None)


def first_stop(text: str, stop_sequences) -> int | None:
    """Index of the first occurrence of any stop sequence in `text`, or None."""
    found = [index for index in (text.find(stop) for stop in stop_sequences) if index >= 0]
    return min(found) if found else None


def _tokens_before(tokenizer, ids: list[int], cut: int) -> list[int]:
    """The shortest prefix of `ids` whose text reaches `cut` characters (the tokens that start before the cut)."""
    for k in range(len(ids) + 1):
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= cut:
            return ids[:k]
    return ids


class _StopSequences:
    """A stopping criterion: per row, done once the generated text (after `width` prompt columns) holds a stop
    sequence or an end token (so a finished row does not keep the batch going)."""

    def __init__(self, tokenizer, stop_sequences, width: int, end_ids) -> None:
        self.tokenizer, self.stop_sequences, self.width, self.end_ids = tokenizer, stop_sequences, width, set(end_ids)

    def __call__(self, input_ids, scores=None, **kwargs):
        done = []
        for row in input_ids[:, self.width:].tolist():
            ended = next((k for k, token in enumerate(row) if token in self.end_ids), None)
            text = self.tokenizer.decode(row if ended is None else row[:ended], skip_special_tokens=True)
            done.append(ended is not None or first_stop(text, self.stop_sequences) is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

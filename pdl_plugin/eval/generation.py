"""Validation prompts and batched, seeded generation (greedy or sampled) with a progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import PDLConfigError


@dataclass
class Example:
    """One validation prompt as the model sees it, and the reference the generation is scored against."""

    prompt: str  # text fed to the tokenizer (chat template applied for conversational data)
    reference: str
    chat: bool  # whether `prompt` is a rendered chat template (so special tokens are already in the text)
    source_prompt: str = ""  # the prompt before templating (code: signature + docstring, parsed with the body)
    test: str | None = None  # Python tests for pass@1, when the dataset ships a `test` column


@dataclass
class Generation:
    text: str
    token_ids: list[int] = field(default_factory=list)  # generated ids, end-of-turn/eos and padding removed
    hit_limit: bool = False  # stopped by max_new_tokens, not by an end token


def validation_examples(dataset, tokenizer, max_prompts: int | None = None) -> list[Example]:
    """The first `max_prompts` rows of a validation split as prompts and references.

    Conversational rows (`messages`): the prompt is every turn before the last assistant turn, rendered with the chat
    template and `add_generation_prompt=True`; the reference is that last assistant turn. Prompt/completion rows: the
    raw prompt (or the chat template, when the prompt is a list of messages) and the completion.
    """
    columns = set(dataset.column_names)
    rows = dataset.select(range(min(len(dataset), max_prompts))) if max_prompts else dataset
    examples = []
    for row in rows:
        if "messages" in columns:
            messages = row["messages"]
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None or last == 0:
                continue  # nothing to answer, or nothing to answer it from
            prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
            examples.append(Example(prompt, messages[last]["content"], True, messages[last - 1]["content"]))
        elif {"prompt", "completion"} <= columns:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):
                text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                reference = completion[-1]["content"] if isinstance(completion, list) else str(completion)
                examples.append(Example(text, reference, True, prompt[-1]["content"], row.get("test")))
            else:
                examples.append(Example(prompt, completion, False, prompt, row.get("test")))
        else:
            raise PDLConfigError(
                f"pdl-eval needs a validation split with `messages` or `prompt`/`completion` columns; this one has "
                f"{sorted(columns)}."
            )
    if not examples:
        raise PDLConfigError("The validation split yields no prompt to generate from (no assistant turn to answer).")
    return examples


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
    desc: str = "Generating",
) -> list[Generation]:
    """Generate one continuation per example, in batches of similar prompt length, left-padded.

    Sampling is seeded per batch (`seed * 100_003 + batch index`), so a rerun with the same settings, prompts and
    batch size gives the same texts. Prompts longer than `max_prompt_tokens` keep their last tokens.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise PDLConfigError("max_new_tokens and batch_size must be >= 1.")
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    encoded = [tokenizer(e.prompt, add_special_tokens=not e.chat)["input_ids"] for e in examples]
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
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stops,
                           pad_token_id=pad_id)
            if do_sample:
                torch.manual_seed(seed * 100_003 + index)
                options.update(temperature=temperature, top_p=top_p, top_k=0)
            else:
                options.update(temperature=None, top_p=None, top_k=None)
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **options)
            for row, i in enumerate(batch):
                new = output[row, width:].tolist()
                ended = next((k for k, token in enumerate(new) if token in stops), None)
                kept = new if ended is None else new[:ended]
                results[i] = Generation(tokenizer.decode(kept, skip_special_tokens=True), kept, ended is None)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]

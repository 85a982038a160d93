"""`plugins: [pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin]`: the offline demo's model and data.

Resolves `embedded:SmolLM2-135M-Instruct` (base_model) and `embedded:dialogue` / `embedded:code` /
`embedded:summarization` (dataset paths) to local files, so the offline recipes run with no hub. Kept apart from the
PDL loss plugin, whose job is the loss alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from ...data.cache import EmbeddedResourceError, cache_dir
from ...data.embedded_model import EMBEDDED_PREFIX, resolve_embedded_model
from ...data.registry import resolve_embedded_dataset


class EmbeddedResourcesPlugin(BasePlugin):
    """Turns `embedded:` model and dataset names into local paths before Axolotl validates the config."""

    def register(self, cfg) -> None:
        resolve_embedded_resources(cfg)


def resolve_embedded_resources(cfg) -> None:
    """Turn `embedded:` model and dataset names in a raw Axolotl config into local paths (in place)."""
    for key in ("base_model", "base_model_config", "tokenizer_config"):
        value = cfg.get(key)
        if isinstance(value, str) and value.startswith(EMBEDDED_PREFIX):
            cfg[key] = resolve_embedded_model(value)
    for key, default_split in (("datasets", "train"), ("test_datasets", "validation")):
        for dataset in cfg.get(key) or []:
            path = dataset.get("path") if hasattr(dataset, "get") else None
            if isinstance(path, str) and path.startswith(EMBEDDED_PREFIX):
                dataset["path"] = str(embedded_dataset_jsonl(path, dataset.get("split") or default_split))
                dataset["ds_type"] = "json"
                dataset["split"] = "train"  # a JSON-lines file loads as one `train` split


def embedded_dataset_jsonl(name: str, split: str) -> Path:
    """Write one split of an embedded dataset as JSON lines in the cache (once) and return the file."""
    splits = resolve_embedded_dataset(name)
    if split not in splits:
        raise EmbeddedResourceError(f"The embedded dataset {name} has no split {split!r} (it has {list(splits)}).")
    rows = splits[split]
    bare = name.removeprefix(EMBEDDED_PREFIX)
    target = cache_dir("axolotl", bare, f"{split}-{rows._fingerprint}.jsonl")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            rows.to_json(tmp, lines=True, force_ascii=False)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target

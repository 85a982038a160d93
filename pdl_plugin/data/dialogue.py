"""Real chat data with no hub: the English ChatterBot corpus (BSD) from PyPI.

Conversational format (`messages`), so TRL applies the chat template and, with
`assistant_only_loss=True`, trains only on the assistant replies.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import yaml
from datasets import DatasetDict

from .cache import EmbeddedResourceError, cached_splits

_INSTALL_HINT = "pip install --no-deps chatterbot-corpus==1.3.3"
# Bump when the records built from the same files change.
_FORMAT_VERSION = 1


def load_dialogue(validation_fraction: float = 0.1, max_records: int | None = None) -> DatasetDict:
    """Return `train`/`validation` splits of user/assistant conversations (column `messages`).

    Statements of a ChatterBot conversation alternate user/assistant; a trailing user turn
    is dropped. Duplicate conversations are kept once; conversations opening with the same
    question share a split. `max_records` caps each split.
    """
    files = _corpus_files()
    digest = hashlib.sha1(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()
    return cached_splits(
        "dialogue",
        {"format": _FORMAT_VERSION, "corpus_sha1": digest},
        lambda: _build(files),
        lambda record: record["messages"][0]["content"],
        validation_fraction,
        max_records,
    )


def conversation_to_messages(statements: list[Any]) -> list[dict[str, str]]:
    """Turn a ChatterBot statement list into alternating user/assistant messages."""
    texts = [s.strip() for s in statements if isinstance(s, str) and s.strip()]
    if len(texts) % 2:
        texts.pop()
    return [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(texts)]


def _corpus_files() -> list[Path]:
    """The English YAML files, located without importing `chatterbot_corpus`."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    locations = spec.submodule_search_locations if spec else None
    files = sorted((Path(locations[0]) / "data" / "english").glob("*.yml")) if locations else []
    if not files:
        raise EmbeddedResourceError(
            "The embedded dialogue data set needs the English ChatterBot corpus "
            f"(package `chatterbot-corpus`), which was not found; install it with `{_INSTALL_HINT}`."
        )
    return files


def _build(files: list[Path]) -> list[dict[str, Any]]:
    records, seen = [], set()
    for path in files:
        for statements in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            messages = conversation_to_messages(statements if isinstance(statements, list) else [])
            key = tuple(" ".join(m["content"].lower().split()) for m in messages)
            if messages and key not in seen:
                seen.add(key)
                records.append({"messages": messages})
    return records

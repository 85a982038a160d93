"""Built-in data sets, addressed as `embedded:<name>` wherever a hub data set name fits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import DatasetDict

from .cache import EmbeddedResourceError
from .code import load_code
from .dialogue import load_dialogue
from .embedded_model import EMBEDDED_PREFIX
from .summarization import load_summarization

EMBEDDED_DATASETS: dict[str, Callable[..., DatasetDict]] = {
    "dialogue": load_dialogue,
    "summarization": load_summarization,
    "code": load_code,
}


def resolve_embedded_dataset(name: str, **options: Any) -> DatasetDict:
    """Load an embedded data set by name (`code` or `embedded:code`); `options` go to its loader."""
    loader = EMBEDDED_DATASETS.get(name.removeprefix(EMBEDDED_PREFIX))
    if loader is None:
        known = ", ".join(f"{EMBEDDED_PREFIX}{k}" for k in EMBEDDED_DATASETS)
        raise EmbeddedResourceError(f"Unknown embedded data set {name!r}; known embedded data sets: {known}.")
    return loader(**options)

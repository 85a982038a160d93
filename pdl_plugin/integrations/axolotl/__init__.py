"""Axolotl integration of PDL, one package as Axolotl's own integrations (`cut_cross_entropy/`, `kd/`) are:

* `args.py`: the YAML keys (`PDLArgs`, merged into Axolotl's config schema, with the validators) and the training
  arguments (`PDLTrainingArgsMixin`) that carry the settings to the trainer;
* `cfg.py`: what a config says about the trained tokens (the table's masking and provenance, the output rows);
* `trainer.py`: `PDLAxolotlTrainer`, Axolotl's trainer with the PDL loss of the shared engine;
* `plugin.py`: `PDLPlugin`, which connects the above through Axolotl's plugin hooks;
* `cli.py`: `axolotl pdl-freq`, the table counted with Axolotl's own preprocessing;
* `embedded.py`: `EmbeddedResourcesPlugin`, the offline demo's `embedded:` model and data.

In a YAML: `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]` and `loss_type: pdl`. The classes are imported on
first use, so importing this package (or `args.py`, which Axolotl's config schema needs) does not import Axolotl.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {"PDLPlugin": ".plugin", "EmbeddedResourcesPlugin": ".embedded", "PDLAxolotlTrainer": ".trainer",
          "PDLArgs": ".args", "PDLTrainingArgsMixin": ".args"}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)

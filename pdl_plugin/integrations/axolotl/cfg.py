"""What an Axolotl config says about the tokens it trains: the table's `masking` and provenance, the output rows.

Read from the run's cfg by the plugin (which passes them to the trainer as training arguments) and by
`axolotl pdl-freq`, so that both count and label a table alike. Imports Axolotl only inside `expected_output_rows`.
"""

from __future__ import annotations

import json
import math

# How a user counts a table for an Axolotl config: named in every table error the plugin raises
RECOUNT_COMMAND = "axolotl pdl-freq CONFIG.yaml --output TABLE"


def masking_from_cfg(cfg) -> str:
    """Which tokens Axolotl trains, in the words of the table's `masking` metadata."""
    if cfg.get("train_on_inputs"):
        return "all_tokens"
    datasets = list(cfg.get("datasets") or [])
    types = [str(d.get("type") or "") for d in datasets]
    if datasets and all(t.startswith("chat_template") for t in types):
        roles = {tuple(d.get("roles_to_train") or ("assistant",)) for d in datasets}
        if roles == {("assistant",)}:
            return "assistant_only"
        return "roles:" + "|".join(",".join(r) for r in sorted(roles))
    return "completion_only"


def table_extra_from_cfg(cfg) -> dict[str, str]:
    """The provenance a table counted from this config records: host, datasets, sequence length."""
    datasets = [{"path": str(d.get("path")), "type": str(d.get("type"))} for d in cfg.get("datasets") or []]
    return {"host": "axolotl", "datasets": json.dumps(datasets), "sequence_len": str(cfg.get("sequence_len"))}


def expected_output_rows(cfg, tokenizer) -> int:
    """Rows of the output embedding Axolotl's model loader will end up with (it may resize to the tokenizer)."""
    from axolotl.loaders.utils import load_model_config

    config = load_model_config(cfg)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = int(text_config.vocab_size)
    target = math.ceil(len(tokenizer) / 32) * 32 if cfg.get("resize_token_embeddings_to_32x") else len(tokenizer)
    if rows < target or (rows > target and cfg.get("shrink_embeddings")):
        rows = target
    return rows

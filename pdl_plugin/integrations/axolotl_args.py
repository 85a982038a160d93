"""The YAML keys the Axolotl plugin adds, as a pydantic model Axolotl merges into its own config schema.

Axolotl builds its config class as a subclass of its base schema and of every plugin's `get_input_args()` model, so
these fields become top-level YAML keys and the validator below runs inside Axolotl's own config validation, on the
whole raw config. Axolotl ignores keys it does not know, so this validator also refuses any `pdl_*` key that is not
one of ours (a typo would otherwise silently keep the default) and any PDL setting given without `loss_type: pdl`.

This module imports neither Axolotl nor torch: it can be read and tested without them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ..errors import PDLConfigError
from ..weights import NORMALIZE_MODES, as_number, check_alpha_epsilon

LOSS_TYPES = ("nll", "pdl")

CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"


class PDLArgs(BaseModel):
    """`loss_type: pdl` and the `pdl_*` settings, with the same meaning and defaults as in the TRL recipes.

    The fields default to None so that a config without PDL stays free of `pdl_*` keys after Axolotl's
    `model_dump(exclude_none=True)`; `PDL_DEFAULTS` are applied when the plugin reads the validated config.
    """

    loss_type: Literal["nll", "pdl"] | None = Field(
        default=None,
        json_schema_extra={
            "description": "'pdl': the Power-Law Decay Loss (needs the pdl_plugin PDLPlugin under `plugins`). Unset or "
            "'nll': Axolotl's own cross-entropy, unchanged."
        },
    )
    pdl_alpha: float | None = Field(
        default=None,
        json_schema_extra={"description": "Decay exponent (>= 0); 0 is plain cross-entropy. Default 0.5."},
    )
    pdl_epsilon: float | None = Field(
        default=None,
        json_schema_extra={"description": "Smoothing (> 0) added to the normalised frequency. Default 1e-6."},
    )
    pdl_freq_path: str | None = Field(
        default=None,
        json_schema_extra={
            "description": "A frequency table from `axolotl pdl-freq` or an earlier run (its output_dir or the "
            ".safetensors file). Default: count the trained tokens of Axolotl's prepared training set."
        },
    )
    pdl_normalize: Literal["weighted", "token"] | None = Field(
        default=None,
        json_schema_extra={
            "description": "'weighted': sum w*nll / sum w over the optimizer step. 'token': weights with mean 1 over "
            "the counted tokens, divided by the token count."
        },
    )
    pdl_max_weight: float | None = Field(
        default=None,
        json_schema_extra={"description": "Optional cap on a weight, as a multiple of the mean counted weight."},
    )
    pdl_alpha_warmup_steps: int | None = Field(
        default=None,
        json_schema_extra={"description": "Ramp alpha linearly from 0 over this many optimizer steps. Default 0."},
    )

    @model_validator(mode="before")
    @classmethod
    def check_pdl_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return validate_pdl_settings(data)


PDL_DEFAULTS = {
    "pdl_alpha": 0.5,
    "pdl_epsilon": 1e-6,
    "pdl_freq_path": None,
    "pdl_normalize": "weighted",
    "pdl_max_weight": None,
    "pdl_alpha_warmup_steps": 0,
}
PDL_KEYS = tuple(name for name in PDLArgs.model_fields if name.startswith("pdl_"))


def validate_pdl_settings(data: dict) -> dict:
    """Check the PDL keys of a raw Axolotl config (a dict); return it with the numbers coerced. Raises PDLConfigError."""
    for key in data:
        if isinstance(key, str) and key.startswith("pdl_") and key not in PDL_KEYS:
            close = difflib.get_close_matches(key, PDL_KEYS, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else f" The PDL keys are: {', '.join(PDL_KEYS)}."
            raise PDLConfigError(f"Unknown key `{key}` in the Axolotl config.{hint} Remove or rename it.")
    loss_type = data.get("loss_type")
    if loss_type is not None and loss_type not in LOSS_TYPES:
        raise PDLConfigError(
            f"loss_type must be one of {LOSS_TYPES} (or unset for Axolotl's own loss), got {loss_type!r}. "
            "Set `loss_type: pdl` for the Power-Law Decay Loss."
        )
    given = [key for key in PDL_KEYS if data.get(key) is not None]
    if loss_type != "pdl":
        if given:
            raise PDLConfigError(
                f"{', '.join(given)} set but loss_type is {loss_type!r}, so they would be ignored. Add `loss_type: pdl` "
                "(with `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]`), or remove them."
            )
        return data
    data = dict(data)
    for key in ("pdl_alpha", "pdl_epsilon", "pdl_max_weight"):
        if data.get(key) is not None:
            data[key] = as_number(key, data[key])
    alpha, epsilon = data.get("pdl_alpha"), data.get("pdl_epsilon")
    check_alpha_epsilon(PDL_DEFAULTS["pdl_alpha"] if alpha is None else alpha, 1e-6 if epsilon is None else epsilon)
    max_weight = data.get("pdl_max_weight")
    if max_weight is not None and not (max_weight > 0 and math.isfinite(max_weight)):
        raise PDLConfigError(f"pdl_max_weight must be a finite number > 0 or unset, got {max_weight}.")
    normalize = data.get("pdl_normalize")
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise PDLConfigError(f"pdl_normalize must be one of {NORMALIZE_MODES}, got {normalize!r}.")
    warmup = data.get("pdl_alpha_warmup_steps")
    if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
        raise PDLConfigError(f"pdl_alpha_warmup_steps must be a whole number >= 0, got {warmup!r}.")
    freq_path = data.get("pdl_freq_path")
    if freq_path is not None and not isinstance(freq_path, str):
        raise PDLConfigError(f"pdl_freq_path must be a path, got {freq_path!r}.")
    conflicts = pdl_conflicts(data)
    if conflicts:
        raise PDLConfigError("loss_type 'pdl' cannot be combined with " + "; ".join(conflicts))
    return data


def pdl_conflicts(data: dict) -> list[str]:
    """Settings that would replace, bypass or distort the PDL loss. Each entry says what to change."""
    plugins = [str(p) for p in data.get("plugins") or []]
    found = []
    if (CCE_PLUGIN in plugins or data.get("cut_cross_entropy")) and data.get("cut_cross_entropy") is not False:
        found.append(
            "cut_cross_entropy (Cut Cross Entropy computes an unweighted loss without the logits PDL weights): remove "
            "the CutCrossEntropyPlugin or set `cut_cross_entropy: false`"
        )
    for key in ("liger_fused_linear_cross_entropy", "liger_cross_entropy"):
        if data.get(key):
            found.append(f"{key} (Liger's cross-entropy would replace the PDL loss): set `{key}: false`")
    if data.get("chunked_cross_entropy"):
        found.append("chunked_cross_entropy (it patches the model's own loss, which PDL replaces): remove it")
    if data.get("use_eaft"):
        found.append("use_eaft (EAFT is another token-weighted loss): use one of the two")
    if data.get("orpo_alpha") is not None:
        found.append("orpo_alpha (ORPO computes its own loss): remove it")
    if data.get("rl"):
        found.append(f"rl: {data.get('rl')} (preference/RL trainers have their own losses): PDL is for SFT")
    for key in ("reward_model", "process_reward_model"):
        if data.get(key):
            found.append(f"{key} (a reward model has no token loss): remove it")
    for key in ("context_parallel_size", "sequence_parallel_degree"):
        value = data.get(key)
        if isinstance(value, int) and value > 1:
            found.append(f"{key}: {value} (not supported yet by PDL): use data parallelism")
    if data.get("pretraining_dataset") and not data.get("pdl_freq_path"):
        found.append(
            "pretraining_dataset without pdl_freq_path (a streamed dataset cannot be counted before training): "
            "count a table with `axolotl pdl-freq` on a sample and set `pdl_freq_path`"
        )
    return found

"""What the Axolotl plugin adds to Axolotl's two schemas: the YAML keys (`PDLArgs`) and the training arguments
(`PDLTrainingArgsMixin`), the way Axolotl's own KD integration does.

Axolotl builds its config class as a subclass of its base schema and of every plugin's `get_input_args()` model, so
these fields become top-level YAML keys and the validator below runs inside Axolotl's own config validation, on the
whole raw config. Axolotl ignores keys it does not know, so this validator also refuses any `pdl_*` key that is not
one of ours (a typo would otherwise silently keep the default) and any PDL setting given without `loss_type: pdl`.

The validated settings reach the trainer as training arguments: `PDLPlugin.get_training_args` returns them
(`training_args_from_cfg`) and Axolotl merges `PDLTrainingArgsMixin` into its `TrainingArguments`, so the trainer reads
`self.args.pdl_*` like any other argument, and they are saved with the run's training arguments.

The fields and their checks come from `pdl_plugin.settings.PDLSettings`, the one declaration both hosts share. This
module imports neither Axolotl, TRL nor torch: it can be read and tested without them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from ...errors import PDLConfigError
from ...settings import SETTING_NAMES, PDLSettings, check_loss_type, check_pdl_keys
from .cfg import masking_from_cfg, table_extra_from_cfg

LOSS_TYPES = ("nll", "pdl")

CCE_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"


class _LossTypeArg(BaseModel):
    """`loss_type`, which Axolotl 0.19 does not have at the top level (only `trl.loss_type` for GRPO)."""

    loss_type: Literal["nll", "pdl"] | None = Field(
        default=None,
        json_schema_extra={
            "description": "'pdl': the Power-Law Decay Loss (needs the pdl_plugin PDLPlugin under `plugins`). Unset or "
            "'nll': Axolotl's own cross-entropy, unchanged."
        },
    )

    @model_validator(mode="before")
    @classmethod
    def check_pdl_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return validate_pdl_settings(data)


def _schema_fields() -> dict[str, Any]:
    """Every `PDLSettings` field as an optional pydantic field with its help text.

    They default to None so that a config without PDL stays free of `pdl_*` keys after Axolotl's
    `model_dump(exclude_none=True)`; `PDLSettings` applies the defaults when the plugin reads the validated config.
    Values are checked by `PDLSettings` in the validator, so the types here are loose (YAML reads `1e-6` as a string).
    """
    fields = {}
    for setting in dataclasses.fields(PDLSettings):
        description = f"{setting.metadata['help']} Default: {setting.default!r}."
        fields[setting.name] = (Any, Field(default=None, json_schema_extra={"description": description}))
    return fields


PDLArgs = create_model("PDLArgs", __base__=_LossTypeArg, __module__=__name__, **_schema_fields())
PDLArgs.__doc__ = "`loss_type: pdl` and the `pdl_*` settings of `PDLSettings`, as fields of Axolotl's config schema."


def validate_pdl_settings(data: dict) -> dict:
    """Check the PDL keys of a raw Axolotl config (a dict); return it with the values coerced. Raises PDLConfigError."""
    check_pdl_keys(data, "the Axolotl config")
    loss_type = data.get("loss_type")
    if loss_type is not None and loss_type not in LOSS_TYPES:
        raise PDLConfigError(
            f"loss_type must be one of {LOSS_TYPES} (or unset for Axolotl's own loss), got {loss_type!r}. "
            "Set `loss_type: pdl` for the Power-Law Decay Loss."
        )
    given = [key for key in SETTING_NAMES if data.get(key) is not None]
    check_loss_type(loss_type, given, "Add `loss_type: pdl` (with `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]`)")
    if loss_type != "pdl":
        return data
    settings = PDLSettings.from_mapping(data)
    data = {**data, **{key: getattr(settings, key) for key in given}}
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


# ---- the training arguments ----------------------------------------------------------------------------------------

# What the trainer needs besides the settings: which tokens Axolotl trains and where the data came from (the table's
# metadata), read from the cfg by the plugin, so the trainer needs nothing but its arguments.
HOST_ARGS = ("pdl_masking", "pdl_table_extra")

PDLTrainingArgsMixin = dataclasses.make_dataclass(
    "PDLTrainingArgsMixin",
    [(setting.name, Any, dataclasses.field(default=None, metadata=setting.metadata))
     for setting in dataclasses.fields(PDLSettings)]
    + [("pdl_masking", Any, dataclasses.field(default=None, metadata={"help": "Which tokens Axolotl trains."})),
       ("pdl_table_extra", Any, dataclasses.field(default=None, metadata={"help": "The table's provenance (JSON)."}))],
)
PDLTrainingArgsMixin.__module__ = __name__  # make_dataclass's `module=` needs Python 3.12
PDLTrainingArgsMixin.__doc__ = (
    "The PDL settings as training arguments (None: not a PDL run), merged by Axolotl into its `TrainingArguments`."
)


def training_args_from_cfg(cfg) -> dict[str, Any]:
    """The training arguments of a validated `loss_type: pdl` cfg: every setting (defaults filled) and the host facts."""
    settings = PDLSettings.from_mapping(cfg)
    return {**dataclasses.asdict(settings), "pdl_masking": masking_from_cfg(cfg),
            "pdl_table_extra": json.dumps(table_extra_from_cfg(cfg))}


def settings_from_training_args(args) -> tuple[PDLSettings, str, dict[str, str]]:
    """(settings, masking, table provenance) from a trainer's arguments. Refuses arguments without them: the loss
    would otherwise train with defaults nobody chose."""
    if getattr(args, "pdl_masking", None) is None:
        raise training_args_not_merged(type(args))
    settings = PDLSettings.from_mapping({name: getattr(args, name) for name in SETTING_NAMES})
    return settings, args.pdl_masking, json.loads(args.pdl_table_extra)


def training_args_not_merged(args_cls: type) -> PDLConfigError:
    """The error for a `TrainingArguments` class that lacks `PDLTrainingArgsMixin`'s fields."""
    return PDLConfigError(
        f"loss_type 'pdl' found no PDL settings among the trainer's arguments ({args_cls.__name__}): Axolotl builds "
        "that class when `axolotl.core.training_args` is first imported, and here that happened before PDLPlugin was "
        "registered (a plugin listed before it imports Axolotl's trainers). List "
        "pdl_plugin.integrations.axolotl.PDLPlugin first under `plugins`."
    )

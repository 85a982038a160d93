"""`PDLSFTConfig`: TRL's `SFTConfig` plus the PDL fields, which are derived from `settings.PDLSettings`.

Kept apart from the trainer that reads it, as TRL keeps `SFTConfig` apart from `SFTTrainer`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from trl import SFTConfig

from .errors import PDLConfigError
from .settings import DEFAULTS, SETTING_NAMES, PDLSettings, check_loss_type

LOSS_TYPES = ("nll", "dft", "pdl")


def with_pdl_fields(cls: type) -> type:
    """Add every `PDLSettings` field (type, default, help) to a dataclass-to-be: one declaration for all hosts."""
    annotations = cls.__dict__.get("__annotations__", {})
    for setting in dataclasses.fields(PDLSettings):
        annotations[setting.name] = setting.type
        setattr(cls, setting.name, field(default=setting.default, metadata=dict(setting.metadata)))
    cls.__annotations__ = annotations
    return cls


@dataclass
@with_pdl_fields
class PDLSFTConfig(SFTConfig):
    r"""
    Configuration for [`PDLSFTTrainer`]: every [`trl.SFTConfig`] field, `loss_type="pdl"`, and the `pdl_*` fields of
    [`PDLSettings`].

    With `loss_type="pdl"` each trained token `y` is weighted by `w(y) = 1 / (freq(y) + pdl_epsilon) ** pdl_alpha`,
    where `freq` is the normalised frequency (count / total) of `y` among the trained tokens of the training set.
    """

    loss_type: str = field(
        default="nll",
        metadata={
            "help": "Type of loss to use: 'nll' and 'dft' behave exactly as in TRL; 'pdl' is the Power-Law Decay "
            "Loss, the cross-entropy of each trained token weighted by 1 / (freq + pdl_epsilon) ** pdl_alpha.",
            "choices": list(LOSS_TYPES),
        },
    )

    def __post_init__(self):
        # Our checks first: a wrong PDL value is reported even where the base class would refuse something else
        settings = PDLSettings.from_mapping({name: getattr(self, name) for name in SETTING_NAMES})
        for name in SETTING_NAMES:
            setattr(self, name, getattr(settings, name))
        if self.loss_type not in LOSS_TYPES:
            raise PDLConfigError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        changed = [name for name in SETTING_NAMES if getattr(self, name) != DEFAULTS[name]]
        check_loss_type(self.loss_type, changed, "Set `loss_type: pdl`")
        super().__post_init__()
        if self.loss_type == "pdl":
            _refuse_loss_replacements(self)

    @property
    def pdl_settings(self) -> PDLSettings:
        return PDLSettings.from_mapping({name: getattr(self, name) for name in SETTING_NAMES})


def _refuse_loss_replacements(args: SFTConfig) -> None:
    """TRL settings that would replace or distort the PDL loss, refused up front with what to change."""
    if args.label_smoothing_factor > 0:
        raise PDLConfigError(
            "loss_type 'pdl' cannot be combined with label_smoothing_factor > 0: label smoothing needs the full "
            "logits, PDL weights the per-token log-probs. Set label_smoothing_factor: 0."
        )
    if args.use_liger_kernel:
        raise PDLConfigError(
            "loss_type 'pdl' cannot be combined with use_liger_kernel: true: Liger's fused linear cross-entropy "
            "replaces the model's loss with an unweighted one. Set use_liger_kernel: false (PDL's own head already "
            "scores only the trained positions without the full logits)."
        )

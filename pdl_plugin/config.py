"""`PDLSFTConfig`: TRL's `SFTConfig` plus the PDL fields. Kept apart from the trainer that reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .errors import PDLConfigError
from .weights import NORMALIZE_MODES, as_number, check_alpha_epsilon

LOSS_TYPES = ("nll", "dft", "pdl")


@dataclass
class PDLSFTConfig(SFTConfig):
    r"""
    Configuration for [`PDLSFTTrainer`]: every [`trl.SFTConfig`] field, `loss_type="pdl"`, and the `pdl_*` fields.

    With `loss_type="pdl"` each trained token `y` is weighted by `w(y) = 1 / (freq(y) + pdl_epsilon) ** pdl_alpha`,
    where `freq` is the normalised frequency (count / total) of `y` among the trained tokens of the training set.
    """

    loss_type: str = field(
        default="nll",
        metadata={
            "help": "Type of loss to use: 'nll' and 'dft' behave exactly as in TRL; 'pdl' is the Power-Law Decay "
            "Loss, the cross-entropy of each trained token weighted by 1 / (freq + pdl_epsilon) ** pdl_alpha."
        },
    )
    pdl_alpha: float = field(
        default=0.5,
        metadata={
            "help": "Decay exponent (>= 0); 0 is plain cross-entropy. Default 0.5: the lower middle of the paper's "
            "[0.25, 1.5], strong enough to matter while a token 100x rarer gets only 10x the weight."
        },
    )
    pdl_epsilon: float = field(
        default=1e-6,
        metadata={
            "help": "Smoothing constant (> 0) added to the normalised frequency. Default 1e-6 (the paper's upper "
            "end): the weight of a token unseen in training stays finite, about that of a token seen once in 1M."
        },
    )
    pdl_freq_path: str | None = field(
        default=None,
        metadata={
            "help": "Path of a frequency table saved by `pdl-freq` or by an earlier run. Default: count the trained "
            "tokens of the prepared training set before training (cheap, and always matches the data)."
        },
    )
    pdl_normalize: str = field(
        default="weighted",
        metadata={
            "help": "'weighted' (default): loss = sum w*nll / sum w over the optimizer step, the paper's weighted "
            "mean, independent of the weights' scale. 'token': weights rescaled to mean 1 over the counted tokens and "
            "the loss divided by the token count, like plain cross-entropy.",
            "choices": list(NORMALIZE_MODES),
        },
    )
    pdl_max_weight: float | None = field(
        default=None,
        metadata={
            "help": "Optional cap on a token's weight, as a multiple of the mean weight of the counted tokens "
            "(e.g. 20). Default: no cap, exactly equation (3)."
        },
    )

    pdl_alpha_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Ramp alpha linearly from 0 (plain cross-entropy) to `pdl_alpha` over this many optimizer steps, "
            "a schedule the paper names as future work. Default 0: full alpha from the first step."
        },
    )

    def __post_init__(self):
        # Our checks first: a wrong PDL value is reported even where the base class would refuse something else
        # YAML reads `1e-6` as a string and the CLI passes strings: accept any numeric spelling, refuse the rest
        self.pdl_alpha = as_number("pdl_alpha", self.pdl_alpha)
        self.pdl_epsilon = as_number("pdl_epsilon", self.pdl_epsilon)
        if self.pdl_max_weight is not None:
            self.pdl_max_weight = as_number("pdl_max_weight", self.pdl_max_weight)
            if not self.pdl_max_weight > 0:
                raise PDLConfigError(f"pdl_max_weight must be > 0 or unset, got {self.pdl_max_weight}.")
        check_alpha_epsilon(self.pdl_alpha, self.pdl_epsilon)
        if isinstance(self.pdl_alpha_warmup_steps, bool) or not isinstance(self.pdl_alpha_warmup_steps, int) or (
            self.pdl_alpha_warmup_steps < 0
        ):
            raise PDLConfigError(
                f"pdl_alpha_warmup_steps must be a whole number >= 0, got {self.pdl_alpha_warmup_steps!r}."
            )
        if self.loss_type not in LOSS_TYPES:
            raise PDLConfigError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        if self.pdl_normalize not in NORMALIZE_MODES:
            raise PDLConfigError(f"pdl_normalize must be one of {NORMALIZE_MODES}, got {self.pdl_normalize!r}.")
        super().__post_init__()
        if self.loss_type == "pdl" and self.label_smoothing_factor > 0:
            raise PDLConfigError(
                "loss_type 'pdl' cannot be combined with label_smoothing_factor > 0: label smoothing needs the full "
                "logits, PDL weights the fused per-token log-probs. Set label_smoothing_factor: 0."
            )

    @property
    def pdl_settings(self) -> dict:
        """The settings that define the weights, saved beside the table so a run can be reproduced."""
        return {
            "loss_type": self.loss_type,
            "pdl_alpha": self.pdl_alpha,
            "pdl_epsilon": self.pdl_epsilon,
            "pdl_normalize": self.pdl_normalize,
            "pdl_max_weight": self.pdl_max_weight,
            "pdl_alpha_warmup_steps": self.pdl_alpha_warmup_steps,
            "pdl_freq_path": self.pdl_freq_path,
        }

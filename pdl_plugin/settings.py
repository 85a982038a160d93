"""Every PDL setting, declared once: name, type, default, help text and checks.

Both hosts derive their fields from `PDLSettings`: TRL's `PDLSFTConfig` (dataclass fields with `metadata["help"]`, as
`SFTConfig` has) and Axolotl's pydantic `PDLArgs` (schema fields of Axolotl's config). Both validate through
`PDLSettings`, so the two hosts accept exactly the same values. Pure Python: no torch, no host framework.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PDLConfigError

NORMALIZE_MODES = ("weighted", "token")
UNSEEN_POLICIES = ("rarest", "formula")


@dataclass(frozen=True)
class PDLSettings:
    """The settings of one PDL run, validated on construction (strings that spell numbers are accepted)."""

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
            "end): about the frequency of a token seen once in a million."
        },
    )
    pdl_freq_path: str | None = field(
        default=None,
        metadata={
            "help": "A frequency table saved by the host's pdl-freq command or by an earlier run (its output_dir or "
            "the .safetensors file). Default: count the trained tokens of the prepared training set before training."
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
            "help": "Ramp alpha linearly from 0 (plain cross-entropy) to pdl_alpha over this many optimizer steps, "
            "a schedule the paper names as future work. Default 0: full alpha from the first step."
        },
    )
    pdl_unseen_weight: str = field(
        default="rarest",
        metadata={
            "help": "Weight of a token the table never counted (it can only be trained with a reused table, and it "
            "appears in validation data): 'rarest' (default) gives it the rarest counted token's weight; 'formula' "
            "keeps equation (3), epsilon ** -alpha (about 31,600 at epsilon 1e-6, alpha 0.75).",
            "choices": list(UNSEEN_POLICIES),
        },
    )
    pdl_exempt_special_tokens: bool = field(
        default=False,
        metadata={
            "help": "Give the tokenizer's special tokens (the end-of-turn token such as <|im_end|>, eos) the mean "
            "weight of a trained token instead of their PDL weight. The end-of-reply token is trained once per reply, "
            "so it is among the most frequent trained tokens, PDL weights it down, and the model learns to stop less "
            "(docs/results.md, 'Why PDL's replies run on'). Default false: equation (3) for every token."
        },
    )
    pdl_resume_without_table: bool = field(
        default=False,
        metadata={
            "help": "Allow resuming a PDL run from a checkpoint that holds no PDL table (saved by a non-PDL run). "
            "Default false: such a resume is refused, since the loss would change mid-run unnoticed."
        },
    )

    def __post_init__(self) -> None:
        for name, value in validate_values(dataclasses.asdict(self)).items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PDLSettings:
        """Build from any mapping holding `pdl_*` keys (a host config, a dict); None means the default."""
        return cls(**{name: values[name] for name in SETTING_NAMES if values.get(name) is not None})

    def saved(self) -> dict[str, Any]:
        """What `pdl_config.json` records; `RESUME_KEYS` of it must match for a run to resume."""
        return dataclasses.asdict(self)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(PDLSettings))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(PDLSettings)}
# The settings that define the loss: resuming with any of them changed would change the loss mid-run
RESUME_KEYS = ("pdl_alpha", "pdl_epsilon", "pdl_normalize", "pdl_max_weight", "pdl_alpha_warmup_steps",
               "pdl_unseen_weight", "pdl_exempt_special_tokens")


# ---- checks ------------------------------------------------------------------------------------------------------


def as_number(name: str, value) -> float:
    """A recipe value as a float: YAML reads `1e-6` as a string and CLIs pass strings; refuse anything else."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise PDLConfigError(f"{name} must be a number, got {value!r}. Write e.g. `{name}: 0.5`.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PDLConfigError(f"{name} must be a number, got {value!r}. Write e.g. `{name}: 0.5`.")
    return float(value)


def check_alpha_epsilon(alpha, epsilon) -> None:
    """Refuse values that would silently turn PDL into something else (negative alpha up-weights frequent tokens)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise PDLConfigError(f"pdl_alpha must be a number >= 0, got {alpha!r}. Set e.g. `pdl_alpha: 0.5`.")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise PDLConfigError(f"pdl_epsilon must be a number > 0, got {epsilon!r}. Set e.g. `pdl_epsilon: 1.0e-6`.")
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise PDLConfigError(
            f"pdl_alpha must be a finite number >= 0, got {alpha}. Use 0 for plain cross-entropy, "
            "or a value in [0.25, 1.5] as the paper suggests."
        )
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise PDLConfigError(
            f"pdl_epsilon must be a finite number > 0, got {epsilon}. It keeps the weight of unseen tokens finite; "
            "use a small value such as 1e-6."
        )


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise PDLConfigError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def validate_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check and coerce a full set of PDL values (every name in SETTING_NAMES); raises PDLConfigError."""
    out = dict(values)
    out["pdl_alpha"] = as_number("pdl_alpha", values["pdl_alpha"])
    out["pdl_epsilon"] = as_number("pdl_epsilon", values["pdl_epsilon"])
    check_alpha_epsilon(out["pdl_alpha"], out["pdl_epsilon"])
    if values["pdl_max_weight"] is not None:
        out["pdl_max_weight"] = as_number("pdl_max_weight", values["pdl_max_weight"])
        if not (out["pdl_max_weight"] > 0 and math.isfinite(out["pdl_max_weight"])):
            raise PDLConfigError(
                f"pdl_max_weight must be a finite number > 0 (a multiple of the mean weight, e.g. 20) or unset, "
                f"got {out['pdl_max_weight']}."
            )
    warmup = values["pdl_alpha_warmup_steps"]
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise PDLConfigError(f"pdl_alpha_warmup_steps must be a whole number >= 0, got {warmup!r}.")
    freq_path = values["pdl_freq_path"]
    if freq_path is not None and (not isinstance(freq_path, str) or not freq_path.strip()):
        raise PDLConfigError(
            f"pdl_freq_path must be the path of a table, got {freq_path!r}. Remove the key to count the training set."
        )
    _choice("pdl_normalize", values["pdl_normalize"], NORMALIZE_MODES)
    _choice("pdl_unseen_weight", values["pdl_unseen_weight"], UNSEEN_POLICIES)
    for name in ("pdl_exempt_special_tokens", "pdl_resume_without_table"):
        _check_bool(name, values[name])
    return out


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise PDLConfigError(f"{name} must be true or false, got {value!r}.")


def check_keys(keys: Iterable[str], source: str) -> None:
    """Refuse a `pdl_*` key that is not a setting (a typo would otherwise silently keep the default)."""
    for key in keys:
        if isinstance(key, str) and key.startswith("pdl_") and key not in SETTING_NAMES:
            close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else f" The PDL keys are: {', '.join(SETTING_NAMES)}."
            raise PDLConfigError(f"Unknown key `{key}` in {source}.{hint} Remove or rename it.")


def check_loss_type(loss_type, given: Iterable[str], how_to_enable: str) -> None:
    """Refuse PDL settings given while the loss is not PDL: they would be ignored without a word."""
    given = [key for key in given if key in SETTING_NAMES]
    if loss_type != "pdl" and given:
        raise PDLConfigError(
            f"{', '.join(given)} set but loss_type is {loss_type!r}, so PDL is off and they would be ignored. "
            f"{how_to_enable}, or remove them."
        )

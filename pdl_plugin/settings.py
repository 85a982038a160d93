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
    pdl_min_weight: float | None = field(
        default=None,
        metadata={
            "help": "Optional floor on a token's weight, as a multiple of the same mean weight pdl_max_weight uses "
            "(count-weighted over the trained tokens). With 1, no trained token counts for less than the average "
            "trained token and only rare tokens are boosted: the bounded form of token-level adaptive training (Gu "
            "et al., 2020). Applied before the special-token exemption and the 'token' rescaling. 0 means no floor. "
            "Default: no floor."
        },
    )
    pdl_ce_mix: float = field(
        default=0.0,
        metadata={
            "help": "Cross-entropy anchor lambda in [0, 1]: the loss of an optimizer step is lambda * (plain mean "
            "cross-entropy of its trained tokens) + (1 - lambda) * (its PDL), each part with its own exact "
            "denominator. 0 (default) is PDL, 1 is plain cross-entropy."
        },
    )
    pdl_prior_path: str | None = field(
        default=None,
        metadata={
            "help": "A prior frequency table to mix into the task's (a general corpus counted by `pdl-freq "
            "--all-tokens`, a base model's expected frequencies from `pdl-freq --model-prior`, or a larger in-domain "
            "set's table). Needs pdl_prior_mix. Default: none, the task table alone."
        },
    )
    pdl_prior_mix: float | None = field(
        default=None,
        metadata={
            "help": "beta in [0, 1]: freq(t) = (1 - beta) * task frequency + beta * prior frequency, then equation "
            "(3). Set it with pdl_prior_path (the paper's section 4.3: small sets count most tokens 0-2 times)."
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
               "pdl_unseen_weight", "pdl_exempt_special_tokens", "pdl_min_weight", "pdl_ce_mix", "pdl_prior_mix")
# Equation (3) as the paper writes it, whatever the defaults: none of the protections (special-token exemption, weight
# floor, CE anchor). Tests that check the maths and benchmarks' plain-PDL baseline spell it with these
EQUATION_3 = {"pdl_exempt_special_tokens": False, "pdl_min_weight": 0, "pdl_ce_mix": 0.0}
# What a setting was before it existed, for a run saved by an older version (its loss had none of them)
ABSENT_BEFORE = {"pdl_exempt_special_tokens": False, "pdl_min_weight": None, "pdl_ce_mix": 0.0,
                 "pdl_prior_mix": None}


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
    out["pdl_max_weight"] = _optional_multiple("pdl_max_weight", values["pdl_max_weight"], "e.g. 20")
    out["pdl_min_weight"] = _floor(values["pdl_min_weight"])
    if out["pdl_min_weight"] is not None and out["pdl_max_weight"] is not None and \
            out["pdl_min_weight"] > out["pdl_max_weight"]:
        raise PDLConfigError(
            f"pdl_min_weight {out['pdl_min_weight']} is above pdl_max_weight {out['pdl_max_weight']}: the floor would "
            "lie above the cap. Lower the floor (`pdl_min_weight: 0` is none) or raise the cap."
        )
    out["pdl_ce_mix"] = _fraction("pdl_ce_mix", values["pdl_ce_mix"], "0 is PDL, 1 plain cross-entropy")
    out.update(_prior_values(values["pdl_prior_path"], values["pdl_prior_mix"]))
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


def _optional_multiple(name: str, value, example: str) -> float | None:
    """A multiple of the mean weight (> 0, finite) or None."""
    if value is None:
        return None
    number = as_number(name, value)
    if not (number > 0 and math.isfinite(number)):
        raise PDLConfigError(
            f"{name} must be a finite number > 0 (a multiple of the mean weight, {example}) or unset, got {number}."
        )
    return number


def _floor(value) -> float | None:
    """`pdl_min_weight`: a multiple of the mean weight (> 0), or 0 for no floor (weights are positive, so a floor at
    0 changes none), or unset. 0 stays 0, not None: None means "not given" wherever a host fills in the defaults."""
    if value is not None and as_number("pdl_min_weight", value) == 0:
        return 0.0
    return _optional_multiple("pdl_min_weight", value, "e.g. 1, or 0 for no floor")


def loss_value(name: str, value):
    """A setting's value as the loss sees it, for comparing two runs' settings: a floor of 0 is no floor."""
    return None if name == "pdl_min_weight" and value == 0 else value


def _fraction(name: str, value, meaning: str) -> float:
    number = as_number(name, value)
    if not 0 <= number <= 1:
        raise PDLConfigError(f"{name} must be a number in [0, 1] ({meaning}), got {number}.")
    return number


def _prior_values(path, mix) -> dict[str, Any]:
    """`pdl_prior_path` and `pdl_prior_mix` go together: one without the other would be ignored or undefined."""
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise PDLConfigError(f"pdl_prior_path must be the path of a table, got {path!r}. Remove the key for no prior.")
    if path is None and mix is not None:
        raise PDLConfigError(
            "pdl_prior_mix is set but pdl_prior_path is not, so there is no prior to mix. Set `pdl_prior_path` to a "
            "table (`pdl-freq --all-tokens` or `--model-prior` writes one), or remove pdl_prior_mix."
        )
    if path is not None and mix is None:
        raise PDLConfigError(
            f"pdl_prior_path is set ({path}) but pdl_prior_mix is not: say how much of the prior to mix into the task "
            "frequencies, e.g. `pdl_prior_mix: 0.5` (0 = the task table alone, 1 = the prior alone)."
        )
    return {"pdl_prior_path": path,
            "pdl_prior_mix": None if mix is None else _fraction("pdl_prior_mix", mix, "the prior's share")}


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise PDLConfigError(f"{name} must be true or false, got {value!r}.")


def check_pdl_keys(keys: Iterable[str], source: str) -> None:
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


def check_alpha_warmup(warmup: int, max_steps: int, length: str) -> None:
    """Refuse an alpha warm-up longer than the run (`length` says where its `max_steps` come from): its alpha would
    never reach `pdl_alpha`, and a warm-up much longer makes the whole run nearly plain cross-entropy."""
    if max_steps > 0 and warmup > max_steps:
        raise PDLConfigError(
            f"pdl_alpha_warmup_steps {warmup} is longer than the run's {max_steps} optimizer steps ({length}), so its "
            f"alpha never reaches pdl_alpha: the last step trains at {(max_steps - 1) / warmup:.0%} of it, and the "
            f"run is a ramp from plain cross-entropy. Set pdl_alpha_warmup_steps to at most {max_steps} (a tenth of "
            "the run is usual), or train for more steps."
        )

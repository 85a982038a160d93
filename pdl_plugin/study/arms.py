"""The arms of a study: which PDL settings one arm trains with, its folder name and its label.

An arm is an alpha with, optionally, an alpha warm-up, the end-of-turn exemption and further PDL settings (a weight
floor, a cross-entropy anchor, a prior). Its name is the folder its runs live in (`alpha-0.5-exempt-min_weight-1`),
so the arms of the first study keep their names (`alpha-0`, `alpha-1-warmup-154`, `alpha-0.5-exempt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import PDLConfigError
from ..settings import PDLSettings

# `--arm` key -> the recipe setting it sets, for the settings beyond alpha, warm-up and exemption (in name order)
ARM_OPTIONS = {
    "min_weight": "pdl_min_weight",
    "max_weight": "pdl_max_weight",
    "ce_mix": "pdl_ce_mix",
    "prior_path": "pdl_prior_path",
    "prior_mix": "pdl_prior_mix",
    "epsilon": "pdl_epsilon",
    "normalize": "pdl_normalize",
    "unseen_weight": "pdl_unseen_weight",
}
# The loss variants: an arm has exactly those its name gives. The ones it does not name are switched off for its runs
# (floor 0, anchor 0), so that neither the recipe nor a default adds to an arm what its name does not say; a cap or a
# prior cannot be switched off from the command line, so a study refuses a recipe that sets one.
VARIANT_OFF = {"min_weight": "0", "ce_mix": "0"}
VARIANTS_NOT_SWITCHED_OFF = ("max_weight", "prior_path", "prior_mix")
_NAME_PARTS = {"prior_path": "prior"}  # the folder name says `prior-<file stem>`, not the whole path
ARM_KEYS = ("alpha", "warmup_steps", "exempt", *ARM_OPTIONS)


@dataclass(frozen=True)
class Arm:
    """One arm of a study: alpha, an optional alpha warm-up, whether the special tokens are exempt from the
    reweighting (`pdl_exempt_special_tokens`), and further PDL settings as (`--arm` key, value as written) pairs."""

    alpha: float
    warmup_steps: int = 0
    exempt: bool = False
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, result: dict) -> Arm:
        """The arm of a run's results (results written before exempt arms or options existed have neither)."""
        options = tuple((key, str(value)) for key, value in (result.get("options") or {}).items())
        return cls(result["alpha"], result["warmup_steps"], bool(result.get("exempt", False)), options)

    @property
    def name(self) -> str:
        return (f"alpha-{self.alpha:g}" + (f"-warmup-{self.warmup_steps}" if self.warmup_steps else "")
                + ("-exempt" if self.exempt else "")
                + "".join(f"-{_NAME_PARTS.get(key, key)}-{_value_name(key, value)}" for key, value in self.options))

    @property
    def label(self) -> str:
        if self.alpha == 0 and not self.options:
            return "alpha 0 (CE baseline)"
        return (f"alpha {self.alpha:g}" + (f", warm-up {self.warmup_steps} steps" if self.warmup_steps else "")
                + (", special tokens exempt" if self.exempt else "")
                + "".join(f", {_NAME_PARTS.get(key, key)} {_value_name(key, value)}" for key, value in self.options))

    @property
    def spec(self) -> str:
        """The `--arm` text that gives this arm back (`parse_arm(arm.spec) == arm`), e.g. for a later stage's command."""
        alpha = f"{self.alpha:g}" if float(f"{self.alpha:g}") == self.alpha else repr(float(self.alpha))
        parts = [f"alpha={alpha}"] + ([f"warmup_steps={self.warmup_steps}"] if self.warmup_steps else [])
        parts += ["exempt=true"] if self.exempt else []
        return ",".join(parts + [f"{key}={value}" for key, value in self.options])

    def recipe_options(self) -> list[str]:
        """The recipe overrides of the settings beyond alpha, warm-up and exemption (`--pdl_min_weight 1`, ...)."""
        return [item for key, value in self.options for item in (f"--{ARM_OPTIONS[key]}", value)]

    def settings(self) -> PDLSettings:
        """The PDL settings this arm trains with on a recipe that sets none (the variants it does not name off)."""
        values = {ARM_OPTIONS[key]: value for key, value in (*VARIANT_OFF.items(), *self.options)}
        return PDLSettings(pdl_alpha=self.alpha, pdl_alpha_warmup_steps=self.warmup_steps,
                           pdl_exempt_special_tokens=self.exempt, **values)

    def variants_off(self) -> list[str]:
        """The recipe overrides that switch off the loss variants this arm does not name (`--pdl_ce_mix 0`, ...)."""
        named = {key for key, _ in self.options}
        return [item for key, value in VARIANT_OFF.items() if key not in named
                for item in (f"--{ARM_OPTIONS[key]}", value)]


def _value_name(key: str, value: str) -> str:
    return Path(value).stem if key == "prior_path" else value


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PDLConfigError(f"--alphas must be comma-separated numbers such as 0,0.25,0.5,1.0; got {text!r}.") from None
    if not alphas or any(not a >= 0 or math.isinf(a) for a in alphas):
        raise PDLConfigError(f"--alphas must list finite numbers >= 0 (0 is the CE baseline); got {text!r}.")
    return list(dict.fromkeys(alphas))


def parse_arm(text: str) -> Arm:
    """`--arm alpha=0.5,exempt=true,min_weight=1`: one arm from comma-separated KEY=VALUE pairs. The values' ranges
    are checked where the settings are declared, when the study builds each arm's recipe before the first run."""
    usage = (f"--arm takes comma-separated KEY=VALUE pairs with alpha among them, e.g. "
             f"`--arm alpha=0.5,exempt=true,min_weight=1` (keys: {', '.join(ARM_KEYS)})")
    pairs = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise PDLConfigError(f"{usage}; got {text!r}.")
        if key not in ARM_KEYS:
            raise PDLConfigError(f"--arm: unknown key {key!r} in {text!r}. {usage}.")
        if key in pairs:
            raise PDLConfigError(f"--arm: {key!r} is given twice in {text!r}.")
        pairs[key] = value
    if "alpha" not in pairs:
        raise PDLConfigError(f"{usage}; {text!r} has no alpha.")
    alpha = parse_alphas(pairs.pop("alpha"))
    if len(alpha) != 1:
        raise PDLConfigError(f"--arm: alpha takes one number, got {text!r} (give one --arm per alpha).")
    warmup = pairs.pop("warmup_steps", "0")
    if not warmup.isdigit():
        raise PDLConfigError(f"--arm: warmup_steps must be a whole number >= 0, got {warmup!r}.")
    exempt = pairs.pop("exempt", "false").lower()
    if exempt not in ("true", "false"):
        raise PDLConfigError(f"--arm: exempt must be true or false, got {exempt!r}.")
    options = tuple((key, pairs[key]) for key in ARM_OPTIONS if key in pairs)
    return Arm(alpha[0], int(warmup), exempt == "true", options)


def check_arm_names(arms: list[Arm]) -> None:
    """Two arms of one study must not share a folder (two prior files of one name, say)."""
    seen: dict[str, Arm] = {}
    for arm in arms:
        if arm.name in seen and seen[arm.name] != arm:
            raise PDLConfigError(f"Two arms would share the folder {arm.name!r} ({seen[arm.name]} and {arm}): give "
                                 "their prior tables different file names.")
        seen[arm.name] = arm

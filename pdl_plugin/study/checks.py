"""What a study checks before its first run, so that a mistake stops it at once and not hours later in one run: each
arm's settings, and the folders it writes and the split every run's evaluation reads."""

from __future__ import annotations

from pathlib import Path

from ..errors import PDLConfigError, PDLError
from .arms import ARM_OPTIONS, VARIANT_OFF, VARIANTS_NOT_SWITCHED_OFF, Arm


def check_arm_settings(config: str, overrides: list[str], arm: Arm) -> None:
    """Refuse, before the first run, an arm whose settings a run would refuse (a floor above the cap, a prior file
    that is missing), naming the arm."""
    from ..recipe import parse_recipe
    from ..run_weights import read_prior_file
    from .runner import training_overrides

    try:  # the overrides a run of this arm trains with (seed and folder do not matter to its settings)
        training = parse_recipe(["--config", config, *overrides,
                                 *training_overrides(arm, 0, Path("arm-check"))]).training
        if training.pdl_prior_path:
            read_prior_file(training.pdl_prior_path, "pdl-freq")
    except PDLError as err:
        raise type(err)(f"--arm {arm.name}: {err}") from None


def recipe_variants(training) -> list[str]:
    """Each arm has exactly the loss variants its name gives. The recipe's floor or CE anchor (its own or a default)
    is switched off for the arms that do not name it: returned as the lines that say so. A cap or a prior cannot be
    switched off from the command line, so a recipe with one is refused, before any run."""
    for key in VARIANTS_NOT_SWITCHED_OFF:
        setting = ARM_OPTIONS[key]
        if getattr(training, setting) is not None:
            raise PDLConfigError(
                f"The recipe sets {setting} ({getattr(training, setting)}), but each arm of a study has exactly the loss "
                f"variants its name gives, and this one cannot be switched off for the arms that do not name it (the "
                f"CE baseline among them). Remove {setting} from the recipe and give it to the arms that should have "
                f"it, e.g. `--arm alpha=0.5,{key}=VALUE`."
            )
    given = {key: getattr(training, ARM_OPTIONS[key]) for key in VARIANT_OFF}
    return [f"The recipe's {ARM_OPTIONS[key]} {float(value):g} applies only to the arms whose name gives {key}; the "
            "others train without it." for key, value in given.items() if value not in (None, 0)]


def check_study_folders(outdir: str | Path, results_dir: str | Path | None, recipe) -> None:
    """Before any run: the folders the study writes can be made, and every run's evaluation will find its split."""
    from ..eval.evaluate import load_validation_split
    from ..files import check_can_create_folder

    check_can_create_folder(outdir, "--outdir")
    if results_dir:
        check_can_create_folder(results_dir, "--results_dir")
    load_validation_split(recipe)

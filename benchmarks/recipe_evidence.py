"""What the shipped recipes and `PDLSettings`' defaults rest on (issue 25, item 7): for each task, the setting
`choose_settings.py` reads off the second study's committed results, and the header lines that carry its numbers
(arm − CE over the seeds paired with CE, 95% t-intervals, as in `setting_table.py`). With `--check RECIPES_DIR`
every recipe (task from its file name: `dialogue_lora.yaml`, `offline_dialogue_qlora.yaml`, ...) must train with its
task's setting and carry its lines verbatim, and `PDLSettings()` must be the default's setting; the command names
each one that does not and exits 1. A test runs the check on the committed results and recipes. With `--write
RECIPES_DIR` each recipe's PDL block (`loss_type:`, the `pdl_*` lines after it and the comment lines just above it)
is rewritten to those lines and its task's setting, every loss variant spelt out, the rest of the file untouched.

    python benchmarks/recipe_evidence.py docs/results/study2 dialogue summarization code [--check|--write recipes]
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from choose_settings import choices  # noqa: E402
from setting_table import arm_cells  # noqa: E402
from pdl_plugin.settings import RESUME_KEYS, PDLSettings, loss_value  # noqa: E402
from pdl_plugin.errors import PDLConfigError  # noqa: E402
from pdl_plugin.study.arms import ARM_OPTIONS, VARIANT_OFF, Arm  # noqa: E402
from pdl_plugin.study.choice import Choice  # noqa: E402
from pdl_plugin.study.results import baseline_name, load_runs  # noqa: E402
from pdl_plugin.study.screen import is_code  # noqa: E402

MEASURED_ON = "SmolLM2-135M-Instruct, LoRA r8, CPU"
CE = Arm(0.0)
PDL_LINE = re.compile(r"^(loss_type|pdl_\w+)\s*:")
ALIGNED_COMMENT = re.compile(r"^[^#].*?\S {2,}#")  # a key's comment in the recipe's column, not after a long key
# What each variant a recipe spells out does (the header lines say what it did)
VARIANT_COMMENTS = {
    "pdl_exempt_special_tokens": "end-of-turn token at the mean weight, so replies end",
    "pdl_min_weight": "floor, x the mean trained weight (0: none)",
    "pdl_ce_mix": "share of each step's loss that is plain CE (0: none)",
}


def chosen_arm(choice: Choice, arms: dict[str, Arm]) -> Arm:
    """The arm a decided choice ships (plain CE: alpha 0)."""
    return CE if choice.arm is None else arms[choice.arm]


def header_lines(results_dir: Path, task: str, choice: Choice, arm: Arm) -> list[str]:
    """The comment lines a recipe of `task` carries: its setting, why, and the numbers it rests on."""
    runs = load_runs(Path(results_dir) / task)
    if choice.arm is None:
        text = (f"PDL setting: none, plain cross-entropy (pdl_alpha 0), the second study's choice for {task} "
                f"(docs/results.md; benchmarks/choose_settings.py): {choice.reason}.")
    else:
        baseline = baseline_name(runs)
        seeds = sorted({r["seed"] for r in runs[choice.arm]} & {r["seed"] for r in runs[baseline]})
        steps = sorted({r["train"]["global_step"] for r in runs[choice.arm] if r["seed"] in seeds})
        numbers = "; ".join(f"{title.removesuffix(' (code)')} {value}"
                            for title, value in arm_cells(runs, choice.arm, is_code(runs)).items())
        text = (f"PDL setting: {arm.label.replace(', special tokens exempt', ' + exemption')} (`--arm {arm.spec}`), "
                f"the second study's choice for {task} (docs/results.md; benchmarks/choose_settings.py): "
                f"{choice.reason}{', with a warning' if choice.warning else ''}. Measured on {MEASURED_ON}, "
                f"{'/'.join(map(str, steps))} steps, arm − CE "
                f"over seeds {', '.join(map(str, seeds))} with 95% t-intervals: {numbers}.")
    return textwrap.wrap(text, width=118, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def task_of(recipe: Path) -> str:
    """`dialogue_lora.yaml`, `offline_dialogue_qlora.yaml` -> dialogue."""
    return recipe.stem.removeprefix("offline_").split("_")[0]


def differences(settings: PDLSettings, wanted: PDLSettings) -> list[str]:
    """The loss-defining settings (`RESUME_KEYS`) in which `settings` is not `wanted`."""
    return [f"{key} {getattr(settings, key)!r} (wanted {getattr(wanted, key)!r})" for key in RESUME_KEYS
            if loss_value(key, getattr(settings, key)) != loss_value(key, getattr(wanted, key))]


def trains_with(values: dict, arm: Arm) -> list[str]:
    """How a recipe's keys (`values`) differ from `arm`'s setting; a recipe without `loss_type: pdl` is plain CE."""
    if values.get("loss_type") != "pdl":
        return [] if arm == CE else [f"loss_type {values.get('loss_type')!r} (wanted 'pdl')"]
    return differences(PDLSettings.from_mapping(values), arm.settings())


def decided_tasks(results_dir: Path, tasks: list[str]) -> tuple[dict[str, tuple[Arm, list[str]]], Choice, dict]:
    """Each decided task's arm and header lines (drawn once per task), the default's choice and the study's arms."""
    by_task, default, arms = choices(results_dir, tasks)
    decided = {task: chosen_arm(choice, arms) for task, choice in by_task.items() if choice.decided}
    return ({task: (arm, header_lines(results_dir, task, by_task[task], arm)) for task, arm in decided.items()},
            default, arms)


def check(results_dir: Path, tasks: list[str], recipes_dir: Path, defaults: PDLSettings | None = None) -> list[str]:
    """Every way the recipes under `recipes_dir` and the defaults (`PDLSettings()`) do not follow the study (empty:
    they do)."""
    decided, default, arms = decided_tasks(results_dir, tasks)
    problems = []
    for recipe in sorted(Path(recipes_dir).rglob("*.yaml")):
        task = task_of(recipe)
        if task not in decided:
            problems.append(f"{recipe}: the study has not decided the {task} setting")
            continue
        arm, lines = decided[task]
        text = recipe.read_text()
        wrong = trains_with(yaml.safe_load(text), arm)
        if wrong:
            problems.append(f"{recipe}: trains with {', '.join(wrong)}")
        if "\n".join(lines) not in text:
            problems.append(f"{recipe}: lacks the header lines `recipe_evidence.py` prints for {task}")
    if not default.decided:
        problems.append("PDLSettings: the study has not decided the default")
    else:
        wrong = differences(defaults or PDLSettings(), chosen_arm(default, arms).settings())
        problems += [f"PDLSettings() defaults to {', '.join(wrong)}"] if wrong else []
    return problems


def pdl_block(lines: list[str], recipe: Path) -> tuple[int, int]:
    """[start, end) of a recipe's PDL block: its `loss_type:` line, the `pdl_*` lines right after it and the comment
    lines right above it."""
    starts = [i for i, line in enumerate(lines) if line.startswith("loss_type:")]
    if len(starts) != 1:
        raise PDLConfigError(f"{recipe}: {len(starts)} `loss_type:` lines at the top level; the PDL block is written "
                             "around exactly one (with the `pdl_*` lines right after it).")
    start = end = starts[0]
    while end < len(lines) and PDL_LINE.match(lines[end]):
        end += 1
    if any(PDL_LINE.match(line) and line.startswith("pdl_") for line in lines[end:] + lines[:start]):
        raise PDLConfigError(f"{recipe}: a `pdl_*` key stands apart from the `loss_type:` line; move it right after "
                             "it so the PDL block holds every PDL setting.")
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    return start, end


def block_lines(header: list[str], kept: list[str], arm: Arm, column: int) -> list[str]:
    """The PDL block of a recipe that trains `arm`: the header, then every loss variant spelt out, so the recipe
    means the same whatever the defaults; `kept` (the recipe's other `pdl_*` lines, epsilon, normalize) stay."""
    if arm == CE:
        return [*header, "loss_type: nll"]
    if any(key == "prior_path" for key, _ in arm.options):
        raise PDLConfigError(f"{arm.spec}: a prior arm's table is its task's own file; write that recipe by hand.")
    wanted = {"pdl_alpha": f"{arm.alpha:g}", "pdl_exempt_special_tokens": str(arm.exempt).lower(),
              **{ARM_OPTIONS[key]: value for key, value in (*VARIANT_OFF.items(), *arm.options)}}
    kept = [line for line in kept if line.split(":")[0] not in wanted]
    # at least one space before `#`, or YAML reads the comment as part of the value
    written = [(f"{key}: {value}".ljust(column - 1) + f" # {VARIANT_COMMENTS[key]}" if key in VARIANT_COMMENTS
                else f"{key}: {value}") for key, value in wanted.items()]
    return [*header, "loss_type: pdl", written[0], *kept, *written[1:]]


def write(results_dir: Path, tasks: list[str], recipes_dir: Path) -> list[Path]:
    """Rewrite the PDL block of every recipe of a decided task under `recipes_dir`; returns the files changed."""
    decided, _, _ = decided_tasks(results_dir, tasks)
    changed = []
    for recipe in sorted(Path(recipes_dir).rglob("*.yaml")):
        if task_of(recipe) not in decided:
            continue
        (arm, header), old = decided[task_of(recipe)], recipe.read_text()
        lines = old.splitlines()
        start, end = pdl_block(lines, recipe)
        column = next((m.end() - 1 for m in map(ALIGNED_COMMENT.search, lines[start:end]) if m), 37)
        kept = [line for line in lines[start:end] if line.startswith("pdl_")]
        text = "\n".join([*lines[:start], *block_lines(header, kept, arm, column), *lines[end:]]) + "\n"
        if text != old:
            recipe.write_text(text)
            changed.append(recipe)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("tasks", nargs="+")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, metavar="RECIPES_DIR")
    action.add_argument("--write", type=Path, metavar="RECIPES_DIR")
    args = parser.parse_args(argv)
    if args.write:
        changed = write(args.results_dir, args.tasks, args.write)
        print("\n".join(f"rewrote {path}" for path in changed) or "Every decided recipe is up to date.")
        return
    if args.check:
        problems = check(args.results_dir, args.tasks, args.check)
        print("\n".join(problems) or "The recipes and PDLSettings follow the study.")
        raise SystemExit(1 if problems else 0)
    by_task, default, arms = choices(args.results_dir, args.tasks)
    for task, choice in by_task.items():
        print(f"## {task}")
        if not choice.decided:
            print(f"# {choice.reason}")
            continue
        print("\n".join(header_lines(args.results_dir, task, choice, chosen_arm(choice, arms))))
    print(f"## PDLSettings' default: {default.arm or '-'}: {default.reason}")


if __name__ == "__main__":
    main()

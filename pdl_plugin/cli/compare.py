"""`pdl-compare --config RECIPE.yaml --alphas 0,0.25,0.5,1.0 [--seeds 0,1] [--alpha_warmup_steps N] [--shard I/N]`.

Trains one adapter per alpha (alpha 0 is the cross-entropy baseline, run as `loss_type: pdl` with alpha 0 so it saves
the same training table) and seed, with the same data, steps and seeds, evaluates each like `pdl-eval`, and writes a
markdown report with metric tables (mean ± sd over seeds), loss curves and the generated tokens' frequency-rank
distribution against the references'. `--alpha_warmup_steps N` adds one arm whose alpha ramps from 0 over N steps;
`--exempt_alphas A,B` one arm per alpha trained with `pdl_exempt_special_tokens`; `--arm alpha=0.5,exempt=true,
min_weight=1` one arm of any PDL settings (floor, CE anchor, prior, ...); an arm has exactly the loss variants its
name gives (a recipe's floor or anchor is switched off for the arms that do not name it). All arms are scored alike.
Resumable: finished runs are not redone. With `--results_dir DIR` each finished run's small results (`train.json`,
`results.json`; not the adapter) go to `DIR/<task>/<arm>/seed-<s>/`, runs whose results are there are skipped (commit
them to resume a study on another machine), and the report is made from them. Runs go seed by seed (every arm of
seed 0 first), so a study cut short leaves whole paired sets. The same command started N times on one machine (one
thread each: OMP_NUM_THREADS=1) uses N cores: each process holds the run it trains through a lock file beside the
run's folder and goes on to the next run nobody holds, so no two take the same run and none idles while runs are
left. `--shard I/N` takes only every N-th run of the plan from the I-th, to split a study between machines that share
no folder (commit the results to bring them together).
`--checkpoint_steps N` keeps each run's last checkpoint, so that a run cut off resumes from it. A run that fails
does not stop the study: the process goes on to the next run, and at the end draws the report from the finished runs
and exits with an error that names the failed ones (`--fail_fast` stops at the first instead). Any other
`--key value` is passed on to the recipe (e.g. `--max_steps 10`).
"""

from __future__ import annotations

from . import require_trl_host

require_trl_host("pdl-compare")  # before the imports below, which load TRL

import argparse
import shlex
from pathlib import Path

from rich.console import Console

from ..errors import PDLConfigError, PDLError
from .eval import _Parser, eval_arguments, settings_from
from ..recipe import parse_recipe
from ..study.arms import (ARM_KEYS, ARM_OPTIONS, VARIANT_OFF, VARIANTS_NOT_SWITCHED_OFF, Arm, check_arm_names,
                          parse_alphas, parse_arm)
from ..study.plan import parse_seeds, parse_shard
from . import run_cli, stop_with_error

USAGE = ("pdl-compare --config RECIPE.yaml --alphas 0,0.25,0.5,1.0 [--seeds 0,1] [--alpha_warmup_steps N] "
         "[--exempt_alphas A,B] [--arm KEY=VALUE,... ...] [--outdir DIR] [--results_dir DIR] [--report FILE.md] [--report_only] [--shard I/N] "
         "[--checkpoint_steps N] [--fail_fast] [eval options] [--recipe_key value ...]")

_OVERRIDES_REFUSED = ("--output_dir", "--pdl_alpha", "--seed", "--loss_type", "--pdl_alpha_warmup_steps",
                      "--pdl_exempt_special_tokens")


def _parser() -> argparse.ArgumentParser:
    parser = eval_arguments(_Parser(prog="pdl-compare", usage=USAGE))
    parser.add_argument("--config", required=True)
    parser.add_argument("--alphas", default="0,0.25,0.5,1.0")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--alpha_warmup_steps", type=int, default=0,
                        help="add one arm at --warmup_alpha whose alpha ramps from 0 over this many steps")
    parser.add_argument("--warmup_alpha", type=float, default=None, help="default: the largest of --alphas")
    parser.add_argument("--exempt_alphas", default=None, metavar="A,B",
                        help="add one arm per alpha (> 0) that trains with pdl_exempt_special_tokens: the special "
                        "tokens (the end-of-turn token) at the mean weight")
    parser.add_argument("--arm", action="append", default=[], metavar="KEY=VALUE,...",
                        help="add one arm of any PDL settings, e.g. `--arm alpha=0.5,exempt=true,min_weight=1` "
                        f"(repeat for more arms; keys: {', '.join(ARM_KEYS)}); with --alphas 0 the study is CE and "
                        "these arms")
    parser.add_argument("--outdir", default="outputs/pdl-compare")
    parser.add_argument("--results_dir", default=None,
                        help="keep each finished run's train.json and results.json in RESULTS_DIR/TASK/ARM/seed-S "
                        "(e.g. docs/results, committed); runs found there are skipped and the report reads them")
    parser.add_argument("--task", default=None, help="default: the recipe's file name without _lora/_qlora")
    parser.add_argument("--report", default=None, help="default: OUTDIR/TASK/report.md")
    parser.add_argument("--report_only", action="store_true", help="only rebuild the report from finished runs")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="run only every N-th run of the plan, from the I-th, to split a study between machines "
                        "(on one machine, start the same command N times instead: they share the runs out as they go)")
    parser.add_argument("--checkpoint_steps", type=int, default=0, metavar="N",
                        help="keep each run's last checkpoint every N steps, so that a run cut off (a session that "
                        "ends, a machine taken back) resumes from it; default 0: no checkpoints, a cut run starts again")
    parser.add_argument("--fail_fast", action="store_true",
                        help="stop at the first run that fails; default: go on with the other runs, draw the report "
                        "and exit with an error naming the failed runs")
    return parser


def compare(argv: list[str]) -> Path:
    from ..study.checks import check_arm_settings, check_study_folders, recipe_variants
    from ..study.runner import Study, run_study

    options, overrides = _parser().parse_known_args(argv)
    refused = [flag for flag in overrides if flag.split("=")[0] in _OVERRIDES_REFUSED]
    if refused:
        raise PDLConfigError(f"pdl-compare sets {refused[0]} itself for each run (use --alphas, --arm, --seeds, "
                             "--outdir).")
    alphas, seeds = parse_alphas(options.alphas), parse_seeds(options.seeds)
    shard = parse_shard(options.shard)
    if options.checkpoint_steps < 0:
        raise PDLConfigError(f"--checkpoint_steps must be >= 0 (0: no checkpoints), got {options.checkpoint_steps}.")
    arms = _arms(options, alphas, overrides)
    recipe = parse_recipe(["--config", options.config, *overrides])  # fails early on a bad recipe or override
    notes = recipe_variants(recipe.training)
    for arm in arms:  # each arm's settings, checked where they are declared, before any run
        check_arm_settings(options.config, overrides, arm)
    if not options.report_only:
        check_study_folders(options.outdir, options.results_dir, recipe)
    task = options.task or Path(options.config).stem.removesuffix("_lora").removesuffix("_qlora")
    report = Path(options.report) if options.report else Path(options.outdir) / task / "report.md"
    study = Study(options.config, overrides, task, arms, seeds, Path(options.outdir), report,
                  command="pdl-compare " + shlex.join(_study_argv(argv)),
                  results_dir=Path(options.results_dir) if options.results_dir else None, shard=shard,
                  checkpoint_steps=options.checkpoint_steps, fail_fast=options.fail_fast)
    console = Console()
    for note in notes:
        console.print(note, highlight=False)
    settings = reference_alpha = None
    if not options.report_only:
        settings = settings_from(options, recipe)
        reference_alpha = options.reference_alpha if options.reference_alpha is not None else recipe.training.pdl_alpha
    return run_study(study, settings, reference_alpha, log=console.print,
                     on_failure=lambda name, err: _report_failure(console, name, err))


def _arms(options, alphas: list[float], overrides: list[str]) -> list[Arm]:
    """The study's arms: one per alpha, the warm-up arm, the exempt arms and the `--arm` arms, in that order."""
    if options.alpha_warmup_steps < 0:
        raise PDLConfigError(f"--alpha_warmup_steps must be >= 0, got {options.alpha_warmup_steps}.")
    arms = [Arm(alpha) for alpha in alphas]
    if options.alpha_warmup_steps:
        warmup_alpha = options.warmup_alpha if options.warmup_alpha is not None else max(alphas)
        if not warmup_alpha > 0:
            raise PDLConfigError("The warm-up arm needs an alpha > 0: set --warmup_alpha or a positive --alphas.")
        arms.append(Arm(warmup_alpha, options.alpha_warmup_steps))
    if options.exempt_alphas:
        exempt_alphas = parse_alphas(options.exempt_alphas)
        if not all(alpha > 0 for alpha in exempt_alphas):
            raise PDLConfigError(f"--exempt_alphas takes alphas > 0 (at alpha 0 nothing is reweighted), got "
                                 f"{options.exempt_alphas!r}.")
        arms += [Arm(alpha, exempt=True) for alpha in exempt_alphas]
    arms = list(dict.fromkeys(arms + [parse_arm(text) for text in options.arm]))
    check_arm_names(arms)
    given = {flag.split("=")[0] for flag in overrides}
    clash = next((f"--{ARM_OPTIONS[key]}" for arm in arms for key, _ in arm.options if f"--{ARM_OPTIONS[key]}" in given),
                 None)
    clash = clash or next((f"--{ARM_OPTIONS[key]}" for key in (*VARIANT_OFF, *VARIANTS_NOT_SWITCHED_OFF)
                           if f"--{ARM_OPTIONS[key]}" in given), None)
    if clash:
        raise PDLConfigError(f"{clash} is given to every run, but each arm has exactly the loss variants its name "
                             f"gives: set it in the arms only (`--arm alpha=0.5,{clash[6:]}=VALUE`).")
    return arms


def _report_failure(console: Console, name: str, err: Exception) -> None:
    """Say why a run failed (the study goes on): one line for our own errors (the message names the fix), the
    traceback for anything else (a bug, or a library's error), so that a study left running overnight loses no run to
    another's failure and no failure's cause. Called while the error is handled."""
    if isinstance(err, PDLError):
        console.print(f"[bold red]{name}: failed:[/] {err}", highlight=False)
        return
    console.print(f"[bold red]{name}: failed with {type(err).__name__}:[/]", highlight=False)
    console.print_exception()


_FLAGS_DROPPED = ("--report_only", "--fail_fast")
_VALUE_FLAGS_DROPPED = ("--report", "--shard", "--checkpoint_steps")


def _study_argv(argv: list[str]) -> list[str]:
    """The command that made the runs: `--report_only` and `--report PATH` only redraw the report, `--shard I/N`
    only says which process ran which runs, `--checkpoint_steps N` only how often they could be resumed and
    `--fail_fast` only what a failure would have done."""
    shown, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in _VALUE_FLAGS_DROPPED:  # `--report PATH`: drop the value that follows too
            skip = True
        elif item in _FLAGS_DROPPED or item.split("=")[0] in _VALUE_FLAGS_DROPPED:  # `--report=PATH`
            continue
        else:
            shown.append(item)
    return shown


INTERRUPTED = ("interrupted (Ctrl-C): the finished runs are kept and the run in progress starts again (or resumes from "
               "its last checkpoint with --checkpoint_steps); rerun the same command to go on.")


def main(argv: list[str] | None = None) -> None:
    try:
        run_cli(compare, argv)
        return
    except KeyboardInterrupt:
        pass
    stop_with_error(INTERRUPTED, code=130)  # outside the except: no chained traceback


if __name__ == "__main__":
    main()

"""Running a study: each run of the plan that this process takes is trained and evaluated (`run_one`), the others
are left to the process that holds them or skipped when finished; a run that fails does not stop the others, and the
report is drawn from the finished runs at the end (`run_study`).

The study writes nothing to the console itself: what it has to say goes through the `log` callable it is given (the
command passes its console's `print`), and a failed run through `on_failure`.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from transformers import TrainerCallback

from ..errors import PDLError
from ..files import write_json
from .arms import Arm
from .plan import DONE, RESULTS_FILE, TRAIN_FILE, copy_results, hold_run, in_share, is_finished, run_dir, study_plan
from .provenance import provenance
from .report import write_report

TIMING_FILE = "study_timing.json"  # in each checkpoint: wall and CPU seconds of training up to that checkpoint


class TrainingClock(TrainerCallback):
    """A run's training time across the processes that trained it: `spent()` is this process's time plus what earlier,
    cut-off processes had spent up to the checkpoint it resumed from (`resumed_from`), and each checkpoint saved gets
    that figure in its `study_timing.json`, for the process that will resume from it."""

    def __init__(self, resumed_from: Path | None = None):
        timing_file = resumed_from / TIMING_FILE if resumed_from is not None else None
        before = json.loads(timing_file.read_text()) if timing_file is not None and timing_file.is_file() else {}
        self.wall_before, self.cpu_before = before.get("wall_s", 0.0), before.get("cpu_s", 0.0)
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def spent(self) -> dict[str, float]:
        return {"wall_s": self.wall_before + time.perf_counter() - self.wall_start,
                "cpu_s": self.cpu_before + time.process_time() - self.cpu_start}

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            write_json(checkpoint / TIMING_FILE, self.spent())


def _run_settings(arm: Arm, seed: int, folder: Path) -> list[str]:
    """The recipe overrides of one run that its training and its evaluation share: where it lives, the arm's alpha and
    warm-up, the seed; no checkpoints and no reporting to trackers."""
    return ["--output_dir", str(folder), "--loss_type", "pdl", "--pdl_alpha", str(arm.alpha),
            "--pdl_alpha_warmup_steps", str(arm.warmup_steps), "--seed", str(seed), "--save_strategy", "no",
            "--report_to", "none"]


def training_overrides(arm: Arm, seed: int, folder: Path) -> list[str]:
    """The recipe overrides a run trains with (recorded as they are in its `train.json`): the shared settings, the
    arm's exemption, the variants it does not name switched off and its further PDL settings (floor, CE anchor,
    prior, ...)."""
    return [*_run_settings(arm, seed, folder), "--pdl_exempt_special_tokens", str(arm.exempt).lower(),
            *arm.variants_off(), *arm.recipe_options()]


def evaluation_overrides(arm: Arm, seed: int, folder: Path) -> list[str]:
    """The recipe overrides a run is evaluated with. Every arm is evaluated alike (no exemption, floor, CE anchor or
    prior), so that its validation PDL uses the same weights in every arm; those settings change only how an arm
    trains."""
    return [*_run_settings(arm, seed, folder), "--pdl_exempt_special_tokens", "false", *Arm(arm.alpha).variants_off()]


def run_one(config: str, overrides: list[str], folder: Path, arm: Arm, seed: int, settings, reference_alpha: float,
            log=print, results_folder: Path | None = None, checkpoint_steps: int = 0) -> dict:
    """Train (unless `train.json` shows it was done) and evaluate one arm and seed; return its results. With a
    `results_folder`, its `train.json` and `results.json` are copied there once the run is done.

    With `checkpoint_steps` > 0 training keeps its last checkpoint every that many steps, and a run found cut off
    (checkpoints but no `train.json`) resumes from its last complete checkpoint, as `pdl-sft --resume_from_checkpoint`
    would: same batches, restored random states. Without it, or without a complete checkpoint, it starts again.
    """
    from ..eval.evaluate import evaluate_model, load_for_eval, load_validation_split
    from ..frequency import FrequencyTable
    from ..recipe import parse_recipe

    trainer = None
    if not (folder / TRAIN_FILE).is_file():
        trainer = _train(["--config", config, *overrides, *training_overrides(arm, seed, folder)], folder, log,
                         checkpoint_steps)
        model, tokenizer = trainer.model, trainer.processing_class
    recipe = parse_recipe(["--config", config, *overrides, *evaluation_overrides(arm, seed, folder)])
    if trainer is None:
        model, tokenizer = load_for_eval(folder, recipe)
    train_dataset, validation = load_validation_split(recipe)
    settings = type(settings)(**{**settings.__dict__, "seed": seed, "reference_alpha": reference_alpha})
    result = evaluate_model(model, tokenizer, recipe, FrequencyTable.load(folder), settings, train_dataset, validation)
    result.update(arm=arm.name, alpha=arm.alpha, warmup_steps=arm.warmup_steps, seed=seed,
                  **({"exempt": True} if arm.exempt else {}), **({"options": dict(arm.options)} if arm.options else {}),
                  provenance=provenance())
    write_json(folder / RESULTS_FILE, result)
    (folder / DONE).write_text("ok\n")
    if results_folder is not None:
        copy_results(folder, results_folder)
    del trainer, model
    gc.collect()
    return result


def _train(argv: list[str], folder: Path, log, checkpoint_steps: int):
    """Train one run with the recipe `argv` into `folder` (resuming from its last complete checkpoint when it keeps
    checkpoints and has one, else from scratch), record `train.json` and return the trainer."""
    from ..checkpoints import last_complete_checkpoint
    from ..recipe import run_recipe

    last = last_complete_checkpoint(folder) if checkpoint_steps > 0 else None
    resume = Path(last) if last is not None else None
    if resume is not None:
        log(f"{folder}: training was cut off, resuming from {resume.name}")
    elif folder.exists():
        log(f"{folder}: unfinished training, starting it again")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_argv = argv
    if checkpoint_steps > 0:
        train_argv = [*argv, "--save_strategy", "steps", "--save_steps", str(checkpoint_steps),
                      "--save_total_limit", "1"]
        if resume is not None:
            train_argv += ["--resume_from_checkpoint", str(resume)]
    clock = TrainingClock(resume)
    trainer = run_recipe(train_argv, callbacks=[clock])
    args = trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    write_json(folder / TRAIN_FILE, {
        "argv": argv, "log_history": trainer.state.log_history, "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch, "examples_seen": trainer.state.global_step * batch, **clock.spent(),
        **({"resumed_from": resume.name} if resume is not None else {}), "provenance": provenance(),
    })
    for checkpoint in folder.glob("checkpoint-*"):  # the run is whole: its adapter is in `folder`
        shutil.rmtree(checkpoint)
    return trainer


@dataclass(frozen=True)
class Study:
    """One `pdl-compare` study of a task: the recipe and its overrides, the arms and seeds, where the runs and their
    small results live, the report and the command it names, which share of the plan this process takes, how often a
    run keeps a checkpoint and whether the first failure stops the study."""

    config: str
    overrides: list[str]
    task: str
    arms: list[Arm]
    seeds: list[int]
    outdir: Path
    report: Path
    command: str = ""
    results_dir: Path | None = None
    shard: tuple[int, int] = (1, 1)
    checkpoint_steps: int = 0
    fail_fast: bool = False

    @property
    def task_dir(self) -> Path:
        return Path(self.outdir) / self.task

    @property
    def source_dir(self) -> Path:
        """Where the report reads the finished runs from: the results folder when there is one."""
        return Path(self.results_dir) / self.task if self.results_dir else self.task_dir


class _Run(NamedTuple):
    name: str  # `[I/N] task arm seed S`, as the log names it
    arm: Arm
    seed: int
    folder: Path
    kept: Path | None  # the run's folder in the results folder


def failure_reason(err: Exception) -> str:
    """Why a run failed, in one line: our own errors by their message (it names the fix), anything else (a bug, a
    library's error) by its type and message."""
    return str(err) if isinstance(err, PDLError) else f"{type(err).__name__}: {err}"


def run_study(study: Study, settings=None, reference_alpha: float | None = None, *, log: Callable = print,
              on_failure: Callable[[str, Exception], None] | None = None) -> Path:
    """Train and evaluate every run of the plan in this process's share that is not finished and that no other
    process holds, then draw the report from the finished runs and return its path. Without `settings` (the runs'
    evaluation settings) no run is made: the report is only drawn again.

    A run that fails is reported through `on_failure(name, error)` (called while the error is handled, so that it can
    show the traceback; by default one line through `log`) and the study goes on; at the end, after the report, a
    `PDLError` names the failed runs. With `study.fail_fast` the first failure ends the study instead."""
    if on_failure is None:
        on_failure = lambda name, err: log(f"{name}: failed: {failure_reason(err)}")
    failed = [] if settings is None else _run_plan(study, settings, reference_alpha, log, on_failure)
    try:
        path = write_report(study.task, study.source_dir, study.report, study.command, base_dirs=(study.task_dir,))
    except PDLError:
        if not failed:
            raise
        path = None  # no run finished: the failures below are the news, not the missing report
    else:
        log(f"Report: {path}")
    if failed:
        reported = "the report has the finished runs only" if path else "no run finished, so no report"
        runs = f"{len(failed)} run{'s' if len(failed) > 1 else ''}"
        raise PDLError(f"{runs} of this process failed ({reported}; mend the cause and run the same command again: "
                       "finished runs are skipped, the failed ones run again). " + " | ".join(failed))
    return path


def _todo(study: Study, log) -> list[_Run]:
    """The runs of this process's share of the plan that are not finished (a finished run is named and skipped)."""
    plan = study_plan(study.arms, study.seeds)
    todo, share = [], []
    for index, (arm, seed) in enumerate(plan, 1):
        if not in_share(index, study.shard):
            continue
        share.append(str(index))
        name = f"[{index}/{len(plan)}] {study.task} {arm.name} seed {seed}"
        folder = run_dir(study.outdir, study.task, arm, seed)
        kept = run_dir(study.results_dir, study.task, arm, seed) if study.results_dir else None
        if is_finished(folder, kept):  # copies a finished run's results to the results folder
            log(f"{name}: results in {kept or folder}, skipped")
        else:
            todo.append(_Run(name, arm, seed, folder, kept))
    if study.shard[1] > 1:
        log(f"Shard {study.shard[0]}/{study.shard[1]} (runs {', '.join(share)} of {len(plan)}): {len(todo)} to do"
            + "".join(f", {run.arm.name} seed {run.seed}" for run in todo))
    return todo


def _run_plan(study: Study, settings, reference_alpha, log, on_failure) -> list[str]:
    """Make each run to do that no other process holds; return the failed runs, each with its reason."""
    failed = []
    for run in _todo(study, log):
        with hold_run(run.folder) as held:
            if not held:
                log(f"{run.name}: running in another process, skipped")
            elif is_finished(run.folder, run.kept):  # by another process, since this one looked
                log(f"{run.name}: finished by another process, skipped")
            else:
                reason = _run_held(study, run, settings, reference_alpha, log, on_failure)
                if reason is not None:
                    failed.append(f"{run.arm.name} seed {run.seed}: {reason}")
    return failed


def _run_held(study: Study, run: _Run, settings, reference_alpha, log, on_failure) -> str | None:
    """Make one run this process holds; None when it finished, else why it failed (after `on_failure`)."""
    log(f"[bold]{run.name}[/]: {run.folder}")
    started = time.perf_counter()
    try:
        run_one(study.config, study.overrides, run.folder, run.arm, run.seed, settings, reference_alpha, log=log,
                results_folder=run.kept, checkpoint_steps=study.checkpoint_steps)
    except Exception as err:  # not KeyboardInterrupt: Ctrl-C stops the study
        if study.fail_fast:
            raise
        on_failure(run.name, err)
        return failure_reason(err)
    log(f"{run.name}: finished in {time.perf_counter() - started:.0f} s")
    return None

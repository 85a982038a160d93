"""`pdl-compare` orchestration: one adapter per alpha arm and seed, evaluated, aggregated into a markdown report.

Layout: ``OUTDIR/<task>/<arm>/seed-<s>/`` holds the adapter, `train.json` (log history and timings, written when
training finished), `results.json` (the evaluation) and a `done` marker. A rerun skips runs with `done`, evaluates runs
with `train.json` but no `done`, and retrains runs with neither: a run interrupted mid-training resumes from its last
checkpoint when the study keeps checkpoints (`--checkpoint_steps N`), and is redone otherwise.

With a results folder (``--results_dir docs/results``) each finished run also leaves its small results, `train.json`
and `results.json` (no adapter), in ``RESULTS_DIR/<task>/<arm>/seed-<s>/``: commit them, and a later `pdl-compare` on
any machine skips the runs found there and reports from them.

The report leads with paired statistics: every arm against the CE arm (alpha 0) on the same seed (same LoRA
initialisation, same batches), the per-seed difference and its mean with a 95% t-interval over seeds.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from ..errors import PDLConfigError
from ..files import write_atomically
from ..figures import pyplot, save_figure
from ..study.arms import Arm, parse_alphas  # noqa: F401  (parse_alphas: the CLI's)
from . import metrics
from .run_results import check_run_results

DONE = "done"
TRAIN_FILE = "train.json"
RESULTS_FILE = "results.json"
BASE_FILE = "base-model.json"  # optional: `pdl-eval` of the untrained base model, shown as one more row


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PDLConfigError(f"--seeds must be comma-separated whole numbers such as 0,1; got {text!r}.") from None
    if not seeds:
        raise PDLConfigError("--seeds must name at least one seed.")
    return list(dict.fromkeys(seeds))


def parse_shard(text: str | None) -> tuple[int, int]:
    """`I/N` (this process takes the I-th of N shares of the plan) as (I, N); None is the whole plan."""
    if text is None:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise PDLConfigError(f"--shard must be I/N with whole numbers, such as 1/2; got {text!r}.") from None
    if not 1 <= index <= count:
        raise PDLConfigError(f"--shard I/N needs 1 <= I <= N (1/2 and 2/2 for two processes); got {text!r}.")
    return index, count


def study_plan(arms: list[Arm], seeds: list[int]) -> list[tuple[Arm, int]]:
    """Every (arm, seed), seed by seed: each finished seed completes one paired set of arms, so a study cut short
    (a session that ends, a machine taken back) still leaves whole pairs to compare."""
    return [(arm, seed) for seed in seeds for arm in arms]


def in_share(position: int, shard: tuple[int, int]) -> bool:
    """Whether the run at `position` (1-based) of the plan belongs to shard I of N: every N-th run from the I-th on.
    Shares follow the plan, not what is left of it, so N machines that share no folder never take the same run,
    whenever each one starts or restarts."""
    index, count = shard
    return (position - 1) % count == index - 1


@contextmanager
def hold_run(folder: Path):
    """Hold a run for this process, or learn that another process holds it: yields True (held until the block
    ends) or False. N processes of one command on one machine thus share its plan out as they go, each taking the
    next run nobody holds. The lock is a `filelock` lock file beside the run's folder, which the operating system
    releases when its process ends, killed or not, so a run cut off never stays held."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder.parent / f"{folder.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def run_dir(outdir: Path, task: str, arm: Arm, seed: int) -> Path:
    return Path(outdir) / task / arm.name / f"seed-{seed}"


def has_results(folder: Path) -> bool:
    """Whether a run folder holds the small results of a finished run (`train.json` and `results.json`)."""
    return (Path(folder) / TRAIN_FILE).is_file() and (Path(folder) / RESULTS_FILE).is_file()


def copy_results(source: Path, destination: Path) -> None:
    """Copy a finished run's small results (not its adapter) into a results folder, each file atomically."""
    from ..files import write_json

    for name in (TRAIN_FILE, RESULTS_FILE):
        write_json(Path(destination) / name, json.loads((Path(source) / name).read_text()))


def is_finished(folder: Path, kept: Path | None) -> bool:
    """Whether a run is finished: its results kept in the results folder, or a `done` run folder (whose results are
    then copied to the results folder)."""
    if kept is not None and has_results(kept):
        return True
    if (folder / DONE).is_file() and has_results(folder):
        if kept is not None:
            copy_results(folder, kept)
        return True
    return False


TIMING_FILE = "study_timing.json"  # in each checkpoint: wall and CPU seconds of training up to that checkpoint


def _training_clock(resumed_from: Path | None):
    """A `TrainerCallback` that measures a run's training time across the processes that trained it: `spent()` is
    this process's time plus what earlier, cut-off processes had spent up to the checkpoint it resumed from, and each
    checkpoint saved gets that figure in its `study_timing.json`, for the process that will resume from it."""
    from transformers import TrainerCallback

    from ..files import write_json

    timing_file = resumed_from / TIMING_FILE if resumed_from is not None else None
    before = json.loads(timing_file.read_text()) if timing_file is not None and timing_file.is_file() else {}

    class TrainingClock(TrainerCallback):
        def __init__(self):
            self.wall_before, self.cpu_before = before.get("wall_s", 0.0), before.get("cpu_s", 0.0)
            self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

        def spent(self) -> dict[str, float]:
            return {"wall_s": self.wall_before + time.perf_counter() - self.wall_start,
                    "cpu_s": self.cpu_before + time.process_time() - self.cpu_start}

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                write_json(checkpoint / TIMING_FILE, self.spent())

    return TrainingClock()


def run_one(config: str, overrides: list[str], folder: Path, arm: Arm, seed: int, settings, reference_alpha: float,
            log=print, results_folder: Path | None = None, checkpoint_steps: int = 0) -> dict:
    """Train (unless `train.json` shows it was done) and evaluate one arm and seed; return its results. With a
    `results_folder`, its `train.json` and `results.json` are copied there once the run is done.

    With `checkpoint_steps` > 0 training keeps its last checkpoint every that many steps, and a run found cut off
    (checkpoints but no `train.json`) resumes from its last complete checkpoint, as `pdl-sft --resume_from_checkpoint`
    would: same batches, restored random states. Without it, or without a complete checkpoint, it starts again.
    """
    from ..checkpoints import last_complete_checkpoint
    from ..files import write_json
    from ..recipe import parse_recipe, run_recipe
    from ..frequency import FrequencyTable
    from ..study.provenance import provenance
    from .evaluate import evaluate_model, load_for_eval, load_validation_split

    # Every arm is evaluated with the same recipe (`eval_argv`: no exemption, floor, CE anchor or prior), so that its
    # validation PDL uses the same weights in every arm; those settings change only how an arm trains.
    argv = ["--config", config, *overrides, "--output_dir", str(folder), "--loss_type", "pdl",
            "--pdl_alpha", str(arm.alpha), "--pdl_alpha_warmup_steps", str(arm.warmup_steps), "--seed", str(seed),
            "--save_strategy", "no", "--report_to", "none", "--pdl_exempt_special_tokens", str(arm.exempt).lower()]
    eval_argv = [*argv[:-1], "false"]
    argv += arm.recipe_options()  # floor, CE anchor, prior: training only, like the exemption
    trainer = None
    if not (folder / TRAIN_FILE).is_file():
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
        clock = _training_clock(resume)
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
        model, tokenizer = trainer.model, trainer.processing_class
    recipe = parse_recipe(eval_argv)
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


# ---- aggregation and report ---------------------------------------------------------------------------------------

# (key in results, column title, higher is better?, source)
VALIDATION_COLUMNS = [("ce", "val CE", False), ("pdl", "val PDL", False)]
GENERATION_COLUMNS = [
    ("rouge_l", "ROUGE-L", True),
    ("rouge_l_first_line", "ROUGE-L 1st line", True),
    ("distinct_1", "distinct-1", True),
    ("distinct_2", "distinct-2", True),
    ("repetition_3", "rep-3", False),
    ("self_information_bits", "self-info (bits)", None),
    ("rare_token_recall", "rare recall", True),
    ("unseen_token_rate", "unseen tok", None),
    ("mean_tokens", "tokens", None),
    ("hit_token_limit", "hit limit", None),
    ("blank_line_first", "blank 1st line", None),
    ("parse_rate", "parses", True),
    ("parse_rate_finished", "parses (finished)", True),
    ("body_parse_rate", "body parses (cut)", True),
    ("pass_at_1", "pass@1", True),
]


def load_runs(task_dir: Path) -> dict[str, list[dict]]:
    """Finished runs of one task, by arm name (arms sorted by alpha, exempt arms after them, warm-up arms last).

    A run folder counts once it has `results.json` (and then needs `train.json`); a folder marked `done` without
    `results.json`, or with results but no `train.json`, is an error that names it; other folders are runs in progress.
    """
    runs: dict[str, list[dict]] = {}
    for folder in sorted(p for p in Path(task_dir).glob("*/seed-*") if p.is_dir()):
        results_file, train_file = folder / RESULTS_FILE, folder / TRAIN_FILE
        if not results_file.is_file():
            if (folder / DONE).is_file():
                raise PDLConfigError(
                    f"{folder} is marked finished (`{DONE}`) but has no {RESULTS_FILE}. Delete its `{DONE}` file and "
                    f"run pdl-compare without --report_only to evaluate it again, or restore {results_file}."
                )
            continue
        if not train_file.is_file():
            raise PDLConfigError(f"{folder} has {RESULTS_FILE} but no {TRAIN_FILE} (log history and timings). Restore "
                                 f"{train_file}, or delete the folder to redo the run.")
        try:
            result, train = json.loads(results_file.read_text()), json.loads(train_file.read_text())
        except ValueError as err:
            raise PDLConfigError(f"{folder}: {RESULTS_FILE} or {TRAIN_FILE} is not valid JSON ({err}). Restore it, or "
                                 "delete the folder to redo the run.") from None
        check_run_results(folder, result, train)
        result["train"] = train
        _fill_text_metrics(result)
        runs.setdefault(result["arm"], []).append(result)
    check_same_data(runs)
    return dict(sorted(runs.items(), key=lambda kv: (kv[1][0]["warmup_steps"] > 0, bool(kv[1][0].get("exempt")),
                                                     bool(kv[1][0].get("options")), kv[1][0]["alpha"], kv[0])))


_DATA_KEYS = ("total_tokens", "distinct", "masking", "rare_types", "data_fingerprint")


def check_same_data(runs: dict[str, list[dict]]) -> None:
    """Refuse a report whose runs were trained on different data: their paired differences would compare different
    batches (one more row reshuffles every batch) and not the arms. The training table's size, distinct tokens and
    masking, and its data fingerprint where recorded, must agree; the summarization set, built from the machine's apt
    index, changes when Debian updates it."""
    first = None
    for results in runs.values():
        for result in results:
            data = result.get("table") or {}
            if first is None:
                first = result
                continue
            known = [key for key in _DATA_KEYS if key in data and key in (first.get("table") or {})]
            differing = [f"{key} {first['table'][key]} vs {data[key]}" for key in known
                         if data[key] != first['table'][key]]
            if differing:
                raise PDLConfigError(
                    f"{first['arm']} seed {first['seed']} and {result['arm']} seed {result['seed']} were trained on "
                    f"different data ({'; '.join(differing)}), so their paired differences would not compare the "
                    "arms. Keep runs of different data in different results folders (--results_dir), and rerun the "
                    "baseline on the data the other arms use."
                )


def _fill_text_metrics(result: dict) -> None:
    """Text-only metrics added after a run was evaluated, recomputed from its stored generations when missing."""
    samples = result.get("samples") or []
    references = [metrics.first_line(s["reference"]) for s in samples]
    code = any("parse_rate" in scored for scored in result["generation"].values())
    for mode, scored in result["generation"].items():
        texts = [s[mode] for s in samples]
        if texts and "rouge_l_first_line" not in scored:
            scored["rouge_l_first_line"] = metrics.rouge_l([metrics.first_line(t) for t in texts], references)
        if texts and code and "body_parse_rate" not in scored:
            scored["body_parse_rate"] = float(np.mean([metrics.body_parses(t) for t in texts]))


def cell(values: list[float], digits: int = 3) -> str:
    stats = metrics.summarize(values)
    if stats["n"] == 0:
        return "-"
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def metric_table(runs: dict[str, list[dict]], mode: str, base: dict | None = None) -> str:
    present = [c for c in GENERATION_COLUMNS if any(c[0] in r["generation"][mode] for rs in runs.values() for r in rs)]
    head = ["arm", "seeds"] + ([t for _, t, _ in VALIDATION_COLUMNS] if mode == "greedy" else []) + [t for _, t, _ in present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, results in runs.items():
        row = [_arm_label(results[0]), str(len(results))]
        if mode == "greedy":
            row += [cell([r["validation"][key] for r in results]) for key, _, _ in VALIDATION_COLUMNS]
        row += [cell([r["generation"][mode].get(key, math.nan) for r in results]) for key, _, _ in present]
        lines.append("| " + " | ".join(row) + " |")
    if base is not None and mode in base["generation"]:
        row = ["base model, no finetuning (pdl-eval)", "1"]
        if mode == "greedy":
            row += [cell([base["validation"][key]]) for key, _, _ in VALIDATION_COLUMNS]
        row += [cell([base["generation"][mode].get(key, math.nan)]) for key, _, _ in present]
        lines.append("| " + " | ".join(row) + " |")
    first = next(iter(runs.values()))[0]
    refs = first["references"]
    ref_row = ["references", "-"] + (["-", "-"] if mode == "greedy" else [])
    for key, _, _ in present:
        ref_row.append(f"{refs[key]:.3f}" if key in refs else "-")
    lines.append("| " + " | ".join(ref_row) + " |")
    return "\n".join(lines)


def _arm_label(result: dict) -> str:
    return Arm.of(result).label


def _curve(result: dict, key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in result["train"]["log_history"] if key in e and "step" in e}


def plot_loss_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Training CE and loss per step (mean over seeds, band = seed range), and each arm's training CE minus the
    baseline's on the same seed: same seed, same batches, so the batch-to-batch noise cancels."""
    plt = pyplot()

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.4))
    baseline = next((results for results in runs.values() if results[0]["alpha"] == 0), None)
    baseline_by_seed = {r["seed"]: _curve(r, "ce_loss") for r in baseline} if baseline else {}

    def band(axis, curves, label, color=None):
        steps = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if not steps:
            return None
        values = np.array([[c[s] for s in steps] for c in curves])
        line, = axis.plot(steps, values.mean(0), marker=".", label=label, color=color)
        if len(curves) > 1:
            axis.fill_between(steps, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
        return line.get_color()

    for name, results in runs.items():
        label = _arm_label(results[0])
        color = band(left, [_curve(r, "ce_loss") for r in results], label)
        band(middle, [_curve(r, "loss") for r in results], label, color)
        paired = []
        for r in results:
            base = baseline_by_seed.get(r["seed"])
            if base is not None:
                ce = _curve(r, "ce_loss")
                paired.append({s: ce[s] - base[s] for s in ce if s in base})
        if paired:
            band(right, paired, label, color)
    left.set(xlabel="optimizer step", ylabel="cross-entropy of the step's trained tokens",
             title="Training cross-entropy (mean over seeds, band = range)")
    middle.set(xlabel="optimizer step", ylabel="training loss", title="Training loss (each arm's own PDL)")
    right.axhline(0, color="grey", linewidth=0.8)
    right.set(xlabel="optimizer step", ylabel="CE minus the alpha-0 run's CE, same seed",
              title="Training CE against the baseline, same batches")
    for axis in (left, middle, right):
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    return save_figure(figure, path)


def plot_rank_distribution(runs: dict[str, list[dict]], path: Path, mode: str = "greedy") -> Path:
    """Cumulative share of tokens by training-frequency rank (log x), generations of each arm against references."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 4.6))

    def draw(ranks, label, **style):
        ranks = np.asarray(ranks)
        seen = np.sort(ranks[ranks > 0])
        if seen.size == 0:
            return
        unseen = float((ranks == 0).mean())
        axis.step(seen, np.arange(1, seen.size + 1) / ranks.size, where="post",
                  label=f"{label} (unseen {unseen:.0%})", **style)

    first = next(iter(runs.values()))[0]
    draw(first["ranks"]["references"], "references", color="black", linewidth=2)
    for name, results in runs.items():
        draw([k for r in results for k in r["ranks"][mode]], _arm_label(results[0]))
    axis.set_xscale("log")
    axis.set(xlabel="training-frequency rank of the token (1 = most frequent trained token)",
             ylabel="cumulative share of tokens", title=f"Frequency-rank distribution of {mode} generations")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    return save_figure(figure, path, dpi=110)


# ---- paired statistics -------------------------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t, t(0.975; df), for df = 1..30 (standard tables, 4 decimals)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
         2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t(0.975; df): the table for df <= 30, the Cornish-Fisher expansion beyond (error < 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def t_interval(values: list[float]) -> dict:
    """Mean and its two-sided 95% t-interval, ``mean ± t(0.975; n-1) * sd / sqrt(n)`` (sample sd); NaN bounds for
    fewer than 2 values. NaNs are dropped."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(clean)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan}
    mean = float(np.mean(clean))
    if n < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    sd = float(np.std(clean, ddof=1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired_differences(baseline: dict[int, float], arm: dict[int, float]) -> dict:
    """Per seed present (and not NaN) in both, ``arm - baseline``, and their mean with its 95% t-interval."""
    seeds = sorted(s for s in set(baseline) & set(arm)
                   if not math.isnan(float(baseline[s])) and not math.isnan(float(arm[s])))
    differences = [float(arm[s]) - float(baseline[s]) for s in seeds]
    return {"seeds": seeds, "differences": differences, **t_interval(differences)}


def _bucket_ce(name: str):
    def get(result: dict) -> float:
        for bucket in result["validation"].get("ce_by_bucket", []):
            if bucket["bucket"] == name:
                return bucket["ce"]
        return math.nan
    return get


def _generation(key: str, mode: str = "greedy"):
    return lambda result: result["generation"].get(mode, {}).get(key, math.nan)


# (row title, value of one run, higher is better?) for the paired table; rows whose values are all missing are left out
PAIRED_METRICS = [
    ("val CE", lambda r: r["validation"]["ce"], False),
    *[(f"val CE, tokens seen {name} times" if name != "unseen" else "val CE, tokens unseen in training",
       _bucket_ce(name), False) for name, _, _ in metrics.FREQUENCY_BUCKETS],
    ("val PDL (unseen: rarest)", lambda r: r["validation"]["pdl"] if "pdl_unseen_weight" in r["validation"]
     else math.nan, False),
    ("ROUGE-L (greedy)", _generation("rouge_l"), True),
    ("ROUGE-L 1st line (greedy)", _generation("rouge_l_first_line"), True),
    ("pass@1 (greedy)", _generation("pass_at_1"), True),
    ("parse rate (greedy)", _generation("parse_rate"), True),
    ("body parses, cut (greedy)", _generation("body_parse_rate"), True),
    ("distinct-1 (greedy)", _generation("distinct_1"), True),
    ("distinct-2 (greedy)", _generation("distinct_2"), True),
    ("rep-3 (greedy)", _generation("repetition_3"), False),
    ("rare-token recall (greedy)", _generation("rare_token_recall"), True),
    ("self-information, bits (greedy)", _generation("self_information_bits"), None),
    ("replies at the length limit (greedy)", _generation("hit_token_limit"), False),
    ("end-of-reply probability (validation)", lambda r: _end_of_reply(r, "probability"), True),
    ("end-of-reply CE (validation)", lambda r: _end_of_reply(r, "ce"), False),
]


def _end_of_reply(result: dict, key: str) -> float:
    """The end-of-reply token's validation figure (runs evaluated before 2026-12-07 did not record it)."""
    return (result["validation"].get("end_of_reply") or {}).get(key, math.nan)


def _verdict(stats: dict, higher_better: bool | None) -> str:
    if stats["n"] < 2 or math.isnan(stats["low"]):
        return "too few seeds"
    if stats["low"] <= 0 <= stats["high"]:
        return "no difference shown"
    if higher_better is None:
        return "differs"
    better = (stats["low"] > 0) == higher_better
    return "**better than CE**" if better else "**worse than CE**"


def _num(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _baseline_name(runs: dict[str, list[dict]]) -> str | None:
    """The CE arm: alpha 0 without a warm-up (None when it has no finished run)."""
    return next((name for name, rs in runs.items() if Arm.of(rs[0]) == Arm(0.0)), None)


def paired_report(runs: dict[str, list[dict]]) -> list[str]:
    """Markdown: per arm, each metric's per-seed difference to the CE arm and the mean with a 95% t-interval."""
    baseline_name = _baseline_name(runs)
    if baseline_name is None:
        return ["No CE arm (alpha 0) among the finished runs: no paired comparison."]
    baseline = runs[baseline_name]
    lines = [
        "Each arm against the CE arm (alpha 0) on the same seed (same LoRA initialisation, same batches): the "
        "difference arm - CE per seed, its mean, and the 95% confidence interval of the mean difference from "
        "Student's t over seeds (mean ± t(0.975; n-1) · sd / √n, n = seeds). \"better/worse than CE\" when the "
        "interval excludes 0. Generation metrics are of greedy decoding.",
        "",
    ]
    for name, results in runs.items():
        if name == baseline_name:
            continue
        lines += [f"**{_arm_label(results[0])} − CE**", "",
                  "| metric | CE mean (same seeds) | arm − CE per seed | mean difference | 95% t-interval | verdict |",
                  "|---|---|---|---|---|---|"]
        for title, get, higher_better in PAIRED_METRICS:
            base_values = {r["seed"]: get(r) for r in baseline}
            arm_values = {r["seed"]: get(r) for r in results}
            stats = paired_differences(base_values, arm_values)
            if not stats["seeds"]:
                continue
            per_seed = ", ".join(f"s{seed}: {_num(d)}" for seed, d in zip(stats["seeds"], stats["differences"]))
            interval = "-" if math.isnan(stats["low"]) else f"[{_num(stats['low'])}, {_num(stats['high'])}]"
            ce_mean = float(np.mean([base_values[seed] for seed in stats["seeds"]]))  # over the paired seeds
            lines.append(f"| {title} | {ce_mean:.4f} | {per_seed} | {_num(stats['mean'])} | {interval} | "
                         f"{_verdict(stats, higher_better)} |")
        lines.append("")
    return lines


def bucket_report(runs: dict[str, list[dict]]) -> list[str]:
    """Markdown: validation CE by training-frequency bucket, mean ± sd over seeds per arm, tokens per bucket."""
    first = next(iter(runs.values()))[0]
    buckets = first["validation"].get("ce_by_bucket")
    if not buckets:
        return ["These runs were evaluated before validation CE by frequency bucket existed (pdl-eval/1)."]
    head = ["arm", "seeds", *[f"{b['bucket']} ({b['tokens']} tok)" for b in buckets]]
    lines = [
        "Validation cross-entropy of the tokens counted 0 (unseen), 1-2, 3-10, 11-100 and more than 100 times in the "
        "training table (token counts of the validation split in the header). If PDL does what it claims, the rare "
        "buckets improve and the frequent ones pay.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for results in runs.values():
        cells = [cell([_bucket_ce(b["bucket"])(r) for r in results]) for b in buckets]
        lines.append(f"| {_arm_label(results[0])} | {len(results)} | " + " | ".join(cells) + " |")
    return lines


def bucket_differences(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per arm other than CE, per training-frequency bucket: the paired difference of validation CE (arm - CE, same
    seed) with its mean and 95% t-interval, and the bucket's validation token count. Empty without a CE arm or
    buckets."""
    baseline_name = _baseline_name(runs)
    first = next(iter(runs.values()))[0]
    buckets = first["validation"].get("ce_by_bucket")
    if baseline_name is None or not buckets:
        return {}
    out = {}
    for name, results in runs.items():
        if name == baseline_name:
            continue
        rows = []
        for bucket in buckets:
            get = _bucket_ce(bucket["bucket"])
            stats = paired_differences({r["seed"]: get(r) for r in runs[baseline_name]},
                                       {r["seed"]: get(r) for r in results})
            rows.append({"bucket": bucket["bucket"], "tokens": bucket["tokens"], **stats})
        out[_arm_label(results[0])] = rows
    return out


def plot_bucket_differences(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """PDL's mechanism in one figure: per frequency bucket, each arm's mean paired difference of validation CE to CE
    with its 95% t-interval (no bar with a single seed). None when there is nothing to draw."""
    differences = bucket_differences(runs)
    if not differences:
        return None
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    rows = next(iter(differences.values()))
    positions = np.arange(len(rows))
    width = 0.8 / len(differences)
    for index, (label, arm_rows) in enumerate(differences.items()):
        means = np.array([row["mean"] for row in arm_rows])
        low = np.array([row["low"] for row in arm_rows])
        high = np.array([row["high"] for row in arm_rows])
        seeds = max(row["n"] for row in arm_rows)
        errors = None if np.isnan(low).all() else np.vstack([means - low, high - means])
        axis.errorbar(positions + (index - (len(differences) - 1) / 2) * width, means, yerr=errors, fmt="o",
                      capsize=3, label=f"{label} (n = {seeds} seeds)")
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xticks(positions, [f"{row['bucket']}\n({row['tokens']} tokens)" for row in rows])
    axis.set(xlabel="how often the token was trained (training table count)",
             ylabel="validation CE, arm minus CE (same seed)",
             title="Validation CE by training frequency against CE (mean, 95% t-interval)")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def _eval_curve(result: dict) -> list[tuple[int, float]]:
    history = result["train"].get("log_history", [])
    key = "eval_ce_loss" if any("eval_ce_loss" in e for e in history) else "eval_loss"
    return sorted((int(e["step"]), float(e[key])) for e in history if key in e and "step" in e)


def flattening(result: dict, threshold: float = 0.02) -> dict:
    """Whether a run's validation CE had flattened: its relative improvement over the last quarter of the run, from
    the last evaluation at or before 3/4 of the final step to the last evaluation, is under `threshold`."""
    curve = _eval_curve(result)
    final_step = max([result["train"].get("global_step", 0), *[step for step, _ in curve]] or [0])
    start = [point for point in curve if point[0] <= 0.75 * final_step]
    if len(curve) < 2 or not start or start[-1] == curve[-1]:
        return {"available": False, "evaluations": len(curve), "final_step": final_step}
    (step_a, value_a), (step_b, value_b) = start[-1], curve[-1]
    improvement = (value_a - value_b) / value_a
    return {"available": True, "evaluations": len(curve), "final_step": final_step, "from_step": step_a,
            "from_ce": value_a, "to_step": step_b, "to_ce": value_b, "improvement": improvement,
            "flattened": improvement < threshold}


def flattening_report(runs: dict[str, list[dict]]) -> list[str]:
    baseline_name = _baseline_name(runs)
    if baseline_name is None:
        return ["No CE arm (alpha 0): no flattening check."]
    baseline = runs[baseline_name]
    lines = ["Has the CE arm's validation cross-entropy flattened? Relative improvement over the last quarter of the "
             "run (from the last evaluation at or before 3/4 of the steps to the last one) from the evaluations in the "
             "training log (the trainer's evaluations on its eval split, or on its first `max_eval_samples` rows); "
             "flattened when under 2%.", "",
             "| seed | evaluations | val CE at step | val CE at step | improvement | flattened |",
             "|---|---|---|---|---|---|"]
    for result in sorted(baseline, key=lambda r: r["seed"]):
        check = flattening(result)
        if not check["available"]:
            lines.append(f"| {result['seed']} | {check['evaluations']} | - | - | - | not measurable: train with "
                         "`--eval_strategy steps --eval_steps N` (at least one evaluation before the last quarter) |")
            continue
        lines.append(f"| {result['seed']} | {check['evaluations']} | {check['from_ce']:.4f} (step {check['from_step']})"
                     f" | {check['to_ce']:.4f} (step {check['to_step']}) | {100 * check['improvement']:.2f}% | "
                     f"{'yes' if check['flattened'] else '**no**'} |")
    return lines


def plot_validation_curves(runs: dict[str, list[dict]], path: Path) -> Path | None:
    """Validation CE per evaluation step (mean over seeds, band = range), from the training logs; None without any."""
    if not any(_eval_curve(r) for rs in runs.values() for r in rs):
        return None
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    for results in runs.values():
        curves = [dict(_eval_curve(r)) for r in results if _eval_curve(r)]
        steps = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if not steps:
            continue
        values = np.array([[c[s] for s in steps] for c in curves])
        line, = axis.plot(steps, values.mean(0), marker=".", label=_arm_label(results[0]))
        if len(curves) > 1:
            axis.fill_between(steps, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
    axis.set(xlabel="optimizer step", ylabel="validation cross-entropy",
             title="Validation CE during training (mean over seeds, band = range)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def write_report(task: str, task_dir: Path, report: Path, command: str, base_dirs: tuple[Path, ...] = ()) -> Path:
    """The markdown report of the finished runs under `task_dir` (figures beside it). `base-model.json` is read from
    `task_dir`, else from the first of `base_dirs` that has one."""
    runs = load_runs(task_dir)
    if not runs:
        raise PDLConfigError(f"No finished run under {task_dir}: nothing to report yet (a run is finished once its "
                             f"folder <arm>/seed-<s>/ holds {RESULTS_FILE} and {TRAIN_FILE}).")
    figures = report.parent
    loss_png = plot_loss_curves(runs, figures / f"{task}-loss-curves.png")
    rank_png = plot_rank_distribution(runs, figures / f"{task}-frequency-rank.png")
    validation_png = plot_validation_curves(runs, figures / f"{task}-validation-curves.png")
    buckets_png = plot_bucket_differences(runs, figures / f"{task}-bucket-differences.png")
    base_file = next((Path(d) / BASE_FILE for d in (task_dir, *base_dirs) if (Path(d) / BASE_FILE).is_file()), None)
    base = json.loads(base_file.read_text()) if base_file is not None else None
    if base is not None:
        _fill_text_metrics(base)
    first = next(iter(runs.values()))[0]
    validation = first["validation"]
    train_cpu = sum(r["train"]["cpu_s"] for rs in runs.values() for r in rs)
    eval_cpu = sum(r["time"]["cpu_s"] for rs in runs.values() for r in rs)
    train_wall = sum(r["train"]["wall_s"] for rs in runs.values() for r in rs)
    eval_wall = sum(r["time"]["wall_s"] for rs in runs.values() for r in rs)
    steps = sorted({r["train"]["global_step"] for rs in runs.values() for r in rs})
    seen = sorted({r["train"]["examples_seen"] for rs in runs.values() for r in rs if "examples_seen" in r["train"]})
    epochs = sorted({round(r["train"]["epoch"], 2) for rs in runs.values() for r in rs if r["train"].get("epoch")})
    settings = first["settings"]
    split = first.get("split", "validation")
    policy = validation.get("pdl_unseen_weight")
    pdl_words = (f"PDL at alpha {validation['pdl_alpha']:g} for every arm, weights from the training table, tokens "
                 "the table never counted weighted as its rarest counted token" if policy == "rarest" else
                 f"PDL at alpha {validation['pdl_alpha']:g} for every arm, weights from the training table "
                 "(equation 3 as is for unseen tokens)")
    task_words = (f" Task type: {first['task_type']} ({first.get('task_type_reason', '')})."
                  if "task_type" in first else "")
    stop_list = ", ".join(repr(stop) for stop in first.get("stop_sequences") or [])
    stops = f" Code generations stop at the next top-level statement ({stop_list})." if stop_list else ""
    scale = f"{'/'.join(map(str, steps))} optimizer steps"
    if seen:
        scale += f", {'/'.join(map(str, seen))} training examples seen"
    if epochs:
        scale += f" ({'/'.join(map(str, epochs))} epochs)"
    lines = [
        f"## {task}",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"{sum(len(rs) for rs in runs.values())} runs, {scale} each; evaluated on the first "
        f"{first['prompts']} prompts of the `{split}` split, at most {settings['max_new_tokens']} new tokens, greedy "
        f"and one sampled run (temperature {settings['temperature']}, top-p {settings['top_p']}, seed = training "
        f"seed).{task_words}{stops} Validation CE and PDL on the trained tokens of the same {validation['rows']} "
        f"`{split}` rows; {pdl_words}.",
        "",
        f"CPU time: training {train_cpu / 60:.1f} min, evaluation {eval_cpu / 60:.1f} min "
        f"(wall {train_wall / 60:.1f} + {eval_wall / 60:.1f} min).",
        "",
        "### Paired differences against CE",
        "",
        *paired_report(runs),
        "### The pre-registered rule",
        "",
        *rule_report(runs),
        "### Validation CE by training frequency",
        "",
        *bucket_report(runs),
        "",
        *([f"![{task} validation CE by frequency against CE]({buckets_png.name})", ""] if buckets_png else []),
        "### Has the CE arm converged?",
        "",
        *flattening_report(runs),
        "",
        "### All metrics (cells: mean ± sample sd over seeds)",
        "",
        "Greedy decoding:",
        "",
        metric_table(runs, "greedy", base),
        "",
    ]
    if any("sampled" in r["generation"] for rs in runs.values() for r in rs):
        lines += ["Sampled decoding:", "", metric_table(runs, "sampled", base), ""]
    rel = lambda p: Path(p).resolve().relative_to(report.parent.resolve()).as_posix()  # noqa: E731
    lines += [f"![{task} loss curves]({rel(loss_png)})", ""]
    if validation_png is not None:
        lines += [f"![{task} validation curves]({rel(validation_png)})", ""]
    lines += [f"![{task} frequency ranks]({rel(rank_png)})", ""]
    lines += provenance_report(runs)
    text = "\n".join(lines) + "\n"
    return write_atomically(report, lambda tmp: Path(tmp).write_text(text), "report")


def provenance_report(runs: dict[str, list[dict]]) -> list[str]:
    """Markdown: which commit, libraries and processor trained and evaluated the runs, one row per combination (empty
    when no run recorded it: the first study's runs predate the record)."""
    groups: dict[tuple, list[str]] = {}
    for name, results in runs.items():
        for result in results:
            for stage, record in (("training", result["train"].get("provenance")), ("evaluation", result.get("provenance"))):
                key = _provenance_key(record)
                groups.setdefault((stage, *key), []).append(f"{name} seed {result['seed']}")
    if all(key[1] == "not recorded" for key in groups):
        return []
    lines = ["### Provenance", "", "| stage | commit | torch / transformers / trl / peft | CPU | runs |", "|---|---|---|---|---|"]
    for (stage, commit, versions, cpu), names in sorted(groups.items()):
        lines.append(f"| {stage} | {commit} | {versions} | {cpu} | {', '.join(names)} |")
    return [*lines, ""]


def _provenance_key(record: dict | None) -> tuple[str, str, str]:
    if not record:
        return "not recorded", "-", "-"
    commit = (record.get("commit") or "no git checkout")[:10] + (" (+ uncommitted changes)"
                                                                  if record.get("uncommitted_changes") else "")
    versions = record.get("versions") or {}
    libraries = " / ".join(str(versions.get(name)) for name in ("torch", "transformers", "trl", "peft"))
    return commit, libraries, record.get("cpu") or "-"


def rule_report(runs: dict[str, list[dict]]) -> list[str]:
    """Markdown: each arm's verdict by the pre-registered rule (`pdl_plugin.study.rule`) on all its paired seeds and,
    when the arm has seeds beyond seed 0 (the seed that chose the arms of stage 2), on those alone; with one seed,
    stage 1's screening order."""
    from ..study import rule

    baseline_name = _baseline_name(runs)
    if baseline_name is None:
        return []
    code = any("parse_rate" in r["generation"].get("greedy", {}) for rs in runs.values() for r in rs)
    keys = (*rule.output_metrics(code), rule.LIMIT, *rule.SPECIFICITY)
    rows, screen = [], []
    for name, results in runs.items():
        if name == baseline_name:
            continue
        stats_of = lambda seeds: {key: paired_differences(  # noqa: E731
            {r["seed"]: _generation(key)(r) for r in runs[baseline_name] if r["seed"] in seeds},
            {r["seed"]: _generation(key)(r) for r in results if r["seed"] in seeds}) for key in keys}
        seeds = {r["seed"] for r in results}
        stats = stats_of(seeds)
        later = stats_of(seeds - {0}) if len(seeds - {0}) >= 2 else None
        cells = [f"{stats[key]['mean']:+.3f}" if stats[key]["n"] else "-" for key in keys]
        rows.append(f"| {_arm_label(results[0])} | {len(stats[keys[0]]['seeds'])} | " + " | ".join(cells)
                    + f" | {rule.verdict(stats, code)} | {rule.verdict(later, code) if later else '-'} |")
        if all(stats[key]["n"] for key in keys[:-2]) and 0 in seeds:
            first = stats_of({0})
            screen.append((rule.screen_key({key: first[key]["mean"] for key in keys if first[key]["n"]}, code),
                           _arm_label(results[0])))
    titles = [_RULE_TITLES[key] for key in keys]
    lines = ["The rule registered before the second study (docs/results.md; `pdl_plugin/study/rule.py`), on the paired "
             "differences arm − CE (greedy replies): **helps** when the replies end no worse (share at the length "
             f"limit at most {rule.LIMIT_TOLERANCE:.2f} above CE's) and an output metric is better with an interval "
             "that excludes 0, or the rare-token recall or self-information is higher with an interval that excludes 0 "
             f"while every output metric is at most {rule.OUTPUT_TOLERANCE} below CE's; **harms** when an output metric "
             "is lower, or the share at the limit higher, with an interval that excludes 0.", "",
             "| arm | paired seeds | " + " | ".join(f"{t} − CE" for t in titles) + " | verdict | verdict, seeds other "
             "than 0 |", "|" + "---|" * (len(keys) + 4), *rows, ""]
    if screen:
        order = [label for _, label in sorted(screen, key=lambda item: item[0], reverse=True)]
        lines += ["Stage 1 order on seed 0 (arms whose outputs hold and whose replies end first, then by the summed "
                  "output difference, then by rare-token recall): " + "; ".join(order) + ".", ""]
    return lines


_RULE_TITLES = {"parse_rate": "parse rate", "rouge_l": "ROUGE-L", "hit_token_limit": "at length limit",
                "rare_token_recall": "rare-token recall", "self_information_bits": "self-info (bits)"}

"""A study's markdown report, drawn from its finished runs (`results.json` and `train.json` of each arm and seed) with
its figures beside it.

The report leads with paired statistics: every arm against the CE arm (alpha 0) on the same seed (same LoRA
initialisation, same batches), the per-seed difference and its mean with a 95% t-interval over seeds.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PDLConfigError
from ..files import write_atomically
from .plan import RESULTS_FILE, TRAIN_FILE
from .plots import plot_bucket_differences, plot_loss_curves, plot_rank_distribution, plot_validation_curves
from .results import load_base, load_runs
from .sections import bucket_report, flattening_report, metric_table, paired_report, provenance_report, rule_report


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
    base = load_base(task_dir, base_dirs)
    lines = [
        f"## {task}",
        "",
        f"Command: `{command}`" if command else "",
        "",
        _method(runs),
        "",
        _time_spent(runs),
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


def _scale(runs: dict[str, list[dict]]) -> str:
    """How long the runs trained: optimizer steps, training examples seen and epochs (each value that occurs)."""
    steps = sorted({r["train"]["global_step"] for rs in runs.values() for r in rs})
    seen = sorted({r["train"]["examples_seen"] for rs in runs.values() for r in rs if "examples_seen" in r["train"]})
    epochs = sorted({round(r["train"]["epoch"], 2) for rs in runs.values() for r in rs if r["train"].get("epoch")})
    scale = f"{'/'.join(map(str, steps))} optimizer steps"
    if seen:
        scale += f", {'/'.join(map(str, seen))} training examples seen"
    if epochs:
        scale += f" ({'/'.join(map(str, epochs))} epochs)"
    return scale


def _method(runs: dict[str, list[dict]]) -> str:
    """The paragraph that says how the runs were trained and scored."""
    first = next(iter(runs.values()))[0]
    validation = first["validation"]
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
    return (f"{sum(len(rs) for rs in runs.values())} runs, {_scale(runs)} each; evaluated on the first "
            f"{first['prompts']} prompts of the `{split}` split, at most {settings['max_new_tokens']} new tokens, "
            f"greedy and one sampled run (temperature {settings['temperature']}, top-p {settings['top_p']}, seed = "
            f"training seed).{task_words}{stops} Validation CE and PDL on the trained tokens of the same "
            f"{validation['rows']} `{split}` rows; {pdl_words}.")


def _time_spent(runs: dict[str, list[dict]]) -> str:
    """The CPU (and wall) minutes of training and evaluation, summed over the runs."""
    train_cpu = sum(r["train"]["cpu_s"] for rs in runs.values() for r in rs)
    eval_cpu = sum(r["time"]["cpu_s"] for rs in runs.values() for r in rs)
    train_wall = sum(r["train"]["wall_s"] for rs in runs.values() for r in rs)
    eval_wall = sum(r["time"]["wall_s"] for rs in runs.values() for r in rs)
    return (f"CPU time: training {train_cpu / 60:.1f} min, evaluation {eval_cpu / 60:.1f} min "
            f"(wall {train_wall / 60:.1f} + {eval_wall / 60:.1f} min).")

"""`pdl-compare` orchestration: one adapter per alpha arm and seed, evaluated, aggregated into a markdown report.

Layout: ``OUTDIR/<task>/<arm>/seed-<s>/`` holds the adapter, `train.json` (log history and timings, written when
training finished), `results.json` (the evaluation) and a `done` marker. A rerun skips runs with `done`, evaluates runs
with `train.json` but no `done`, and retrains runs with neither (a run interrupted mid-training is redone).
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PDLConfigError
from . import metrics

DONE = "done"
TRAIN_FILE = "train.json"
RESULTS_FILE = "results.json"
BASE_FILE = "base-model.json"  # optional: `pdl-eval` of the untrained base model, shown as one more row


@dataclass(frozen=True)
class Arm:
    alpha: float
    warmup_steps: int = 0

    @property
    def name(self) -> str:
        return f"alpha-{self.alpha:g}" + (f"-warmup-{self.warmup_steps}" if self.warmup_steps else "")

    @property
    def label(self) -> str:
        if self.alpha == 0:
            return "alpha 0 (CE baseline)"
        return f"alpha {self.alpha:g}" + (f", warm-up {self.warmup_steps} steps" if self.warmup_steps else "")


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PDLConfigError(f"--alphas must be comma-separated numbers such as 0,0.25,0.5,1.0; got {text!r}.") from None
    if not alphas or any(not a >= 0 or math.isinf(a) for a in alphas):
        raise PDLConfigError(f"--alphas must list finite numbers >= 0 (0 is the CE baseline); got {text!r}.")
    return list(dict.fromkeys(alphas))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PDLConfigError(f"--seeds must be comma-separated whole numbers such as 0,1; got {text!r}.") from None
    if not seeds:
        raise PDLConfigError("--seeds must name at least one seed.")
    return list(dict.fromkeys(seeds))


def run_dir(outdir: Path, task: str, arm: Arm, seed: int) -> Path:
    return Path(outdir) / task / arm.name / f"seed-{seed}"


def run_one(config: str, overrides: list[str], folder: Path, arm: Arm, seed: int, settings, reference_alpha: float,
            log=print) -> dict:
    """Train (unless `train.json` shows it was done) and evaluate one arm and seed; return its results."""
    from ..files import write_json
    from ..recipe import parse_recipe, run_recipe
    from ..frequency import FrequencyTable
    from .evaluate import evaluate_model, load_for_eval, load_validation_split

    argv = ["--config", config, *overrides, "--output_dir", str(folder), "--loss_type", "pdl",
            "--pdl_alpha", str(arm.alpha), "--pdl_alpha_warmup_steps", str(arm.warmup_steps), "--seed", str(seed),
            "--save_strategy", "no", "--report_to", "none"]
    trainer = None
    if not (folder / TRAIN_FILE).is_file():
        if folder.exists():
            log(f"{folder}: unfinished training, starting it again")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer = run_recipe(argv)
        write_json(folder / TRAIN_FILE, {
            "argv": argv, "log_history": trainer.state.log_history, "global_step": trainer.state.global_step,
            "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
        })
        model, tokenizer = trainer.model, trainer.processing_class
    recipe = parse_recipe(argv)
    if trainer is None:
        model, tokenizer = load_for_eval(folder, recipe)
    train_dataset, validation = load_validation_split(recipe)
    settings = type(settings)(**{**settings.__dict__, "seed": seed, "reference_alpha": reference_alpha})
    result = evaluate_model(model, tokenizer, recipe, FrequencyTable.load(folder), settings, train_dataset, validation)
    result.update(arm=arm.name, alpha=arm.alpha, warmup_steps=arm.warmup_steps, seed=seed)
    write_json(folder / RESULTS_FILE, result)
    (folder / DONE).write_text("ok\n")
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
    ("parse_rate", "parses", True),
    ("parse_rate_finished", "parses (finished)", True),
    ("body_parse_rate", "body parses (cut)", True),
    ("pass_at_1", "pass@1", True),
]


def load_runs(task_dir: Path) -> dict[str, list[dict]]:
    """Finished runs of one task, by arm name (arms sorted by alpha, warm-up arms last)."""
    runs: dict[str, list[dict]] = {}
    for done in sorted(Path(task_dir).glob(f"*/seed-*/{DONE}")):
        folder = done.parent
        result = json.loads((folder / RESULTS_FILE).read_text())
        train_info = json.loads((folder / TRAIN_FILE).read_text())
        result["train"] = train_info
        _fill_text_metrics(result)
        runs.setdefault(result["arm"], []).append(result)
    return dict(sorted(runs.items(), key=lambda kv: (kv[1][0]["warmup_steps"] > 0, kv[1][0]["alpha"])))


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
    return Arm(result["alpha"], result["warmup_steps"]).label


def _curve(result: dict, key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in result["train"]["log_history"] if key in e and "step" in e}


def plot_loss_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Training CE and loss per step (mean over seeds, band = seed range), and each arm's training CE minus the
    baseline's on the same seed: same seed, same batches, so the batch-to-batch noise cancels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_rank_distribution(runs: dict[str, list[dict]], path: Path, mode: str = "greedy") -> Path:
    """Cumulative share of tokens by training-frequency rank (log x), generations of each arm against references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(task: str, task_dir: Path, report: Path, command: str) -> Path:
    runs = load_runs(task_dir)
    if not runs:
        raise PDLConfigError(f"No finished run under {task_dir}: nothing to report yet.")
    figures = report.parent
    loss_png = plot_loss_curves(runs, figures / f"{task}-loss-curves.png")
    rank_png = plot_rank_distribution(runs, figures / f"{task}-frequency-rank.png")
    base_file = Path(task_dir) / BASE_FILE
    base = json.loads(base_file.read_text()) if base_file.is_file() else None
    if base is not None:
        _fill_text_metrics(base)
    first = next(iter(runs.values()))[0]
    validation = first["validation"]
    train_cpu = sum(r["train"]["cpu_s"] for rs in runs.values() for r in rs)
    eval_cpu = sum(r["time"]["cpu_s"] for rs in runs.values() for r in rs)
    train_wall = sum(r["train"]["wall_s"] for rs in runs.values() for r in rs)
    eval_wall = sum(r["time"]["wall_s"] for rs in runs.values() for r in rs)
    steps = first["train"]["global_step"]
    settings = first["settings"]
    lines = [
        f"## {task}",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"{sum(len(rs) for rs in runs.values())} runs, {steps} optimizer steps each; evaluated on the first "
        f"{first['prompts']} validation prompts, at most {settings['max_new_tokens']} new tokens, greedy and one sampled "
        f"run (temperature {settings['temperature']}, top-p {settings['top_p']}, seed = training seed). Validation CE "
        f"and PDL on the same {validation['rows']} validation rows; PDL at alpha {validation['pdl_alpha']:g} for every "
        "arm, weights from each run's training table. Cells: mean ± sample sd over seeds.",
        "",
        f"CPU time: training {train_cpu / 60:.1f} min, evaluation {eval_cpu / 60:.1f} min "
        f"(wall {train_wall / 60:.1f} + {eval_wall / 60:.1f} min).",
        "",
        "Greedy decoding:",
        "",
        metric_table(runs, "greedy", base),
        "",
    ]
    if any("sampled" in r["generation"] for rs in runs.values() for r in rs):
        lines += ["Sampled decoding:", "", metric_table(runs, "sampled", base), ""]
    rel = lambda p: Path(p).resolve().relative_to(report.parent.resolve()).as_posix()  # noqa: E731
    lines += [f"![{task} loss curves]({rel(loss_png)})", "", f"![{task} frequency ranks]({rel(rank_png)})", ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    return report

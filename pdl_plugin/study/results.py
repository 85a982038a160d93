"""A study's finished runs, read back from their folders: by arm, checked to have been trained on the same data, with
the text metrics added after a run was evaluated filled in from its stored generations; which arm is CE, and each
arm's label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import PDLConfigError
from ..eval import metrics
from .run_results import check_run_results
from .arms import Arm
from .plan import BASE_FILE, DONE, RESULTS_FILE, TRAIN_FILE

END_OF_REPLY_FILE = "end_of_reply.json"  # figures measured after the run's evaluation, beside its results


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
        _fill_end_of_reply(folder, result)
        _fill_text_metrics(result)
        runs.setdefault(result["arm"], []).append(result)
    check_same_data(runs)
    return dict(sorted(runs.items(), key=lambda kv: (kv[1][0]["warmup_steps"] > 0, bool(kv[1][0].get("exempt")),
                                                     bool(kv[1][0].get("options")), kv[1][0]["alpha"], kv[0])))


def load_base(task_dir: Path, base_dirs: tuple[Path, ...] = ()) -> dict | None:
    """The untrained base model's `pdl-eval` results (`base-model.json`) from `task_dir`, else from the first of
    `base_dirs` that has them; None when none has."""
    base_file = next((Path(d) / BASE_FILE for d in (task_dir, *base_dirs) if (Path(d) / BASE_FILE).is_file()), None)
    base = json.loads(base_file.read_text()) if base_file is not None else None
    if base is not None:
        _fill_text_metrics(base)
    return base


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


def _fill_end_of_reply(folder: Path, result: dict) -> None:
    """The run's end-of-reply figures into its results, where they were measured afterwards (`end_of_reply_figures`)."""
    figures = end_of_reply_figures(folder, result)
    if figures is not None:
        result["validation"]["end_of_reply"] = figures


def end_of_reply_figures(folder: Path, result: dict) -> dict | None:
    """A run's end-of-reply figures: its own record, else, for a run evaluated before they were recorded, those
    measured afterwards and kept beside its results (`end_of_reply.json`, by benchmarks/end_of_reply.py or from a
    re-run that reproduced the run); None when neither has them."""
    if "end_of_reply" in result["validation"]:
        return result["validation"]["end_of_reply"]
    side = Path(folder) / END_OF_REPLY_FILE
    if not side.is_file():
        return None
    try:
        figures = json.loads(side.read_text())
    except ValueError as err:
        raise PDLConfigError(f"{side} is not valid JSON ({err}). Restore it, or delete it.") from None
    if not isinstance(figures, dict):
        raise PDLConfigError(f"{side} holds a JSON {type(figures).__name__}, not the object of end-of-reply "
                             "figures benchmarks/end_of_reply.py writes. Restore it, or delete it.")
    return figures


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


def arm_label(result: dict) -> str:
    return Arm.of(result).label


def baseline_name(runs: dict[str, list[dict]]) -> str | None:
    """The CE arm: alpha 0 without a warm-up (None when it has no finished run)."""
    return next((name for name, rs in runs.items() if Arm.of(rs[0]) == Arm(0.0)), None)

"""The markdown sections of a study's report, each from the finished runs by arm: the paired differences against CE,
the pre-registered rule's verdicts, validation CE by training frequency, the CE arm's flattening check, the metric
tables (mean ± sd over seeds) and where the runs were made."""

from __future__ import annotations

import math

import numpy as np

from ..eval import metrics
from . import rule, screen
from .results import arm_label, baseline_name
from .statistics import PAIRED_METRICS, bucket_ce, flattening, paired_differences

# (key in results, column title, higher is better?)
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
    for results in runs.values():
        row = [arm_label(results[0]), str(len(results))]
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


def paired_report(runs: dict[str, list[dict]]) -> list[str]:
    """Markdown: per arm, each metric's per-seed difference to the CE arm and the mean with a 95% t-interval."""
    baseline = baseline_name(runs)
    if baseline is None:
        return ["No CE arm (alpha 0) among the finished runs: no paired comparison."]
    lines = [
        "Each arm against the CE arm (alpha 0) on the same seed (same LoRA initialisation, same batches): the "
        "difference arm - CE per seed, its mean, and the 95% confidence interval of the mean difference from "
        "Student's t over seeds (mean ± t(0.975; n-1) · sd / √n, n = seeds). \"better/worse than CE\" when the "
        "interval excludes 0. Generation metrics are of greedy decoding.",
        "",
    ]
    for name, results in runs.items():
        if name == baseline:
            continue
        lines += [f"**{arm_label(results[0])} − CE**", "",
                  "| metric | CE mean (same seeds) | arm − CE per seed | mean difference | 95% t-interval | verdict |",
                  "|---|---|---|---|---|---|"]
        for title, get, higher_better in PAIRED_METRICS:
            base_values = {r["seed"]: get(r) for r in runs[baseline]}
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
        cells = [cell([bucket_ce(b["bucket"])(r) for r in results]) for b in buckets]
        lines.append(f"| {arm_label(results[0])} | {len(results)} | " + " | ".join(cells) + " |")
    return lines


def flattening_report(runs: dict[str, list[dict]]) -> list[str]:
    baseline = baseline_name(runs)
    if baseline is None:
        return ["No CE arm (alpha 0): no flattening check."]
    lines = ["Has the CE arm's validation cross-entropy flattened? Relative improvement over the last quarter of the "
             "run (from the last evaluation at or before 3/4 of the steps to the last one) from the evaluations in the "
             "training log (the trainer's evaluations on its eval split, or on its first `max_eval_samples` rows); "
             "flattened when under 2%.", "",
             "| seed | evaluations | val CE at step | val CE at step | improvement | flattened |",
             "|---|---|---|---|---|---|"]
    for result in sorted(runs[baseline], key=lambda r: r["seed"]):
        check = flattening(result)
        if not check["available"]:
            lines.append(f"| {result['seed']} | {check['evaluations']} | - | - | - | not measurable: train with "
                         "`--eval_strategy steps --eval_steps N` (at least one evaluation before the last quarter) |")
            continue
        lines.append(f"| {result['seed']} | {check['evaluations']} | {check['from_ce']:.4f} (step {check['from_step']})"
                     f" | {check['to_ce']:.4f} (step {check['to_step']}) | {100 * check['improvement']:.2f}% | "
                     f"{'yes' if check['flattened'] else '**no**'} |")
    return lines


_RULE_TITLES = {"parse_rate": "parse rate", "rouge_l": "ROUGE-L", "hit_token_limit": "at length limit",
                "rare_token_recall": "rare-token recall", "self_information_bits": "self-info (bits)"}


def rule_report(runs: dict[str, list[dict]]) -> list[str]:
    """Markdown: each arm's verdict by the pre-registered rule (`pdl_plugin.study.rule`) on all its paired seeds and,
    when the arm has seeds beyond seed 0 (the seed that chose the arms of stage 2), on those alone; with one seed,
    stage 1's screening order."""
    baseline = baseline_name(runs)
    if baseline is None:
        return []
    code = screen.is_code(runs)
    keys = screen.rule_keys(code)
    rows = []
    for name, results in runs.items():
        if name == baseline:
            continue
        seeds = {r["seed"] for r in results}
        stats = screen.paired_stats(runs, name, seeds, keys)
        later = screen.paired_stats(runs, name, seeds - {0}, keys) if len(seeds - {0}) >= 2 else None
        cells = [f"{stats[key]['mean']:+.3f}" if stats[key]["n"] else "-" for key in keys]
        rows.append(f"| {arm_label(results[0])} | {len(stats[keys[0]]['seeds'])} | " + " | ".join(cells)
                    + f" | {rule.verdict(stats, code)} | {rule.verdict(later, code) if later else '-'} |")
    titles = [_RULE_TITLES[key] for key in keys]
    lines = ["The rule registered before the second study (docs/results.md; `pdl_plugin/study/rule.py`), on the paired "
             "differences arm − CE (greedy replies): **helps** when the replies end no worse (share at the length "
             f"limit at most {rule.LIMIT_TOLERANCE:.2f} above CE's) and an output metric is better with an interval "
             "that excludes 0, or the rare-token recall or self-information is higher with an interval that excludes 0 "
             f"while every output metric is at most {rule.OUTPUT_TOLERANCE} below CE's; **harms** when an output metric "
             "is lower, or the share at the limit higher, with an interval that excludes 0.", "",
             "| arm | paired seeds | " + " | ".join(f"{t} − CE" for t in titles) + " | verdict | verdict, seeds other "
             "than 0 |", "|" + "---|" * (len(keys) + 4), *rows, ""]
    order = screen.stage1_order(runs)
    if order:
        lines += ["Stage 1 order on seed 0 (arms whose outputs hold and whose replies end first, then by the summed "
                  "output difference, then by rare-token recall): "
                  + "; ".join(arm_label(runs[name][0]) for name in order) + ".", ""]
    return lines


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

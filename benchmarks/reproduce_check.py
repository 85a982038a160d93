"""Does a re-run reproduce a committed run? Compares two runs' results (`results.json`, `train.json`) figure by figure:
validation CE and PDL, CE by frequency bucket, every greedy and sampled generation metric, the training losses of
every logged step, and the generated texts; prints each figure's two values and whether they agree to 3 decimals.

    python benchmarks/reproduce_check.py docs/results/study/dialogue/alpha-0/seed-0 \\
        docs/results/study2/reproduction/dialogue/alpha-0/seed-0 [--output FILE.md]

Exit status 1 when a figure differs at 3 decimals (the issue's bar), 0 when all agree. With `--keep_end_of_reply`, a
committed run that predates the end-of-reply record gets the re-run's figures beside it (`end_of_reply.json`, saying
where they come from), only when every figure agrees: the reports then read them as the run's own.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def figures(folder: Path) -> dict[str, float]:
    """Every number the study reports of one run, by a readable name."""
    result = json.loads((folder / "results.json").read_text())
    train = json.loads((folder / "train.json").read_text())
    out = {"validation CE": result["validation"]["ce"], "validation PDL": result["validation"]["pdl"]}
    for bucket in result["validation"].get("ce_by_bucket", []):
        out[f"validation CE, bucket {bucket['bucket']}"] = bucket["ce"]
    for mode, scored in sorted(result["generation"].items()):
        for key, value in sorted(scored.items()):
            if isinstance(value, (int, float)):
                out[f"{mode} {key}"] = value
    for entry in train["log_history"]:
        for key in ("loss", "ce_loss", "eval_ce_loss"):
            if key in entry and "step" in entry:
                out[f"step {entry['step']} {key}"] = entry[key]
    return out


def texts(folder: Path) -> list[str]:
    result = json.loads((folder / "results.json").read_text())
    return [sample.get(mode, "") for sample in result.get("samples", []) for mode in ("greedy", "sampled")]


def compare(committed: Path, rerun: Path) -> tuple[list[str], int]:
    """Markdown rows (name, committed, re-run, difference, agrees to 3 decimals) and the number that differ."""
    a, b = figures(committed), figures(rerun)
    rows, differing = [], 0
    for name in [n for n in a if n in b]:
        diff = b[name] - a[name]
        agrees = round(a[name], 3) == round(b[name], 3) or abs(diff) < 5e-4
        differing += not agrees
        if not agrees or not name.startswith("step "):
            rows.append(f"| {name} | {a[name]:.4f} | {b[name]:.4f} | {diff:+.2e} | {'yes' if agrees else '**no**'} |")
    only = sorted(set(a) ^ set(b))
    same_texts = sum(x == y for x, y in zip(texts(committed), texts(rerun)))
    rows.append(f"| generated texts identical | {len(texts(committed))} | {len(texts(rerun))} | {same_texts} same | "
                f"{'yes' if same_texts == len(texts(committed)) == len(texts(rerun)) else '**no**'} |")
    if only:
        rows.append(f"| figures in one run only | {len(only)} | | {', '.join(only[:6])} | |")
    return rows, differing


def keep_end_of_reply(committed: Path, rerun: Path) -> Path | None:
    """Write the re-run's end-of-reply figures beside the committed run that lacks them (None when it has them, or
    the re-run did not record them); the caller has checked that every figure agrees."""
    side = committed / "end_of_reply.json"
    recorded = json.loads((committed / "results.json").read_text())["validation"].get("end_of_reply")
    figures_of_rerun = json.loads((rerun / "results.json").read_text())["validation"].get("end_of_reply")
    if recorded or side.exists() or not figures_of_rerun:
        return None
    source = (f"the end-of-reply figures of {rerun}, a re-run of this run whose every figure agreed with it to 3 "
              "decimals (benchmarks/reproduce_check.py); this run predates the end-of-reply record and its adapter "
              "was not kept")
    side.write_text(json.dumps({"source": source, **figures_of_rerun}, indent=2) + "\n")
    return side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("committed", type=Path)
    parser.add_argument("rerun", type=Path)
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this markdown file")
    parser.add_argument("--keep_end_of_reply", action="store_true",
                        help="when every figure agrees, keep the re-run's end-of-reply figures beside the committed run")
    options = parser.parse_args(argv)
    rows, differing = compare(options.committed, options.rerun)
    steps = sum(1 for n in figures(options.committed) if n.startswith("step "))
    text = "\n".join([
        f"`{options.rerun}` against `{options.committed}` (`python benchmarks/reproduce_check.py`): "
        f"{differing} figure(s) differ at 3 decimals; the {steps} logged training figures are listed only where they "
        "differ.", "",
        "| figure | committed | re-run | re-run − committed | agrees to 3 decimals |", "|---|---|---|---|---|", *rows,
    ]) + "\n"
    print(text)
    if options.output:
        options.output.write_text(text)
    if options.keep_end_of_reply and not differing:
        kept = keep_end_of_reply(options.committed, options.rerun)
        print(f"end-of-reply figures kept in {kept}" if kept else "end-of-reply figures: nothing to keep")
    elif options.keep_end_of_reply:
        print("end-of-reply figures not kept: the re-run does not reproduce the committed run")
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())

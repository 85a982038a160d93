"""Shared helpers for the benchmark scripts: process memory, memory processes and ratio summaries."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
from collections.abc import Callable, Sequence


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    return status_mb("VmRSS")


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...), MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_steps(run_steps: Callable[[], None]) -> dict:
    """Run the training steps with the kernel's high-water mark reset just before them (/proc/self/clear_refs):
    the process's peak (set-up included), the peak during the steps alone, and what the steps add."""
    setup_peak, before = status_mb("VmHWM"), status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark: from here on VmHWM is the training steps' peak
    run_steps()
    train_peak = status_mb("VmHWM")
    return {"peak_mb": max(setup_peak, train_peak, peak_rss_mb()), "setup_peak_mb": setup_peak,
            "before_steps_mb": before, "train_peak_mb": train_peak, "train_added_mb": train_peak - before}


def memory_processes(command: Callable[[str], list[str]], variants: Sequence[str], repeats: int) -> dict[str, list]:
    """Each variant in its own process, `repeats` times, the order reversed every other repetition; each process
    prints one JSON object on its last line. Returns variant -> the objects, in repetition order."""
    results: dict[str, list] = {variant: [] for variant in variants}
    for repeat in range(repeats):
        for variant in (list(variants) if repeat % 2 == 0 else list(variants)[::-1]):
            proc = subprocess.run(command(variant), capture_output=True, text=True, env=dict(os.environ), check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"memory process {variant} failed:\n{proc.stderr[-4000:]}")
            results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def ratio_line(name: str, ratios: list[float]) -> str:
    return (f"{name}: median {statistics.median(ratios):.3f}  min {min(ratios):.3f}  max {max(ratios):.3f}  "
            f"(n={len(ratios)})")


def machine() -> str:
    import torch  # not at import: axolotl_step.py sets the thread variables first

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {torch.get_num_threads()} torch threads; torch {torch.__version__}"


def table_command(description: str, table: Callable, argv: list[str] | None = None) -> None:
    """The command line of a script that draws a markdown table from committed results (`RESULTS_DIR TASK ...
    [--output FILE.md] [--update FILE.md ...]`): print `table(results_dir, tasks)`; with --output, write it there too;
    with --update, put it in place of the same table in each file (docs/results.md, the README)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--update", type=Path, nargs="+", default=[], metavar="FILE.md",
                        help="replace the table (from its header line to the end of its rows) in these files")
    options = parser.parse_args(argv)
    text = table(options.results_dir, options.tasks)
    updated = {path: replace_table(path.read_text(), text, path) for path in options.update}  # all checked first
    print(text, end="")
    if options.output:
        options.output.write_text(text)
    for path, content in updated.items():
        path.write_text(content)


def replace_table(document: str, table: str, name: object = "the document") -> str:
    """`document` with its one table whose header is `table`'s first line replaced by `table` (the header, the rule
    line and every row up to the first line that is not a table row)."""
    header = table.splitlines()[0]
    lines = document.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == header]
    if len(starts) != 1:
        raise SystemExit(f"{name}: expected one table headed {header[:60]!r}..., found {len(starts)}: put the table "
                         "in by hand once (the script's output), then --update keeps it drawn")
    end = starts[0] + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:starts[0]]) + table + "".join(lines[end:])

"""Shared helpers for the benchmark scripts: process memory and ratio summaries."""

from __future__ import annotations

import platform
import resource
import statistics

import torch


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ratio_line(name: str, ratios: list[float]) -> str:
    return (f"{name}: median {statistics.median(ratios):.3f}  min {min(ratios):.3f}  max {max(ratios):.3f}  "
            f"(n={len(ratios)})")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {torch.get_num_threads()} torch threads; torch {torch.__version__}"

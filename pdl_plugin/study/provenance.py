"""Where a result came from: the code's commit, the libraries' versions and the machine, recorded in every run's
results so that a number in a report can be traced to what produced it (and a difference between two runs to a
difference in their code, libraries or processor)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("pdl-plugin", "torch", "transformers", "trl", "peft", "datasets", "accelerate")


def provenance() -> dict:
    """The commit of the package's checkout (None outside a git checkout) and whether it had uncommitted changes,
    the versions of the libraries that train and evaluate, Python, and the processor."""
    commit, dirty = _git_state(Path(__file__).resolve().parents[2])
    return {
        "commit": commit,
        "uncommitted_changes": dirty,
        "versions": {name: _version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": _gpu_name(),
    }


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The processor's model name (`/proc/cpuinfo` on Linux, `platform.processor()` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None

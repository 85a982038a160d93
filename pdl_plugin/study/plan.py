"""A study's plan and folders: which runs it has (every arm on every seed), which of them a process takes (`--shard`,
the lock file of a run another process holds), where each run lives and whether it is finished.

Layout: ``OUTDIR/<task>/<arm>/seed-<s>/`` holds the adapter, `train.json` (log history and timings, written when
training finished), `results.json` (the evaluation) and a `done` marker. A rerun skips runs with `done`, evaluates runs
with `train.json` but no `done`, and retrains runs with neither: a run interrupted mid-training resumes from its last
checkpoint when the study keeps checkpoints (`--checkpoint_steps N`), and is redone otherwise.

With a results folder (``--results_dir docs/results``) each finished run also leaves its small results, `train.json`
and `results.json` (no adapter), in ``RESULTS_DIR/<task>/<arm>/seed-<s>/``: commit them, and a later `pdl-compare` on
any machine skips the runs found there and reports from them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import PDLConfigError
from ..files import write_json
from .arms import Arm

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

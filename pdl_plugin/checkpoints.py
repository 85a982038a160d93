"""Which checkpoint a resume reads: the Trainer's checkpoint-N folders, complete or interrupted while being saved.

A host-independent helper (file names only): the Trainer writes `trainer_state.json` last and in place, so a checkpoint
is complete when that file is there and parses. Used before training by `pdl-sft` and by the Trainer glue of both hosts.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from .errors import PDLConfigError

PREFIX_CHECKPOINT_DIR = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
TRAINER_STATE_NAME = "trainer_state.json"  # written last by Trainer._save_checkpoint

logger = logging.getLogger(__name__)


def check_resume_checkpoint(checkpoint, output_dir: str | Path) -> Path | None:
    """The checkpoint folder a resume reads, refusing one that does not exist or was never completely saved.

    `True` means the newest complete checkpoint-N of `output_dir` (one whose `trainer_state.json`, which the Trainer
    writes last, is there and readable): a newer one that a killed run left half-written is skipped with a warning.
    """
    if not checkpoint:
        return None
    if checkpoint is True:
        found = sorted(_checkpoints(output_dir), key=lambda item: item[0], reverse=True)
        complete = [folder for _, folder in found if _checkpoint_problem(folder) is None]
        if not complete:
            incomplete = f" ({', '.join(folder.name for _, folder in found)} incomplete)" if found else ""
            raise PDLConfigError(
                f"resume_from_checkpoint is true but output_dir {output_dir} holds no complete checkpoint-N folder to "
                f"resume from{incomplete}. Train without resuming, or pass the path of a checkpoint."
            )
        skipped = [folder.name for _, folder in found if folder != complete[0] and _newer(folder, complete[0])]
        if skipped:
            logger.warning(
                "Resuming from %s: the newer %s %s interrupted while being saved.", complete[0], ", ".join(skipped),
                "was" if len(skipped) == 1 else "were",
            )
        return complete[0]
    folder = Path(checkpoint)
    if not folder.exists():
        raise PDLConfigError(
            f"Cannot resume from {folder}: no such checkpoint folder. Pass an existing checkpoint-N folder (see "
            f"{output_dir}), `--resume_from_checkpoint true` for the last one, or train without resuming."
        )
    if not folder.is_dir():
        raise PDLConfigError(f"Cannot resume from {folder}: it is a file, not a checkpoint-N folder.")
    problem = _checkpoint_problem(folder)
    if problem:
        raise PDLConfigError(
            f"Cannot resume from {folder}: {problem}, so it is not a checkpoint or it was interrupted while being "
            "saved. Resume from an earlier checkpoint (`--resume_from_checkpoint true` picks the last complete one), "
            "or delete this folder."
        )
    return folder


def _checkpoints(output_dir) -> list[tuple[int, Path]]:
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    return [(int(match.group(1)), path) for path in folder.iterdir()
            if path.is_dir() and (match := pattern.match(path.name))]


def _newer(folder: Path, than: Path) -> bool:
    return int(folder.name.rsplit("-", 1)[1]) > int(than.name.rsplit("-", 1)[1])


def _checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (None when its trainer_state.json, written last, is there and whole)."""
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return "it has no trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its trainer_state.json is truncated or unreadable"
    return None


def remove_incomplete_checkpoint(folder: str | Path) -> bool:
    """Remove a checkpoint folder whose save failed, unless it is complete (its trainer_state.json, written last, is
    whole: then only a step after it failed). The space it held is freed, and no resume can take half of it."""
    folder = Path(folder)
    if not folder.is_dir() or _checkpoint_problem(folder) is None:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest checkpoint-N of `output_dir` that was completely saved, or None."""
    complete = [(step, folder) for step, folder in _checkpoints(output_dir) if _checkpoint_problem(folder) is None]
    return str(max(complete, key=lambda item: item[0])[1]) if complete else None

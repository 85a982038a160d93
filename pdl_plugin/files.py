"""Atomic file writes: a crash or a full disk leaves the previous file (or none), never half of a new one.

- `write_atomically(path, write)` writes a temporary file beside `path` and moves it into place. A temporary left by
  an interrupted write (a killed process) is removed by the next write of the same file.
- `save_folder_atomically(folder, save)` does the same for a set of files written into a folder by a library
  (`Trainer.save_model`): they go to a temporary sub-folder first and are moved into place only once all are written.
- `check_can_create_folder` / `check_can_create_file` find, before any work, an output that cannot be created.

Every failure is a `PDLWriteError` (also an `OSError`) that names the path, the reason and that nothing was lost.
"""

from __future__ import annotations

import errno as errno_codes
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import PDLWriteError

# A temporary of ours is `.NAME.HOST-PID.RANDOM.tmp`; one older than this is removed even if its writer may be alive
# on another machine (shared file systems), since no write of ours takes that long.
STALE_AFTER_S = 3600.0
_TMP_SUFFIX = ".tmp"
FOLDER_SAVE_NAME = ".pdl-save.tmp"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _owner_tag() -> str:
    return f"{_host()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: keep it)
    return True


def _is_stale(tmp: Path, stem: str) -> bool:
    """A temporary of `stem` that no live writer owns: its writer died on this machine, or it is old."""
    middle = tmp.name[len(f".{stem}.") : -len(_TMP_SUFFIX)]
    owner = middle.split(".", 1)[0]
    host, _, pid = owner.rpartition("-")
    if host == _host() and pid.isdigit():
        if int(pid) == os.getpid():
            return False  # one of this process's own writes (another thread): not an orphan
        if not _pid_alive(int(pid)):
            return True
    try:
        return time.time() - tmp.lstat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the orphaned temporaries that interrupted writes of `path` left beside it; returns what was removed."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*{_TMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        if tmp.is_file() and not tmp.is_symlink() and _is_stale(tmp, path.name):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---- checks before any work ------------------------------------------------------------------------------------------


def _first_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_can_create_folder(folder: str | os.PathLike, what: str = "the output folder") -> Path:
    """Refuse, without creating anything, a folder that cannot be created or written into."""
    folder = Path(folder).expanduser()
    absolute = folder if folder.is_absolute() else Path.cwd() / folder
    existing = _first_existing(absolute)
    if existing == absolute and not absolute.is_dir():
        raise PDLWriteError(
            f"{what} {folder} exists but is a file, not a folder. Choose another path, or move the file away.",
            errno_codes.ENOTDIR,
        )
    if not existing.is_dir():
        raise PDLWriteError(
            f"{what} {folder} cannot be created: {existing} is a file, not a folder. Choose another path.",
            errno_codes.ENOTDIR,
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PDLWriteError(
            f"{what} {folder} cannot be {'written' if existing == absolute else 'created'}: no write permission on "
            f"{existing}. Choose a folder you can write to.",
            errno_codes.EACCES,
        )
    return folder


def check_can_create_file(path: str | os.PathLike, what: str = "the output file") -> Path:
    """Refuse, without creating anything, a file path whose folder cannot be created or that is a folder itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PDLWriteError(f"{what} {path} is a folder; give a file path.", errno_codes.EISDIR)
    check_can_create_folder(path.parent if str(path.parent) else Path("."), what=f"the folder of {what}")
    return path


# ---- writing ---------------------------------------------------------------------------------------------------------


def describe_os_error(err: OSError) -> str:
    """The reason of an OSError in words, with the fix for the common ones."""
    reason = err.strerror or str(err)
    if err.errno == errno_codes.ENOSPC or err.errno == getattr(errno_codes, "EDQUOT", -1):
        return f"{reason} (the disk is full): free some space or write somewhere else"
    if err.errno in (errno_codes.EACCES, errno_codes.EPERM, errno_codes.EROFS):
        return f"{reason}: choose a location you can write to"
    if err.errno in (errno_codes.ENOTDIR, errno_codes.EEXIST):
        return f"{reason}: a part of the path is a file, not a folder"
    return reason


def _mkdir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if isinstance(err, FileExistsError) or not folder.is_dir():
            check_can_create_folder(folder, what)  # names the file in the way
        raise PDLWriteError(f"Could not create {what} {folder}: {describe_os_error(err)}.", err.errno) from err


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], what: str = "file") -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place; on any error remove it.

    Orphaned temporaries of earlier interrupted writes of `path` are removed first. An `OSError` (disk full, ...)
    becomes a `PDLWriteError` that says the previous file is unchanged.
    """
    path = Path(path)
    _mkdir(path.parent, f"the folder of the {what}")
    remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{_owner_tag()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
    try:
        write(str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = "the previous file is unchanged" if path.exists() else "no file was written"
        raise PDLWriteError(f"Could not write the {what} {path}: {describe_os_error(err)}; {kept}.", err.errno) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def write_text_atomically(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), what)


def write_json(path: str | os.PathLike, data: dict, what: str = "file") -> Path:
    """Atomic JSON write (NaN kept as JSON `NaN`, which Python's json reads back)."""
    return write_text_atomically(path, json.dumps(data, indent=1) + "\n", what)


def save_folder_atomically(
    folder: str | os.PathLike, save: Callable[[Path], None], what: str = "files", *, writer: bool = True
) -> list[Path]:
    """Let `save(tmp_folder)` write files, then move them into `folder`; if it fails, `folder` is left as it was.

    The temporary sub-folder `folder/.pdl-save.tmp` has a fixed name so that several processes of one job (data
    parallel ranks, which all call `save` but of which only one writes) agree on it; only the `writer` creates,
    moves and cleans it. A temporary folder left by an interrupted save is removed first. Returns the moved paths.
    """
    folder = Path(folder)
    tmp = folder / FOLDER_SAVE_NAME
    if writer:
        _mkdir(folder, f"the folder of the {what}")
        shutil.rmtree(tmp, ignore_errors=True)
        _mkdir(tmp, f"a temporary folder for the {what}")
    try:
        save(tmp)
    except OSError as err:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise PDLWriteError(
            f"Could not save the {what} into {folder}: {describe_os_error(err)}. Nothing there was changed; "
            "the partly written files were removed.",
            err.errno,
        ) from err
    except BaseException:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not writer:
        return []
    moved = []
    try:
        for entry in sorted(tmp.iterdir()):
            target = folder / entry.name
            if entry.is_dir() and not entry.is_symlink():
                if target.is_dir() and not target.is_symlink():
                    old = folder / f".{entry.name}.old{_TMP_SUFFIX}"
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(target, old)
                    os.replace(entry, target)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(entry, target)
            else:
                os.replace(entry, target)
            moved.append(target)
    except OSError as err:
        raise PDLWriteError(
            f"Could not move the saved {what} from {tmp} into {folder}: {describe_os_error(err)}. The files not yet "
            f"moved are still in {tmp}.",
            err.errno,
        ) from err
    shutil.rmtree(tmp, ignore_errors=True)
    return moved

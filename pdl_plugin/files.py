"""Atomic file writes: a crash or a full disk leaves the previous file (or none), never half of a new one.

- `write_atomically(path, write)` writes a temporary file beside `path` and moves it into place. A temporary left by
  an interrupted write (a killed process) is removed by the next write of the same file.
- `save_folder_atomically(folder, save)` does the same for a set of files written into a folder by a library
  (`Trainer.save_model`): they go to a temporary sub-folder first and are moved into place only once all are written.
- `check_can_create_folder` / `check_can_create_file` find, before any work, an output that cannot be created or
  written (permissions, a read-only file system: `os.access` and a real probe file).
- `write_failure(err)` recognises a failed write in what libraries raise: an `OSError`, safetensors'
  `SafetensorError` ("No space left on device (os error 28)"), torch's stream-writer `RuntimeError`.

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
    if existing.is_symlink() and not existing.exists():
        raise PDLWriteError(
            f"{what} {folder} cannot be used: {existing} is a broken symbolic link to {os.readlink(existing)}, which "
            "does not exist. Create the folder it points to, remove the link, or choose another path.",
            errno_codes.ENOENT,
        )
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
    verb = "written" if existing == absolute else "created"
    if not os.access(existing, os.W_OK | os.X_OK):
        if _read_only(existing):
            raise PDLWriteError(f"{what} {folder} cannot be {verb}: {existing} is on a read-only file system. "
                                "Choose a folder you can write to.", errno_codes.EROFS)
        raise PDLWriteError(f"{what} {folder} cannot be {verb}: no write permission on {existing}. Choose a folder "
                            "you can write to.", errno_codes.EACCES)
    probe_error = _probe(existing)
    if probe_error is not None:  # os.access says yes, a real file says no (root on a read-only mount, ACLs, ...)
        raise PDLWriteError(f"{what} {folder} cannot be {verb}: a test file in {existing} could not be created: "
                            f"{describe_os_error(probe_error)}.", probe_error.errno)
    return folder


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _probe(folder: Path) -> OSError | None:
    """Create and remove an empty file in `folder`: the one sure test that it can be written."""
    probe = folder / f".pdl-probe.{_owner_tag()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        return err
    os.close(descriptor)
    try:
        probe.unlink()
    except OSError:
        pass
    return None


def check_can_create_file(path: str | os.PathLike, what: str = "the output file") -> Path:
    """Refuse, without creating anything, a file path whose folder cannot be created or that is a folder itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PDLWriteError(f"{what} {path} is a folder; give a file path.", errno_codes.EISDIR)
    check_can_create_folder(path.parent if str(path.parent) else Path("."), what=f"{what} {path}: its folder")
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


# errnos that only a write gives: any exception carrying one is a failed write, wherever it comes from
WRITE_ERRNOS = {errno_codes.ENOSPC, errno_codes.EROFS, errno_codes.EFBIG, getattr(errno_codes, "EDQUOT", -1)}
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def write_failure(err: BaseException, folder: str | os.PathLike | None = None) -> OSError | None:
    """The `OSError` behind a failed write, or None when `err` is no write failure.

    Libraries report a full disk in their own words: safetensors raises `SafetensorError("... No space left on device
    (os error 28)")`, torch's `torch.save` a `RuntimeError` ("PytorchStreamWriter failed ...", "unexpected pos");
    with `folder`, any error of theirs while that folder's file system is full counts as a full disk.
    Without `folder` only errnos that a write alone gives (`WRITE_ERRNOS`) count."""
    seen = 0
    while err is not None and seen < 8:
        seen += 1
        if isinstance(err, OSError) and (folder is not None or err.errno in WRITE_ERRNOS):
            return err
        text = str(err)
        found = _OS_ERROR_CODE.search(text) if type(err).__name__ == "SafetensorError" else None
        if found:
            code = int(found.group(1) or found.group(2))
            if folder is not None or code in WRITE_ERRNOS:
                return OSError(code, os.strerror(code))
        if "No space left on device" in text:
            return OSError(errno_codes.ENOSPC, os.strerror(errno_codes.ENOSPC))
        if folder is not None and _library_write_error(err) and disk_is_full(folder):
            return OSError(errno_codes.ENOSPC, os.strerror(errno_codes.ENOSPC))
        err = err.__cause__ or err.__context__
    return None


def _library_write_error(err: BaseException) -> bool:
    text = str(err)
    return type(err).__name__ == "SafetensorError" or (isinstance(err, RuntimeError) and any(
        mark in text for mark in ("PytorchStreamWriter", "inline_container", "unexpected pos", "file write failed")))


def disk_is_full(folder: str | os.PathLike, margin: int = 1 << 20) -> bool:
    """Whether the file system of `folder` (or its first existing parent) has less than `margin` bytes free."""
    try:
        stats = os.statvfs(_first_existing(Path(folder).absolute()))
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < margin


def _mkdir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if isinstance(err, FileExistsError) or not folder.is_dir():
            check_can_create_folder(folder, what)  # names the file in the way
        raise PDLWriteError(f"Could not create {what} {folder}: {describe_os_error(err)}.", err.errno) from err


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], what: str = "file") -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place; on any error remove it.

    Orphaned temporaries of earlier interrupted writes of `path` are removed first. A failed write (`write_failure`:
    disk full, read-only, ... also as safetensors or torch report it) becomes a `PDLWriteError` that says the previous
    file is unchanged; its `reason` attribute names the file and the cause, for callers that wrap it.
    """
    path = Path(path)
    _mkdir(path.parent, f"the folder of the {what}")
    remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{_owner_tag()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
    try:
        write(str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as raised:
        failure = write_failure(raised, path.parent) if isinstance(raised, Exception) else None
        tmp.unlink(missing_ok=True)
        if failure is None:
            raise
        kept = "the previous file is unchanged" if path.exists() else "no file was written"
        error = PDLWriteError(f"Could not write the {what} {path}: {describe_os_error(failure)}; {kept}.",
                              failure.errno)
        error.reason = f"the {what}: {describe_os_error(failure)}"
        raise error from raised
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
    folder: str | os.PathLike, save: Callable[[Path], None], what: str = "files", *, writer: bool = True,
    replaces: tuple[str, ...] = (), last: tuple[str, ...] = (),
) -> list[Path]:
    """Let `save(tmp_folder)` write files, then move them into `folder`; if it fails, `folder` is left as it was.

    The temporary sub-folder `folder/.pdl-save.tmp` has a fixed name so that several processes of one job (data
    parallel ranks, which all call `save` but of which only one writes) agree on it; only the `writer` creates,
    moves and cleans it. A temporary folder left by an interrupted save is removed first. Once all is written, the
    files named in `replaces` are removed from `folder` (in that order) before anything is moved, and those named in
    `last` are moved after all others (in that order): files that must only ever describe the files beside them
    (a run's PDL files and its adapter) never sit next to another save's. Returns the moved paths.
    """
    folder = Path(folder)
    tmp = folder / FOLDER_SAVE_NAME
    if writer:
        _mkdir(folder, f"the folder of the {what}")
        shutil.rmtree(tmp, ignore_errors=True)
        _mkdir(tmp, f"a temporary folder for the {what}")
    try:
        save(tmp)
    except BaseException as raised:
        failure = write_failure(raised, tmp) if isinstance(raised, Exception) else None
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:
            raise
        reason = getattr(raised, "reason", None) or describe_os_error(failure)
        raise PDLWriteError(
            f"Could not save the {what} into {folder}: {reason}. Nothing there was changed: every previous file is "
            "unchanged, and the partly written ones were removed.",
            failure.errno,
        ) from raised
    return _move_into(folder, tmp, what, replaces, last) if writer else []


def _move_into(folder: Path, tmp: Path, what: str, replaces: tuple[str, ...], last: tuple[str, ...]) -> list[Path]:
    """Move everything saved in `tmp` into `folder`: `replaces` removed first, `last` moved last."""
    entries = sorted(tmp.iterdir(), key=lambda entry: (entry.name in last, last.index(entry.name)
                                                        if entry.name in last else 0, entry.name))
    moved = []
    try:
        for name in replaces:
            (folder / name).unlink(missing_ok=True)
        for entry in entries:
            target = folder / entry.name
            if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
                old = folder / f".{entry.name}.old{_TMP_SUFFIX}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(entry, target)
                shutil.rmtree(old, ignore_errors=True)
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

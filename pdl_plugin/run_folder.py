"""A run folder (`output_dir`) that never mixes two runs: its adapter and its PDL files always come from one run.

- The PDL files (`pdl_frequency_table.safetensors`, `pdl_prior_table.safetensors`, `pdl_config.json`) describe the
  adapter beside them, so a save of the adapter replaces them with it (`save_run_folder`): everything is written into
  a temporary sub-folder first; then the previous PDL files are removed, the adapter's files moved in, and the new
  PDL files moved in last. No instant pairs an adapter with another run's table, and a folder whose table is there
  is whole (`pdl-eval` reads the table beside the adapter). A run killed before that save leaves the previous run's
  files as they were.
- One run writes a folder at a time (`lock_run_folder`): a lock file `.pdl_run.lock` inside it, held by the run's
  main process through an OS lock (`flock`), which the OS frees when the process ends, killed or not; a second run is
  refused with one line instead of interleaving its files with the first one's.
"""

from __future__ import annotations

import errno as errno_codes
import logging
import os
import shutil
import socket
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .errors import PDLWriteError
from .files import FOLDER_SAVE_NAME, _mkdir, save_folder_atomically, write_atomically

try:
    import fcntl
except ImportError:  # Windows: filelock's msvcrt lock, whose file stays
    fcntl = None

LOCK_NAME = ".pdl_run.lock"
logger = logging.getLogger(__name__)
_HELD: dict[str, list] = {}  # resolved folder -> [lock (descriptor or FileLock), holds]


def pdl_file_names() -> tuple[str, ...]:
    """The run's PDL files in the order `PDLEngine.save` writes them (the config, written last, marks them whole)."""
    from .engine import SETTINGS_FILENAME
    from .frequency import TABLE_FILENAME
    from .run_weights import PRIOR_FILENAME

    return (TABLE_FILENAME, PRIOR_FILENAME, SETTINGS_FILENAME)


def save_run_folder(folder, save_model: Callable[[Path], None], save_pdl: Callable[[Path], None] | None, *,
                    writer: bool = True) -> list[Path]:
    """Save a trained adapter/model into the run folder `folder` with its PDL files, as one run's files.

    `save_model(tmp)` writes the adapter/model into a temporary folder, then the writer's `save_pdl(tmp)` the PDL
    files (None: a run without PDL, whose folder then keeps no PDL file of an earlier run). If either fails, `folder`
    is left as it was. Otherwise the earlier PDL files are removed, the model's files moved in, the PDL files last."""
    names = pdl_file_names()

    def save(tmp: Path) -> None:
        save_model(tmp)
        if writer and save_pdl is not None:
            save_pdl(tmp)

    return save_folder_atomically(folder, save, what="trained adapter/model and its PDL files", writer=writer,
                                  replaces=tuple(reversed(names)), last=names)


def remove_pdl_files(folder: str | Path) -> None:
    """Remove `folder`'s PDL files, the config (written last) first, before its adapter is replaced."""
    for name in reversed(pdl_file_names()):
        (Path(folder) / name).unlink(missing_ok=True)


def copy_pdl_files(source: str | Path, folder: str | Path) -> None:
    """Replace `folder`'s PDL files with those of `source` (a checkpoint whose adapter is now in `folder`): each
    copied in atomically, in the order they are written, the config last."""
    source, folder = Path(source), Path(folder)
    remove_pdl_files(folder)
    for name in pdl_file_names():
        if (source / name).is_file():
            write_atomically(folder / name, lambda tmp, name=name: shutil.copyfile(source / name, tmp),
                             what=f"copy of {name}")


def missing_table_reason(folder: str | Path) -> str:
    """Why a run folder may hold no table beside its adapter, in words, for an error that refuses to score it."""
    folder = Path(folder)
    if (folder / FOLDER_SAVE_NAME).exists():
        return (f"its last save was interrupted ({folder / FOLDER_SAVE_NAME} holds what was not moved in), so its "
                "adapter may be half of two runs")
    return "the run that writes it has not finished (the PDL files come with the final save), or it trained without PDL"


# ---- one run per folder ---------------------------------------------------------------------------------------------


def lock_run_folder(folder: str | Path) -> Path:
    """Hold `folder` for this process's run, creating it; a process may hold it several times (each hold released by
    one `unlock_run_folder`). Raises `PDLWriteError` (EBUSY) when another process's run holds it."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return folder
    _mkdir(folder, "output_dir")
    _HELD[key] = [_acquire(folder / LOCK_NAME), 1]
    return folder


def unlock_run_folder(folder: str | Path) -> None:
    """Give back one hold of `folder`; the last one removes the lock file and frees the lock."""
    key = str(Path(folder).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    lock = held[0]
    if lock is None:
        return
    if isinstance(lock, int):
        try:
            os.unlink(Path(key) / LOCK_NAME)  # while still locked: a run that opened it before sees another file
        except OSError:
            pass
        os.close(lock)
    else:
        lock.release()


@contextmanager
def holding_run_folder(folder: str | Path, hold: bool = True):
    """`lock_run_folder` for the block (nothing when `hold` is False: a process that does not write the folder)."""
    if hold:
        lock_run_folder(folder)
    try:
        yield
    finally:
        if hold:
            unlock_run_folder(folder)


def _busy(folder: Path, owner: str) -> PDLWriteError:
    who = f" ({owner})" if owner else ""
    return PDLWriteError(
        f"output_dir {folder} is being written by another run{who}: two runs writing one folder would mix their "
        "files. Wait for that run to end, or choose another output_dir.", errno_codes.EBUSY)


def _acquire(path: Path):
    """Lock `path` without waiting: an open descriptor (POSIX), a FileLock elsewhere, None where the file system
    cannot lock (a warning: the run goes on unguarded)."""
    if fcntl is None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise _busy(path.parent, "") from None
        return lock
    for _ in range(10):
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            owner = os.read(descriptor, 200).decode("utf-8", "replace").strip()
            os.close(descriptor)
            if err.errno in (errno_codes.EWOULDBLOCK, errno_codes.EAGAIN, errno_codes.EACCES):
                raise _busy(path.parent, owner) from None
            logger.warning("Cannot lock %s (%s): nothing stops a second run from writing this folder at once.",
                           path, err.strerror or err)
            return None
        try:
            found, held = os.stat(path), os.fstat(descriptor)
            current = (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            try:
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            except OSError:
                pass  # who holds it is only told in the error of a second run
            return descriptor
        os.close(descriptor)  # its holder removed that file as we opened it: lock the one there now
    raise PDLWriteError(f"Could not lock {path}: it keeps being replaced.", errno_codes.EBUSY)

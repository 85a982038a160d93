"""pass@1: run a generated program against a task's tests in a subprocess, with a timeout, no network, and a count of
the assertions the tests actually executed.

Two test formats are supported, as the public code benchmarks write them:

- **assertions at top level** (MBPP style): `assert add(1, 2) == 3` lines run after the program;
- **function completion** (HumanEval style): the test defines `check(candidate)` and leaves the call to the harness;
  the row names the function in an `entry_point` column and the harness calls `check(<entry_point>)`.

A test that executes no assertion at all proves nothing (a program returning `None` would "pass" a `check` that is
never called), so the harness counts the `assert` statements of the test that are reached (the test's source is
rewritten to call a counter just before each `assert`; `unittest.TestCase.assert*` / `fail` calls count too) and a
run that ends cleanly with zero of them gets the status `no_assertion`, never `passed`. `pdl-eval` first runs every
test against the dataset's own reference solution and refuses (a `PDLConfigError`) a test that executes no assertion
there: that test is broken, whatever the model generates.

Isolation (the child side is `sandbox.py`, which says how). Nothing is piped back, so `run_program` returns
within `timeout` (plus two seconds at worst) whatever the run spawns. On Linux the run's whole process tree is killed
at the timeout or when the tests end, children in new sessions included: through a pid namespace where unprivileged
user namespaces are allowed, which also puts every process of the run in an empty network namespace, else as a child
subreaper, where only the harness interpreter's sockets are refused (`ExecutionResult.isolation` says which). Output
never enters this process: stdout is discarded and only the tail of stderr is read. Address space, CPU time and file
size are limited per process. The verdict is signed with a per-run secret, so a run that ends early or writes the
result file itself never passes. The tests run in an empty temporary folder as the evaluating user: they can read,
write and delete that user's files. This is not a security sandbox against hostile code; run untrusted generations in
a container or VM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import sandbox

logger = logging.getLogger(__name__)

USE_NAMESPACES = True  # False forces the fallback without namespaces (the tests use it)
_SANDBOX = Path(sandbox.__file__)
_GRACE = 2.0  # seconds past the timeout before the evaluator kills the sandbox itself (its supervisor did not)
_FILE_SIZE = 64 * 1024 * 1024  # RLIMIT_FSIZE of the run: stderr and any file it writes
_READ_LIMIT = 64 * 1024  # what is read of stderr (its tail) and of the result file
_ENV = {"LANG": "C.UTF-8", "no_proxy": "*", "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9"}
_warned: set[str] = set()


@dataclass
class ExecutionResult:
    passed: bool
    status: str  # "passed", "failed", "timeout", "no_assertion" (the run ended cleanly but reached no assertion)
    detail: str = ""
    assertions: int = 0  # assertions of the test reached (including a failing one)
    isolation: str = ""  # "namespaces", "subreaper" or "process group" (see sandbox.py); "" when no verdict came


def run_program(program: str, tests: str, timeout: float = 10.0, memory_mb: int = 1024,
                entry_point: str | None = None) -> ExecutionResult:
    """Run `program`, then `tests`, then `check(entry_point)` when an entry point is given and the tests define
    `check`, in a fresh Python. Passed when that ends cleanly within `timeout` seconds having reached at least one
    assertion of the tests."""
    secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="pdl-exec-", ignore_cleanup_errors=True) as folder, \
            tempfile.TemporaryFile() as stderr:  # nameless: the run cannot replace it
        harness, workdir = Path(folder) / "harness", Path(folder) / "work"
        harness.mkdir()
        workdir.mkdir()
        (harness / "program.py").write_text(program, encoding="utf-8")
        (harness / "tests.py").write_text(tests, encoding="utf-8")
        started = time.monotonic()
        config = {"secret": secret, "program": str(harness / "program.py"), "tests": str(harness / "tests.py"),
                  "result": str(harness / "result.json"), "entry_point": entry_point or None,
                  "deadline": started + timeout, "namespaces": USE_NAMESPACES, "memory": memory_mb * 1024 * 1024,
                  "cpu": max(1, int(timeout) + 1), "file_size": _FILE_SIZE}
        returncode = _run_sandbox(config, workdir, stderr, timeout)
        timed_out = returncode is None or time.monotonic() - started >= timeout
        verdict, problem = _read_verdict(harness / "result.json", secret)
        last_line = _last_line(stderr)
    if verdict is None:
        if timed_out:
            return ExecutionResult(False, "timeout", f"no result within {timeout} s")
        reason = problem or last_line or f"the interpreter ended (status {returncode}) before the harness finished"
        return ExecutionResult(False, "failed", reason)
    return _from_verdict(verdict, last_line)


def _run_sandbox(config: dict, workdir: Path, stderr, timeout: float) -> int | None:
    """Start `sandbox.py` in its own session and wait for it; its supervisor ends the run at the deadline. Nothing is
    piped back, so no process of the run can hold this one up. None when it had to be killed here."""
    process = subprocess.Popen(
        [sys.executable, "-I", str(_SANDBOX)], cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=stderr, env=dict(_ENV, PATH=os.environ.get("PATH", "/usr/bin:/bin")), start_new_session=True,
    )
    with contextlib.suppress(OSError):  # it died before reading: the missing verdict says so
        process.stdin.write(json.dumps(config).encode())
    with contextlib.suppress(OSError):
        process.stdin.close()
    try:
        return process.wait(timeout + _GRACE)
    except subprocess.TimeoutExpired:
        return None
    finally:
        try:  # the sandbox's group: itself and, with namespaces, the namespace's pid 1, whose death kills the rest
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        process.wait()


def _read_regular_file(path: Path) -> bytes | None:
    """At most _READ_LIMIT bytes of `path`; None when it is missing, b"" when it is not a plain file. The run can
    replace the file: a link, a FIFO or a device is neither followed nor read, so it cannot block this process."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return b""
    with open(descriptor, "rb") as handle:
        return handle.read(_READ_LIMIT) if stat.S_ISREG(os.fstat(descriptor).st_mode) else b""


def _read_verdict(path: Path, secret: str) -> tuple[dict | None, str]:
    """The verdict when the harness signed it, else None and why."""
    content = _read_regular_file(path)
    if content is None:
        return None, ""
    try:  # whatever the run wrote there: deep nesting, non-ASCII, any JSON
        data = json.loads(content)
        verdict, mac = data["verdict"], data["mac"]
        if isinstance(verdict, dict) and isinstance(mac, str) and mac.isascii() and secrets.compare_digest(
                mac, sandbox.sign(secret, verdict)):
            return verdict, ""
    except (ValueError, TypeError, KeyError, RecursionError):
        pass
    return None, "the result file was not written by the harness (the run ended before the tests did)"


def _last_line(stderr) -> str:
    """The last line of stderr, from its tail only: what the run prints never grows this process."""
    try:
        stderr.seek(max(0, os.fstat(stderr.fileno()).st_size - _READ_LIMIT))
        tail = stderr.read(_READ_LIMIT).decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
    return tail.splitlines()[-1] if tail else ""


def _from_verdict(verdict: dict, last_line: str) -> ExecutionResult:
    assertions, isolation = int(verdict.get("assertions", 0)), str(verdict.get("isolation", ""))
    if isolation != "namespaces" and isolation not in _warned:
        _warned.add(isolation)
        logger.warning("pass@1 runs without user namespaces here (isolation: %s): the tests' child processes can "
                       "reach the network, and only this interpreter's sockets are refused.", isolation)
    if verdict.get("status") != "ok":
        return ExecutionResult(False, "failed", verdict.get("error") or last_line, assertions, isolation)
    if assertions == 0:
        return ExecutionResult(False, "no_assertion", "the tests ran to the end without reaching any assertion", 0,
                               isolation)
    return ExecutionResult(True, "passed", "", assertions, isolation)


def pass_at_1(programs: list[str], tests: list[str], timeout: float = 10.0,
              entry_points: list[str | None] | None = None) -> tuple[float, list[ExecutionResult]]:
    """Share of programs (one sample each) whose tests pass (a run that reaches no assertion does not pass)."""
    if len(programs) != len(tests):
        raise ValueError(f"Got {len(programs)} programs but {len(tests)} test suites.")
    entry_points = list(entry_points) if entry_points is not None else [None] * len(programs)
    if len(entry_points) != len(programs):
        raise ValueError(f"Got {len(programs)} programs but {len(entry_points)} entry points.")
    results = [run_program(program, test, timeout, entry_point=entry)
               for program, test, entry in zip(programs, tests, entry_points)]
    return (sum(r.passed for r in results) / len(results) if results else float("nan")), results

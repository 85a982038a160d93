"""pass@1 infrastructure: run a generated program against a task's tests in a subprocess, with a timeout, no network.

The embedded code task ships no tests, so `pdl-eval` reports the parse rate only; this module is used when a dataset
row carries a `test` column (Python source with asserts, run after the prompt + generation).

Isolation, best effort on an unprivileged machine: a fresh interpreter (`-I`: no user site, no PYTHON* variables),
an empty temporary working directory, a wall-clock timeout (the whole process group is killed), an address-space
and CPU-time limit, and the socket module's constructors replaced by a function that refuses, so a program cannot
open a network connection through Python. This is not a security sandbox against hostile code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_PREAMBLE = '''\
import socket as _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in pdl-eval test runs")
_socket.socket = _no_network
_socket.create_connection = _no_network
_socket.socketpair = _no_network
try:
    import resource as _resource
    _resource.setrlimit(_resource.RLIMIT_AS, ({mem}, {mem}))
    _resource.setrlimit(_resource.RLIMIT_CPU, ({cpu}, {cpu}))
except (ImportError, ValueError, OSError):
    pass
del _socket, _no_network
'''


@dataclass
class ExecutionResult:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    detail: str = ""


def run_program(program: str, tests: str, timeout: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run `program` then `tests` in a fresh Python; passed when it exits 0 within `timeout` seconds."""
    preamble = _PREAMBLE.format(mem=memory_mb * 1024 * 1024, cpu=max(1, int(timeout) + 1))
    source = preamble + "\n" + program + "\n\n" + tests + "\n"
    with tempfile.TemporaryDirectory(prefix="pdl-exec-") as folder:
        path = Path(folder) / "program.py"
        path.write_text(source, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "no_proxy": "*",
               "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9"}
        process = subprocess.Popen(
            [sys.executable, "-I", str(path)], cwd=folder, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return ExecutionResult(False, "timeout", f"no result within {timeout} s")
    if process.returncode == 0:
        return ExecutionResult(True, "passed")
    return ExecutionResult(False, "failed", stderr.strip().splitlines()[-1] if stderr.strip() else "")


def pass_at_1(programs: list[str], tests: list[str], timeout: float = 10.0) -> tuple[float, list[ExecutionResult]]:
    """Share of programs (one sample each) whose tests pass."""
    if len(programs) != len(tests):
        raise ValueError(f"Got {len(programs)} programs but {len(tests)} test suites.")
    results = [run_program(program, test, timeout) for program, test in zip(programs, tests)]
    return (sum(r.passed for r in results) / len(results) if results else float("nan")), results

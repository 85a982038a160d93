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

Isolation, best effort on an unprivileged machine: a fresh interpreter (`-I`: no user site, no PYTHON* variables),
an empty temporary working directory, a wall-clock timeout (the whole process group is killed), an address-space
and CPU-time limit, and the socket module's constructors replaced by a function that refuses, so a program cannot
open a network connection through Python. This is not a security sandbox against hostile code.
"""

from __future__ import annotations

import json
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

# The harness: the program, then the (instrumented) tests, then `check(<entry_point>)`, all in one namespace. It writes
# its verdict to a file outside the working directory; no file (the program ended the interpreter) is a failure.
_HARNESS = '''
import ast as _ast, builtins as _builtins, json as _json, sys as _sys, traceback as _traceback, types as _types

_count = [0]
def _assertion_reached():
    _count[0] += 1
_builtins.__pdl_assertion_reached__ = _assertion_reached

try:
    import unittest as _unittest
    def _counted(method):
        def counted(self, *args, **kwargs):
            _count[0] += 1
            return method(self, *args, **kwargs)
        return counted
    for _name in list(vars(_unittest.TestCase)):
        if _name.startswith("assert") or _name == "fail":
            setattr(_unittest.TestCase, _name, _counted(getattr(_unittest.TestCase, _name)))
except Exception:
    pass

class _CountAsserts(_ast.NodeTransformer):
    def visit_Assert(self, node):
        self.generic_visit(node)
        call = _ast.Expr(_ast.Call(_ast.Name("__pdl_assertion_reached__", _ast.Load()), [], []))
        return [_ast.copy_location(call, node), node]

def _verdict(**fields):
    with open({result!r}, "w", encoding="utf-8") as handle:
        _json.dump(dict(fields, assertions=_count[0]), handle)

_ENTRY_POINT = {entry_point!r}
_stage = "program"
_main = _types.ModuleType("__main__")  # the program and tests run as the main module (unittest.main() looks there)
_sys.modules["__main__"] = _main
_namespace = _main.__dict__
try:
    with open({program!r}, encoding="utf-8") as _handle:
        _source = _handle.read()
    try:
        exec(compile(_source, "program.py", "exec"), _namespace)
    except SystemExit as _exit:
        raise RuntimeError(f"the program exited (status {{_exit.code!r}}) before the tests ran") from None
    _stage = "tests"
    with open({tests!r}, encoding="utf-8") as _handle:
        _tree = _ast.fix_missing_locations(_CountAsserts().visit(_ast.parse(_handle.read(), "tests.py")))
    try:
        exec(compile(_tree, "tests.py", "exec"), _namespace)
    except SystemExit as _exit:  # unittest.main() exits; 0 / None is a clean end
        if _exit.code not in (None, 0):
            raise
    if _ENTRY_POINT and callable(_namespace.get("check")):
        _stage = "check"
        if _ENTRY_POINT not in _namespace:
            raise NameError(f"the program defines no {{_ENTRY_POINT!r}} (the row's entry_point)")
        _namespace["check"](_namespace[_ENTRY_POINT])
except BaseException as _error:
    _traceback.print_exc()
    _verdict(status="failed", stage=_stage, error=f"{{type(_error).__name__}}: {{_error}}"[:300])
    _sys.stdout.flush(); _sys.stderr.flush()
    _sys.exit(1)
_verdict(status="ok", stage="done")
'''


@dataclass
class ExecutionResult:
    passed: bool
    status: str  # "passed", "failed", "timeout", "no_assertion" (the run ended cleanly but reached no assertion)
    detail: str = ""
    assertions: int = 0  # assertions of the test reached (including a failing one)


def run_program(program: str, tests: str, timeout: float = 10.0, memory_mb: int = 1024,
                entry_point: str | None = None) -> ExecutionResult:
    """Run `program`, then `tests`, then `check(entry_point)` when an entry point is given and the tests define
    `check`, in a fresh Python. Passed when that ends cleanly within `timeout` seconds having reached at least one
    assertion of the tests."""
    preamble = _PREAMBLE.format(mem=memory_mb * 1024 * 1024, cpu=max(1, int(timeout) + 1))
    with tempfile.TemporaryDirectory(prefix="pdl-exec-") as folder:
        harness, workdir = Path(folder) / "harness", Path(folder) / "work"
        harness.mkdir()
        workdir.mkdir()
        paths = {name: harness / f"{name}.py" for name in ("program", "tests", "runner")}
        result_path = harness / "result.json"
        paths["program"].write_text(program, encoding="utf-8")
        paths["tests"].write_text(tests, encoding="utf-8")
        paths["runner"].write_text(preamble + _HARNESS.format(
            result=str(result_path), program=str(paths["program"]), tests=str(paths["tests"]),
            entry_point=entry_point or None,
        ), encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "no_proxy": "*",
               "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9"}
        process = subprocess.Popen(
            [sys.executable, "-I", str(paths["runner"])], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return ExecutionResult(False, "timeout", f"no result within {timeout} s")
        try:
            verdict = json.loads(result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            verdict = None
    last_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if verdict is None:
        reason = last_line or f"the interpreter ended (status {process.returncode}) before the harness finished"
        return ExecutionResult(False, "failed", reason)
    assertions = int(verdict.get("assertions", 0))
    if verdict.get("status") != "ok" or process.returncode != 0:
        return ExecutionResult(False, "failed", verdict.get("error") or last_line, assertions)
    if assertions == 0:
        return ExecutionResult(False, "no_assertion", "the tests ran to the end without reaching any assertion", 0)
    return ExecutionResult(True, "passed", "", assertions)


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

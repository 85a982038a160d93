"""The child side of pass@1: `execution.run_program` runs this file as `python -I sandbox.py` and writes its
configuration (paths, deadline, limits, a per-run secret) on its stdin. Standard library only, so that a run does not
pay for importing the package.

Process layout, where Linux lets an unprivileged process create a user namespace (`isolation = "namespaces"`):

    evaluator -> sandbox (new session; waits) -> supervisor (pid 1 of a new pid namespace, empty network namespace)
                                                   -> tests (the program, then the tests, in one interpreter)

The supervisor reaps orphans, ends the run at the deadline, and its exit makes the kernel kill every process left in
the namespace: children in new sessions or process groups cannot outlive the run, and no process of the run has a
network interface but a loopback that is down. Where namespaces are refused (Docker's default seccomp profile,
`kernel.unprivileged_userns_clone=0`, AppArmor's userns restriction, macOS), the sandbox supervises directly as a child
subreaper (Linux) and kills what it finds below itself in /proc (`"subreaper"`), or only its process group
(`"process group"`), and only this interpreter's sockets are refused.

The verdict is signed with the secret (HMAC-SHA256), read from stdin before any code of the run and kept only in a
closure: a program that ends the interpreter early, or writes the result file itself, never passes. A program that
deliberately walks the harness's frames or memory (it runs in the same interpreter) can still forge one; this is not
a security sandbox.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hmac
import json
import os
import signal
import sys
import time
import traceback
import types
import unittest

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
DEADLINE_STATUS = 124  # the supervisor's exit status when it killed the run at the deadline


def sign(key: str, verdict: dict) -> str:
    """The verdict's signature; `execution` checks it with the same function."""
    canonical = json.dumps(verdict, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key.encode(), canonical, "sha256").hexdigest()


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _exit_like(status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _enter_namespaces(libc) -> bool:
    """New user, pid and network namespaces: no privilege needed where unprivileged user namespaces are enabled.
    The user's own ids are mapped, so that files and `os.getuid()` look as outside (root stays root)."""
    uid, gid = os.getuid(), os.getgid()
    if libc is None or libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET) != 0:
        return False
    for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
        except OSError:
            pass  # unmapped: the ids show as 65534 inside; file access is unchanged
    return True


def _become_init(libc) -> bool:
    """Fork pid 1 of the new pid namespace and return there; the parent, outside, waits and exits like it."""
    try:
        init = os.fork()
    except OSError:
        return False
    if init:
        _exit_like(os.waitpid(init, 0)[1])
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the evaluator killing the sandbox kills the namespace
    libc.prctl(PR_SET_DUMPABLE, 0)  # the run holds capabilities in the new user namespace: no ptrace of pid 1
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 ignores a signal sent from inside that has no handler
    return True


def isolate(use_namespaces: bool, deadline: float) -> str:
    """Fork the process that runs the tests (this function returns only there, with the isolation it has); the
    processes above it supervise it until `deadline` (time.monotonic) and never return."""
    libc = _libc()
    if use_namespaces and _enter_namespaces(libc) and _become_init(libc):
        isolation = "namespaces"
    elif libc is not None and libc.prctl(PR_SET_CHILD_SUBREAPER, 1) == 0:
        isolation = "subreaper"  # orphans of the run are re-parented here, so they can be found and killed
    else:
        isolation = "process group"
    tests = os.fork()
    if tests == 0:
        if isolation == "namespaces":
            libc.prctl(PR_SET_DUMPABLE, 1)
        return isolation
    status = _wait(tests, deadline)
    if isolation == "subreaper":
        _kill_descendants()
    if status is None:
        os._exit(DEADLINE_STATUS)
    _exit_like(status)  # in the namespace, the exit of pid 1 kills what is left


def _wait(child: int, deadline: float) -> int | None:
    """Reap every process re-parented here; the wait status of `child`, or None at the deadline."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == child:
            return status
        if pid == 0:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
            parents[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = [], [root]
    while frontier:
        below = [pid for pid, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def _kill_descendants() -> None:
    """Kill every process below this one, whatever its session; repeated while forks race the kills."""
    for _ in range(100):
        pids = _descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def limit_resources(memory: int, cpu: int, file_size: int) -> None:
    """Per-process limits, inherited by the run's children: address space, CPU time, size of any file written."""
    try:
        import resource
    except ImportError:
        return
    for which, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, file_size)):
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def block_sockets() -> None:
    """Refuse sockets in this interpreter, through `socket` and `_socket` alike. The classes stay classes (ssl and
    asyncio subclass them at import time); only constructing one fails. Child processes are covered only by the
    network namespace."""
    import _socket
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in pdl-eval test runs")

    class RefusedSocket(_socket.socket):
        __init__ = refuse

    socket.socket.__init__ = refuse
    _socket.socket = _socket.SocketType = socket.SocketType = RefusedSocket
    for module in (socket, _socket):
        for name in ("socketpair", "fromfd", "create_connection", "create_server"):
            if hasattr(module, name):
                setattr(module, name, refuse)


def _read_config() -> dict:
    """The configuration, then stdin becomes /dev/null: what the run reads from stdin is empty, never the secret."""
    config = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return config


class _CountAsserts(ast.NodeTransformer):
    """Call the counter just before each `assert` of the tests."""

    def visit_Assert(self, node):
        self.generic_visit(node)
        call = ast.Expr(ast.Call(ast.Name("__pdl_assertion_reached__", ast.Load()), [], []))
        return [ast.copy_location(call, node), node]


def _count_assertions(count: list) -> None:
    """`assert` statements (through the builtin the rewritten tests call) and unittest assertions both count."""
    def reached():
        count[0] += 1
    builtins.__pdl_assertion_reached__ = reached

    def counted(method):
        def counting(self, *args, **kwargs):
            count[0] += 1
            return method(self, *args, **kwargs)
        return counting
    for name in list(vars(unittest.TestCase)):
        if name.startswith("assert") or name == "fail":
            setattr(unittest.TestCase, name, counted(getattr(unittest.TestCase, name)))


_UNITTEST_EXIT = unittest.TestProgram.runTests.__code__  # taken before the program can replace it


def _exec_tests(path: str, namespace: dict) -> None:
    """The tests may end only through unittest.main() and successfully: any other SystemExit (the program's function
    calling sys.exit(0), a test that exits after its first assertion) is a failure, not a clean end."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.fix_missing_locations(_CountAsserts().visit(ast.parse(handle.read(), "tests.py")))
    try:
        exec(compile(tree, "tests.py", "exec"), namespace)  # noqa: S102 (running them is the point)
    except SystemExit as end:
        last = end.__traceback__
        while last.tb_next is not None:
            last = last.tb_next
        if last.tb_frame.f_code is not _UNITTEST_EXIT:
            raise RuntimeError(f"the run exited (status {end.code!r}) before the tests ended") from None
        if end.code not in (None, 0):
            raise RuntimeError(f"unittest.main() reported failures or errors (status {end.code!r})") from None


def _execute(config: dict) -> tuple[str, str, str]:
    """The program, the tests, then `check(<entry_point>)`, in one namespace run as `__main__` (unittest.main()
    looks there). Returns (status, stage, error)."""
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module
    namespace, entry_point, stage = main_module.__dict__, config["entry_point"], "program"
    try:
        with open(config["program"], encoding="utf-8") as handle:
            source = handle.read()
        try:
            exec(compile(source, "program.py", "exec"), namespace)  # noqa: S102
        except SystemExit as end:
            raise RuntimeError(f"the program exited (status {end.code!r}) before the tests ran") from None
        stage = "tests"
        _exec_tests(config["tests"], namespace)
        if entry_point and callable(namespace.get("check")):
            stage = "check"
            if entry_point not in namespace:
                raise NameError(f"the program defines no {entry_point!r} (the row's entry_point)")
            namespace["check"](namespace[entry_point])
    except BaseException as error:  # noqa: BLE001 (whatever the run raises is its failure)
        with contextlib.suppress(BaseException):  # stderr may be closed, or over its size limit
            traceback.print_exc()
        return "failed", stage, f"{type(error).__name__}: {error}"[:300]
    return "ok", "done", ""


def _signer(secret: str):
    """Keep the secret in a closure cell only, out of the config and of every global: reaching it takes code that
    walks the harness's frames on purpose (the residual risk the module docstring names)."""
    return lambda verdict: sign(secret, verdict)


def run_tests(config: dict, isolation: str) -> None:
    """Run, write the signed verdict (only here, after the tests), end the process at once."""
    signed, count = _signer(config.pop("secret")), [0]
    _count_assertions(count)
    status, stage, error = _execute(config)
    verdict = {"status": status, "stage": stage, "error": error, "assertions": count[0], "isolation": isolation}
    with open(config["result"], "w", encoding="utf-8") as handle:
        json.dump({"verdict": verdict, "mac": signed(verdict)}, handle)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(0 if status == "ok" else 1)


def main() -> None:
    config = _read_config()
    isolation = isolate(config["namespaces"], config["deadline"])
    limit_resources(config["memory"], config["cpu"], config["file_size"])
    block_sockets()
    run_tests(config, isolation)


if __name__ == "__main__":
    main()

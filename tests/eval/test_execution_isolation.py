"""What the pass@1 harness guarantees whatever the program does: it returns on time and leaves no process behind (even
children in new sessions), the evaluator's memory does not grow with the output, no socket reaches the host, and an
interpreter that ends early or forges the result file never passes (issue 27)."""

import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from pdl_plugin.eval import execution
from pdl_plugin.eval.execution import run_program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking is checked via /proc")

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
REPO = Path(__file__).resolve().parents[2]


def _spawn_escapees(marker: str, lifetime: float = 8.0) -> str:
    """Test code that leaves two sleepers behind: one in a new session, one double-forked (orphaned, own session).
    They end by themselves after `lifetime` s, so an old harness that waits for them cannot hang the suite."""
    sleeper = f"import time  # {marker}\nfor _ in range({int(lifetime * 10)}):\n    time.sleep(0.1)\n"
    daemon = f"import os, time  # {marker}\nif os.fork():\n    os._exit(0)\nos.setsid()\n" + sleeper.split("\n", 1)[1]
    return textwrap.dedent(f"""\
        import subprocess as _sp, sys as _sys
        _sp.Popen([_sys.executable, "-c", {sleeper!r}], start_new_session=True)
        _sp.run([_sys.executable, "-c", {daemon!r}])
        """)


def _survivors(marker: str, within: float = 2.0) -> list[int]:
    """Processes whose command line carries `marker`, after giving a kill `within` seconds to land."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture(params=["namespaces", "subreaper"])
def isolation(request, monkeypatch):
    """Both ways of tracking the process tree: the pid namespace, and the fallback where namespaces are refused."""
    if request.param == "subreaper":
        monkeypatch.setattr(execution, "USE_NAMESPACES", False)
    return request.param


def test_a_passing_program_that_leaves_children_behind_passes_at_once_and_its_children_die(isolation):
    marker = f"pdl-escapee-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = run_program(ADD, _spawn_escapees(marker) + TESTS, timeout=3)
    elapsed = time.monotonic() - started
    assert result.status == "passed" and result.assertions == 2, result
    assert elapsed < 3 + 1.5, elapsed  # the old harness waited for the pipes the children held (~8 s here)
    assert _survivors(marker) == []


def test_an_endless_test_with_detached_children_times_out_on_time_and_leaves_nothing(isolation):
    marker = f"pdl-escapee-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = run_program(ADD, _spawn_escapees(marker) + "import time\nwhile True:\n    time.sleep(0.05)\n", timeout=2)
    elapsed = time.monotonic() - started
    assert result.status == "timeout" and not result.passed, result
    assert elapsed < 2 + 1.5, elapsed
    assert _survivors(marker) == []


def test_the_evaluator_memory_does_not_grow_with_what_the_program_prints():
    # in a fresh interpreter, by its VmHWM: ru_maxrss survives exec, so it would start at this pytest process's size
    script = textwrap.dedent("""\
        import re
        from pathlib import Path
        from pdl_plugin.eval.execution import run_program
        def peak_mib():
            return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024
        program = "import sys\\nfor _ in range(48):\\n    print('x' * 2**20)\\n    sys.stderr.write('y' * 2**20)\\n"
        before = peak_mib()
        result = run_program(program + "def add(a, b):\\n    return a + b\\n", "assert add(1, 2) == 3\\n", timeout=20)
        print(result.status, peak_mib() - before)
        """)
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    status, growth_mib = done.stdout.split()
    assert status == "passed" and int(growth_mib) < 24, done.stdout  # 96 MiB printed; the old harness kept ~2.5x that


@pytest.fixture
def listener():
    """A TCP server of the host: a connection from the run shows in its backlog even if nobody accepts it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.3)
    yield server
    server.close()


def _reached(server) -> bool:
    try:
        server.accept()[0].close()
        return True
    except OSError:  # socket.timeout included
        return False


def test_the_low_level_socket_module_is_blocked_too(listener):
    port = listener.getsockname()[1]
    result = run_program(f"import _socket\n_socket.socket().connect(('127.0.0.1', {port}))\n" + ADD, TESTS)
    assert not _reached(listener)
    assert result.status == "failed" and "network access is disabled" in result.detail, result


def test_a_child_process_cannot_reach_the_network(listener):
    port = listener.getsockname()[1]
    child = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    program = f"import subprocess, sys\ncode = subprocess.run([sys.executable, '-c', {child!r}]).returncode\n" + ADD
    result = run_program(program, TESTS + "assert code != 0\n", timeout=5)
    if getattr(result, "isolation", "namespaces") != "namespaces":
        pytest.skip(f"no user namespaces here ({result.isolation}): only the harness's own sockets are blocked")
    assert not _reached(listener)
    assert result.status == "passed", result


def test_ssl_and_asyncio_still_import():
    # the socket block keeps socket.socket a class: ssl subclasses it at import time
    assert run_program("import ssl, asyncio, urllib.request\n" + ADD, TESTS).status == "passed"


FORGED = """\
import json, os
forged = {"status": "ok", "stage": "done", "error": "", "assertions": 5}  # the verdict, unsigned and signed badly
with open("../harness/result.json", "w") as handle:
    json.dump(dict(forged, verdict=forged, mac="0" * 64), handle)
os._exit(0)
"""


@pytest.mark.parametrize("program, tests", [
    (ADD + FORGED, TESTS),  # forges the harness's result file (any format), then ends the interpreter
    (ADD, "assert add(1, 2) == 3\n" + FORGED),  # the same from the tests, after an assertion
    ("def add(a, b):\n    import sys\n    sys.exit(0)\n", TESTS),  # exits cleanly inside the function under test
    (ADD, "assert add(1, 2) == 3\nimport sys\nsys.exit(0)\nassert add(1, 1) == 3\n"),  # the tests exit early
    ("def add(a, b):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n", TESTS),  # kills itself
    ("import sys\nassert sys.stdin.read() == ''\ndef add(a, b):\n    raise SystemExit(0)\n", TESTS),
])
def test_an_interpreter_that_ends_early_never_passes(program, tests):
    result = run_program(program, tests, timeout=5)
    assert result.status == "failed" and not result.passed, result


def test_a_result_file_replaced_by_a_fifo_does_not_block_the_evaluator():
    # the old harness opened it and waited for a writer forever
    program = ADD + "import os\nos.mkfifo('../harness/result.json')\nos._exit(0)\n"
    results = []
    worker = threading.Thread(target=lambda: results.append(run_program(program, TESTS, timeout=3)), daemon=True)
    worker.start()
    worker.join(10)
    assert results and results[0].status == "failed", results


def test_the_run_cannot_trace_its_supervisor():
    # it holds capabilities in its user namespace; traced, pid 1 could be made to skip the deadline or leave the group
    program = "import ctypes\ntraced = ctypes.CDLL(None, use_errno=True).ptrace(16, 1, 0, 0)  # PTRACE_ATTACH\n" + ADD
    result = run_program(program, TESTS + "assert traced == -1\n")
    if result.isolation != "namespaces":
        pytest.skip(f"no pid namespace here ({result.isolation})")
    assert result.status == "passed", result

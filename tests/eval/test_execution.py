"""pass@1 infrastructure on hand-made programs: pass, fail, timeout, no network."""

import time

from pdl_plugin.eval.execution import pass_at_1, run_program

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_program(ADD, TESTS).status == "passed"
    failed = run_program("def add(a, b):\n    return a - b\n", TESTS)
    assert failed.status == "failed" and "AssertionError" in failed.detail
    score, results = pass_at_1([ADD, "def add(a, b):\n    return a * b\n"], [TESTS, TESTS])
    assert score == 0.5 and [r.passed for r in results] == [True, False]


def test_an_endless_program_is_killed_at_the_timeout():
    started = time.perf_counter()
    result = run_program("def add(a, b):\n    while True:\n        pass\n", TESTS, timeout=1.5)
    assert result.status == "timeout" and time.perf_counter() - started < 10


def test_the_program_cannot_open_a_socket():
    result = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", "")
    assert result.status == "failed" and "network access is disabled" in result.detail
    result = run_program("import socket\nsocket.socket()\n", "")
    assert "network access is disabled" in result.detail


def test_the_program_runs_in_an_empty_temporary_folder():
    assert run_program("import os\nassert os.listdir('.') == ['program.py'], os.listdir('.')\n", "").passed

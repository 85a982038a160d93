"""pass@1 infrastructure on hand-made programs: pass, fail, timeout, no network, and tests that assert nothing."""

import time

from pdl_plugin.eval.execution import pass_at_1, run_program

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"

# HumanEval's format: the test defines check(candidate) and leaves the call to the harness (entry_point: add)
CHECK = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
STUB = "def add(a, b):\n    pass\n"


def test_a_correct_program_passes_and_a_wrong_one_fails():
    passed = run_program(ADD, TESTS)
    assert passed.status == "passed" and passed.assertions == 2
    failed = run_program("def add(a, b):\n    return a - b\n", TESTS)
    assert failed.status == "failed" and "AssertionError" in failed.detail and failed.assertions == 1
    score, results = pass_at_1([ADD, "def add(a, b):\n    return a * b\n"], [TESTS, TESTS])
    assert score == 0.5 and [r.passed for r in results] == [True, False]


def test_function_completion_format_calls_check_on_the_entry_point():
    right = run_program(ADD, CHECK, entry_point="add")
    assert right.status == "passed" and right.assertions == 2
    stub = run_program(STUB, CHECK, entry_point="add")  # returns None: the first assertion fails
    assert stub.status == "failed" and "AssertionError" in stub.detail and stub.assertions == 1
    score, results = pass_at_1([ADD, STUB], [CHECK, CHECK], entry_points=["add", "add"])
    assert score == 0.5 and [r.status for r in results] == ["passed", "failed"]


def test_a_test_that_runs_no_assertion_never_passes():
    # without the entry point nothing calls check(): the stub "passed" here before; now it reaches no assertion
    for program in (ADD, STUB):
        result = run_program(program, CHECK)
        assert result.status == "no_assertion" and not result.passed and result.assertions == 0
    assert run_program(ADD, "x = add(1, 2)\n").status == "no_assertion"  # calls the function, asserts nothing
    assert pass_at_1([STUB], [CHECK])[0] == 0.0


def test_a_missing_entry_point_or_an_early_exit_fails():
    missing = run_program("def plus(a, b):\n    return a + b\n", CHECK, entry_point="add")
    assert missing.status == "failed" and "defines no 'add'" in missing.detail
    for exit_call in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n"):
        early = run_program(ADD + exit_call, TESTS)
        assert early.status == "failed" and early.assertions == 0, (exit_call, early)


def test_unittest_assertions_count():
    tests = ("import unittest\nclass T(unittest.TestCase):\n    def test_add(self):\n"
             "        self.assertEqual(add(1, 2), 3)\nunittest.main(argv=['x'])\n")
    assert run_program(ADD, tests).status == "passed"
    assert run_program("def add(a, b):\n    return 0\n", tests).status == "failed"


def test_an_endless_program_is_killed_at_the_timeout():
    started = time.perf_counter()
    result = run_program("def add(a, b):\n    while True:\n        pass\n", TESTS, timeout=1.5)
    assert result.status == "timeout" and time.perf_counter() - started < 10


def test_the_program_cannot_open_a_socket():
    result = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", TESTS)
    assert result.status == "failed" and "network access is disabled" in result.detail
    result = run_program("import socket\nsocket.socket()\n", TESTS)
    assert "network access is disabled" in result.detail


def test_the_program_runs_in_an_empty_temporary_folder():
    assert run_program("import os\nassert os.listdir('.') == [], os.listdir('.')\n", "assert True\n").passed

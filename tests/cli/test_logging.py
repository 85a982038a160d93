"""Our commands print the package's warnings in one format for the whole run (issue noticed in the study logs)."""

import subprocess
import sys

SCRIPT = """
import logging
from pdl_plugin.cli import run_cli

def main(argv):
    logging.getLogger("pdl_plugin.recipe").warning("Preparation: first")
    logging.basicConfig()  # what absl (ROUGE scoring) does the first time it logs
    logging.getLogger("pdl_plugin.recipe").warning("Preparation: second")

run_cli(main, [])
"""


def test_warnings_keep_one_format_after_a_library_configures_logging():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "Preparation" in line]
    assert lines == ["WARNING pdl_plugin.recipe: Preparation: first", "WARNING pdl_plugin.recipe: Preparation: second"]

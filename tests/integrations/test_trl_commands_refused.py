"""In the Axolotl environment (trl 1.9, transformers 5.16.1) the TRL-host commands refuse with one line, not an
ImportError or a failure deep inside TRL."""

import subprocess
import sys

import pytest

pytest.importorskip("axolotl")


@pytest.mark.parametrize("module, command", [("sft", "pdl-sft"), ("freq", "pdl-freq"), ("eval", "pdl-eval"),
                                             ("compare", "pdl-compare")])
def test_trl_host_commands_name_the_missing_extra(module, command):
    run = subprocess.run([sys.executable, "-m", f"pdl_plugin.cli.{module}", "--config", "x.yaml"],
                         capture_output=True, text=True, timeout=300)
    err = " ".join(run.stderr.split())
    assert run.returncode == 2, err[-2000:]
    assert err.startswith(f"error: {command} runs on TRL, and trl ") and "Traceback" not in err
    assert "pip install 'pdl-plugin[trl]'" in err and "axolotl pdl-freq" in err

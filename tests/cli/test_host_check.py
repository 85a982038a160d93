"""The TRL-host commands stop with one line naming what is missing when the `[trl]` extra is absent or too old."""

import subprocess
import sys
from importlib import metadata

import pytest

from pdl_plugin.cli import missing_trl_host, require_trl_host


def _installed(overrides):
    real = metadata.version

    def version(name):
        if name in overrides:
            if overrides[name] is None:
                raise metadata.PackageNotFoundError(name)
            return overrides[name]
        return real(name)

    return version


def test_this_environment_has_the_trl_host():
    assert missing_trl_host() is None


@pytest.mark.parametrize("overrides, expected", [
    ({"trl": None}, "trl is not installed"),
    ({"trl": "1.9.0", "transformers": "5.16.1"}, "trl 1.9.0 is installed (needs trl<2,>=1.16); transformers 5.16.1 is "
                                                 "installed (needs transformers>=5.24)"),
    ({"trl": "2.0.0"}, "trl 2.0.0 is installed (needs trl<2,>=1.16)"),
])
def test_a_missing_or_old_trl_is_one_line_naming_the_extra(monkeypatch, capsys, overrides, expected):
    monkeypatch.setattr(metadata, "version", _installed(overrides))
    with pytest.raises(SystemExit) as stop:
        require_trl_host("pdl-sft")
    err = " ".join(capsys.readouterr().err.split())
    assert stop.value.code == 2
    assert err.startswith("error: pdl-sft runs on TRL, and " + expected)
    assert "pip install 'pdl-plugin[trl]'" in err and "axolotl train" in err


def test_the_installed_entry_point_still_runs(tmp_path):
    """The check sits at the top of the CLI modules: with TRL present, `pdl-sft` gets as far as its own usage error."""
    run = subprocess.run([sys.executable, "-m", "pdl_plugin.cli.sft"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "usage: pdl-sft --config RECIPE.yaml" in run.stderr, run.stderr[-2000:]

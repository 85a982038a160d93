"""Smoke tests of benchmarks/axolotl_step.py (Axolotl step, PDL against Axolotl's CE) and of the frozen-head case of
benchmarks/loss_step.py. The Axolotl run is skipped where Axolotl is not installed (run it with the Axolotl venv's
Python: `python -m pytest tests/benchmarks/test_axolotl_step_smoke.py`)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_axolotl_variants_differ_only_in_the_loss(tmp_path):
    bench = load_benchmark("axolotl_step")
    ce, pdl = bench.raw_config("ce", tmp_path), bench.raw_config("pdl", tmp_path)
    assert pdl["loss_type"] == "pdl" and "loss_type" not in ce
    assert not [key for key in ce if key.startswith("pdl_")]
    differing = {key for key in ce.keys() | pdl.keys() if ce.get(key) != pdl.get(key)}
    assert differing == {"output_dir", "loss_type"} | {key for key in pdl if key.startswith("pdl_")}
    assert ce["plugins"] == pdl["plugins"] == bench.PLUGINS


def test_axolotl_options_differ_from_plain_pdl_only_in_their_settings(tmp_path):
    bench = load_benchmark("axolotl_step")
    pdl = bench.raw_config("pdl", tmp_path)
    for name in ("floor", "ce_mix", "prior"):
        cfg = bench.raw_config(name, tmp_path)
        settings = bench.option_settings(name, tmp_path)
        assert cfg["loss_type"] == "pdl" and all(cfg[key] == value for key, value in settings.items())
        differing = {key for key in cfg.keys() | pdl.keys() if cfg.get(key) != pdl.get(key)}
        assert differing == {"output_dir", *bench.OPTIONS[name], *(["pdl_prior_path"] if name == "prior" else [])}
        assert all(pdl[key] == value for key, value in bench.PLAIN.items())  # both on equation (3)
    # a memory process writes its own folder: the timing process still holds out-pdl (PDL runs lock output_dir)
    assert bench.raw_config("pdl", tmp_path, run="-memory-1")["output_dir"] != pdl["output_dir"]


def test_frozen_head_gets_no_weight_gradient_and_the_same_hidden_gradient():
    bench = load_benchmark("loss_step")
    grads = {}
    for method in ("naive", "pdl_fused"):
        hidden, weight, labels, token_weights = bench.inputs(512, 64, head="frozen", dtype="float32")
        assert not weight.requires_grad and weight.grad is None
        bench.METHODS[method](hidden, weight, labels, token_weights).backward()
        assert weight.grad is None
        grads[method] = hidden.grad
    torch.testing.assert_close(grads["pdl_fused"], grads["naive"], rtol=1e-4, atol=1e-6)


def test_loss_step_frozen_memory_only_runs():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "loss_step.py"), "--head", "frozen", "--dtype", "float32", "--no-time",
         "--vocab", "1024", "--tokens", "128", "--methods", "pdl_fused"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| frozen |")]
    assert [row.split("|")[4].strip() for row in rows] == ["naive", "pdl_fused"]


def test_axolotl_step_runs():
    pytest.importorskip("axolotl")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "axolotl_step.py"), "--pairs", "1", "--skip-memory", "--variants", "all"],
        capture_output=True, text=True, timeout=1200, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("trainers: ce AxolotlTrainer, pdl PDLAxolotlTrainer, floor PDLAxolotlTrainer, ce_mix PDLAxolotlTrainer, "
            "prior PDLAxolotlTrainer") in result.stdout
    assert "PDL head: trained positions" in result.stdout
    assert re.search(r"step time, PDL / Axolotl CE: median \d+\.\d+", result.stdout)
    for option in ("floor", "ce_mix", "prior"):
        assert re.search(rf"step time \(CPU\), {option} / PDL: median \d+\.\d+", result.stdout)
    assert re.search(r"engine's share of a step .*: pdl \d+, floor \d+ .*, ce_mix \d+ .*, prior \d+ ", result.stdout)

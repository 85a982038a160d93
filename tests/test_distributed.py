"""Two data-parallel CPU processes (gloo): one optimizer step's gradient equals the single-process one."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).parent / "ddp_worker.py"


def _step(tmp_path, smol_path, name, processes, per_device, accumulation):
    output = tmp_path / f"{name}.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(WORKER), smol_path, str(output), str(per_device), str(accumulation)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(output)


def test_two_processes_with_accumulation_equal_one_process_one_batch(tmp_path, smol_path):
    ddp = _step(tmp_path, smol_path, "ddp", processes=2, per_device=1, accumulation=2)
    single = _step(tmp_path, smol_path, "single", processes=1, per_device=4, accumulation=1)
    assert (ddp["world_size"], single["world_size"]) == (2, 1)
    relative_error = float((ddp["delta"] - single["delta"]).norm() / single["delta"].norm())
    assert relative_error <= 1e-5, relative_error

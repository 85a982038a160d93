"""FSDP2 on CPU (gloo, 2 processes): PDL's step equals the single-process one when the model is sharded.

accelerate 1.15 does not run FSDP on CPU: `accelerate launch --cpu --use_fsdp` refuses ("You can only use one of
`--cpu`, `--multi_gpu`, `--tpu`, `--use_deepspeed`, `--use_fsdp` at a time."), and FSDP asked of the Trainer on a
CPU state (`fsdp=True`, `fsdp_config={"version": 2}`, or `accelerate launch --use_fsdp --fsdp_version 2` without a
GPU) is dropped without a word: the model is wrapped in DDP. So the tests below (see tests/fsdp2_worker.py):

- pin that silent fallback (and that PDL stays exact under it);
- run PDLSFTTrainer + LoRA through accelerate's own FSDP2 preparation and the Trainer's FSDP paths, with only that
  CPU gate lifted in the worker;
- run the PDL head and loss under `torch.distributed.fsdp.fully_shard` directly, with the LM head its own FSDP unit,
  so that its weight is a sharded DTensor inside the PDL forward and its gradient goes through our gather.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "fsdp2_worker.py"
TOLERANCE = 1e-5


def _run(tmp_path, name, processes, *args):
    output = tmp_path / f"{name}.pt"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes else [sys.executable]), str(WORKER), args[0], args[1], str(output),
               *map(str, args[2:])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(output)


def _relative_error(run, reference) -> float:
    assert run["before"].keys() == reference["before"].keys()
    for name, value in reference["before"].items():  # same start, so the comparison is of the step alone
        assert torch.equal(run["before"][name], value), name
    delta = torch.cat([(run["after"][n] - run["before"][n]).flatten() for n in reference["before"]])
    expected = torch.cat([(reference["after"][n] - reference["before"][n]).flatten() for n in reference["before"]])
    assert all((reference["after"][n] != reference["before"][n]).any() for n in reference["before"])
    return float((delta - expected).norm() / expected.norm())


@pytest.fixture(scope="module")
def single_process_step(tmp_path_factory, smol_path):
    """1 process x batch 4, no FSDP: the reference LoRA step."""
    result = _run(tmp_path_factory.mktemp("single"), "single", 1, "trainer", smol_path, 4, 1, "none")
    assert result["world_size"] == 1
    return result


def test_trainer_fsdp2_lora_step_equals_single_process(tmp_path, smol_path, single_process_step):
    """2 processes x batch 1 x accumulation 2 under accelerate's FSDP2 = 1 process x batch 4 (LoRA, PDL alpha 1)."""
    fsdp = _run(tmp_path, "fsdp2", 2, "trainer", smol_path, 1, 2, "fsdp2")
    assert (fsdp["world_size"], fsdp["distributed_type"], fsdp["fsdp2"]) == (2, "DistributedType.FSDP", True)
    assert fsdp["wrapper"] == "FSDPPeftModel" and fsdp["dtensor_params"] > 0  # really sharded
    relative_error = _relative_error(fsdp, single_process_step)
    assert relative_error <= TOLERANCE, relative_error


def test_fsdp_asked_on_cpu_falls_back_to_ddp_and_stays_exact(tmp_path, smol_path, single_process_step):
    """Without the worker's override, accelerate ignores the FSDP request on CPU: DDP, no DTensor. If this starts
    failing, accelerate runs FSDP on CPU by itself and the override in tests/fsdp2_worker.py can go."""
    dropped = _run(tmp_path, "dropped", 2, "trainer", smol_path, 1, 2, "fsdp2-as-asked")
    assert (dropped["distributed_type"], dropped["fsdp2"]) == ("DistributedType.MULTI_CPU", False)
    assert (dropped["wrapper"], dropped["dtensor_params"]) == ("DistributedDataParallel", 0)
    relative_error = _relative_error(dropped, single_process_step)
    assert relative_error <= TOLERANCE, relative_error


def test_pdl_head_gathers_a_sharded_lm_head_under_fully_shard(tmp_path, smol_path):
    """Full finetuning, untied LM head sharded as its own unit: every gradient, the head's included, equals the
    single-process gradient of the whole batch."""
    sharded = _run(tmp_path, "sharded", 2, "shard", smol_path, 1, 0)
    single = _run(tmp_path, "single", 0, "shard", smol_path, 0, 0)
    assert sharded["world_size"] == 2
    assert sharded["head_weight_type_in_forward"] == ["DTensor"]  # the gather path was taken
    assert sharded["grads"].keys() == single["grads"].keys() and "lm_head.weight" in single["grads"]
    errors = {n: float((sharded["grads"][n] - g).norm() / g.norm()) for n, g in single["grads"].items()}
    assert max(errors.values()) <= TOLERANCE, errors

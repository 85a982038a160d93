"""DeepSpeed ZeRO-2 and ZeRO-3 on CPU (DeepSpeed's CPU accelerator, gloo, 2 processes), LoRA: PDL's step with
2 processes x batch 1 x accumulation 2 equals 1 process x batch 4. Skipped where `deepspeed` is not installed (it is
not a dependency: `pip install deepspeed` builds it from its sdist, with no compiled ops, in about a minute)."""

import pytest

from test_fsdp2 import TOLERANCE, _relative_error, _run, single_process_step  # noqa: F401 (a fixture)

pytest.importorskip("deepspeed")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_lora_step_equals_single_process(tmp_path, smol_path, single_process_step, stage):  # noqa: F811
    zero = _run(tmp_path, f"zero{stage}", 2, "trainer", smol_path, 1, 2, f"zero{stage}")
    assert (zero["world_size"], zero["distributed_type"], zero["wrapper"]) == (
        2, "DistributedType.DEEPSPEED", "DeepSpeedEngine")
    relative_error = _relative_error(zero, single_process_step)
    assert relative_error <= TOLERANCE, relative_error

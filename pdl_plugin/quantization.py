"""Guard for a bitsandbytes pitfall that silently corrupts QLoRA gradients on CPU."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def guard_cpu_4bit_gradients(model: torch.nn.Module) -> int:
    """Keep 4-bit layers on the differentiable CPU kernel; returns how many layers were guarded.

    On CPUs with AVX512-BF16, bitsandbytes repacks a `Linear4bit` weight the first time it runs in eval mode under
    no_grad (an eval pass); every later call then uses `gemv_4bit`, which has no backward, so LoRA gradients through
    that layer are silently wrong. Turning the repacking off, and undoing it where it already happened, keeps training
    exact. A layer already repacked is unpacked again; its scales went through bf16 on the way, so its weights may
    differ slightly from the checkpoint's (a warning says so). No-op without 4-bit layers or without bitsandbytes.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        return 0
    guarded = unpacked = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            state = getattr(module.weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, state
                )
                unpacked += 1
            guarded += 1
    if unpacked:
        logger.warning(
            "%d 4-bit layers had been repacked by an eval pass before training; they were unpacked so LoRA gradients "
            "are right, with scales rounded through bf16. Build the trainer before any evaluation to avoid this.",
            unpacked,
        )
    return guarded

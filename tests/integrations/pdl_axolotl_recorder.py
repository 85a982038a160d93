"""A test-only Axolotl plugin that records what a real `axolotl train` did, for an independent recomputation.

Listed after PDLPlugin in the test configs (with this folder on PYTHONPATH). It saves to `output_dir/pdl_record.pt`:
every micro-batch of every optimizer step as the Trainer drew it, the trainable (LoRA) parameters at the start of each
step, their gradients just before each optimizer step, and every log entry. Not part of the package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback


class _Recorder(TrainerCallback):
    def __init__(self, trainer, path: Path):
        self.trainer, self.path = trainer, path
        self.record = {"windows": [], "params": [], "grads": [], "logs": [], "trainer_cls": type(trainer).__name__}

    def _trainable(self, model, what: str):
        out = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                tensor = param.detach() if what == "data" else param.grad
                out[name] = None if tensor is None else tensor.detach().float().cpu().clone()
        return out

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.record["params"].append(self._trainable(model, "data"))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.record["grads"].append(self._trainable(model, "grad"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.record["logs"].append({"step": state.global_step, **(logs or {})})

    def on_train_end(self, args, state, control, **kwargs):
        torch.save(self.record, self.path)


class RecorderPlugin(BasePlugin):
    def pre_lora_load(self, cfg, model):
        # Axolotl 0.19 seeds only when the Trainer is built, after the LoRA matrices are initialised: seed here so
        # that two runs start from the same LoRA A (B is 0 either way) and their gradients can be compared.
        torch.manual_seed(cfg.seed if cfg.seed is not None else 42)

    def post_trainer_create(self, cfg, trainer):
        recorder = _Recorder(trainer, Path(cfg.output_dir) / "pdl_record.pt")
        draw = trainer.get_batch_samples

        def recording_get_batch_samples(*args, **kwargs):
            batches, num_items = draw(*args, **kwargs)
            recorder.record["windows"].append({
                "batches": [{k: v.detach().cpu().clone() for k, v in b.items() if torch.is_tensor(v)} for b in batches],
                "num_items_in_batch": None if num_items is None else float(num_items),
            })
            return batches, num_items

        trainer.get_batch_samples = recording_get_batch_samples
        trainer.add_callback(recorder)

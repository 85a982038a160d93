"""`PDLSFTTrainer`: TRL's `SFTTrainer` with `loss_type="pdl"`, connected to the PDL engine.

What is TRL's here: the dataset preparation (whose labels the engine counts), the masking mode, and the forward that
gives per-token log-probs (our trained-positions head, or TRL's fused head for models whose logits are scaled).
Everything else (weights, denominator, loss, metrics, files, resume) is `PDLEngine`'s, via `PDLTrainerMixin`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer
from trl.data_utils import get_dataset_column_names

from .config import PDLSFTConfig
from .engine import PDLEngine
from .errors import PDLConfigError
from .files import write_json
from .frequency import special_token_ids, tokenizer_fingerprint
from .hf_trainer import PDLTrainerMixin, shifted_labels
from .data_checks import check_dataset_columns, explain_template_errors, masking_mode
from .quantization import guard_cpu_4bit_gradients

logger = logging.getLogger(__name__)

# TRL counts the `num_tokens` it logs in memory only (`SFTTrainer._total_train_tokens`): saved with each checkpoint
# here, so that a resumed run's count goes on from the checkpoint's instead of starting again at 0
TOKEN_COUNT_FILE = "trl_num_tokens.json"


class PDLSFTTrainer(PDLTrainerMixin, SFTTrainer):
    """Drop-in for `trl.SFTTrainer` that also accepts `loss_type="pdl"` (see `PDLSFTConfig`).

    After construction, `trainer.pdl_engine` runs the PDL loss (None unless `loss_type="pdl"`), `trainer.pdl_table`
    is its `FrequencyTable` and `trainer.pdl_weights` the float32 weight of every row of the output embedding.
    """

    _tag_names = ["trl", "sft", "pdl"]

    def __init__(self, model, args: SFTConfig | PDLSFTConfig | None = None, train_dataset=None, **kwargs):
        args = _as_pdl_config(args, model)
        pdl = args.loss_type == "pdl"
        if pdl and kwargs.get("compute_loss_func") is not None:
            raise PDLConfigError(
                "loss_type 'pdl' computes its own loss: remove `compute_loss_func`, or use loss_type 'nll'."
            )
        raw_columns = get_dataset_column_names(train_dataset) if train_dataset is not None else []
        if train_dataset is not None and kwargs.get("formatting_func") is None:
            check_dataset_columns(raw_columns, args.dataset_text_field)
        # SFTTrainer.__init__ accepts only 'nll' and 'dft' and TRL has no hook for another loss type; PDL takes the
        # same data path as 'nll'. TRL sees a shallow copy saying 'nll', the caller's config is left untouched.
        trl_args = copy.copy(args) if pdl else args
        if pdl:
            trl_args.loss_type = "nll"
        with explain_template_errors(train_dataset, kwargs.get("processing_class")):
            super().__init__(model, args=trl_args, train_dataset=train_dataset, **kwargs)
        self.args = args
        guarded = guard_cpu_4bit_gradients(self.model)
        if guarded:
            logger.info("Kept %d 4-bit layers on the differentiable CPU kernel (bitsandbytes eval-pass pitfall).", guarded)
        if pdl:
            self._pdl_setup(masking_mode(raw_columns, args.assistant_only_loss, args.completion_only_loss))

    def _pdl_setup(self, masking: str) -> None:
        parallelism = self.accelerator.parallelism_config
        if parallelism is not None and parallelism.sp_enabled:
            raise PDLConfigError("loss_type 'pdl' does not support sequence parallelism yet; use data parallelism.")
        core = _core_model(self.model)
        engine = PDLEngine.for_training_set(
            self.args.pdl_settings, host="trl", train_dataset=self.train_dataset,
            output_rows=core.get_output_embeddings().weight.shape[0],
            tokenizer_fingerprint=tokenizer_fingerprint(self._tokenizer), masking=masking,
            special_token_ids=special_token_ids(self._tokenizer), log=logger,
        )
        self._pdl_connect(engine, core, fallback="TRL's fused LM head scores every position",
                          blocker="MoE auxiliary loss is on" if self.aux_loss_enabled else None)

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        """Also save TRL's `num_tokens` count, before the Trainer's files (its `trainer_state.json` comes last)."""
        if self.args.should_save:
            folder = self._checkpoint_folder(trial)
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / TOKEN_COUNT_FILE, {"num_tokens": int(self._total_train_tokens),
                                                   "global_step": self.state.global_step})
        return super()._save_checkpoint(model, trial, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """On resume (the one loading hook every backend calls with the checkpoint folder), also restore TRL's
        `num_tokens` count; a checkpoint saved without it (plain TRL, older pdl-plugin) keeps TRL's restart at 0."""
        super()._load_optimizer_and_scheduler(checkpoint)
        saved = Path(checkpoint) / TOKEN_COUNT_FILE if checkpoint is not None else None
        if saved is not None and saved.is_file():
            self._total_train_tokens = int(json.loads(saved.read_text(encoding="utf-8"))["num_tokens"])
        elif checkpoint is not None:
            logger.warning("Checkpoint %s has no %s: the logged num_tokens restarts from 0 (TRL's behaviour).",
                           checkpoint, TOKEN_COUNT_FILE)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.pdl_engine is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        training = self.model.training
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        if self._pdl_head:  # only the trained positions are scored; targets come flattened
            outputs = model(**inputs, pdl_head=True)
            targets = outputs.targets
        else:
            outputs = model(**inputs, fused_lm_head=True)
            targets = shifted_labels(inputs)
        loss = self._pdl_loss(outputs.log_probs, targets, num_items_in_batch, training,
                              scale=self._pdl_data_parallel_scale(num_items_in_batch))
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        self._record_trl_metrics(outputs, inputs, "train" if training else "eval")
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def _record_trl_metrics(self, outputs, inputs, mode: str) -> None:
        """The metrics TRL's own `compute_loss` logs (entropy, token accuracy, tokens seen), kept identical."""
        num_valid = self.accelerator.gather_for_metrics(outputs.label_mask.sum()).sum()
        entropy_sum = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
        num_correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


def _core_model(model):
    """The transformers model under a PEFT wrapper, where TRL patched its fused head and we patch ours."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _as_pdl_config(args, model) -> PDLSFTConfig:
    if isinstance(args, PDLSFTConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else model.config._name_or_path
        return PDLSFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-PDL")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    return PDLSFTConfig(**values)

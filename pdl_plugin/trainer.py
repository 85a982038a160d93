"""`PDLSFTTrainer`: TRL's `SFTTrainer` with `loss_type="pdl"`.

The loss of one optimizer step is ``sum_i w(y_i) * -log p(y_i) / sum_i w(y_i)`` over every trained token of the step
(all gradient-accumulation micro-batches, all data-parallel ranks). The denominator travels through the Trainer's
own `num_items_in_batch`, which we make a sum of weights instead of a count of tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import SFTConfig, SFTTrainer
from trl.data_utils import get_dataset_column_names

from .config import PDLSFTConfig
from .errors import PDLConfigError
from .frequency import TABLE_FILENAME, FrequencyTable, count_trained_tokens, tokenizer_fingerprint
from .fused_head import add_pdl_head, pdl_head_unsupported
from .loss import pdl_sums, target_weights
from .preparation import check_dataset_columns, explain_template_errors, masking_mode
from .quantization import guard_cpu_4bit_gradients

logger = logging.getLogger(__name__)

SETTINGS_FILENAME = "pdl_config.json"


class PDLSFTTrainer(SFTTrainer):
    """Drop-in for `trl.SFTTrainer` that also accepts `loss_type="pdl"` (see `PDLSFTConfig`).

    After construction, `trainer.pdl_table` is the `FrequencyTable` in use and `trainer.pdl_weights` the float32
    weight of every row of the model's output embedding (both `None` unless `loss_type="pdl"`).
    """

    _tag_names = ["trl", "sft", "pdl"]

    def __init__(self, model, args: SFTConfig | PDLSFTConfig | None = None, train_dataset=None, **kwargs):
        args = _as_pdl_config(args, model)
        self.pdl_table: FrequencyTable | None = None
        self.pdl_weights: torch.Tensor | None = None
        if args.loss_type == "pdl" and kwargs.get("compute_loss_func") is not None:
            raise PDLConfigError(
                "loss_type 'pdl' computes its own loss: remove `compute_loss_func`, or use loss_type 'nll'."
            )
        raw_columns = get_dataset_column_names(train_dataset) if train_dataset is not None else []
        if train_dataset is not None and kwargs.get("formatting_func") is None:
            check_dataset_columns(raw_columns, args.dataset_text_field)
        with explain_template_errors(), _seen_by_trl_as_nll(args):
            super().__init__(model, args=args, train_dataset=train_dataset, **kwargs)
        guarded = guard_cpu_4bit_gradients(self.model)
        if guarded:
            logger.info("Kept %d 4-bit layers on the differentiable CPU kernel (bitsandbytes eval-pass pitfall).", guarded)
        if args.loss_type == "pdl":
            self._pdl_setup(masking_mode(raw_columns, args.assistant_only_loss, args.completion_only_loss))

    # ---- set-up ------------------------------------------------------------------------------------------------------

    @property
    def _pdl_active(self) -> bool:
        return self.args.loss_type == "pdl"

    def _pdl_setup(self, masking: str) -> None:
        args = self.args
        if self.accelerator.parallelism_config is not None and self.accelerator.parallelism_config.sp_enabled:
            raise PDLConfigError("loss_type 'pdl' does not support sequence parallelism yet; use data parallelism.")
        if args.world_size > 1 and not args.average_tokens_across_devices:
            logger.warning(
                "average_tokens_across_devices is off: each rank divides by its own weight sum, so the step's loss is "
                "a mean of per-rank weighted means, not the exact PDL of the whole batch. Turn it on for exactness."
            )
        vocab_rows = self.model.get_output_embeddings().weight.shape[0]
        tok_fp = tokenizer_fingerprint(self._tokenizer)
        data_fp = getattr(self.train_dataset, "_fingerprint", None) or "unavailable"
        if args.pdl_freq_path:
            table = FrequencyTable.load(args.pdl_freq_path)
            table.check_compatible(tok_fp, vocab_rows, source=f"The table {args.pdl_freq_path}")
            if table.data_fingerprint != data_fp:
                logger.info("Using the table %s counted on other data than this training set.", args.pdl_freq_path)
        else:
            counts = count_trained_tokens(self.train_dataset, vocab_rows, desc="PDL: counting trained tokens")
            table = FrequencyTable(counts, tok_fp, masking, data_fp)
        if table.total == 0:
            raise PDLConfigError(
                "loss_type 'pdl': no token of the training set is trained (every label is -100), so there is "
                "nothing to weight. Check the dataset's completion/assistant turns, `max_length` (prompts may fill "
                "it) and `completion_only_loss` / `assistant_only_loss`."
            )
        unsupported = pdl_head_unsupported(_core_model(self.model)) or (
            "MoE auxiliary loss is on" if self.aux_loss_enabled else None
        )
        if unsupported is None:
            add_pdl_head(_core_model(self.model))
        else:
            logger.info("PDL uses TRL's fused LM head (every position scored) because %s.", unsupported)
        self._pdl_head = unsupported is None
        self.pdl_table = table
        self.pdl_weights = table.weights(args.pdl_alpha, args.pdl_epsilon, args.pdl_normalize, args.pdl_max_weight)
        self._pdl_cached_weights: torch.Tensor | None = None
        self._pdl_cached_key: tuple | None = None
        self._pdl_totals = {mode: torch.zeros(3, dtype=torch.float64) for mode in ("train", "eval")}
        # The loss is already divided by the whole step's weight sum, so the Trainer must not divide it again
        self.loss_is_scaled_for_ga = True
        if self.args.should_save:
            self.save_pdl_artifacts(args.output_dir)

    def save_pdl_artifacts(self, output_dir: str | Path) -> tuple[Path, Path]:
        """Write the table and the PDL settings into `output_dir` (atomically), so the run can be reused or redone."""
        output_dir = Path(output_dir)
        table_path = self.pdl_table.save(output_dir / TABLE_FILENAME)
        settings_path = output_dir / SETTINGS_FILENAME
        tmp = settings_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**self.args.pdl_settings, "table": TABLE_FILENAME}, indent=2) + "\n")
        tmp.replace(settings_path)
        return table_path, settings_path

    # ---- checkpoints ------------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._pdl_active and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.save_pdl_artifacts(folder)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if self._pdl_active and resume_from_checkpoint:
            self._check_checkpoint_table(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _check_checkpoint_table(self, checkpoint) -> None:
        """Resuming must keep the weights of the interrupted run: refuse a table or settings that changed since."""
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                return  # the Trainer itself reports that there is no checkpoint to resume from
        folder = Path(checkpoint)
        if not (folder / TABLE_FILENAME).is_file():
            logger.warning("Checkpoint %s has no PDL table (saved by a non-PDL run?); continuing with this one.", folder)
            return
        saved = FrequencyTable.load(folder / TABLE_FILENAME)
        settings = json.loads((folder / SETTINGS_FILENAME).read_text())
        changed = [
            key for key, value in self.args.pdl_settings.items() if key != "pdl_freq_path" and settings.get(key) != value
        ]
        if not torch.equal(saved.counts, self.pdl_table.counts) or changed:
            what = f"the settings {changed}" if changed else "the frequency table (the training data changed)"
            raise PDLConfigError(
                f"Cannot resume from {folder}: {what} differ from the interrupted run's, so the loss would change "
                f"mid-run. Resume with the same data and settings, or with `pdl_freq_path: {folder / TABLE_FILENAME}`, "
                "or start a new run without `resume_from_checkpoint`."
            )

    # ---- loss ------------------------------------------------------------------------------------------------------

    def pdl_alpha_at(self, step: int) -> float:
        """The alpha of optimizer step `step`: linear from 0 to `pdl_alpha` over `pdl_alpha_warmup_steps`."""
        warmup = self.args.pdl_alpha_warmup_steps
        return self.args.pdl_alpha if step >= warmup else self.args.pdl_alpha * step / warmup

    def _loss_weights(self, device: torch.device, training: bool) -> torch.Tensor:
        """The weights of the current optimizer step (training, alpha warm-up applied) or the full weights (eval)."""
        alpha = self.pdl_alpha_at(self.state.global_step) if training else self.args.pdl_alpha
        key = (alpha, device)
        if self._pdl_cached_key != key:
            args = self.args
            weights = (
                self.pdl_weights
                if alpha == args.pdl_alpha
                else self.pdl_table.weights(alpha, args.pdl_epsilon, args.pdl_normalize, args.pdl_max_weight)
            )
            self._pdl_cached_weights, self._pdl_cached_key = weights.to(device), key
        return self._pdl_cached_weights

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The step's denominator: the sum of weights (or count) of its trained tokens, over all ranks."""
        if not self._pdl_active:
            return super()._get_num_items_in_batch(batch_samples, device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batch_samples:
            labels = _shifted_labels(batch).to(device)
            if self.args.pdl_normalize == "weighted":
                total += target_weights(labels, self._loss_weights(device, training=True)).sum(dtype=torch.float64)
            else:
                total += (labels != -100).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._pdl_active:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        if self._pdl_head:  # only the trained positions are scored; targets come flattened
            outputs = model(**inputs, pdl_head=True)
            targets = outputs.targets
        else:
            outputs = model(**inputs, fused_lm_head=True)
            targets = _shifted_labels(inputs)
        weights = self._loss_weights(outputs.log_probs.device, training=mode == "train")
        sums = pdl_sums(outputs.log_probs, targets, weights)
        if num_items_in_batch is None:  # one batch on its own: its weighted mean
            denominator = sums.weight if self.args.pdl_normalize == "weighted" else sums.tokens.float()
            loss = sums.weighted_nll / denominator.clamp(min=torch.finfo(torch.float32).tiny)
        else:
            loss = sums.weighted_nll / num_items_in_batch
            # Like TRL: the denominator covers every rank and DDP averages the gradients across ranks
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        loss = loss.to(torch.float32)
        self._pdl_totals[mode] += torch.stack([sums.nll, sums.weight, sums.tokens.double()]).double().cpu()
        self._record_trl_metrics(outputs, inputs, mode)
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add, beside the PDL `loss`, the plain cross-entropy of the same tokens and their mean weight."""
        if self._pdl_active:
            mode = "train" if self.model.training else "eval"
            totals = self.accelerator.reduce(self._pdl_totals[mode].to(self.accelerator.device), "sum").cpu()
            nll, weight, tokens = totals.tolist()
            if tokens > 0:
                prefix = "eval_" if mode == "eval" else ""
                logs[f"{prefix}ce_loss"] = nll / tokens
                logs[f"{prefix}pdl_mean_weight"] = weight / tokens
            if mode == "train" and self.args.pdl_alpha_warmup_steps:
                logs["pdl_alpha"] = self.pdl_alpha_at(max(self.state.global_step - 1, 0))  # of the step just taken
            self._pdl_totals[mode].zero_()
        super().log(logs, start_time)


def _core_model(model):
    """The transformers model under a PEFT wrapper, where TRL patched its fused head and we patch ours."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _shifted_labels(batch: dict) -> torch.Tensor:
    """The targets of a causal LM, aligned with TRL's per-token log-probs."""
    return batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]


def _as_pdl_config(args, model) -> PDLSFTConfig:
    if isinstance(args, PDLSFTConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else model.config._name_or_path
        return PDLSFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-PDL")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    return PDLSFTConfig(**values)


@contextlib.contextmanager
def _seen_by_trl_as_nll(args: PDLSFTConfig) -> Iterator[None]:
    """`SFTTrainer.__init__` accepts only 'nll' and 'dft'; PDL uses the same fused path as 'nll' while it runs."""
    loss_type = args.loss_type
    if loss_type == "pdl":
        args.loss_type = "nll"
    try:
        yield
    finally:
        args.loss_type = loss_type

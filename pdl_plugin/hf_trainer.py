"""`PDLTrainerMixin`: connects a `PDLEngine` to the hooks of `transformers.Trainer`, which both hosts subclass.

TRL's `SFTTrainer` and Axolotl's `AxolotlTrainer` are both `transformers.Trainer`s, so the step denominator
(`_get_num_items_in_batch`), the logged metrics (`log`), the checkpoint files (`_save_checkpoint`) and the resume check
(`train`) are connected here once. A host adapter builds the engine (`self.pdl_engine`, its own counting and masking)
and computes the per-token log-probs of its model; everything else is the engine's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from packaging.version import Version
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import check_resume_checkpoint
from .engine import PDLEngine
from .fused_head import add_pdl_head, pdl_head_unsupported


def shifted_labels(batch: dict) -> torch.Tensor:
    """The targets of a causal LM, aligned with per-token log-probs: `shift_labels` (padding-free collators) or
    `labels[..., 1:]`."""
    return batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]


def _loss_already_scaled(*_args, **_kwargs):
    raise RuntimeError("compute_loss_func placeholder: PDL computes the loss in compute_loss")


class PDLTrainerMixin:
    """Mix in before a `transformers.Trainer` subclass; set `self.pdl_engine` in the host's `__init__` (None = off).

    The loss returned by `compute_loss` is already divided by the whole step's denominator, so the Trainer must not
    divide it by the accumulation steps again: `loss_is_scaled_for_ga` says so (transformers >= 5.19); older versions
    only look at `compute_loss_func`, which `_pdl_connect` fills with a placeholder, as TRL's base trainer does.
    """

    pdl_engine: PDLEngine | None = None

    @property
    def loss_is_scaled_for_ga(self) -> bool | None:
        """True under PDL (the loss is divided by the whole step's denominator); otherwise the host's own answer."""
        if self.pdl_engine is not None:
            return True
        return getattr(super(), "loss_is_scaled_for_ga", None)

    def _pdl_connect(self, engine: PDLEngine, core_model, fallback: str, blocker: str | None = None) -> None:
        """Attach the engine and install the trained-positions head on `core_model` (the transformers model under
        any PEFT wrapper) unless it cannot serve it (or `blocker` says why not); then the host's `fallback` computes
        the log-probs, which is logged."""
        self.pdl_engine = engine
        unsupported = blocker or pdl_head_unsupported(core_model)
        if unsupported is None:
            add_pdl_head(core_model)
        else:
            engine._log.info("PDL: %s, because %s.", fallback, unsupported)
        self._pdl_head = unsupported is None
        if self.args.world_size > 1 and not self.args.average_tokens_across_devices:
            engine._log.warning(
                "PDL: average_tokens_across_devices is off: each rank divides by its own weight sum, so the step's "
                "loss is a mean of per-rank weighted means, not the exact PDL of the whole batch. Turn it on."
            )
        if Version(transformers.__version__) < Version("5.19.0"):
            # Makes transformers compute `num_items_in_batch` and skip its division by the accumulation steps
            self.model_accepts_loss_kwargs = False
            if self.compute_loss_func is None:
                self.compute_loss_func = _loss_already_scaled

    @property
    def pdl_table(self):
        return None if self.pdl_engine is None else self.pdl_engine.table

    @property
    def pdl_weights(self) -> torch.Tensor | None:
        """float32 weight of every row of the output embedding at the full alpha (None unless PDL is on)."""
        return None if self.pdl_engine is None else self.pdl_engine.weights

    # ---- the step ------------------------------------------------------------------------------------------------

    def _pdl_ranks_per_batch(self) -> int:
        """Ranks that see the same batch (tensor parallelism): each would count its tokens again."""
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        return parallelism.non_data_parallel_size if parallelism is not None else 1

    def _pdl_data_parallel_scale(self, num_items_in_batch) -> float:
        """DDP averages gradients over ranks while the denominator already covers them all: scale back, like TRL."""
        if num_items_in_batch is None or not self.args.average_tokens_across_devices:
            return 1.0
        return self.accelerator.num_processes // self._pdl_ranks_per_batch()

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The step's denominator: the weight sum (or count) of its trained tokens, over all micro-batches and ranks."""
        if self.pdl_engine is None:
            return super()._get_num_items_in_batch(batch_samples, device)
        gather = None
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            gather = lambda total: self.accelerator.gather(total).sum()  # noqa: E731
        # Evaluation (transformers counts each eval batch alone) weighs with the full alpha, as the eval loss does
        step = self.state.global_step if self.model.training else None
        return self.pdl_engine.step_denominator(
            [shifted_labels(batch) for batch in batch_samples], device, step,
            all_reduce=gather, ranks_per_batch=self._pdl_ranks_per_batch(),
        )

    def _pdl_loss(self, log_probs, targets, num_items_in_batch, training: bool, scale: float = 1.0) -> torch.Tensor:
        return self.pdl_engine.loss(
            log_probs, targets, step=self.state.global_step, training=training,
            num_items_in_batch=num_items_in_batch, scale=scale,
        )

    # ---- logs ----------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add, beside the PDL `loss`, the plain cross-entropy of the same tokens and their mean weight."""
        mode = "train" if "loss" in logs else "eval" if "eval_loss" in logs else None
        if self.pdl_engine is not None and mode is not None:
            reduce = lambda totals: self.accelerator.reduce(totals.to(self.accelerator.device), "sum").cpu()  # noqa: E731
            logs.update(self.pdl_engine.pop_metrics(mode, self.state.global_step, reduce))
        super().log(logs, start_time)

    # ---- files ---------------------------------------------------------------------------------------------------

    def _checkpoint_folder(self, trial) -> Path:
        """The folder the Trainer's `_save_checkpoint` is about to write, for files that must be there before it."""
        return Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        """Write the PDL files into the checkpoint before the Trainer's own: a checkpoint the Trainer can resume from
        (its `trainer_state.json` is written last) always has them."""
        if self.pdl_engine is not None and self.args.should_save:
            self.pdl_engine.save(self._checkpoint_folder(trial))
        return super()._save_checkpoint(model, trial, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Check a resume against the engine, then write the run's PDL files: nothing is written before that.

        `resume_from_checkpoint=True` resumes from the newest *complete* checkpoint (a newer one a killed run left
        half-saved is skipped), and that folder is what the Trainer is given."""
        if self.pdl_engine is not None:
            if resume_from_checkpoint:
                folder = check_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
                self.pdl_engine.check_resume(folder)
                resume_from_checkpoint = str(folder)
            if self.args.should_save:
                self.pdl_engine.save(self.args.output_dir)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

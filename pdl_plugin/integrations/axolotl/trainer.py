"""The Axolotl trainer with the PDL loss: `PDLAxolotlTrainer`, or `PDLAxolotlMixin` over a config's `trainer_cls`.

It builds the `PDLEngine` from Axolotl's prepared training set (labels != -100 after the causal shift) and wires the
loss as the Trainer's `compute_loss_func`, as Axolotl wires its EAFT loss, so Axolotl's own `compute_loss` (token
tracking, model quirks) still runs. In training the model scores only the trained positions (our chunked head, never
the full logits), unless its logits are scaled or soft-capped; evaluation uses the model's logits, as Axolotl does.
The settings are the trainer's arguments (`args.py`). Weights, the step's denominator over every micro-batch and rank,
metrics, files and the resume check are the engine's (`pdl_plugin.engine`), connected to the Trainer's hooks by
`pdl_plugin.hf_trainer.PDLTrainerMixin`, the same code the TRL trainer runs.

Imports Axolotl's trainers: the plugin imports this module only once its hooks run, after every plugin is registered.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from axolotl.core.trainers import AxolotlTrainer
from axolotl.utils.logging import get_logger

from ...engine import PDLEngine
from ...errors import PDLConfigError, PDLError
from ...frequency import IGNORE_INDEX, special_token_ids, tokenizer_fingerprint
from ...fused_head import PDLHeadOutput
from ...hf_trainer import PDLTrainerMixin
from ...quantization import guard_cpu_4bit_gradients
from .args import settings_from_training_args
from .cfg import RECOUNT_COMMAND

LOG = get_logger("axolotl.integrations.pdl")  # Axolotl shows INFO only for loggers under `axolotl`


class _PerplexityOfCrossEntropy(dict):
    """Axolotl's `log` sets `ppl = exp(loss)`. Under PDL the loss is a weighted mean, whose exponential is no
    perplexity: `ppl` / `eval_ppl` become the perplexity of `ce_loss`, the plain cross-entropy of the same tokens."""

    def __setitem__(self, key, value):
        prefix = "eval_" if key == "eval_ppl" else ""
        if key in ("ppl", "eval_ppl") and f"{prefix}ce_loss" in self:
            try:
                value = math.exp(self[f"{prefix}ce_loss"])
            except OverflowError:
                value = float("inf")
        super().__setitem__(key, value)


class PDLAxolotlMixin(PDLTrainerMixin):
    """The PDL loss for an Axolotl trainer class; its settings come from `self.args` (`PDLTrainingArgsMixin`)."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise PDLConfigError(
                "loss_type 'pdl' computes its own loss, but another `compute_loss_func` was given (e.g. `use_eaft`). "
                "Use one of the two."
            )
        super().__init__(*args, **kwargs)
        guarded = guard_cpu_4bit_gradients(self.model)
        if guarded:
            LOG.info("PDL: kept %d 4-bit layers on the differentiable CPU kernel (bitsandbytes eval pitfall).", guarded)
        settings, masking, table_extra = settings_from_training_args(self.args)
        model = self.accelerator.unwrap_model(self.model)
        output_embeddings = model.get_output_embeddings()
        if output_embeddings is None:
            raise PDLConfigError("loss_type 'pdl' needs a causal LM with an output embedding (lm_head).")
        engine = PDLEngine.for_training_set(
            settings, host="axolotl", train_dataset=self.train_dataset, output_rows=output_embeddings.weight.shape[0],
            tokenizer_fingerprint=tokenizer_fingerprint(self.processing_class), masking=masking,
            table_extra=table_extra, special_token_ids=special_token_ids(self.processing_class),
            recount_command=RECOUNT_COMMAND, log=LOG,
        )
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._pdl_connect(engine, core, fallback="computed from the model's full logits")
        self.compute_loss_func = self._pdl_loss_from_outputs
        table, settings = engine.table, engine.settings
        LOG.info(
            "PDL: alpha %s, %s normalisation, %s trained tokens (%s distinct), %s head.", settings.pdl_alpha,
            settings.pdl_normalize, f"{table.total:,}", f"{int((table.counts > 0).sum()):,}",
            "trained-positions" if self._pdl_head else "full-logits",
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Axolotl's own `compute_loss`, asking the model for the trained positions' log-probs in training.

        The Trainer pops `labels` before the forward when a `compute_loss_func` is set, so they travel as
        `pdl_labels`."""
        if self._pdl_head and model.training and "labels" in inputs:
            inputs = {**inputs, "pdl_head": True, "pdl_labels": inputs["labels"]}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _pdl_loss_from_outputs(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        """`compute_loss_func`: the micro-batch's share of the step's PDL, from the head's log-probs or the logits."""
        if isinstance(outputs, PDLHeadOutput):
            log_probs, targets = outputs.log_probs, outputs.targets
        else:
            logits = outputs.get("logits") if hasattr(outputs, "get") else outputs[0]
            if logits is None or labels is None:
                raise PDLError(
                    "loss_type 'pdl' got no logits or no labels from the model: a fused loss patch (Cut Cross Entropy, "
                    "Liger) is active. Disable it, PDL weights the per-token log-probabilities."
                )
            shift_labels = labels[..., 1:].to(logits.device)
            trained = shift_labels != IGNORE_INDEX
            targets = shift_labels[trained]
            log_probs = -F.cross_entropy(logits[..., :-1, :][trained].float(), targets, reduction="none")
        return self._pdl_loss(log_probs, targets, num_items_in_batch, training=self.model.training)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(_PerplexityOfCrossEntropy(logs), start_time)


class PDLAxolotlTrainer(PDLAxolotlMixin, AxolotlTrainer):
    """Axolotl's SFT trainer with the PDL loss (what `loss_type: pdl` trains with unless the config sets `trainer_cls`)."""


@functools.cache
def pdl_trainer_cls(base: type) -> type:
    """`base` with the PDL loss: a config's own `trainer_cls` (a subclass of Axolotl's) gets the mixin on top."""
    if base is AxolotlTrainer:
        return PDLAxolotlTrainer
    return type(f"PDL{base.__name__}", (PDLAxolotlMixin, base), {"__module__": __name__})

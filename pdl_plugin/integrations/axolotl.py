"""The Axolotl plugin: `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]` plus `loss_type: pdl` in an Axolotl YAML.

The plugin only connects the PDL engine to Axolotl's hooks:

* `get_input_args`: `PDLArgs` (axolotl_args.py, derived from `PDLSettings`) joins Axolotl's config schema, so
  `loss_type` and the `pdl_*` keys are validated by Axolotl itself, before anything is loaded.
* `pre_model_load`: a `pdl_freq_path` table for another tokenizer or vocabulary is refused before the model loads.
* `get_trainer_cls`: with `loss_type: pdl`, Axolotl's trainer (or your `trainer_cls`) with `PDLAxolotlMixin` mixed in:
  it builds the `PDLEngine` from Axolotl's prepared training set (labels != -100 after the causal shift) and wires the
  loss as the Trainer's `compute_loss_func`, as Axolotl wires its EAFT loss, so Axolotl's own `compute_loss` (token
  tracking, model quirks) still runs. In training the model scores only the trained positions (our chunked head, never
  the full logits), unless its logits are scaled or soft-capped; evaluation uses the model's logits, as Axolotl does.

Weights, the step's denominator over every micro-batch and rank, metrics, files and the resume check are the
engine's (`pdl_plugin.engine`), connected to the Trainer's hooks by `pdl_plugin.hf_trainer.PDLTrainerMixin`, the same
code the TRL trainer runs.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from ..checkpoints import check_resume_checkpoint
from ..engine import PDLEngine, with_command
from ..errors import FrequencyTableError, PDLConfigError, PDLError
from ..frequency import IGNORE_INDEX, FrequencyTable, special_token_ids, tokenizer_fingerprint
from ..fused_head import PDLHeadOutput
from ..hf_trainer import PDLTrainerMixin
from ..quantization import guard_cpu_4bit_gradients
from ..run_weights import load_prior
from ..settings import PDLSettings

LOG = get_logger("axolotl.integrations.pdl")  # Axolotl shows INFO only for loggers under `axolotl`

INPUT_ARGS = "pdl_plugin.integrations.axolotl_args.PDLArgs"
RECOUNT_COMMAND = "axolotl pdl-freq CONFIG.yaml --output TABLE"


# ---- what Axolotl trains -------------------------------------------------------------------------------------------


def masking_from_cfg(cfg) -> str:
    """Which tokens Axolotl trains, in the words of the table's `masking` metadata."""
    if cfg.get("train_on_inputs"):
        return "all_tokens"
    datasets = list(cfg.get("datasets") or [])
    types = [str(d.get("type") or "") for d in datasets]
    if datasets and all(t.startswith("chat_template") for t in types):
        roles = {tuple(d.get("roles_to_train") or ("assistant",)) for d in datasets}
        if roles == {("assistant",)}:
            return "assistant_only"
        return "roles:" + "|".join(",".join(r) for r in sorted(roles))
    return "completion_only"


def table_extra_from_cfg(cfg) -> dict[str, str]:
    datasets = [{"path": str(d.get("path")), "type": str(d.get("type"))} for d in cfg.get("datasets") or []]
    return {"host": "axolotl", "datasets": json.dumps(datasets), "sequence_len": str(cfg.get("sequence_len"))}


def expected_output_rows(cfg, tokenizer) -> int:
    """Rows of the output embedding Axolotl's model loader will end up with (it may resize to the tokenizer)."""
    from axolotl.loaders.utils import load_model_config

    config = load_model_config(cfg)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = int(text_config.vocab_size)
    target = math.ceil(len(tokenizer) / 32) * 32 if cfg.get("resize_token_embeddings_to_32x") else len(tokenizer)
    if rows < target or (rows > target and cfg.get("shrink_embeddings")):
        rows = target
    return rows


# ---- the trainer ---------------------------------------------------------------------------------------------------


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
    """Mixed into Axolotl's trainer class by `PDLPlugin.get_trainer_cls`; `_pdl_cfg` (the run's cfg) is bound on
    the subclass."""

    _pdl_cfg = None

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
        cfg = self._pdl_cfg
        model = self.accelerator.unwrap_model(self.model)
        output_embeddings = model.get_output_embeddings()
        if output_embeddings is None:
            raise PDLConfigError("loss_type 'pdl' needs a causal LM with an output embedding (lm_head).")
        engine = PDLEngine.for_training_set(
            PDLSettings.from_mapping(cfg), host="axolotl", train_dataset=self.train_dataset,
            output_rows=output_embeddings.weight.shape[0],
            tokenizer_fingerprint=tokenizer_fingerprint(self.processing_class), masking=masking_from_cfg(cfg),
            table_extra=table_extra_from_cfg(cfg), special_token_ids=special_token_ids(self.processing_class),
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


def make_pdl_trainer_cls(base: type, cfg) -> type:
    """`base` (AxolotlTrainer or a `trainer_cls`) with the PDL loss, bound to this run's cfg."""
    return type(f"PDL{base.__name__}", (PDLAxolotlMixin, base), {"_pdl_cfg": cfg, "__module__": __name__})


# ---- the plugin ----------------------------------------------------------------------------------------------------


class PDLPlugin(BasePlugin):
    """Power-Law Decay Loss for Axolotl SFT: list it under `plugins:` and set `loss_type: pdl` (see the README)."""

    def get_input_args(self) -> str:
        return INPUT_ARGS

    def pre_model_load(self, cfg) -> None:
        """Refuse an incompatible `pdl_freq_path` or `pdl_prior_path` before the model is loaded (the trainer checks
        them again)."""
        if cfg.get("loss_type") != "pdl" or not (cfg.get("pdl_freq_path") or cfg.get("pdl_prior_path")):
            return
        from axolotl.loaders import load_tokenizer

        tokenizer = load_tokenizer(cfg)
        rows = expected_output_rows(cfg, tokenizer)
        try:
            if cfg.get("pdl_freq_path"):
                table = FrequencyTable.load(cfg.pdl_freq_path)
                table.check_compatible(tokenizer_fingerprint(tokenizer), rows, source=f"The table {cfg.pdl_freq_path}")
            load_prior(PDLSettings.from_mapping(cfg), tokenizer_fingerprint(tokenizer), rows, "axolotl pdl-freq CONFIG")
        except FrequencyTableError as err:
            raise FrequencyTableError(with_command(str(err), RECOUNT_COMMAND)) from None

    def get_trainer_cls(self, cfg):
        if cfg.get("loss_type") != "pdl":
            return None
        from axolotl.core.trainers import AxolotlTrainer

        if cfg.get("model_config_type") == "mamba":
            raise PDLConfigError("loss_type 'pdl' does not support Axolotl's Mamba trainer.")
        base = AxolotlTrainer
        if cfg.get("trainer_cls"):
            from axolotl.utils.import_helper import get_cls_from_module_str

            base = get_cls_from_module_str(cfg.trainer_cls)
        return make_pdl_trainer_cls(base, cfg)

    def post_trainer_create(self, cfg, trainer) -> None:
        if cfg.get("loss_type") != "pdl":
            return
        if not isinstance(trainer, PDLAxolotlMixin):
            raise PDLConfigError(
                f"loss_type 'pdl' is set but the trainer is {type(trainer).__name__}: a plugin listed before "
                "pdl_plugin.integrations.axolotl.PDLPlugin supplied its own trainer class. List PDLPlugin first."
            )
        # The resume check, here already: after this hook Axolotl re-saves its configs (adapter_config.json, ...)
        # into output_dir; a refused resume must not touch the interrupted run's files. train() checks it again.
        # The checkpoint is Axolotl's own choice (`resume_from_checkpoint`, or the newest with auto-resume), which it
        # makes again, to the same result, just before training.
        from axolotl.utils.train import determine_last_checkpoint

        resume = determine_last_checkpoint(cfg)
        if resume and trainer.pdl_engine is not None:
            trainer.pdl_engine.check_resume(check_resume_checkpoint(resume, trainer.args.output_dir))
        # Axolotl rewrites its configs into output_dir right after this hook: a second run must be refused before
        trainer.pdl_lock_run_folder()

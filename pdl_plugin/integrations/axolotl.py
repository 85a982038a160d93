"""The Axolotl plugin: `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]` plus `loss_type: pdl` in an Axolotl YAML.

What it does, hook by hook:

* `get_input_args`: `PDLArgs` (axolotl_args.py) joins Axolotl's config schema, so `loss_type` and the `pdl_*` keys are
  validated by Axolotl itself; typos, bad values and loss patches that would replace PDL (Cut Cross Entropy, Liger
  cross-entropy, chunked CE, EAFT, ...) are refused before anything is loaded.
* `register`: resolves `embedded:SmolLM2-135M-Instruct` (base_model) and `embedded:dialogue` / `embedded:code` /
  `embedded:summarization` (dataset paths) to local files, so the offline recipes need no hub.
* `get_trainer_cls`: with `loss_type: pdl`, Axolotl's trainer (or your `trainer_cls`) with `PDLTrainerMixin` mixed in.
  The mixin counts the trained tokens of Axolotl's prepared training set (labels != -100 after the causal shift) or
  loads `pdl_freq_path`, saves `pdl_frequency_table.safetensors` and `pdl_config.json` in `output_dir` (and in every
  checkpoint), and computes the loss.

The loss of one optimizer step is ``sum_i w(y_i) * -log p(y_i) / sum_i w(y_i)`` over every trained token of the step:
all gradient-accumulation micro-batches and all ranks. As in our TRL trainer, the denominator is the Trainer's own
`num_items_in_batch`, which `_get_num_items_in_batch` turns from a token count into a weight sum over the whole window;
the loss is wired as the Trainer's `compute_loss_func` (as Axolotl wires its EAFT loss), so transformers neither divides
it by the accumulation steps again nor forgets to rescale it across ranks.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..data.embedded_model import EMBEDDED_PREFIX, resolve_embedded_model
from ..data.registry import resolve_embedded_dataset
from ..data.cache import EmbeddedResourceError, cache_dir
from ..errors import PDLConfigError, PDLError
from ..frequency import IGNORE_INDEX, TABLE_FILENAME, FrequencyTable, count_trained_tokens, tokenizer_fingerprint
from ..loss import pdl_sums, target_weights
from ..quantization import guard_cpu_4bit_gradients
from .axolotl_args import PDL_DEFAULTS, PDLArgs  # noqa: F401  (PDLArgs: the path get_input_args names)

LOG = get_logger("axolotl.integrations.pdl")  # Axolotl shows INFO only for loggers under `axolotl`

SETTINGS_FILENAME = "pdl_config.json"  # the same name as pdl_plugin.trainer.SETTINGS_FILENAME (TRL path)
INPUT_ARGS = "pdl_plugin.integrations.axolotl_args.PDLArgs"


# ---- settings ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PDLSettings:
    """The validated PDL settings of one Axolotl run, plus what the table records about the counted tokens."""

    pdl_alpha: float = PDL_DEFAULTS["pdl_alpha"]
    pdl_epsilon: float = PDL_DEFAULTS["pdl_epsilon"]
    pdl_freq_path: str | None = None
    pdl_normalize: str = PDL_DEFAULTS["pdl_normalize"]
    pdl_max_weight: float | None = None
    pdl_alpha_warmup_steps: int = 0
    masking: str = "axolotl_labels"
    table_extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg) -> PDLSettings:
        values = {key: cfg.get(key) if cfg.get(key) is not None else default for key, default in PDL_DEFAULTS.items()}
        return cls(**values, masking=masking_from_cfg(cfg), table_extra=table_extra_from_cfg(cfg))

    @property
    def saved(self) -> dict[str, Any]:
        """What `pdl_config.json` holds: the same keys as the TRL path's, plus where the loss ran."""
        settings = {key: value for key, value in asdict(self).items() if key in PDL_DEFAULTS}
        return {"loss_type": "pdl", **settings, "table": TABLE_FILENAME, "host": "axolotl"}


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


# ---- embedded resources --------------------------------------------------------------------------------------------


def resolve_embedded_resources(cfg) -> None:
    """Turn `embedded:` model and dataset names in a raw Axolotl config into local paths (in place)."""
    for key in ("base_model", "base_model_config", "tokenizer_config"):
        value = cfg.get(key)
        if isinstance(value, str) and value.startswith(EMBEDDED_PREFIX):
            cfg[key] = resolve_embedded_model(value)
    for key, default_split in (("datasets", "train"), ("test_datasets", "validation")):
        for dataset in cfg.get(key) or []:
            path = dataset.get("path") if hasattr(dataset, "get") else None
            if isinstance(path, str) and path.startswith(EMBEDDED_PREFIX):
                dataset["path"] = str(embedded_dataset_jsonl(path, dataset.get("split") or default_split))
                dataset["ds_type"] = "json"
                dataset["split"] = "train"  # a JSON-lines file loads as one `train` split


def embedded_dataset_jsonl(name: str, split: str) -> Path:
    """Write one split of an embedded dataset as JSON lines in the cache (once) and return the file."""
    splits = resolve_embedded_dataset(name)
    if split not in splits:
        raise EmbeddedResourceError(f"The embedded dataset {name} has no split {split!r} (it has {list(splits)}).")
    rows = splits[split]
    bare = name.removeprefix(EMBEDDED_PREFIX)
    target = cache_dir("axolotl", bare, f"{split}-{rows._fingerprint}.jsonl")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            rows.to_json(tmp, lines=True, force_ascii=False)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


# ---- the trainer ---------------------------------------------------------------------------------------------------


class PDLTrainerMixin:
    """Mixed into Axolotl's trainer class by `PDLPlugin.get_trainer_cls`; `_pdl_settings` is bound on the subclass.

    After construction `trainer.pdl_table` is the `FrequencyTable` in use and `trainer.pdl_weights` the float32 weight
    of every row of the output embedding.
    """

    _pdl_settings: PDLSettings

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
        self._pdl_in_eval = False
        self._pdl_setup()
        # Wired like Axolotl's EAFT loss: the Trainer then passes our weight-sum `num_items_in_batch` to the loss,
        # does not divide it by the accumulation steps again, and rescales it for data parallelism as for CE.
        self.compute_loss_func = self._pdl_loss

    # ---- set-up ------------------------------------------------------------------------------------------------------

    def _pdl_setup(self) -> None:
        settings = self._pdl_settings
        model = self.accelerator.unwrap_model(self.model)
        output_embeddings = model.get_output_embeddings()
        if output_embeddings is None:
            raise PDLConfigError("loss_type 'pdl' needs a causal LM with an output embedding (lm_head).")
        vocab_rows = output_embeddings.weight.shape[0]
        tokenizer = self.processing_class
        tok_fp = tokenizer_fingerprint(tokenizer)
        data_fp = getattr(self.train_dataset, "_fingerprint", None) or "unavailable"
        if settings.pdl_freq_path:
            table = FrequencyTable.load(settings.pdl_freq_path)
            table.check_compatible(tok_fp, vocab_rows, source=f"The table {settings.pdl_freq_path}")
            LOG.info("PDL: using the frequency table %s (%s trained tokens).", settings.pdl_freq_path, table.total)
        else:
            if self.train_dataset is None:
                raise PDLConfigError("loss_type 'pdl' needs a training set to count, or `pdl_freq_path`.")
            counts = count_trained_tokens(self.train_dataset, vocab_rows, desc="PDL: counting trained tokens")
            table = FrequencyTable(counts, tok_fp, settings.masking, data_fp, extra=dict(settings.table_extra))
        if table.total == 0:
            raise PDLConfigError(
                "loss_type 'pdl': no token of the training set is trained (every label is -100), so there is nothing "
                "to weight. Check `roles_to_train` / `train_on_inputs` of the datasets and `sequence_len`."
            )
        self.pdl_table = table
        self.pdl_weights = self._pdl_table_weights(settings.pdl_alpha)
        self._pdl_weights_cache: dict[tuple, torch.Tensor] = {}
        self._pdl_totals = {mode: torch.zeros(3, dtype=torch.float64) for mode in ("train", "eval")}
        if self.args.should_save:
            table_path, _ = self.save_pdl_artifacts(self.args.output_dir)
            LOG.info(
                "PDL: alpha %s, %s normalisation, %s trained tokens (%s distinct); table saved to %s",
                settings.pdl_alpha, settings.pdl_normalize, f"{table.total:,}",
                f"{int((table.counts > 0).sum()):,}", table_path,
            )

    def _pdl_table_weights(self, alpha: float) -> torch.Tensor:
        s = self._pdl_settings
        return self.pdl_table.weights(alpha, s.pdl_epsilon, s.pdl_normalize, s.pdl_max_weight)

    def save_pdl_artifacts(self, output_dir: str | Path) -> tuple[Path, Path]:
        """Write the table and the PDL settings into `output_dir` (atomically)."""
        output_dir = Path(output_dir)
        table_path = self.pdl_table.save(output_dir / TABLE_FILENAME)
        settings_path = output_dir / SETTINGS_FILENAME
        tmp = settings_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._pdl_settings.saved, indent=2) + "\n")
        tmp.replace(settings_path)
        return table_path, settings_path

    # ---- weights -------------------------------------------------------------------------------------------------

    def pdl_alpha_at(self, step: int) -> float:
        """The alpha of optimizer step `step`: linear from 0 to `pdl_alpha` over `pdl_alpha_warmup_steps`."""
        s = self._pdl_settings
        warmup = s.pdl_alpha_warmup_steps
        return s.pdl_alpha if step >= warmup else s.pdl_alpha * step / warmup

    def _pdl_current_weights(self, device: torch.device) -> torch.Tensor:
        """The weights of the current optimizer step (alpha warm-up applied), or the full weights in evaluation."""
        alpha = self._pdl_settings.pdl_alpha if self._pdl_in_eval else self.pdl_alpha_at(self.state.global_step)
        key = (alpha, str(device))
        if key not in self._pdl_weights_cache:
            weights = self.pdl_weights if alpha == self._pdl_settings.pdl_alpha else self._pdl_table_weights(alpha)
            self._pdl_weights_cache = {key: weights.to(device)}
        return self._pdl_weights_cache[key]

    # ---- loss ------------------------------------------------------------------------------------------------------

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The step's denominator: the weight sum (or count) of its trained tokens, over all micro-batches and ranks."""
        total = torch.zeros((), dtype=torch.float64, device=device)
        weights = self._pdl_current_weights(device)
        for batch in batch_samples:
            labels = batch["labels"][..., 1:].to(device)
            if self._pdl_settings.pdl_normalize == "weighted":
                total += target_weights(labels, weights).sum(dtype=torch.float64)
            else:
                total += (labels != IGNORE_INDEX).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        if parallelism is not None:
            total = total / parallelism.non_data_parallel_size
        # A window with no trained token has a zero numerator too: its loss is 0, not 0/0
        return total.clamp(min=torch.finfo(torch.float32).tiny)

    def _pdl_loss(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        """`compute_loss_func`: the micro-batch's share of the step's weighted mean, from the full logits."""
        logits = outputs.get("logits") if hasattr(outputs, "get") else outputs[0]
        if logits is None or labels is None:
            raise PDLError(
                "loss_type 'pdl' got no logits or no labels from the model: a fused loss patch (Cut Cross Entropy, "
                "Liger) is active. Disable it, PDL weights the per-token log-probabilities."
            )
        shift_labels = labels[..., 1:].to(logits.device)
        trained = shift_labels != IGNORE_INDEX
        targets = shift_labels[trained]
        nll = F.cross_entropy(logits[..., :-1, :][trained].float(), targets, reduction="none")
        sums = pdl_sums(-nll, targets, self._pdl_current_weights(logits.device))
        if num_items_in_batch is None:  # one batch on its own: its weighted mean
            denominator = sums.weight if self._pdl_settings.pdl_normalize == "weighted" else sums.tokens.float()
            loss = sums.weighted_nll / denominator.clamp(min=torch.finfo(torch.float32).tiny)
        else:
            loss = sums.weighted_nll / num_items_in_batch
        mode = "eval" if self._pdl_in_eval else "train"
        self._pdl_totals[mode] += torch.stack([sums.nll, sums.weight, sums.tokens.double()]).double().cpu()
        return loss.to(torch.float32)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self._pdl_in_eval = True
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._pdl_in_eval = False

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add, beside the PDL `loss`, the plain cross-entropy of the same tokens and their mean weight."""
        mode = "train" if "loss" in logs else "eval" if "eval_loss" in logs else None
        if mode is not None:
            totals = self.accelerator.reduce(self._pdl_totals[mode].to(self.accelerator.device), "sum").cpu()
            nll, weight, tokens = totals.tolist()
            if tokens > 0:
                prefix = "eval_" if mode == "eval" else ""
                logs[f"{prefix}ce_loss"] = nll / tokens
                logs[f"{prefix}pdl_mean_weight"] = weight / tokens
            if mode == "train" and self._pdl_settings.pdl_alpha_warmup_steps:
                logs["pdl_alpha"] = self.pdl_alpha_at(max(self.state.global_step - 1, 0))  # of the step just taken
            self._pdl_totals[mode].zero_()
        super().log(logs, start_time)

    # ---- checkpoints ------------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial, **kwargs):
        super()._save_checkpoint(model, trial, **kwargs)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if folder.is_dir():
                self.save_pdl_artifacts(folder)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            self._check_checkpoint_table(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _check_checkpoint_table(self, checkpoint) -> None:
        """Resuming must keep the weights of the interrupted run: refuse a table or settings that changed since."""
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                return
        folder = Path(checkpoint)
        if not (folder / TABLE_FILENAME).is_file():
            LOG.warning("Checkpoint %s has no PDL table (saved by a non-PDL run?); continuing with this one.", folder)
            return
        saved = FrequencyTable.load(folder / TABLE_FILENAME)
        settings = json.loads((folder / SETTINGS_FILENAME).read_text())
        changed = [
            key for key, value in self._pdl_settings.saved.items()
            if key in PDL_DEFAULTS and key != "pdl_freq_path" and settings.get(key) != value
        ]
        if not torch.equal(saved.counts, self.pdl_table.counts) or changed:
            what = f"the settings {changed}" if changed else "the frequency table (the training data changed)"
            raise PDLConfigError(
                f"Cannot resume from {folder}: {what} differ from the interrupted run's, so the loss would change "
                f"mid-run. Resume with the same data and settings, or with `pdl_freq_path: {folder / TABLE_FILENAME}`."
            )


def make_pdl_trainer_cls(base: type, settings: PDLSettings) -> type:
    """`base` (AxolotlTrainer or a `trainer_cls`) with the PDL loss, bound to this run's settings."""
    return type(f"PDL{base.__name__}", (PDLTrainerMixin, base), {"_pdl_settings": settings, "__module__": __name__})


# ---- the plugin ----------------------------------------------------------------------------------------------------


class PDLPlugin(BasePlugin):
    """Power-Law Decay Loss for Axolotl SFT: list it under `plugins:` and set `loss_type: pdl` (see the README)."""

    def get_input_args(self) -> str:
        return INPUT_ARGS

    def register(self, cfg) -> None:
        resolve_embedded_resources(cfg)

    def pre_model_load(self, cfg) -> None:
        """Refuse an incompatible `pdl_freq_path` before the model is loaded (the trainer checks it again)."""
        if cfg.get("loss_type") != "pdl" or not cfg.get("pdl_freq_path"):
            return
        from axolotl.loaders import load_tokenizer

        table = FrequencyTable.load(cfg.pdl_freq_path)
        tokenizer = load_tokenizer(cfg)
        rows = expected_output_rows(cfg, tokenizer)
        table.check_compatible(tokenizer_fingerprint(tokenizer), rows, source=f"The table {cfg.pdl_freq_path}")

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
        return make_pdl_trainer_cls(base, PDLSettings.from_cfg(cfg))

    def post_trainer_create(self, cfg, trainer) -> None:
        if cfg.get("loss_type") == "pdl" and not isinstance(trainer, PDLTrainerMixin):
            raise PDLConfigError(
                f"loss_type 'pdl' is set but the trainer is {type(trainer).__name__}: a plugin listed before "
                "pdl_plugin.integrations.axolotl.PDLPlugin supplied its own trainer class. List PDLPlugin first."
            )

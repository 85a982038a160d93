"""The Axolotl plugin: `plugins: [pdl_plugin.integrations.axolotl.PDLPlugin]` plus `loss_type: pdl` in an Axolotl YAML.

It connects the PDL engine to Axolotl's documented plugin hooks, as Axolotl's own KD integration does:

* `get_input_args`: `PDLArgs` (args.py, derived from `PDLSettings`) joins Axolotl's config schema, so `loss_type` and
  the `pdl_*` keys are validated by Axolotl itself, before anything is loaded.
* `pre_model_load`: a `pdl_freq_path` or `pdl_prior_path` table for another tokenizer or vocabulary is refused before
  the model loads.
* `get_training_args_mixin` / `get_training_args`: the validated settings become fields of Axolotl's
  `TrainingArguments`, which the trainer reads.
* `get_trainer_cls`: with `loss_type: pdl`, `PDLAxolotlTrainer` (trainer.py), or the config's `trainer_cls` with the
  PDL mixin on top.
* `post_trainer_create`: the resume check and the run-folder lock, before Axolotl writes anything into `output_dir`.
"""

from __future__ import annotations

import dataclasses

from axolotl.integrations.base import BasePlugin

from ...checkpoints import check_resume_checkpoint
from ...engine import with_command
from ...errors import FrequencyTableError, PDLConfigError
from ...frequency import FrequencyTable, tokenizer_fingerprint
from ...run_weights import load_prior
from ...settings import PDLSettings
from .args import training_args_from_cfg, training_args_not_merged
from .cfg import RECOUNT_COMMAND, expected_output_rows

INPUT_ARGS = "pdl_plugin.integrations.axolotl.args.PDLArgs"
TRAINING_ARGS_MIXIN = "pdl_plugin.integrations.axolotl.args.PDLTrainingArgsMixin"


class PDLPlugin(BasePlugin):
    """Power-Law Decay Loss for Axolotl SFT: list it under `plugins:` and set `loss_type: pdl` (see the README)."""

    def get_input_args(self) -> str:
        return INPUT_ARGS

    def get_training_args_mixin(self) -> str:
        return TRAINING_ARGS_MIXIN

    def get_training_args(self, cfg) -> dict | None:
        """The settings as training arguments (their fields come from `TRAINING_ARGS_MIXIN`)."""
        if cfg.get("loss_type") != "pdl":
            return None
        from axolotl.core.training_args import AxolotlTrainingArguments

        if "pdl_masking" not in {field.name for field in dataclasses.fields(AxolotlTrainingArguments)}:
            raise training_args_not_merged(AxolotlTrainingArguments)
        return training_args_from_cfg(cfg)

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
        if cfg.get("model_config_type") == "mamba":
            raise PDLConfigError("loss_type 'pdl' does not support Axolotl's Mamba trainer.")
        from .trainer import PDLAxolotlTrainer, pdl_trainer_cls

        if not cfg.get("trainer_cls"):
            return PDLAxolotlTrainer
        from axolotl.utils.import_helper import get_cls_from_module_str

        return pdl_trainer_cls(get_cls_from_module_str(cfg.trainer_cls))

    def post_trainer_create(self, cfg, trainer) -> None:
        if cfg.get("loss_type") != "pdl":
            return
        from .trainer import PDLAxolotlMixin

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

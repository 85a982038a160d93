"""`PDLTrainerMixin`: connects a `PDLEngine` to the hooks of `transformers.Trainer`, which both hosts subclass.

TRL's `SFTTrainer` and Axolotl's `AxolotlTrainer` are both `transformers.Trainer`s, so the step denominator
(`_get_num_items_in_batch`), the logged metrics (`log`), the checkpoint files (`_save_checkpoint`), the run folder
(`save_model` and the model's own `save_pretrained` into output_dir: the adapter with its PDL files, see `run_folder`;
one run at a time) and the resume check (`train`) are connected here once. A host adapter builds the engine
(`self.pdl_engine`, its own counting and masking) and computes the per-token log-probs of its model; everything else
is the engine's.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import check_resume_checkpoint, last_complete_checkpoint, remove_incomplete_checkpoint
from .engine import PDLEngine
from .settings import check_alpha_warmup
from .errors import PDLWriteError
from .files import describe_os_error, write_failure
from .fused_head import add_pdl_head, pdl_head_unsupported
from .run_folder import copy_pdl_files, lock_run_folder, remove_pdl_files, save_run_folder, unlock_run_folder


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
        if engine.settings.pdl_alpha_warmup_steps:
            self.add_callback(_AlphaWarmupCheck(engine.settings.pdl_alpha_warmup_steps))
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

    # ---- files ----------------------------------------------------------------------------------------------------

    _pdl_in_checkpoint = False  # a save_model call from _save_checkpoint: the checkpoint's, not the run folder's
    _pdl_lock = None  # weakref.finalize releasing this trainer's hold of output_dir (see run_folder)

    def _checkpoint_folder(self, trial) -> Path:
        """The folder the Trainer's `_save_checkpoint` is about to write, for files that must be there before it."""
        return Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        """Write the PDL files into the checkpoint before the Trainer's own: a checkpoint the Trainer can resume from
        (its `trainer_state.json` is written last) always has them. A save that fails on a full disk (in whatever
        words safetensors or torch say it) removes the incomplete checkpoint and stops with one `PDLWriteError`."""
        folder = self._checkpoint_folder(trial)
        self._pdl_in_checkpoint = True
        try:
            if self.pdl_engine is not None and self.args.should_save:
                self.pdl_engine.save(folder)
            return super()._save_checkpoint(model, trial, *args, **kwargs)
        except Exception as err:
            failure = write_failure(err, folder)
            if failure is None:
                raise
            raise self._pdl_checkpoint_failed(folder, err, failure) from err
        finally:
            self._pdl_in_checkpoint = False

    def _pdl_checkpoint_failed(self, folder: Path, err: Exception, failure: OSError) -> PDLWriteError:
        removed = bool(self.args.should_save) and remove_incomplete_checkpoint(folder)
        reason = getattr(err, "reason", None) or describe_os_error(failure)
        last = last_complete_checkpoint(folder.parent)
        kept = f"The incomplete {folder.name} was removed" if removed else f"{folder.name} is left incomplete"
        resume = (f"resume from {last} (`--resume_from_checkpoint true`) once there is space" if last
                  else "no complete checkpoint is left to resume from")
        return PDLWriteError(f"Could not save {folder.name} into {folder.parent}: {reason}. {kept}; the earlier "
                             f"checkpoints and the adapter and PDL files there are unchanged; {resume}.", failure.errno)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A save that is not a checkpoint's (the final one of either host, or the user's) saves a run folder: atomic,
        with this run's PDL files replacing any earlier run's (`run_folder.save_run_folder`)."""
        if self._pdl_in_checkpoint:
            return super().save_model(output_dir, _internal_call=_internal_call)
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        self._pdl_save_run_folder(folder, self._pdl_trainer_save, barrier=True)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _pdl_trainer_save(self, folder: Path) -> None:
        super().save_model(str(folder), _internal_call=True)  # the host's own save (FSDP / DeepSpeed gathers)

    def _pdl_save_run_folder(self, folder: Path, save_model, barrier: bool) -> None:
        """`save_model(tmp)` and the PDL files, moved into `folder` together; `barrier`: every rank takes part."""
        wait = self.accelerator.wait_for_everyone if barrier else (lambda: None)

        def save(tmp: Path) -> None:
            wait()  # the writer has made `tmp`; ranks that write shards may go
            save_model(tmp)
            wait()  # every rank has written before the writer moves the files

        save_pdl = self.pdl_engine.save if self.pdl_engine is not None else None
        try:
            save_run_folder(folder, save, save_pdl, writer=bool(self.args.should_save))
        except PDLWriteError as err:
            last = last_complete_checkpoint(folder)
            hint = f" The last checkpoint is {last}: resume from it once there is space." if last else ""
            raise PDLWriteError(f"{err}{hint}", err.errno) from err
        finally:
            if _same_folder(folder, self.args.output_dir):
                self.pdl_release_run_folder()  # saved (or failed to): the run is done with its folder
        wait()

    def _pdl_watch_direct_saves(self) -> None:
        """Axolotl writes its final adapter, and on Ctrl-C the adapter so far, with the model's own
        `save_pretrained(output_dir)`, not through the Trainer: such a save of the trained model into output_dir is
        made a run-folder save too (atomic, with the PDL files). Saves elsewhere (checkpoints, temporaries) pass."""
        model = self.model
        if not self.args.should_save or "_pdl_direct_save" in vars(model):
            return
        original, trainer = model.save_pretrained, weakref.ref(self)

        def save_pretrained(save_directory, *args, **kwargs):
            owner = trainer()
            if owner is None or owner._pdl_in_checkpoint or not _same_folder(save_directory, owner.args.output_dir):
                return original(save_directory, *args, **kwargs)
            return owner._pdl_save_run_folder(Path(save_directory), lambda tmp: original(str(tmp), *args, **kwargs),
                                              barrier=False)

        vars(model)["_pdl_direct_save"] = original
        vars(model)["save_pretrained"] = save_pretrained

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """With `push_to_hub`, the Trainer copies each checkpoint's model files into output_dir before uploading it:
        the checkpoint's PDL files go with them (the earlier ones removed before, the new ones copied after), so
        output_dir never pairs that model with another run's PDL files (the upload, started in between, may miss
        them until the next push)."""
        in_progress = getattr(self, "push_in_progress", None)
        copies = (self.args.should_save and self.is_world_process_zero() and self.args.hub_strategy != "end"
                  and (self.args.hub_always_push or in_progress is None or in_progress.is_done()))
        if copies:
            remove_pdl_files(self.args.output_dir)  # out before the model files change: no mixed instant
        super()._push_from_checkpoint(checkpoint_folder)
        if copies:
            copy_pdl_files(checkpoint_folder, self.args.output_dir)

    def pdl_lock_run_folder(self) -> None:
        """Hold output_dir for this run (the main process; see `run_folder.lock_run_folder`), once per trainer: a
        second run writing it at once is refused. Freed by the final save, a failed `train`, or the trainer's end."""
        if self._pdl_lock is not None or self.args.process_index != 0:
            return
        folder = str(self.args.output_dir)
        lock_run_folder(folder)
        self._pdl_lock = weakref.finalize(self, unlock_run_folder, folder)

    def pdl_release_run_folder(self) -> None:
        if self._pdl_lock is not None:
            release, self._pdl_lock = self._pdl_lock, None
            release()

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Check a resume against the engine, then hold output_dir for the run. Nothing of the run is written into
        output_dir itself before its final save (checkpoints hold the PDL files), so a run that dies leaves an
        earlier run's adapter and PDL files there as they were.

        `resume_from_checkpoint=True` resumes from the newest *complete* checkpoint (a newer one a killed run left
        half-saved is skipped), and that folder is what the Trainer is given."""
        if self.pdl_engine is not None and resume_from_checkpoint:
            folder = check_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
            self.pdl_engine.check_resume(folder)
            resume_from_checkpoint = str(folder)
        self.pdl_lock_run_folder()
        self._pdl_watch_direct_saves()
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except BaseException:
            self.pdl_release_run_folder()
            raise


class _AlphaWarmupCheck(TrainerCallback):
    """Refuse, when training begins (where every host knows the run's length, epochs included), an alpha warm-up
    longer than the run. Nothing of the run is in output_dir yet (see `PDLTrainerMixin.train`)."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def on_train_begin(self, args, state, control, **kwargs):
        length = f"max_steps {args.max_steps}" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
        check_alpha_warmup(self.warmup_steps, state.max_steps, length)


def _same_folder(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError, TypeError):
        return False

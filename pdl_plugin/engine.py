"""`PDLEngine`: everything a PDL training run does, once, for every host (TRL, Axolotl, your own loop).

The engine owns the settings, the frequency table, the weights of a given optimizer step (alpha warm-up applied), the
step's denominator from the micro-batches' labels, the loss of a micro-batch from per-token log-probs, the running
totals behind `ce_loss` / `pdl_mean_weight` / `pdl_alpha`, the run's files (`pdl_frequency_table.safetensors` and
`pdl_config.json`) and the resume check. It knows torch and nothing of any training framework: a host hands it
tensors and callables (an all-reduce), and connects it to its own hooks (see `hf_trainer.PDLTrainerMixin`).

Guarantees that live here and therefore hold on every host:
* the loss of one optimizer step is ``sum_i w(y_i) * -log p(y_i) / sum_i w(y_i)`` over every trained token of the
  step (all micro-batches, all ranks), whatever the accumulation and the number of processes;
* weights that are not finite, positive float32 numbers are refused before training, and a non-finite loss or
  denominator stops training (naming step, alpha and epsilon) before the optimizer applies it;
* nothing is written until the host calls `save`, after every check has passed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .errors import FrequencyTableError, PDLConfigError, PDLError
from .files import write_json
from .frequency import IGNORE_INDEX, TABLE_FILENAME, FrequencyTable, count_trained_tokens, few_trained_ids_warning
from .loss import pdl_sums, target_weights
from .settings import RESUME_KEYS, PDLSettings

logger = logging.getLogger(__name__)

SETTINGS_FILENAME = "pdl_config.json"
_TINY = torch.finfo(torch.float32).tiny
_FLOAT32_MAX = torch.finfo(torch.float32).max


class PDLEngine:
    """The PDL state of one training run. Build it with `PDLEngine.for_training_set` or from a table you have.

    `masking` is how this run selects its trained tokens ('assistant_only', 'completion_only', ...); a table counted
    with another masking is used (it may be intended) with a warning, and both are recorded in `pdl_config.json`.
    `special_token_ids` are the tokenizer's special tokens (`tokenizer.all_special_ids`), exempt from the reweighting
    with `pdl_exempt_special_tokens`. `recount_command` is the host's command that counts a table, quoted in error
    messages.
    """

    def __init__(
        self,
        settings: PDLSettings,
        table: FrequencyTable,
        *,
        host: str,
        masking: str | None = None,
        special_token_ids: Iterable[int] = (),
        recount_command: str = "pdl-freq --config RECIPE.yaml --output TABLE",
        log: logging.Logger = logger,
    ) -> None:
        self.settings, self.table, self.host, self.masking = settings, table, host, masking
        self.recount_command = recount_command
        self._log = log
        if table.total == 0:
            source = f"The table {settings.pdl_freq_path}" if settings.pdl_freq_path else "The training set"
            fix = (
                f"Recount it on your training data with `{recount_command}`, or unset `pdl_freq_path` to count the "
                "training set."
                if settings.pdl_freq_path
                else "Check the dataset's completion/assistant turns, the maximum length (prompts may fill it) and "
                "which tokens are trained (completion/assistant-only settings)."
            )
            raise PDLConfigError(f"{source} counts no trained token (every label is -100), so PDL has nothing to "
                                 f"weight. {fix}")
        self.exempt_ids = self._exempt_ids(special_token_ids)
        self.weights = self._weights_for_alpha(settings.pdl_alpha)
        self._check_weights()
        few = few_trained_ids_warning(table)
        if few:
            log.warning("PDL: %s", few)
        if masking is not None and table.masking != masking:
            log.warning(
                "PDL: the table %s was counted with masking %r, but this run trains %r tokens: its frequencies "
                "describe other tokens than the trained ones. Recount it with `%s` unless this is intended.",
                settings.pdl_freq_path, table.masking, masking, recount_command,
            )
        self._cached_key: tuple | None = None
        self._cached_weights: torch.Tensor | None = None
        self._totals = {mode: torch.zeros(3, dtype=torch.float64) for mode in ("train", "eval")}

    @classmethod
    def for_training_set(
        cls,
        settings: PDLSettings,
        *,
        host: str,
        train_dataset,
        output_rows: int,
        tokenizer_fingerprint: str,
        masking: str,
        table_extra: dict[str, str] | None = None,
        special_token_ids: Iterable[int] = (),
        recount_command: str = "pdl-freq --config RECIPE.yaml --output TABLE",
        log: logging.Logger = logger,
    ) -> PDLEngine:
        """Load `pdl_freq_path` (refusing another tokenizer or vocabulary) or count the prepared training set."""
        if settings.pdl_freq_path:
            try:
                table = FrequencyTable.load(settings.pdl_freq_path)
                table.check_compatible(tokenizer_fingerprint, output_rows, source=f"The table {settings.pdl_freq_path}")
            except FrequencyTableError as err:
                raise FrequencyTableError(with_command(str(err), recount_command)) from None
            log.info("PDL: using the frequency table %s (%s trained tokens).", settings.pdl_freq_path, f"{table.total:,}")
        else:
            if train_dataset is None:
                raise PDLConfigError("loss_type 'pdl' needs a training set to count, or `pdl_freq_path`.")
            counts = count_trained_tokens(train_dataset, output_rows, desc="PDL: counting trained tokens")
            table = FrequencyTable(counts, tokenizer_fingerprint, masking, data_fingerprint(train_dataset),
                                   extra=dict(table_extra or {}))
        return cls(settings, table, host=host, masking=masking, special_token_ids=special_token_ids,
                   recount_command=recount_command, log=log)

    # ---- weights -------------------------------------------------------------------------------------------------

    def _exempt_ids(self, special_token_ids: Iterable[int]) -> tuple[int, ...]:
        """The rows that `pdl_exempt_special_tokens` exempts: the special tokens inside the model's output rows."""
        if not self.settings.pdl_exempt_special_tokens:
            return ()
        rows = len(self.table.counts)
        ids = tuple(sorted({int(i) for i in special_token_ids if 0 <= int(i) < rows}))
        if not ids:
            raise PDLConfigError(
                "pdl_exempt_special_tokens is true, but the tokenizer declares no special token among the model's "
                f"{rows} output rows, so nothing would be exempt. Check the tokenizer, or remove the setting."
            )
        trained = [i for i in ids if self.table.counts[i] > 0]
        self._log.info("PDL: %d special tokens exempt from the reweighting (mean weight); trained among them: %s.",
                       len(ids), trained or "none")
        return ids

    def _weights_for_alpha(self, alpha: float) -> torch.Tensor:
        s = self.settings
        return self.table.weights(alpha, s.pdl_epsilon, s.pdl_normalize, s.pdl_max_weight, s.pdl_unseen_weight,
                                  self.exempt_ids)

    def _check_weights(self) -> None:
        """Refuse settings whose float32 weights would overflow, vanish, or make a step's weight sum overflow.

        Warm-up alphas lie between 0 and `pdl_alpha`, and `(f + eps) ** -alpha` is monotone in alpha, so the full
        alpha is the extreme case.
        """
        s, weights = self.settings, self.weights
        counted = self.table.counts > 0
        trained = weights[counted]
        total = (weights.double() * self.table.counts.double()).sum()
        problem = None
        if not torch.isfinite(weights).all():
            problem = "some weights overflow float32 (infinite)"
        elif not (trained > 0).all():
            problem = "the weights of frequent tokens underflow to 0 in float32, so they would not be trained at all"
        elif not total < _FLOAT32_MAX:
            problem = f"the weights of the counted tokens sum to {float(total):.3g}, beyond float32"
        if problem:
            raise PDLConfigError(
                f"pdl_alpha {s.pdl_alpha} with pdl_epsilon {s.pdl_epsilon} gives unusable weights: {problem} "
                f"(counted weights from {float(trained.min()):.3g} to {float(trained.max()):.3g}). Training would "
                "produce NaN. Use an alpha in the paper's range [0.25, 1.5] and a small epsilon such as 1e-6, or cap "
                "the weights with pdl_max_weight."
            )

    def alpha_at(self, step: int) -> float:
        """The alpha of optimizer step `step` (0-based): linear from 0 to `pdl_alpha` over the warm-up steps."""
        alpha, warmup = self.settings.pdl_alpha, self.settings.pdl_alpha_warmup_steps
        return alpha if step >= warmup else alpha * step / warmup

    def weights_at(self, step: int | None, device: torch.device | str) -> torch.Tensor:
        """The weights of optimizer step `step` on `device`; `step=None` (evaluation) gives the full alpha's."""
        alpha = self.settings.pdl_alpha if step is None else self.alpha_at(step)
        key = (alpha, str(device))
        if self._cached_key != key:
            weights = self.weights if alpha == self.settings.pdl_alpha else self._weights_for_alpha(alpha)
            self._cached_weights, self._cached_key = weights.to(device), key
        return self._cached_weights

    # ---- the loss ------------------------------------------------------------------------------------------------

    def step_denominator(
        self,
        shifted_labels: Iterable[torch.Tensor],
        device: torch.device | str,
        step: int,
        *,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ranks_per_batch: int = 1,
    ) -> torch.Tensor:
        """The denominator of optimizer step `step`: weight sum ('weighted') or count ('token') of its trained tokens.

        `shifted_labels` are the targets of every micro-batch of the step on this rank; `all_reduce` sums a scalar
        over the data-parallel ranks; `ranks_per_batch` divides out ranks that see the same batch (tensor parallel).
        """
        weighted = self.settings.pdl_normalize == "weighted"
        weights = self.weights_at(step, device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for labels in shifted_labels:
            labels = labels.to(device)
            total += target_weights(labels, weights).sum(dtype=torch.float64) if weighted else (labels != IGNORE_INDEX).sum()
        if all_reduce is not None:
            total = all_reduce(total)
        total = total / ranks_per_batch
        if not torch.isfinite(total):
            raise self._non_finite("the step's weight sum", step, float(total))
        # A window with no trained token has a zero numerator too: its loss is 0, not 0/0
        return total.clamp(min=_TINY)

    def loss(
        self,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        *,
        step: int,
        training: bool,
        num_items_in_batch: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """One micro-batch's share of the step's PDL: `sum w * nll / num_items_in_batch * scale` (float32).

        `log_probs` are aligned with `targets` (-100 where untrained). Without `num_items_in_batch` the batch is its
        own step: its weighted mean. `scale` undoes the host's averaging of gradients over data-parallel ranks.
        """
        mode = "train" if training else "eval"
        sums = pdl_sums(log_probs, targets, self.weights_at(step if training else None, log_probs.device))
        if num_items_in_batch is None:
            denominator = sums.weight if self.settings.pdl_normalize == "weighted" else sums.tokens.float()
            loss = sums.weighted_nll / denominator.clamp(min=_TINY)
        else:
            loss = sums.weighted_nll / num_items_in_batch
        loss = (loss * scale).to(torch.float32)
        self._totals[mode] += torch.stack([sums.nll, sums.weight, sums.tokens.double()]).double().cpu()
        if training and not torch.isfinite(loss):
            raise self._non_finite("the PDL loss", step, float(loss))
        return loss

    def _non_finite(self, what: str, step: int, value: float) -> PDLError:
        s = self.settings
        return PDLError(
            f"PDL stopped at optimizer step {step}: {what} is {value} (alpha {self.alpha_at(step)} of "
            f"pdl_alpha {s.pdl_alpha}, pdl_epsilon {s.pdl_epsilon}). The update was not applied. Lower pdl_alpha, "
            "set pdl_max_weight, or check the model's dtype (fp16 overflows) and learning rate."
        )

    # ---- metrics -------------------------------------------------------------------------------------------------

    def pop_metrics(
        self, mode: str, step: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """`ce_loss` (plain cross-entropy of the same tokens) and `pdl_mean_weight` since the last call, and
        `pdl_alpha` of the step just taken (`step` is the number of optimizer steps done); resets the totals."""
        totals = self._totals[mode]
        if reduce is not None:
            totals = reduce(totals)
        nll, weight, tokens = totals.tolist()
        prefix = "eval_" if mode == "eval" else ""
        metrics = {}
        if tokens > 0:
            metrics[f"{prefix}ce_loss"] = nll / tokens
            metrics[f"{prefix}pdl_mean_weight"] = weight / tokens
        if mode == "train" and self.settings.pdl_alpha_warmup_steps:
            metrics["pdl_alpha"] = self.alpha_at(max(step - 1, 0))
        self._totals[mode].zero_()
        return metrics

    # ---- files ---------------------------------------------------------------------------------------------------

    def saved_settings(self) -> dict:
        return {
            "loss_type": "pdl",
            **self.settings.saved(),
            "table": TABLE_FILENAME,
            "table_masking": self.table.masking,
            "run_masking": self.masking,
            "exempt_token_ids": list(self.exempt_ids),
            "host": self.host,
        }

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write the table, then `pdl_config.json`, atomically: a folder with the config has a complete table."""
        folder = Path(folder)
        table_path = self.table.save(folder / TABLE_FILENAME)
        settings_path = write_json(folder / SETTINGS_FILENAME, self.saved_settings())
        return table_path, settings_path

    def check_resume(self, checkpoint: str | Path) -> None:
        """Resuming must keep the interrupted run's loss: refuse a changed table or setting, or missing PDL files."""
        folder = Path(checkpoint)
        table_file, settings_file = folder / TABLE_FILENAME, folder / SETTINGS_FILENAME
        if not table_file.is_file() and not settings_file.is_file():
            if self.settings.pdl_resume_without_table:
                self._log.warning("PDL: checkpoint %s has no PDL table; resuming with this run's table and settings "
                                  "(pdl_resume_without_table).", folder)
                return
            raise PDLConfigError(
                f"Cannot resume from {folder}: it holds no PDL table ({TABLE_FILENAME}), so it was saved by a run "
                "without PDL or interrupted while saving; the loss could change mid-run unnoticed. Resume from an "
                "earlier checkpoint, start a new run, or set `pdl_resume_without_table: true` to resume with this "
                "run's table and settings."
            )
        try:
            saved_table = FrequencyTable.load(table_file)
            saved = json.loads(settings_file.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (FrequencyTableError, OSError, ValueError) as err:
            raise PDLConfigError(
                f"Cannot resume from {folder}: its PDL files are missing or damaged ({str(err).splitlines()[0]}). "
                "The checkpoint was probably interrupted while saving: resume from an earlier checkpoint."
            ) from None
        saved = {"pdl_exempt_special_tokens": False, **saved}  # saved before the setting existed: nothing exempt
        changed = [key for key in RESUME_KEYS if key in saved and saved[key] != getattr(self.settings, key)]
        if changed or not torch.equal(saved_table.counts, self.table.counts):
            what = (
                "the settings " + ", ".join(f"{k} ({saved[k]!r} -> {getattr(self.settings, k)!r})" for k in changed)
                if changed
                else "the frequency table (the training data changed)"
            )
            raise PDLConfigError(
                f"Cannot resume from {folder}: {what} differ from the interrupted run's, so the loss would change "
                f"mid-run. Resume with the same data and settings, or with `pdl_freq_path: {table_file}`, or start a "
                "new run without resuming."
            )


def data_fingerprint(dataset) -> str:
    """The prepared dataset's identity for the table's metadata: a hash of its label column, row by row.

    Computed from the labels alone, so the trainer and the host's pdl-freq command, which prepare the same tokens
    through different code paths (other columns, other `map` calls, hence other `datasets` fingerprints), record the
    same value for the same data.
    """
    import hashlib

    import numpy as np
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or "labels" not in (dataset.column_names or []):
        return getattr(dataset, "_fingerprint", None) or "unavailable"
    digest = hashlib.sha256()
    for batch in dataset.select_columns(["labels"]).with_format("arrow").iter(batch_size=65536):
        labels = batch["labels"].combine_chunks() if hasattr(batch["labels"], "combine_chunks") else batch["labels"]
        digest.update(labels.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
        digest.update(labels.flatten().to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def with_command(message: str, command: str) -> str:
    """Point a table error at the host's own counting command."""
    return re.sub(r"`pdl-freq[^`]*`", f"`{command}`", message)


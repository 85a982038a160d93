"""`PDLEngine`: everything a PDL training run does, once, for every host (TRL, Axolotl, your own loop).

The engine owns the settings, the frequency table, the weights of a given optimizer step (alpha warm-up applied), the
step's denominator from the micro-batches' labels, the loss of a micro-batch from per-token log-probs, the running
totals behind `ce_loss` / `pdl_mean_weight` / `pdl_alpha`, the run's files (`pdl_frequency_table.safetensors` and
`pdl_config.json`) and the resume check. It knows torch and nothing of any training framework: a host hands it
tensors and callables (an all-reduce), and connects it to its own hooks (see `hf_trainer.PDLTrainerMixin`).

Guarantees that live here and therefore hold on every host:
* the loss of one optimizer step is ``sum_i w(y_i) * -log p(y_i) / sum_i w(y_i)`` over every trained token of the
  step (all micro-batches, all ranks), whatever the accumulation and the number of processes; with `pdl_ce_mix`
  lambda it is ``lambda * sum_i -log p(y_i) / N + (1 - lambda) * that``, N the step's trained tokens;
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
from .counting import count_trained_tokens, data_fingerprint, few_trained_ids_warning  # noqa: F401 (re-exported)
from .frequency import TABLE_FILENAME, FrequencyTable
from .loss import IGNORE_INDEX, pdl_sums, target_weights
from .run_weights import (PRIOR_FILENAME, check_bounds_leave_a_reweighting, check_weights, end_of_turn_id,
                          end_of_turn_warning, exempt_ids, load_prior, weights_for_settings)
from .settings import ABSENT_BEFORE, RESUME_KEYS, PDLSettings, check_alpha_warmup, loss_value  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

SETTINGS_FILENAME = "pdl_config.json"
_TINY = torch.finfo(torch.float32).tiny


class PDLEngine:
    """The PDL state of one training run. Build it with `PDLEngine.for_training_set` or from a table you have.

    `masking` is how this run selects its trained tokens ('assistant_only', 'completion_only', ...); a table counted
    with another masking is used (it may be intended) with a warning, and both are recorded in `pdl_config.json`.
    `special_token_ids` are the tokenizer's special tokens (`tokenizer.all_special_ids`), exempt from the reweighting
    with `pdl_exempt_special_tokens`; the most trained of them is the end-of-turn token, whose weight is guarded and
    whose share of each step's weight is logged. `prior` is the `pdl_prior_path` table. `recount_command` is the
    host's command that counts a table, quoted in error messages.
    """

    def __init__(
        self,
        settings: PDLSettings,
        table: FrequencyTable,
        *,
        host: str,
        masking: str | None = None,
        special_token_ids: Iterable[int] = (),
        prior: FrequencyTable | None = None,
        recount_command: str = "pdl-freq --config RECIPE.yaml --output TABLE",
        log: logging.Logger = logger,
    ) -> None:
        self.settings, self.table, self.host, self.masking = settings, table, host, masking
        self.prior = prior
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
        special_token_ids = tuple(special_token_ids)
        self.exempt_ids = self._exempt_ids(special_token_ids)
        self.weights = self._weights_for_alpha(settings.pdl_alpha)
        self._check_weights()
        self.end_of_turn_id = end_of_turn_id(table, special_token_ids)
        for warning in (few_trained_ids_warning(table, source=settings.pdl_freq_path),
                        end_of_turn_warning(table, self.weights, self.end_of_turn_id, self.exempt_ids)):
            if warning:
                log.warning("PDL: %s", warning)
        if masking is not None and table.masking != masking:
            log.warning(
                "PDL: the table %s was counted with masking %r, but this run trains %r tokens: its frequencies "
                "describe other tokens than the trained ones. Recount it with `%s` unless this is intended.",
                settings.pdl_freq_path, table.masking, masking, recount_command,
            )
        self._cached_key: tuple | None = None
        self._cached_weights: torch.Tensor | None = None
        # nll, weight, tokens, weighted nll, end-of-turn weight: summed over micro-batches until the next log
        self._totals = {mode: torch.zeros(5, dtype=torch.float64) for mode in ("train", "eval")}
        self._step_denominators: tuple[torch.Tensor, torch.Tensor] | None = None

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
            log.info("PDL: using the frequency table %s (%s trained tokens).", settings.pdl_freq_path,
                     f"{table.total:,}")
        else:
            if train_dataset is None:
                raise PDLConfigError("loss_type 'pdl' needs a training set to count, or `pdl_freq_path`.")
            counts = count_trained_tokens(train_dataset, output_rows, desc="PDL: counting trained tokens")
            table = FrequencyTable(counts, tokenizer_fingerprint, masking, data_fingerprint(train_dataset),
                                   extra=dict(table_extra or {}))
        prior = load_prior(settings, tokenizer_fingerprint, output_rows, recount_command.split(" --")[0])
        if prior is not None:
            log.info("PDL: mixing the %s prior table %s at pdl_prior_mix %s.", prior.kind, settings.pdl_prior_path,
                     settings.pdl_prior_mix)
        return cls(settings, table, host=host, masking=masking, special_token_ids=special_token_ids, prior=prior,
                   recount_command=recount_command, log=log)

    # ---- weights -------------------------------------------------------------------------------------------------

    def _exempt_ids(self, special_token_ids: Iterable[int]) -> tuple[int, ...]:
        ids = exempt_ids(self.settings, self.table, special_token_ids)
        if ids:
            trained = [i for i in ids if self.table.counts[i] > 0]
            self._log.info("PDL: %d special tokens exempt from the reweighting (mean weight); trained among them: %s.",
                           len(ids), trained or "none")
        return ids

    def _weights_for_alpha(self, alpha: float) -> torch.Tensor:
        return weights_for_settings(self.settings, self.table, prior=self.prior, exempt=self.exempt_ids, alpha=alpha)

    def _check_weights(self) -> None:
        check_weights(self.settings, self.table, self.weights)
        check_bounds_leave_a_reweighting(self.settings, self.table, self.weights, self.prior, self.exempt_ids)

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
        step: int | None,
        *,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ranks_per_batch: int = 1,
    ) -> torch.Tensor:
        """The denominator of optimizer step `step`: weight sum ('weighted') or count ('token') of its trained tokens
        (`step=None`: an evaluation batch, at the full alpha).

        `shifted_labels` are the targets of every micro-batch of the step on this rank; `all_reduce` sums a scalar
        over the data-parallel ranks; `ranks_per_batch` divides out ranks that see the same batch (tensor parallel).
        """
        weighted = self.settings.pdl_normalize == "weighted"
        weights = self.weights_at(step, device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        tokens = torch.zeros((), dtype=torch.float64, device=device)
        for labels in shifted_labels:
            labels = labels.to(device)
            tokens += (labels != IGNORE_INDEX).sum()
            if weighted:
                total += target_weights(labels, weights).sum(dtype=torch.float64)
        total = total if weighted else tokens
        mixed = self.settings.pdl_ce_mix > 0 and weighted
        if all_reduce is not None:
            total = all_reduce(total)
            tokens = all_reduce(tokens) if mixed else total
        total, tokens = total / ranks_per_batch, tokens / ranks_per_batch
        if not torch.isfinite(total):
            raise self._non_finite("the step's weight sum", step, float(total))
        # A window with no trained token has a zero numerator too: its loss is 0, not 0/0
        denominator = total.clamp(min=_TINY)
        self._step_denominators = (denominator, tokens.clamp(min=1) if mixed else denominator)
        return denominator

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
        mode, mix = "train" if training else "eval", self.settings.pdl_ce_mix
        sums = pdl_sums(log_probs, targets, self.weights_at(step if training else None, log_probs.device),
                        plain_grad=mix > 0, marked=self.end_of_turn_id)
        if num_items_in_batch is None:  # the batch is its own step
            denominator = sums.weight if self.settings.pdl_normalize == "weighted" else sums.tokens.float()
            denominator, tokens = denominator.clamp(min=_TINY), sums.tokens.float().clamp(min=1)
        else:
            denominator, tokens = num_items_in_batch, self._step_tokens(num_items_in_batch) if mix > 0 else None
        loss = sums.weighted_nll / denominator
        if mix > 0:
            loss = mix * sums.nll / tokens + (1 - mix) * loss
        loss = (loss * scale).to(torch.float32)
        self._totals[mode] += torch.stack([sums.nll.detach(), sums.weight, sums.tokens.double(),
                                           sums.weighted_nll.detach(), sums.marked_weight]).double().cpu()
        if training and not torch.isfinite(loss):
            raise self._non_finite("the PDL loss", step, float(loss))
        return loss

    def _step_tokens(self, num_items_in_batch: torch.Tensor) -> torch.Tensor:
        """The trained-token count of the step whose denominator the host passed back (computed beside it)."""
        denominator, tokens = self._step_denominators or (None, None)
        if num_items_in_batch is denominator:
            return tokens
        if denominator is not None and torch.equal(torch.as_tensor(num_items_in_batch).to(denominator), denominator):
            return tokens
        raise PDLError(
            "pdl_ce_mix needs the step's token count beside its PDL denominator, but the host passed a "
            "`num_items_in_batch` the engine did not compute (step_denominator). Connect the host through "
            "PDLTrainerMixin, or call engine.step_denominator for every optimizer step."
        )

    def _non_finite(self, what: str, step: int | None, value: float) -> PDLError:
        s = self.settings
        alpha = s.pdl_alpha if step is None else self.alpha_at(step)
        return PDLError(
            f"PDL stopped at optimizer step {step}: {what} is {value} (alpha {alpha} of "
            f"pdl_alpha {s.pdl_alpha}, pdl_epsilon {s.pdl_epsilon}). The update was not applied. Lower pdl_alpha, "
            "set pdl_max_weight, or check the model's dtype (fp16 overflows) and learning rate."
        )

    # ---- metrics -------------------------------------------------------------------------------------------------

    def pop_metrics(
        self, mode: str, step: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """`ce_loss` (plain cross-entropy of the same tokens), `pdl_mean_weight` and the end-of-turn token's share of
        the weight (`pdl_end_of_turn_weight_share`) since the last call, `pdl_loss` (the PDL part) under
        `pdl_ce_mix`, and `pdl_alpha` of the step just taken (`step` is the number of optimizer steps done); resets
        the totals."""
        totals = self._totals[mode]
        if reduce is not None:
            totals = reduce(totals)
        nll, weight, tokens, weighted_nll, end_of_turn = totals.tolist()
        prefix = "eval_" if mode == "eval" else ""
        metrics = {}
        if tokens > 0:
            metrics[f"{prefix}ce_loss"] = nll / tokens
            metrics[f"{prefix}pdl_mean_weight"] = weight / tokens
            if self.settings.pdl_ce_mix > 0:
                weighted = self.settings.pdl_normalize == "weighted"
                metrics[f"{prefix}pdl_loss"] = weighted_nll / (weight if weighted else tokens)
            if self.end_of_turn_id is not None and weight > 0:
                metrics[f"{prefix}pdl_end_of_turn_weight_share"] = end_of_turn / weight
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
            "end_of_turn_token_id": self.end_of_turn_id,
            "prior": None if self.prior is None else {
                "table": PRIOR_FILENAME, "kind": self.prior.kind, "masking": self.prior.masking,
                "data_fingerprint": self.prior.data_fingerprint, "total_tokens": self.prior.total,
            },
            "host": self.host,
        }

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write the table (and the prior's copy), then `pdl_config.json`, atomically: a folder with the config has
        complete tables."""
        folder = Path(folder)
        table_path = self.table.save(folder / TABLE_FILENAME)
        if self.prior is not None:
            self.prior.save(folder / PRIOR_FILENAME)
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
        saved = {**ABSENT_BEFORE, **saved}  # saved before a setting existed: the loss did not have it
        changed = [key for key in RESUME_KEYS
                   if key in saved and loss_value(key, saved[key]) != loss_value(key, getattr(self.settings, key))]
        if changed:
            raise PDLConfigError(
                f"Cannot resume from {folder}: the settings "
                + ", ".join(f"{k} ({saved[k]!r} -> {getattr(self.settings, k)!r})" for k in changed)
                + " differ from the interrupted run's, so the loss would change mid-run. Resume with the interrupted "
                "run's settings, or start a new run without resuming."
            )
        if not torch.equal(saved_table.counts, self.table.counts):
            raise PDLConfigError(
                f"Cannot resume from {folder}: the frequency table differs from the interrupted run's (the training "
                "data changed), so the loss would change mid-run. Resume with the same data, or with "
                f"`pdl_freq_path: {table_file}`, or start a new run without resuming."
            )
        self._check_resume_prior(folder)

    def _check_resume_prior(self, folder: Path) -> None:
        """The prior must be the interrupted run's too: its copy in the checkpoint against the table loaded now."""
        if self.prior is None:
            return
        try:
            saved_prior = FrequencyTable.load(folder / PRIOR_FILENAME)
        except FrequencyTableError:
            saved_prior = None
        if saved_prior is None or not torch.equal(saved_prior.counts, self.prior.counts):
            raise PDLConfigError(
                f"Cannot resume from {folder}: the prior table {self.settings.pdl_prior_path} differs from the "
                f"interrupted run's ({PRIOR_FILENAME} in the checkpoint), so the loss would change mid-run. Resume "
                f"with `pdl_prior_path: {folder / PRIOR_FILENAME}`, or start a new run without resuming."
            )


def with_command(message: str, command: str) -> str:
    """Point a table error at the host's own counting command."""
    return re.sub(r"`pdl-freq[^`]*`", f"`{command}`", message)


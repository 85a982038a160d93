"""Validation losses from the per-token negative log-likelihood of the trained tokens of the validation rows
(prepared by TRL's own code with the recipe's settings, each row alone, truncated as in training): cross-entropy, PDL
at a reference alpha under a stated policy for tokens the training table never counted, cross-entropy by
training-frequency bucket, and the end-of-reply token apart. They do not go through the trainer, so they do not depend
on its loss settings, and the same per-token values give every number."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..errors import PDLConfigError, PDLError
from ..frequency import FrequencyTable, special_token_ids
from . import metrics
from .generation import preparation_args

FREQUENCY_BUCKETS = metrics.FREQUENCY_BUCKETS
# Validation PDL is reported with this policy for tokens the training table never counted (see `loss_summary`)
UNSEEN_POLICY = "rarest"


def check_finite_losses(validation: dict) -> None:
    """Refuse validation losses that are not finite (a model whose weights are NaN, an adapter trained to NaN):
    results of NaN must not be written as if they were results."""
    bad = [f"validation {words} is {validation[key]}" for key, words in (("ce", "cross-entropy"), ("pdl", "PDL"))
           if not math.isfinite(validation[key])]
    if bad:
        raise PDLError(
            f"The {' and '.join(bad)} over {validation['tokens']} validation tokens: the model's outputs are not finite numbers "
            "(an adapter or model whose weights are NaN or infinite, e.g. a run that diverged). Nothing was written. "
            "Evaluate an adapter whose training loss stayed finite."
        )


def validation_losses(model, tokenizer, recipe, table: FrequencyTable, reference_alpha: float,
                      validation_dataset) -> dict:
    """Cross-entropy, PDL (at `reference_alpha`, weights from the TRAINING table, unseen tokens weighted as the rarest
    counted token) and cross-entropy by training-frequency bucket, over the trained tokens of the validation rows.

    The rows are prepared by TRL's own code with the recipe's settings (masking, chat template, truncation to
    `max_length`, rows left with no trained token dropped), each row alone (no packing).
    """
    from ..preparation import prepare_like_sft_trainer

    training = recipe.training
    prepared, _ = prepare_like_sft_trainer(validation_dataset, tokenizer, preparation_args(training),
                                           name="validation")
    targets, nll = token_nll(model, prepared)
    if targets.size == 0:
        raise PDLConfigError("The validation rows hold no trained token (after masking and truncation), so there is "
                             "no validation loss: check `dataset_test_split` and the masking settings.")
    from ..run_weights import exempt_ids, load_prior_for
    from .end_of_reply import end_of_reply_mask, end_of_reply_summary

    settings = training.pdl_settings
    exempt = exempt_ids(settings, table, special_token_ids(tokenizer, len(table.counts)))
    prior = load_prior_for(settings, tokenizer, len(table.counts))
    weights = validation_weights(settings, table, float(reference_alpha), prior=prior, exempt=exempt)
    summary = loss_summary(targets, nll, table.counts.numpy(), weights, float(reference_alpha), exempt,
                           settings.pdl_min_weight)
    prior_used = None if prior is None else {"path": settings.pdl_prior_path, "kind": prior.kind,
                                             "mix": settings.pdl_prior_mix}
    ends = end_of_reply_summary(targets, nll, end_of_reply_mask(row["labels"] for row in prepared))
    return summary | {"rows": len(validation_dataset), "rows_scored": len(prepared), "pdl_prior": prior_used,
                      "end_of_reply": ends}


@torch.no_grad()
def token_nll(model, prepared, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Target ids and their negative log-likelihood (float64) at every trained position of the prepared rows.

    A position j >= 1 is trained when `labels[j] != -100` (the first label is never predicted); its NLL is
    ``-log softmax(logits[j - 1])[labels[j]]``. Rows go in right-padded batches of similar length, and only the logits
    of trained positions are computed (`logits_to_keep`), with full logits as the fallback for a model without it.
    """
    rows = [(list(r["input_ids"]), list(r["labels"])) for r in prepared]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    targets, nlls = [None] * len(rows), [None] * len(rows)
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(rows[i][0]) for i in batch)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            keep = torch.zeros((len(batch), width), dtype=torch.bool)  # position j-1 predicts trained label j
            wanted = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, i in enumerate(batch):
                ids, labels = rows[i]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                shifted = torch.tensor(labels[1:] + [-100], dtype=torch.long)
                keep[row, : len(ids)] = shifted != -100
                wanted[row, : len(ids)] = shifted
            inputs = dict(input_ids=input_ids.to(device), attention_mask=attention.to(device))
            picked = None
            try:
                logits = model(**inputs, logits_to_keep=keep.to(device)).logits
                logits = logits.reshape(-1, logits.shape[-1])
                picked = logits if logits.shape[0] == int(keep.sum()) else None
            except (TypeError, ValueError, RuntimeError, IndexError):
                picked = None
            if picked is None:
                picked = model(**inputs).logits[keep.to(device)]
            log_probs = torch.log_softmax(picked.float(), dim=-1)
            target = wanted[keep].to(device)
            nll = -log_probs.gather(-1, target[:, None])[:, 0].double().cpu()
            per_row = keep.sum(1).tolist()
            offsets = np.cumsum([0] + per_row)
            for row, i in enumerate(batch):
                targets[i] = target[offsets[row] : offsets[row + 1]].cpu().numpy()
                nlls[i] = nll[offsets[row] : offsets[row + 1]].numpy()
    finally:
        model.train(was_training)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    return np.concatenate(targets).astype(np.int64), np.concatenate(nlls).astype(np.float64)


def validation_weights(settings, table: FrequencyTable, alpha: float, *, prior: FrequencyTable | None = None,
                       exempt=()) -> dict[str, torch.Tensor]:
    """The weights validation PDL uses, from the run's own settings through the one function that turns settings
    into weights (`run_weights.weights_for_settings`), at the reference `alpha`, under each unseen-token policy:
    `rarest` (a token the training table never counted weighs as its rarest counted token, the training default) and
    `formula` (equation (3) as it stands). Normalised as the paper's weighted mean (`weighted`)."""
    from ..run_weights import weights_for_settings

    return {policy: weights_for_settings(dataclasses.replace(settings, pdl_unseen_weight=policy,
                                                             pdl_normalize="weighted"),
                                         table, prior=prior, exempt=exempt, alpha=alpha)
            for policy in ("rarest", "formula")}


def loss_summary(targets, nll, counts, weights: dict[str, torch.Tensor], alpha: float, exempt=(),
                 min_weight: float | None = None) -> dict:
    """Validation losses from per-token NLL: everything is a mean over the same trained tokens.

    - `ce`: mean NLL.
    - `pdl`: ``sum w(y) nll / sum w(y)`` (the paper's weighted mean) with `weights["rarest"]`
      (`validation_weights`: the TRAINING table's weights at `alpha`, the recipe's cap, floor, prior and exemption
      applied as in training, a token the table never counted at the rarest counted token's weight).
    - `pdl_formula`: the same with `weights["formula"]`, equation (3) as it stands for unseen tokens,
      ``epsilon ** -alpha`` (about 31,600 at epsilon 1e-6, alpha 0.75: one such token outweighs a whole reply).
    - `ce_by_bucket`: the mean NLL of the tokens counted 0, 1-2, 3-10, 11-100 and more than 100 times in the training
      table, with how many validation tokens each bucket holds.
    """
    targets = np.asarray(targets, dtype=np.int64)
    nll = np.asarray(nll, dtype=np.float64)
    weights = {policy: torch.as_tensor(w).double().numpy()[targets] for policy, w in weights.items()}
    token_counts = np.asarray(counts)[targets]
    buckets = []
    for name, low, high in FREQUENCY_BUCKETS:
        inside = (token_counts >= low) & (token_counts <= (high if high is not None else np.inf))
        buckets.append({"bucket": name, "min_count": low, "max_count": high, "tokens": int(inside.sum()),
                        "share": float(inside.mean()) if targets.size else math.nan,
                        "ce": float(nll[inside].mean()) if inside.any() else math.nan})
    return {
        "ce": float(nll.mean()),
        "pdl": float((weights[UNSEEN_POLICY] * nll).sum() / weights[UNSEEN_POLICY].sum()),
        "pdl_alpha": float(alpha),
        "pdl_unseen_weight": UNSEEN_POLICY,
        "pdl_exempt_token_ids": [int(i) for i in exempt],
        "pdl_min_weight": min_weight,
        "pdl_formula": float((weights["formula"] * nll).sum() / weights["formula"].sum()),
        "mean_weight": float(weights[UNSEEN_POLICY].mean()),
        "tokens": int(targets.size),
        "unseen_tokens": int((token_counts == 0).sum()),
        "ce_by_bucket": buckets,
    }

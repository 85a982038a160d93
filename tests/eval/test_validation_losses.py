"""Validation losses from per-token NLL: PDL under the unseen-token policy and CE by training-frequency bucket, against
numbers worked out by hand; the per-token NLL against a direct full-logits computation."""

import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from pdl_plugin.eval.validation import loss_summary, token_nll, validation_weights
from pdl_plugin.frequency import FrequencyTable
from pdl_plugin.settings import PDLSettings

# Table: id 0 and id 4 never counted; id 1 once, id 2 three times, id 3 four times (total 8)
COUNTS = [0, 1, 3, 4, 0]
TARGETS = [0, 1, 2, 3, 4]
NLL = [2.0, 1.0, 0.5, 0.25, 3.0]


def _summary(targets, nll, counts, alpha, epsilon, max_weight=None, exempt=(), min_weight=None, prior=None,
             prior_mix=None):
    """loss_summary with the weights a run of these settings gets (settings -> run_weights -> weights), as
    `validation_losses` computes them."""
    settings = PDLSettings(pdl_alpha=alpha, pdl_epsilon=epsilon, pdl_max_weight=max_weight, pdl_min_weight=min_weight,
                           **({"pdl_prior_path": "prior.safetensors", "pdl_prior_mix": prior_mix} if prior is not None
                              else {}))
    table = FrequencyTable(torch.tensor(counts), "tok", "completion_only", "data")
    prior_table = None if prior is None else FrequencyTable(prior, "tok", "all_tokens", "corpus", kind="all_tokens")
    weights = validation_weights(settings, table, alpha, prior=prior_table, exempt=exempt)
    return loss_summary(targets, nll, counts, weights, alpha, exempt, min_weight)


def test_validation_pdl_gives_unseen_tokens_the_rarest_counted_weight():
    # alpha 1, epsilon 0.125 (chosen so the weights are round): freq = 0, 1/8, 3/8, 1/2, 0
    # w = 1 / (freq + eps): id1 1/(0.25) = 4, id2 1/(0.5) = 2, id3 1/(0.625) = 1.6
    # "rarest": unseen ids 0 and 4 take the freq of the rarest counted id (1/8), so w = 4
    # "formula" (eq. 3 as is): unseen w = 1 / eps = 8
    got = _summary(TARGETS, NLL, COUNTS, alpha=1.0, epsilon=0.125)
    assert got["ce"] == pytest.approx((2.0 + 1.0 + 0.5 + 0.25 + 3.0) / 5)
    assert got["pdl"] == pytest.approx((4 * 2.0 + 4 * 1.0 + 2 * 0.5 + 1.6 * 0.25 + 4 * 3.0) / (4 + 4 + 2 + 1.6 + 4))
    formula = (8 * 2.0 + 4 * 1.0 + 2 * 0.5 + 1.6 * 0.25 + 8 * 3.0) / (8 + 4 + 2 + 1.6 + 8)
    assert got["pdl_formula"] == pytest.approx(formula)
    assert got["pdl_unseen_weight"] == "rarest" and got["pdl_alpha"] == 1.0
    assert got["mean_weight"] == pytest.approx((4 + 4 + 2 + 1.6 + 4) / 5)
    assert got["tokens"] == 5 and got["unseen_tokens"] == 2
    # alpha 0: every weight is 1, PDL is the cross-entropy under both policies
    zero = _summary(TARGETS, NLL, COUNTS, alpha=0.0, epsilon=0.125)
    assert zero["pdl"] == pytest.approx(zero["ce"]) and zero["pdl_formula"] == pytest.approx(zero["ce"])


def test_validation_pdl_applies_the_recipe_weight_cap():
    # cap = 1.5 x the count-weighted mean weight of the counted tokens: (1*4 + 3*2 + 4*1.6) / 8 = 2.05 -> 3.075
    got = _summary(TARGETS, NLL, COUNTS, alpha=1.0, epsilon=0.125, max_weight=1.5)
    cap = 3.075
    assert got["pdl"] == pytest.approx((cap * 2.0 + cap * 1.0 + 2 * 0.5 + 1.6 * 0.25 + cap * 3.0) / (3 * cap + 2 + 1.6))


def test_validation_pdl_gives_exempt_tokens_the_mean_weight():
    # id 3 (the most frequent, 4 of 8: the end-of-reply token's place) exempt: it weighs the count-weighted mean
    # weight of the counted tokens, (1*4 + 3*2 + 4*1.6) / 8 = 2.05, instead of 1.6; the others as without exemption
    got = _summary(TARGETS, NLL, COUNTS, alpha=1.0, epsilon=0.125, exempt=[3])
    assert got["pdl"] == pytest.approx((4 * 2.0 + 4 * 1.0 + 2 * 0.5 + 2.05 * 0.25 + 4 * 3.0) / (4 + 4 + 2 + 2.05 + 4))
    assert got["pdl_exempt_token_ids"] == [3] and got["ce"] == pytest.approx(6.75 / 5)


def test_cross_entropy_by_training_frequency_bucket():
    counts = [0, 1, 2, 3, 10, 11, 100, 101]  # one id on each side of every bucket boundary
    targets = [0, 1, 2, 3, 4, 5, 6, 7, 7]
    nll = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0]
    buckets = {b["bucket"]: b for b in _summary(targets, nll, counts, 0.5, 1e-6)["ce_by_bucket"]}
    assert list(buckets) == ["unseen", "1-2", "3-10", "11-100", ">100"]
    expected = {"unseen": (1, 1.0), "1-2": (2, 2.5), "3-10": (2, 4.5), "11-100": (2, 6.5), ">100": (2, 9.0)}
    for name, (tokens, ce) in expected.items():
        assert buckets[name]["tokens"] == tokens and buckets[name]["ce"] == pytest.approx(ce), name
        assert buckets[name]["share"] == pytest.approx(tokens / 9)
    empty = {b["bucket"]: b for b in _summary([1], [0.5], counts, 0.5, 1e-6)["ce_by_bucket"]}
    assert empty["unseen"]["tokens"] == 0 and math.isnan(empty["unseen"]["ce"])


def test_token_nll_matches_full_logits_row_by_row():
    model = make_tiny_model(64, seed=1)
    rows = [  # labels -100 on untrained positions; rows of different lengths share a padded batch
        {"input_ids": [5, 9, 12, 7, 3, 3, 8], "labels": [-100, -100, -100, 7, 3, 3, 8]},
        {"input_ids": [4, 4, 50], "labels": [-100, 4, 50]},
        {"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, -100, 4, -100]},  # the first label is never predicted
    ]
    targets, nll = token_nll(model, rows, batch_size=2)
    expected_targets, expected_nll = [], []
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0].double()
            log_probs = torch.log_softmax(logits, -1)
            for j in range(1, len(row["labels"])):
                if row["labels"][j] != -100:
                    expected_targets.append(row["labels"][j])
                    expected_nll.append(-log_probs[j - 1, row["labels"][j]].item())
    assert targets.tolist() == expected_targets == [7, 3, 3, 8, 4, 50, 2, 4]
    np.testing.assert_allclose(nll, expected_nll, rtol=1e-5)
    assert model.training  # mode restored


def test_validation_pdl_applies_the_recipe_floor_and_prior():
    # floor 1 x the count-weighted mean (2.05, as above): id 3's 1.6 and id 2's 2 rise to 2.05; ids 0, 1, 4 keep 4
    got = _summary(TARGETS, NLL, COUNTS, alpha=1.0, epsilon=0.125, min_weight=1.0)
    assert got["pdl"] == pytest.approx((4 * 2.0 + 4 * 1.0 + 2.05 * 0.5 + 2.05 * 0.25 + 4 * 3.0) / (4 + 4 + 2.05 * 2 + 4))
    assert got["pdl_min_weight"] == 1.0
    # prior: uniform over the 5 rows (0.2 each), mixed half and half with the task freq 0, 1/8, 3/8, 1/2, 0
    # freq = 0.1, 0.1625, 0.2875, 0.35, 0.1 -> w = 1 / (freq + 0.125): 1/0.225, 1/0.2875, 1/0.4125, 1/0.475, 1/0.225
    w = [1 / 0.225, 1 / 0.2875, 1 / 0.4125, 1 / 0.475, 1 / 0.225]
    mixed = _summary(TARGETS, NLL, COUNTS, alpha=1.0, epsilon=0.125, prior=torch.ones(5, dtype=torch.int64),
                     prior_mix=0.5)
    assert mixed["pdl"] == pytest.approx(sum(a * b for a, b in zip(w, NLL, strict=True)) / sum(w))

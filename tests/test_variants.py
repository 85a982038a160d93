"""The protections on top of equation (3): weight floor, cross-entropy anchor, frequency prior, end-of-turn guard.

Every expected number is written out by hand from the counts (no call into the code under test computes it).
"""

import logging
import math

import pytest
import torch

from conftest import EQUATION_3
from pdl_plugin import FrequencyTable, PDLConfigError, PDLEngine, PDLError, PDLSettings, token_weights_from_counts
from pdl_plugin.run_weights import end_of_turn_id

# counts 6, 3, 1, 0 (10 tokens): freq 0.6, 0.3, 0.1, 0; alpha 1, epsilon 1e-12 (negligible)
COUNTS = torch.tensor([6, 3, 1, 0])
EPS = 1e-12
RAW = [1 / 0.6, 1 / 0.3, 1 / 0.1]  # 1.667, 3.333, 10
MEAN = (6 * RAW[0] + 3 * RAW[1] + 1 * RAW[2]) / 10  # (10 + 10 + 10) / 10 = 3


def test_floor_raises_frequent_tokens_to_a_multiple_of_the_count_weighted_mean():
    assert math.isclose(MEAN, 3.0)
    got = token_weights_from_counts(COUNTS, 1.0, EPS, min_weight=1.0)
    # 1.667 -> 3 (floored), 3.333 and 10 unchanged; the unseen row gets the rarest counted token's weight (10)
    torch.testing.assert_close(got, torch.tensor([3.0, 10 / 3, 10.0, 10.0]))
    half = token_weights_from_counts(COUNTS, 1.0, EPS, min_weight=0.5)  # floor 1.5: nothing below it
    torch.testing.assert_close(half, torch.tensor([5 / 3, 10 / 3, 10.0, 10.0]))
    none = token_weights_from_counts(COUNTS, 1.0, EPS, min_weight=0)  # a floor of 0 is no floor: equation (3)
    torch.testing.assert_close(none, torch.tensor([5 / 3, 10 / 3, 10.0, 10.0]))


def test_floor_and_cap_share_the_mean_and_come_before_exemption_and_token_rescaling():
    got = token_weights_from_counts(COUNTS, 1.0, EPS, min_weight=1.0, max_weight=2.0, exempt=[0])
    # clamp to [3, 6] with the raw mean 3: [3, 3.333, 6, 6]; then row 0 exempt -> mean over counted of the clamped
    # weights = (6*3 + 3*10/3 + 1*6) / 10 = 3.4
    torch.testing.assert_close(got, torch.tensor([3.4, 10 / 3, 6.0, 6.0]))
    token = token_weights_from_counts(COUNTS, 1.0, EPS, normalize="token", min_weight=1.0)
    floored = torch.tensor([3.0, 10 / 3, 10.0, 10.0], dtype=torch.float64)
    mean = (6 * 3.0 + 3 * 10 / 3 + 10.0) / 10  # 3.8
    torch.testing.assert_close(token, (floored / mean).float())


def test_floor_above_the_cap_is_refused_when_both_are_set():
    with pytest.raises(PDLConfigError,
                       match=r"pdl_min_weight 3.0 is above pdl_max_weight 2.0: .* \(`pdl_min_weight: 0` is none\)"):
        PDLSettings(pdl_min_weight=3, pdl_max_weight=2)
    with pytest.raises(PDLConfigError, match="pdl_min_weight must be a finite number > 0"):
        PDLSettings(pdl_min_weight=-0.5)


def test_prior_mixes_normalised_frequencies_before_equation_3():
    prior = torch.tensor([1.0, 1.0, 1.0, 1.0])  # uniform: 0.25 each once normalised
    got = token_weights_from_counts(COUNTS, 1.0, EPS, prior=prior * 7, prior_mix=0.5)
    # freq = 0.5 * [0.6, 0.3, 0.1, 0] + 0.5 * 0.25 = [0.425, 0.275, 0.175, 0.125]: the unseen row is counted by the prior
    torch.testing.assert_close(got, torch.tensor([1 / 0.425, 1 / 0.275, 1 / 0.175, 1 / 0.125]))
    only_prior = token_weights_from_counts(COUNTS, 1.0, EPS, prior=prior, prior_mix=1.0)
    torch.testing.assert_close(only_prior, torch.full((4,), 4.0))


def test_prior_unseen_policy_applies_to_tokens_neither_table_counted():
    prior = torch.tensor([1.0, 0.0, 1.0, 0.0])
    got = token_weights_from_counts(COUNTS, 1.0, EPS, prior=prior, prior_mix=0.5)
    # freq = [0.3 + 0.25, 0.15, 0.05 + 0.25, 0]: row 3 counted by neither -> the rarest mixed frequency, 0.15
    torch.testing.assert_close(got, torch.tensor([1 / 0.55, 1 / 0.15, 1 / 0.3, 1 / 0.15]))


@pytest.mark.parametrize("values, message", [
    ({"pdl_ce_mix": 1.5}, "pdl_ce_mix must be a number in \\[0, 1\\]"),
    ({"pdl_ce_mix": "x"}, "pdl_ce_mix must be a number"),
    ({"pdl_prior_mix": 0.5}, "pdl_prior_mix is set but pdl_prior_path is not"),
    ({"pdl_prior_path": "p.safetensors"}, "pdl_prior_path is set .* but pdl_prior_mix is not"),
    ({"pdl_prior_path": "p", "pdl_prior_mix": -0.1}, "pdl_prior_mix must be a number in \\[0, 1\\]"),
])
def test_new_settings_out_of_range_are_refused(values, message):
    with pytest.raises(PDLConfigError, match=message):
        PDLSettings(**values)


def _engine(counts=COUNTS, special=(), **settings) -> PDLEngine:
    table = FrequencyTable(counts, "tok", "completion_only", "data")
    settings = {"pdl_alpha": 1.0, "pdl_epsilon": EPS, **EQUATION_3, **settings}
    return PDLEngine(PDLSettings(**settings), table, host="test", special_token_ids=special)


# Two micro-batches of one step: targets 0, 1 | 2 (rows 0, 1, 2 weigh 5/3, 10/3, 10), with these log-probs
MICRO = [(torch.tensor([math.log(0.5), math.log(0.25)]), torch.tensor([0, 1])),
         (torch.tensor([math.log(0.125), 0.0]), torch.tensor([2, -100]))]
NLL = [math.log(2), math.log(4), math.log(8)]
W = [5 / 3, 10 / 3, 10.0]


@pytest.mark.parametrize("mix", [0.0, 0.25, 1.0])
def test_ce_mix_step_loss_is_the_mix_of_two_exactly_normalised_parts(mix):
    e = _engine(pdl_ce_mix=mix)
    denominator = e.step_denominator([t for _, t in MICRO], "cpu", step=0)
    got = sum(float(e.loss(lp, t, step=0, training=True, num_items_in_batch=denominator)) for lp, t in MICRO)
    ce = sum(NLL) / 3
    pdl = sum(w * n for w, n in zip(W, NLL)) / sum(W)
    assert math.isclose(got, mix * ce + (1 - mix) * pdl, rel_tol=1e-6)
    metrics = e.pop_metrics("train", step=1)
    assert math.isclose(metrics["ce_loss"], ce, rel_tol=1e-6)
    assert ("pdl_loss" in metrics) == (mix > 0)
    if mix > 0:
        assert math.isclose(metrics["pdl_loss"], pdl, rel_tol=1e-6)


def test_ce_mix_gradient_is_the_mix_of_both_gradients():
    targets = torch.tensor([0, 2])
    x = torch.tensor([[1.0, 2.0, 0.5, 0.0], [0.3, 0.2, 0.1, 3.0]], dtype=torch.float64, requires_grad=True)
    e = _engine(pdl_ce_mix=0.5)
    denominator = e.step_denominator([targets], "cpu", step=0)
    lp = torch.log_softmax(x.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    e.loss(lp, targets, step=0, training=True, num_items_in_batch=denominator).backward()
    x64 = x.detach().clone().requires_grad_(True)
    nll = -torch.log_softmax(x64, -1).gather(-1, targets[:, None]).squeeze(-1)
    w = torch.tensor([5 / 3, 10.0], dtype=torch.float64)
    (0.5 * nll.mean() + 0.5 * (w * nll).sum() / w.sum()).backward()
    torch.testing.assert_close(x.grad, x64.grad, rtol=1e-5, atol=1e-7)


def test_ce_mix_refuses_a_denominator_it_did_not_compute():
    e = _engine(pdl_ce_mix=0.5)
    with pytest.raises(PDLError, match="pdl_ce_mix needs the step's token count"):
        e.loss(*MICRO[0], step=0, training=True, num_items_in_batch=torch.tensor(3.0, dtype=torch.float64))


def test_ce_mix_under_data_parallel_reduces_tokens_and_weights_separately():
    e = _engine(pdl_ce_mix=0.5)
    labels = [torch.tensor([0, 1])]
    denominator = e.step_denominator(labels, "cpu", step=0, all_reduce=lambda t: t * 2)  # two identical ranks
    assert math.isclose(float(denominator), 2 * (W[0] + W[1]), rel_tol=1e-6)
    got = float(e.loss(*MICRO[0], step=0, training=True, num_items_in_batch=denominator))
    expected = 0.5 * (NLL[0] + NLL[1]) / 4 + 0.5 * (W[0] * NLL[0] + W[1] * NLL[1]) / (2 * (W[0] + W[1]))
    assert math.isclose(got, expected, rel_tol=1e-6)


def test_end_of_turn_token_is_the_most_trained_special_token_and_is_guarded(caplog):
    counts = torch.tensor([50, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0])  # row 0: the token that ends every reply
    assert end_of_turn_id(FrequencyTable(counts, "t", "m", "d"), special_token_ids=[11, 0]) == 0
    with caplog.at_level(logging.WARNING):
        e = _engine(counts, special=[0, 11], pdl_alpha=1.0)
    # freq 50/63 -> weight 63/50; count-weighted mean = sum(count * 63/count) / 63 = 11 (rows 0-10 counted)
    assert math.isclose(float(e.weights[0]) / 11, 63 / 50 / 11, rel_tol=1e-5)
    lines = [r.getMessage() for r in caplog.records if "end-of-turn token" in r.getMessage()]
    assert len(lines) == 1 and "id 0" in lines[0] and "weighs 0.115" in lines[0] and "1st most frequent" in lines[0]
    assert "pdl_exempt_special_tokens: true" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _engine(counts, special=[0, 11], pdl_alpha=1.0, pdl_exempt_special_tokens=True)
        _engine(counts, special=[0, 11], pdl_alpha=0.25)  # weight 0.55 of the mean: no warning
    assert not [r for r in caplog.records if "end-of-turn token" in r.getMessage()]


def test_end_of_turn_weight_share_is_logged():
    counts = torch.tensor([6, 3, 1, 0])
    e = _engine(counts, special=[2])  # row 2 trained once: the only trained special token
    e.loss(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0, 2, 2]), step=0, training=True)
    share = e.pop_metrics("train", step=1)["pdl_end_of_turn_weight_share"]
    assert math.isclose(share, 20 / (5 / 3 + 20), rel_tol=1e-6)


@pytest.mark.parametrize("bounds", [{"pdl_max_weight": 0.5}, {"pdl_min_weight": 4.0},
                                    {"pdl_min_weight": 1.0, "pdl_max_weight": 1.0}])
def test_bounds_that_make_every_weight_equal_are_refused(bounds):
    # raw weights / mean: 5/9, 10/9, 10/3 (mean 3); a cap at 0.5 x mean or a floor at 4 x mean flattens all three
    with pytest.raises(PDLConfigError, match="give every trained token the same weight"):
        _engine(**bounds)
    _engine(pdl_max_weight=2.0)  # caps only the rarest: still a reweighting
    _engine(counts=torch.tensor([2, 2, 0, 0]), pdl_max_weight=0.5)  # equal counts: equal weights by nature, accepted

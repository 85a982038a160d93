"""Equation (3) and the derived per-token weights, against values computed by hand."""

import math

import pytest
import torch

from pdl_plugin import PDLConfigError, pdl_weights, token_weights_from_counts


def test_equation_3_on_hand_computed_values():
    freq = torch.tensor([1.0, 0.25, 0.0, 0.01])
    got = pdl_weights(freq, alpha=0.5, epsilon=1e-6)
    # 1/sqrt(1 + 1e-6), 1/sqrt(0.250001), 1/sqrt(1e-6) = 1000, 1/sqrt(0.010001)
    expected = torch.tensor([0.9999995000003750, 1.9999960000120000, 1000.0, 9.9995000374969])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_alpha_one_is_the_inverse_frequency():
    got = pdl_weights(torch.tensor([0.5, 0.1]), alpha=1.0, epsilon=1e-9)
    torch.testing.assert_close(got, torch.tensor([1 / 0.500000001, 1 / 0.100000001]))


def test_alpha_zero_gives_unit_weights():
    assert torch.equal(pdl_weights(torch.tensor([0.0, 0.3, 1.0]), 0.0, 1e-6), torch.ones(3))


def test_weights_from_counts_use_normalised_frequencies():
    counts = torch.tensor([3, 1, 0])
    got = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-6, unseen="formula")
    # freq = [0.75, 0.25, 0] -> 1/(0.750001), 1/(0.250001), 1/1e-6
    torch.testing.assert_close(got, torch.tensor([1 / 0.750001, 1 / 0.250001, 1e6]))


def test_token_normalisation_makes_the_mean_over_counted_tokens_one():
    counts = torch.tensor([3, 1, 0])
    got = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-12, normalize="token")
    # raw weights [4/3, 4, 1e12]; mean over the 4 counted tokens = (3 * 4/3 + 1 * 4) / 4 = 2
    torch.testing.assert_close(got[:2], torch.tensor([2 / 3, 2.0]))
    assert math.isclose(float((got[:2].double() * counts[:2]).sum() / 4), 1.0, rel_tol=1e-6)


def test_max_weight_caps_at_a_multiple_of_the_mean():
    counts = torch.tensor([98, 1, 1])
    raw = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-9)
    capped = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-9, max_weight=2.0)
    mean = float((raw.double() * counts).sum() / 100)  # (98 * 100/98 + 100 + 100) / 100 = 3
    assert math.isclose(mean, 3.0, rel_tol=1e-6)
    torch.testing.assert_close(capped, torch.tensor([100 / 98, 6.0, 6.0]))


@pytest.mark.parametrize(
    ("alpha", "epsilon", "message"),
    [(-0.1, 1e-6, "pdl_alpha"), (0.5, 0.0, "pdl_epsilon"), (0.5, -1.0, "pdl_epsilon"), ("x", 1e-6, "pdl_alpha"),
     (float("nan"), 1e-6, "pdl_alpha"), (0.5, float("inf"), "pdl_epsilon")],
)
def test_bad_alpha_or_epsilon_is_refused(alpha, epsilon, message):
    with pytest.raises(PDLConfigError, match=message):
        pdl_weights(torch.tensor([0.5]), alpha, epsilon)


def test_no_counted_token_is_refused():
    with pytest.raises(PDLConfigError, match="no trained token"):
        token_weights_from_counts(torch.zeros(4, dtype=torch.int64), 0.5, 1e-6)


def test_unknown_normalisation_is_refused():
    with pytest.raises(PDLConfigError, match="pdl_normalize"):
        token_weights_from_counts(torch.tensor([1, 2]), 0.5, 1e-6, normalize="mean")


def test_unseen_tokens_get_the_rarest_seen_weight_by_default():
    counts = torch.tensor([3, 1, 0])
    # freq = [0.75, 0.25, 0]; alpha 1, eps 1e-6: the unseen row takes the weight of freq 0.25, not 1/1e-6
    got = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-6)
    torch.testing.assert_close(got, torch.tensor([1 / 0.750001, 1 / 0.250001, 1 / 0.250001]))
    formula = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-6, unseen="formula")
    torch.testing.assert_close(formula, torch.tensor([1 / 0.750001, 1 / 0.250001, 1e6]))


def test_unknown_unseen_policy_is_refused():
    with pytest.raises(PDLConfigError, match="pdl_unseen_weight"):
        token_weights_from_counts(torch.tensor([1, 2]), 0.5, 1e-6, unseen="zero")


def test_exempt_rows_get_the_mean_weight_of_a_counted_token():
    # counts 6, 2, 2 -> freq 0.6, 0.2, 0.2; alpha 1, epsilon ~0: weights 1/0.6, 5, 5 and the count-weighted mean
    # (6 * 5/3 + 2 * 5 + 2 * 5) / 10 = 3. Row 0 (say the end-of-reply token, the most frequent) exempt: 3, not 5/3.
    counts = torch.tensor([6, 2, 2, 0])
    plain = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-12)
    exempt = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-12, exempt=[0])
    torch.testing.assert_close(plain[:3], torch.tensor([5 / 3, 5.0, 5.0]))
    torch.testing.assert_close(exempt, torch.tensor([3.0, 5.0, 5.0, 5.0]))  # row 3: unseen, rarest weight, untouched
    # with token normalisation the mean over counted tokens is then 1: (6 * 3 + 2 * 5 + 2 * 5) / 10 = 3.8
    token = token_weights_from_counts(counts, alpha=1.0, epsilon=1e-12, normalize="token", exempt=[0])
    torch.testing.assert_close(token, torch.tensor([3 / 3.8, 5 / 3.8, 5 / 3.8, 5 / 3.8]))
    # alpha 0 is cross-entropy with or without exemption
    assert torch.equal(token_weights_from_counts(counts, 0.0, 1e-6, exempt=[0, 3]), torch.ones(4))


def test_exempt_rows_outside_the_vocabulary_are_refused():
    with pytest.raises(PDLConfigError, match="rows of the 3-row vocabulary"):
        token_weights_from_counts(torch.tensor([1, 2, 3]), 0.5, 1e-6, exempt=[3])

"""benchmarks/end_of_reply.py: the end-of-reply positions and their summary, against hand-computed values."""

import math

import numpy as np
import pytest
from conftest import load_benchmark

end_of_reply = load_benchmark("end_of_reply")


def test_summary_by_hand():
    targets = np.array([5, 6, 2, 2, 9, 2])
    nll = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 1.5])
    mask = np.array([False, False, True, True, False, True])
    counts = np.array([0, 0, 50, 0, 0, 10, 20, 0, 0, 5])  # token 2 counted 50 times of 85: the most frequent
    result = end_of_reply.summarize(targets, nll, mask, counts)
    assert result["rows"] == 3 and result["tokens"] == 6 and result["end_tokens"] == [2]
    assert result["end_ce"] == pytest.approx((3.0 + 0.5 + 1.5) / 3)
    assert result["end_probability"] == pytest.approx((math.exp(-3.0) + math.exp(-0.5) + math.exp(-1.5)) / 3)
    assert result["other_ce"] == pytest.approx((1.0 + 2.0 + 4.0) / 3)
    assert result["ce"] == pytest.approx(12.0 / 6)
    assert result["end_share_of_ce"] == pytest.approx(5.0 / 12.0)
    assert result["end_count_in_table"] == 50 and result["end_rank_in_table"] == 1
    assert result["end_share_of_table"] == pytest.approx(50 / 85)


def test_summary_refuses_a_mask_that_does_not_match():
    with pytest.raises(ValueError, match="one end-of-reply position per scored row"):
        end_of_reply.summarize(np.array([1, 2]), np.array([0.1, 0.2]), np.array([False]), np.ones(3))

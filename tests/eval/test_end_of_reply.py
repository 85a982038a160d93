"""The end-of-reply positions every evaluation measures apart, against hand-computed values."""

import numpy as np
import pytest

from pdl_plugin.eval.end_of_reply import end_of_reply_mask, end_of_reply_summary


def test_mask_marks_the_last_trained_position_of_each_row():
    rows = [
        [-100, -100, 5, 6, 2],  # 3 trained positions (labels[1:]): the last is the end token
        [7, 2],  # the first label is never predicted: 1 trained position
        [-100, -100],  # nothing trained: contributes no position
        [-100, 4, -100, 9, 2, -100],  # masked gap and trailing padding label
    ]
    assert end_of_reply_mask(rows).tolist() == [False, False, True, True, False, False, True]


def test_summary_by_hand():
    targets = np.array([5, 6, 2, 2, 9, 2])
    nll = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 1.5])
    mask = np.array([False, False, True, True, False, True])
    result = end_of_reply_summary(targets, nll, mask)
    assert result["rows"] == 3 and result["end_tokens"] == [2]
    assert result["ce"] == pytest.approx(5.0 / 3) and result["other_ce"] == pytest.approx(7.0 / 3)
    assert result["probability"] == pytest.approx((np.exp(-3.0) + np.exp(-0.5) + np.exp(-1.5)) / 3)
    assert result["share_of_ce"] == pytest.approx(5.0 / 12.0)

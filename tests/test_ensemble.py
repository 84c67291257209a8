"""The ensemble averaging rules against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest

from predictions.ensemble import MEAN_LOGIT, MEAN_PROBABILITY, combine_scores


def test_mean_probability_is_the_elementwise_mean() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (rng.uniform(0, 1, (7, 3)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(combine_scores([a, b, c], MEAN_PROBABILITY), (a + b + c) / 3, 1e-6)


def test_mean_logit_is_the_sigmoid_of_the_mean_logit() -> None:
    a = np.array([[0.9, 0.2]], dtype=np.float32)
    b = np.array([[0.5, 0.6]], dtype=np.float32)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    expected = 1 / (1 + np.exp(-(logit(a.astype(np.float64)) + logit(b.astype(np.float64))) / 2))
    np.testing.assert_allclose(combine_scores([a, b], MEAN_LOGIT), expected, rtol=1e-6)


def test_saturated_scores_stay_finite_and_ordered() -> None:
    a = np.array([[1.0, 0.0, 0.5]], dtype=np.float32)
    combined = combine_scores([a, a], MEAN_LOGIT)
    assert np.isfinite(combined).all()
    assert combined[0, 0] > combined[0, 2] > combined[0, 1]


def test_mismatched_shapes_and_unknown_rule_are_refused() -> None:
    with pytest.raises(ValueError, match="same"):
        combine_scores([np.zeros((2, 3)), np.zeros((3, 3))])
    with pytest.raises(ValueError, match="unknown averaging rule"):
        combine_scores([np.zeros((2, 3))], "median")
    with pytest.raises(ValueError, match="at least one"):
        combine_scores([])

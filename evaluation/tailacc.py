"""Tailacc(t): how accurate the classifier is on the images it is most sure about.

For class c and threshold t, with f the sigmoid score and pred_i = [f(x_i) > 0.5]:

    Tailacc(t) = sum_i I[pred_i == y_i] I[f(x_i) > t] / sum_i I[f(x_i) > t]

For t >= 0.5 every image in the tail is predicted positive, so Tailacc(t) is the precision of
the images scored above t. The thresholds of a class are quantiles of its scores above 0.5,
so threshold k keeps the same share of that class's confident images whatever its score
distribution; that share is the common axis for averaging over classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.metrics import validate_score_matrix
from vocdata.splits import DifficultMode, targets_and_mask

DECISION_THRESHOLD = 0.5
DEFAULT_NUM_THRESHOLDS = 15
MIN_THRESHOLDS, MAX_THRESHOLDS = 10, 20


def tail_accuracy(scores: np.ndarray, positives: np.ndarray, threshold: float) -> float:
    """Tailacc(threshold) for one class; NaN when no image scores above the threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    if scores.shape != positives.shape or scores.ndim != 1:
        raise ValueError("scores and positives must be 1-D arrays of equal length")
    in_tail = scores > threshold
    if not in_tail.any():
        return float("nan")
    predicted = scores > DECISION_THRESHOLD
    return float(((predicted == positives) & in_tail).sum() / in_tail.sum())


def kept_shares(num_thresholds: int = DEFAULT_NUM_THRESHOLDS) -> np.ndarray:
    """The common axis: share of a class's above-0.5 images kept at threshold k (1 down)."""
    _check_count(num_thresholds)
    return 1.0 - np.arange(num_thresholds) / num_thresholds


def tail_thresholds(scores: np.ndarray, num_thresholds: int = DEFAULT_NUM_THRESHOLDS) -> np.ndarray:
    """Increasing thresholds from 0.5 to below max(score): quantiles of the scores above 0.5.

    Threshold k keeps about a share `kept_shares()[k]` of those images. Empty when no score
    exceeds 0.5 (the class has an empty tail).
    """
    _check_count(num_thresholds)
    confident = np.sort(np.asarray(scores, dtype=np.float64))
    confident = confident[confident > DECISION_THRESHOLD]
    if confident.size == 0:
        return np.zeros(0)
    quantiles = np.quantile(confident, np.arange(1, num_thresholds) / num_thresholds)
    return np.concatenate([[DECISION_THRESHOLD], quantiles])


def _check_count(num_thresholds: int) -> None:
    if not MIN_THRESHOLDS <= num_thresholds <= MAX_THRESHOLDS:
        raise ValueError(
            f"use {MIN_THRESHOLDS} to {MAX_THRESHOLDS} thresholds, got {num_thresholds}"
        )


@dataclass(frozen=True)
class TailaccCurves:
    """Per-class curves on the common axis, and their mean over the classes that have one."""

    kept_share: np.ndarray  # (K,) from 1 down to 1/K
    thresholds: np.ndarray  # (C, K), NaN rows for classes with an empty tail
    tailacc: np.ndarray  # (C, K), NaN where undefined
    mean: np.ndarray  # (K,) mean over classes with a defined value at that point
    classes_in_mean: np.ndarray  # (K,) how many classes each mean point covers


def tailacc_curves(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
    difficult: DifficultMode | str = DifficultMode.IGNORE,
) -> TailaccCurves:
    """Tailacc at each class's own quantile thresholds; difficult entries are left out under
    the default mode, as for AP."""
    scores, labels, _ = validate_score_matrix(scores, labels, class_names)
    scores = scores.astype(np.float64)
    targets, mask = targets_and_mask(labels, difficult)
    num_classes = scores.shape[1]
    thresholds = np.full((num_classes, num_thresholds), np.nan)
    values = np.full((num_classes, num_thresholds), np.nan)
    for c in range(num_classes):
        counted = mask[:, c] > 0
        class_scores, positives = scores[counted, c], targets[counted, c] > 0
        class_thresholds = tail_thresholds(class_scores, num_thresholds)
        if class_thresholds.size == 0:
            continue
        thresholds[c] = class_thresholds
        values[c] = [tail_accuracy(class_scores, positives, t) for t in class_thresholds]
    defined = ~np.isnan(values)
    counts = defined.sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)
    return TailaccCurves(kept_shares(num_thresholds), thresholds, values, mean, counts)

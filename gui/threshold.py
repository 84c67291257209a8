"""The decision threshold in a ranking: where it cuts, what it gives, and what Tailacc says.

Pure numpy, no GUI. A threshold t calls an image positive when its score is above t (the rule
of `evaluation.metrics.threshold_metrics`). Tailacc(t) is the assignment's measure, whose
prediction is fixed at 0.5 (`evaluation.tailacc`): for t >= 0.5 every image in the tail is
predicted positive and Tailacc(t) is the precision of the images above t; below 0.5 the tail
also holds images the classifier rejects, so it counts correct rejections as successes and
reads far better than the classifier is. The GUI shows it only where it means what it says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evaluation.metrics import best_f1_threshold, threshold_metrics
from evaluation.ranking import format_score
from evaluation.tailacc import DECISION_THRESHOLD, tail_accuracy

DEFAULT_THRESHOLD = DECISION_THRESHOLD
THRESHOLD_STEP = 0.05
TAILACC_UNDEFINED = "Tailacc: defined for t ≥ 0.5 only (below, it counts rejected images as hits)"
TAILACC_UNDEFINED_SHORT = "Tailacc: n/a below 0.5"


def parse_threshold(text: str) -> float:
    """A threshold typed by a person: a number in [0, 1]; ValueError saying so otherwise."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"threshold must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be from 0 to 1, got {value:g}")
    return value


def step_threshold(threshold: float, direction: int) -> float:
    """Up or down by one step (0.05), onto the grid of steps, within [0, 1]."""
    steps = threshold / THRESHOLD_STEP
    target = math.floor(steps + 1e-9) + 1 if direction > 0 else math.ceil(steps - 1e-9) - 1
    return float(min(max(round(target * THRESHOLD_STEP, 10), 0.0), 1.0))


def first_rank_below(ranked_scores: np.ndarray, threshold: float) -> int | None:
    """Rank (1 = highest) of the first image not above the threshold in a ranking sorted
    highest first; None when every image is above it."""
    above = int(np.count_nonzero(np.asarray(ranked_scores) > threshold))
    return above + 1 if above < len(ranked_scores) else None


@dataclass(frozen=True)
class ThresholdSummary:
    """One class at one threshold, over its counted images (difficult ones may be left out)."""

    threshold: float
    above: int  # images called positive
    precision: float  # NaN when nothing is above the threshold
    recall: float  # NaN without positives
    f1: float  # NaN without positives and nothing above
    tailacc: float | None  # None where Tailacc is not defined (t < 0.5); NaN: empty tail

    def line(self) -> str:
        def fmt(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.3f}"

        t = format_score(self.threshold)
        parts = [
            f"threshold {t}: {self.above:,} above",
            f"precision {fmt(self.precision)}",
            f"recall {fmt(self.recall)}",
            f"F1 {fmt(self.f1)}",
        ]
        if self.tailacc is None:
            parts.append(TAILACC_UNDEFINED)
        else:
            parts.append(f"Tailacc({t}) {fmt(self.tailacc)}")
        return "  ·  ".join(parts)


def summarise(scores: np.ndarray, positives: np.ndarray, threshold: float) -> ThresholdSummary:
    """P/R/F1 of `score > threshold` and Tailacc(threshold) where defined, for one class's
    counted images (`positives` 0/1)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(np.int8)
    # threshold_metrics takes VOC labels: 1 present, -1 absent.
    labels = np.where(positives > 0, 1, -1).astype(np.int8)[:, None]
    metrics = threshold_metrics(scores[:, None], labels, threshold)
    tailacc = (
        tail_accuracy(scores, positives, threshold) if threshold >= DECISION_THRESHOLD else None
    )
    return ThresholdSummary(
        threshold,
        int(np.count_nonzero(scores > threshold)),
        float(metrics.precision[0]),
        float(metrics.recall[0]),
        float(metrics.f1[0]),
        tailacc,
    )


def best_threshold(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """The threshold with the best F1 (see `evaluation.metrics.best_f1_threshold`)."""
    best = best_f1_threshold(scores, positives)
    return None if best is None else best.threshold

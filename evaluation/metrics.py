"""Average precision per class and its mean, like scikit-learn's metrics: validated arrays in,
numbers out, clear errors.

AP ranks all images by one class's score and averages the precision at each positive. A class
with no positive among the evaluated images has no defined AP: it is NaN (with a warning that
names the class), and the mean says how many classes it covers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score

from vocdata.splits import DifficultMode, targets_and_mask

AP_VARIANTS = ("sklearn", "voc")


class UndefinedAPWarning(UserWarning):
    """A class has no positive example among the evaluated images, so its AP is undefined."""


def as_ranking_inputs(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One class's scores as float64 and its 0/1 labels as booleans, checked: 1-D, of equal
    length, finite scores (every ranking metric here starts from these)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives)
    if scores.ndim != 1 or positives.shape != scores.shape:
        raise ValueError(
            f"scores and positives must be 1-D of equal length, got {scores.shape} "
            f"and {positives.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    if not np.isin(positives, (0, 1)).all():
        raise ValueError("positives must be 0/1 (or boolean)")
    return scores, positives.astype(bool)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated AP (scikit-learn's step-wise definition); NaN without positives."""
    scores, positives = as_ranking_inputs(scores, positives)
    if not positives.any():
        return float("nan")
    return float(average_precision_score(positives, scores))


def voc_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP as the VOC2010+ devkit computes it: area under the interpolated precision envelope.

    Precision at recall r is replaced by the best precision at any recall >= r, which can
    only raise the value relative to the step-wise AP. NaN without positives.
    """
    scores, positives = as_ranking_inputs(scores, positives)
    if not positives.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    true_pos = np.cumsum(hits)
    precision = true_pos / np.arange(1, len(hits) + 1)
    recall = true_pos / hits.sum()
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * envelope))


def validate_score_matrix(
    scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, C) scores and VOC labels of one shape, and C class names (default "0", "1", ...):
    the one check every metric over a whole predictions matrix starts with."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(
            f"scores and labels must be (N, C) arrays of one shape, got "
            f"{scores.shape} and {labels.shape}"
        )
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must be VOC labels: 1 present, 0 difficult, -1 absent")
    names = (
        list(class_names) if class_names is not None else [str(c) for c in range(scores.shape[1])]
    )
    if len(names) != scores.shape[1]:
        raise ValueError(f"{len(names)} class names for {scores.shape[1]} score columns")
    return scores, labels, names


def per_class_average_precision(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    difficult: DifficultMode | str = DifficultMode.IGNORE,
    variant: str = "sklearn",
) -> np.ndarray:
    """AP of every class over the whole set: (C,) float64, NaN where a class has no positive.

    `labels` are VOC labels (1 / 0 difficult / -1); under the default difficult mode an image
    labelled 0 for a class is left out of that class's ranking (the VOC protocol).
    """
    if variant not in AP_VARIANTS:
        raise ValueError(f"variant must be one of {AP_VARIANTS}, got {variant!r}")
    scores, labels, names = validate_score_matrix(scores, labels, class_names)
    targets, mask = targets_and_mask(labels, difficult)
    metric = average_precision if variant == "sklearn" else voc_average_precision
    values = np.full(scores.shape[1], np.nan)
    for column, name in enumerate(names):
        counted = mask[:, column] > 0
        if not targets[counted, column].any():
            warnings.warn(
                f"class '{name}' has no positive image in the evaluated set: its AP "
                f"is undefined (NaN) and left out of the mean",
                UndefinedAPWarning,
                stacklevel=2,
            )
            continue
        values[column] = metric(scores[counted, column], targets[counted, column])
    return values


@dataclass(frozen=True)
class MeanAP:
    """mAP over the classes whose AP is defined, and how many of them there are."""

    value: float
    num_classes: int
    num_undefined: int

    def __str__(self) -> str:
        text = f"mAP {self.value:.4f} over {self.num_classes} classes"
        if self.num_undefined:
            text += f" ({self.num_undefined} without positives left out)"
        return text


def mean_average_precision(per_class_ap: np.ndarray) -> MeanAP:
    """Mean of the defined (non-NaN) per-class APs; NaN if none is defined."""
    per_class_ap = np.asarray(per_class_ap, dtype=np.float64)
    defined = ~np.isnan(per_class_ap)
    value = float(per_class_ap[defined].mean()) if defined.any() else float("nan")
    return MeanAP(value, int(defined.sum()), int((~defined).sum()))


@dataclass(frozen=True)
class ThresholdMetrics:
    """Per-class numbers at a fixed score threshold, each (C,) float64 (NaN where undefined)."""

    accuracy: np.ndarray
    all_negative_accuracy: np.ndarray  # what "always say absent" scores: the trivial baseline
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    positives: np.ndarray  # counted positives per class (int)
    counted: np.ndarray  # counted images per class (int; difficult ones may be left out)


def threshold_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float = 0.5,
    difficult: DifficultMode | str = DifficultMode.IGNORE,
) -> ThresholdMetrics:
    """Accuracy, precision, recall and F1 of `score > threshold` for every class.

    Beside AP these show why accuracy says little here: with few positives per class,
    answering "absent" for everything is already highly "accurate".
    """
    scores, labels, _ = validate_score_matrix(scores, labels, None)
    targets, mask = targets_and_mask(labels, difficult)
    counted_mask = mask > 0
    predicted = scores > threshold
    truth = targets > 0
    tp = (predicted & truth & counted_mask).sum(axis=0)
    fp = (predicted & ~truth & counted_mask).sum(axis=0)
    fn = (~predicted & truth & counted_mask).sum(axis=0)
    counted = counted_mask.sum(axis=0)
    positives = (truth & counted_mask).sum(axis=0)
    correct = ((predicted == truth) & counted_mask).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(positives > 0, tp / positives, np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        accuracy = np.where(counted > 0, correct / counted, np.nan)
        all_negative = np.where(counted > 0, (counted - positives) / counted, np.nan)
    return ThresholdMetrics(accuracy, all_negative, precision, recall, f1, positives, counted)


@dataclass(frozen=True)
class BestF1:
    """The threshold with the highest F1 for one class, and what it gives."""

    threshold: float
    f1: float
    precision: float
    recall: float


def best_f1_threshold(scores: np.ndarray, positives: np.ndarray) -> BestF1 | None:
    """The threshold t (decision `score > t`) with the highest F1 on these images.

    Only the cuts between distinct scores matter: t is put halfway between the lowest score
    kept and the next lower one (half the lowest score when every image is kept), so it reads
    as a round cut, not as one image's score. Ties in F1 go to the highest threshold (fewest
    images called positive). None when there is no positive (F1 is 0 at every cut).
    """
    scores, positives = as_ranking_inputs(scores, positives)
    if not positives.any():
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(positives[order])
    # Each cut keeps every image down to the end of a group of equal scores; a score of 0
    # can never be above a threshold in [0, 1], so no cut keeps it.
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True) & (ranked > 0))
    if ends.size == 0:
        return None
    kept, kept_positives = ends + 1, hits[ends]
    f1 = 2 * kept_positives / (kept + positives.sum())
    best = int(np.argmax(f1))  # first maximum: the highest threshold
    end = ends[best]
    lower = ranked[end + 1] if end + 1 < len(ranked) else 0.0
    threshold = float((ranked[end] + lower) / 2)
    return BestF1(
        threshold,
        float(f1[best]),
        float(kept_positives[best] / kept[best]),
        float(kept_positives[best] / positives.sum()),
    )


@dataclass(frozen=True)
class SplitAP:
    """Per-class AP of a whole score matrix and their mean: what every validation reports."""

    per_class: np.ndarray  # (C,) float64, NaN where a class has no counted positive
    mean: MeanAP


def split_average_precision(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    difficult: DifficultMode | str = DifficultMode.IGNORE,
) -> SplitAP:
    """`per_class_average_precision` and its mean, with the undefined-AP warning silenced.

    For callers that said once which classes lack positives (the trainer at its start, the
    report in its text) and then score the same split again and again.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        per_class = per_class_average_precision(scores, labels, class_names, difficult)
    return SplitAP(per_class, mean_average_precision(per_class))

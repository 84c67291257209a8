"""Honest measurement of a predictions file: AP, mAP, accuracy vs AP, Tailacc(t), figures.

Pure functions over numpy arrays (no torch): everything here reads a predictions file and
a run's history, never `training/`.
"""

from evaluation.metrics import (
    MeanAP,
    UndefinedAPWarning,
    average_precision,
    mean_average_precision,
    per_class_average_precision,
    voc_average_precision,
)

__all__ = [
    "MeanAP",
    "UndefinedAPWarning",
    "average_precision",
    "mean_average_precision",
    "per_class_average_precision",
    "voc_average_precision",
]

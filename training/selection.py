"""What a run chooses its epoch on must be able to choose.

The epoch kept is the one with the best mAP on the val split (or, in a fold run, on the fold's
held-out part of the train split). With no counted positive label for any class there, no
epoch has an mAP: training would run to the end and save no model and no predictions. That
is known from the labels alone, so it is said before training starts.
"""

from __future__ import annotations

import numpy as np

from vocdata.errors import VocDataError
from vocdata.splits import DifficultMode, VocSplit, targets_and_mask


class NothingToChooseOnError(VocDataError):
    """No class has a counted positive where the epoch is chosen."""


def has_counted_positive(labels: np.ndarray, difficult: str) -> bool:
    """Whether some image has a positive label that counts (under --difficult) for a class."""
    targets, mask = targets_and_mask(labels, difficult)
    return bool((targets * mask).any())


def _difficult_hint(difficult: str) -> str:
    if difficult == DifficultMode.IGNORE.value:
        return (
            " (with --difficult ignore, objects marked only as difficult do not count: "
            "--difficult positive counts them)"
        )
    return ""


def check_val_split(split: VocSplit, difficult: str, where: str) -> None:
    """Refuse a val split without a counted positive: nothing to choose an epoch on."""
    if not has_counted_positive(split.labels, difficult):
        raise NothingToChooseOnError(
            f"The val split of {where} ({len(split)} images) has no counted positive label "
            f"for any class{_difficult_hint(difficult)}: no epoch could be chosen, so no model "
            f"and no predictions would be saved. Check its ImageSets/Main/*_val.txt files"
        )


def check_held_out_fold(
    labels: np.ndarray, difficult: str, number: int, count: int, train_images: int
) -> None:
    """Refuse a fold whose held-out part (`labels`, its rows) has no counted positive."""
    if not has_counted_positive(labels, difficult):
        raise NothingToChooseOnError(
            f"Fold {number} of {count}: its held-out part ({len(labels)} of the {train_images} "
            f"train images) has no counted positive label for any class"
            f"{_difficult_hint(difficult)}, so its model's epoch could not be chosen. Use "
            f"fewer --folds, or label more of the train split"
        )

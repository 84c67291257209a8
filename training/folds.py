"""The k folds of a cross-validated run: which training image is held out by which fold model.

The folds are multi-label stratified (each class's positives spread as evenly as possible over
the folds) by `iterative-stratification`'s `MultilabelStratifiedKFold` (Sechidis et al., 2011),
drawn once from `--seed` and saved as `folds.json` in the run folder, so a resumed run (or a
reader of the run) sees exactly the same folds.

What the library guarantees: classes are placed one at a time, rarest first, each of its
not-yet-placed images going to the fold that still lacks most of that class. So the rarest
class's positives per fold differ by at most one, and so do every class's when no image
carries two classes. With several classes per image an image placed for a rare class also
counts for its other classes, and those can end up a little less even (measured on the VOC
subset: every class within one for 2 and 5 folds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from predictions.runs import FOLDS_DIRNAME
from vocdata.atomic import atomic_write
from vocdata.errors import VocDataError
from vocdata.jsonio import read_json
from vocdata.splits import VocSplit

METHOD = "iterstrat.MultilabelStratifiedKFold(shuffle=True, random_state=seed)"


class FoldsError(VocDataError):
    """The folds cannot be made, or a run's saved folds no longer fit its data or options."""


@dataclass(frozen=True)
class Fold:
    """One fold model's share of the train split (rows of the split, ascending) and folder."""

    number: int  # 1-based
    count: int
    train_rows: np.ndarray
    held_out_rows: np.ndarray
    run_dir: Path

    @property
    def label(self) -> str:
        return f"held-out fold {self.number} of {self.count}"


def assign_folds(targets: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Fold number (1..count) of every row of the (N, C) 0/1 `targets`, stratified per class."""
    targets = np.asarray(targets).astype(bool)
    if count < 2:
        raise FoldsError(f"cross-validation needs at least 2 folds, got {count}")
    if count > len(targets):
        raise FoldsError(
            f"--folds {count} needs at least {count} training images; the train split has "
            f"{len(targets)}: lower --folds."
        )
    splitter = MultilabelStratifiedKFold(n_splits=count, shuffle=True, random_state=seed)
    assignment = np.zeros(len(targets), dtype=np.int64)
    for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(targets)), targets), 1):
        assignment[held_out] = number
    return assignment


def make_folds(assignment: np.ndarray, run_dir: Path) -> list[Fold]:
    """The `Fold` of every fold number in `assignment`, each under `<run_dir>/folds/<k>/`."""
    count = int(assignment.max())
    return [
        Fold(
            number=k,
            count=count,
            train_rows=np.flatnonzero(assignment != k),
            held_out_rows=np.flatnonzero(assignment == k),
            run_dir=Path(run_dir) / FOLDS_DIRNAME / str(k),
        )
        for k in range(1, count + 1)
    ]


def save_folds(path: Path, split: VocSplit, assignment: np.ndarray, seed: int, difficult: str):
    """Write which image (relative path) is held out by which fold, and how that was drawn."""
    data = {
        "folds": int(assignment.max()),
        "seed": seed,
        "method": METHOD,
        "stratified_on": f"positives of each class (difficult mode '{difficult}')",
        "split": split.name,
        "fold_of_image": dict(zip(split.relative_paths, map(int, assignment), strict=True)),
    }
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def load_folds(path: Path, split: VocSplit, count: int) -> np.ndarray:
    """The saved fold of every row of `split`; an error if the run's images or --folds changed."""
    if not path.is_file():
        raise FoldsError(
            f"{path} not found: this run was not trained with --folds, so it cannot be resumed "
            f"with --folds {count}. Resume it without --folds, or start a new run."
        )
    data = read_json(path, "a k-fold run's folds.json", dict)
    if data["folds"] != count:
        raise FoldsError(
            f"this run was trained with --folds {data['folds']}; resume it with that (or "
            f"without --folds), not --folds {count}"
        )
    fold_of = data["fold_of_image"]
    if sorted(fold_of) != sorted(split.relative_paths):
        raise FoldsError(
            f"the train split's images differ from those the folds in {path} were drawn on "
            f"({len(split)} now, {len(fold_of)} then): resume with the same dataset root and "
            f"--skip-bad-images setting, or start a new run."
        )
    return np.array([fold_of[p] for p in split.relative_paths], dtype=np.int64)

"""A run's two predictions files, val and train out of fold: which one to open, how to
describe it, and the button that switches between them.

A `--folds K` run writes `train_oof_predictions.npz` beside its `val_predictions.npz`: every
training image scored by the fold model that never saw it, the scores that can show the
training labels' errors. The browser opens either (`--split`), says which it shows, and
switches a run between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gui.model import TRAINING_SPLITS
from predictions import PREDICTIONS_FILENAME, Predictions, RunNotFoundError, resolve_run_dir
from predictions.runs import TRAIN_OOF_PREDICTIONS_FILENAME
from vocdata.paths import display_path, resolve_project_path


@dataclass(frozen=True)
class SplitSwitch:
    """The button that opens the run's other predictions file (val <-> train out of fold);
    `target` None: disabled, and the tooltip says why."""

    target: Path | None = None
    label: str = "Review train split (out of fold)"
    tooltip: str = "no other predictions file to switch to"


SPLIT_FILES = {"val": PREDICTIONS_FILENAME, "train": TRAIN_OOF_PREDICTIONS_FILENAME}
NO_OOF_HINT = (
    "only a k-fold run writes one (python main_train.py --folds 5): every training image "
    "scored by the fold model that never saw it"
)


def split_file(predictions_arg: str | None, runs_dir: str, split: str) -> Path:
    """The run's predictions file of `split` ('val' or 'train' out of fold); the run is the
    folder holding --predictions when it names a file, else the run it names (or latest)."""
    named = resolve_project_path(predictions_arg) if predictions_arg else None
    if named is not None and named.is_file():
        run_dir = named.parent
    else:
        run_dir = resolve_run_dir(predictions_arg, runs_dir)
    path = run_dir / SPLIT_FILES[split]
    if not path.is_file():
        hint = NO_OOF_HINT if split == "train" else "training writes it after the first epoch"
        raise RunNotFoundError(f"{display_path(run_dir)} holds no {SPLIT_FILES[split]}: {hint}")
    return path


def describe_split(predictions: Predictions, path: Path) -> str:
    """Which images these are and how they were scored, for the window's first line."""
    provenance = predictions.provenance
    split = provenance.get("split") or ("val" if path.name == PREDICTIONS_FILENAME else None)
    if provenance.get("out_of_fold"):
        return (
            f"{split or 'train'} split, out-of-fold scores (each image scored by the fold "
            f"model that never trained on it)"
        )
    if split in TRAINING_SPLITS:
        return f"{split} split, scored by models trained on it (label errors hide)"
    return f"{split} split" if isinstance(split, str) else "images of the file"


def split_switch_for(path: Path) -> SplitSwitch:
    """The val <-> train-out-of-fold button of a run's predictions file."""
    folder = path.parent
    if path.name == PREDICTIONS_FILENAME:
        other = folder / TRAIN_OOF_PREDICTIONS_FILENAME
        label = "Review train split (out of fold)"
        if other.is_file():
            return SplitSwitch(
                other,
                label,
                f"open {display_path(other)}: every training image scored by the fold model "
                f"that never saw it (the same as --split train)",
            )
        return SplitSwitch(
            None, label, f"this run has no {TRAIN_OOF_PREDICTIONS_FILENAME}: {NO_OOF_HINT}"
        )
    if path.name == TRAIN_OOF_PREDICTIONS_FILENAME:
        other = folder / PREDICTIONS_FILENAME
        label = "Back to the val split"
        if other.is_file():
            return SplitSwitch(other, label, f"open {display_path(other)} (--split val)")
        return SplitSwitch(None, label, f"this run has no {PREDICTIONS_FILENAME}")
    return SplitSwitch(
        None,
        "Review train split (out of fold)",
        f"this file is neither a run's {PREDICTIONS_FILENAME} nor its "
        f"{TRAIN_OOF_PREDICTIONS_FILENAME}: no other split to switch to",
    )

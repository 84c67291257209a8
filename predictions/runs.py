"""Where runs live, and the `latest` pointer that lets the GUI and evaluation start with no
arguments. The pointer is a one-line text file `runs/latest` holding the run folder's name
(a text file rather than a symlink, so it works on every file system)."""

from __future__ import annotations

import os
from pathlib import Path

from predictions.format import PREDICTIONS_FILENAME, Predictions
from vocdata.atomic import atomic_write
from vocdata.paths import DEFAULT_RUNS_DIR, resolve_project_path
from vocdata.splits import resolve_voc_root

LATEST_POINTER = "latest"
# Files of a run folder that evaluation reads (written by training/trainer.py).
CONFIG_FILENAME = "config.json"
HISTORY_FILENAME = "history.json"
RUN_PROVENANCE_FILENAME = "provenance.json"  # what produced the run: training/provenance.py


class RunNotFoundError(FileNotFoundError):
    """No run folder (or predictions file) where one was asked for."""


def write_latest_pointer(runs_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> None:
    """Point `runs_dir/latest` at `run_dir` (stored as a path relative to `runs_dir`)."""
    runs_dir = resolve_project_path(runs_dir)
    relative = os.path.relpath(resolve_project_path(run_dir), runs_dir)
    with atomic_write(runs_dir / LATEST_POINTER) as tmp:
        tmp.write_text(Path(relative).as_posix() + "\n")


def resolve_run_dir(
    run: str | os.PathLike[str] | None = None, runs_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR
) -> Path:
    """The run folder for `run`: None or "latest" follow the pointer; otherwise a path
    (relative to the project root) or the name of a folder inside `runs_dir`."""
    runs_dir = resolve_project_path(runs_dir)
    if run is None or str(run) == LATEST_POINTER:
        pointer = runs_dir / LATEST_POINTER
        if not pointer.is_file():
            raise RunNotFoundError(
                f"No finished run yet: {pointer} does not exist. Train one with "
                f"`python main_train.py`, or name a run folder explicitly."
            )
        candidate = runs_dir / pointer.read_text().strip()
    else:
        candidate = resolve_project_path(run)
        if not candidate.is_dir() and (runs_dir / run).is_dir():
            candidate = runs_dir / run
    if not candidate.is_dir():
        raise RunNotFoundError(f"Run folder not found: {candidate}.")
    return candidate


def find_predictions_file(
    path: str | os.PathLike[str] | None = None, runs_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR
) -> Path:
    """A predictions file from a file path, a run folder or name, or (None) the latest run."""
    if path is not None:
        candidate = resolve_project_path(path)
        if candidate.is_file():
            return candidate
        if candidate.suffix == ".npz":
            raise RunNotFoundError(f"Predictions file not found: {candidate}")
    run_dir = resolve_run_dir(path, runs_dir)
    candidate = run_dir / PREDICTIONS_FILENAME
    if not candidate.is_file():
        raise RunNotFoundError(
            f"{run_dir} holds no {PREDICTIONS_FILENAME} yet (training writes it after the "
            f"first validated epoch)."
        )
    return candidate


def voc_root_of(predictions: Predictions, voc_root: str | os.PathLike[str] | None = None) -> Path:
    """The dataset root a predictions file's relative image names refer to: `voc_root` if
    given, else the root the run used (stored relative in its provenance) if it exists here,
    else the one dataset-root setting ($VOC_ROOT or the default)."""
    if voc_root:
        return resolve_project_path(voc_root)
    stored = predictions.provenance.get("voc_root")
    if stored and resolve_project_path(stored).is_dir():
        return resolve_project_path(stored)
    return resolve_voc_root()

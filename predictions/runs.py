"""Where runs live, and the pointers that let every program start with no arguments.

Two one-line text files in the runs folder hold a run folder's name (text files rather than
symlinks, so they work on every file system):
- `latest`: the newest run that has predictions; the GUI and the evaluation open it.
- `last-started`: the run folder created most recently, written the moment it is created, so
  `main_train.py --resume latest` continues an interrupted run even before its first
  checkpoint, never an older finished one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from predictions.format import PREDICTIONS_FILENAME, Predictions
from vocdata.atomic import atomic_write
from vocdata.paths import DEFAULT_RUNS_DIR, display_path, resolve_project_path
from vocdata.splits import VOC_ROOT_ENV, resolve_voc_root

LATEST_POINTER = "latest"
LAST_STARTED_POINTER = "last-started"
# Every file and folder name of a run folder, defined once (README "What a run writes").
CONFIG_FILENAME = "config.json"
HISTORY_FILENAME = "history.json"
RUN_PROVENANCE_FILENAME = "provenance.json"  # what produced the run: training/provenance.py
BEST_MODEL_FILENAME = "model_best.pt"
LAST_CHECKPOINT_FILENAME = "checkpoint_last.pt"
LOG_FILENAME = "train.log"
LOCK_FILENAME = "run.lock"  # held by the one process training in the folder
TENSORBOARD_DIRNAME = "tensorboard"
REPORT_DIRNAME = "report"
# k-fold runs (--folds K)
FOLDS_FILENAME = "folds.json"
FOLDS_DIRNAME = "folds"  # folds/<k>/ is the run folder of fold model k
CROSSVAL_FILENAME = "crossval.json"
FOLD_SUMMARY_FILENAME = "fold.json"
HELD_OUT_PREDICTIONS_FILENAME = "heldout_predictions.npz"  # a fold model's held-out fold
TRAIN_OOF_PREDICTIONS_FILENAME = "train_oof_predictions.npz"  # every train image, out of fold
LABEL_FIXES_FILENAME = "label_fixes.json"  # --label-fixes, parsed: what --resume uses
RESERVED_NAMES = (LATEST_POINTER, LAST_STARTED_POINTER)


class RunNotFoundError(FileNotFoundError):
    """No run folder (or predictions file) where one was asked for."""


def write_latest_pointer(
    runs_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    pointer: str = LATEST_POINTER,
) -> None:
    """Point `runs_dir/<pointer>` at `run_dir` (stored as a path relative to `runs_dir`)."""
    runs_dir = resolve_project_path(runs_dir)
    relative = os.path.relpath(resolve_project_path(run_dir), runs_dir)
    with atomic_write(runs_dir / pointer) as tmp:
        tmp.write_text(Path(relative).as_posix() + "\n")


def _known_runs(runs_dir: Path) -> str:
    names = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if not names:
        return f"{runs_dir} holds no run folders"
    shown = ", ".join(names[-5:])
    return f"runs there: {shown}" + (f" (and {len(names) - 5} older)" if len(names) > 5 else "")


def resolve_run_dir(
    run: str | os.PathLike[str] | None = None,
    runs_dir: str | os.PathLike[str] = DEFAULT_RUNS_DIR,
    pointer: str = LATEST_POINTER,
) -> Path:
    """The run folder for `run`: None or "latest" follow `runs_dir/<pointer>`; otherwise a path
    (relative to the project root) or the name of a folder inside `runs_dir`."""
    runs_dir = resolve_project_path(runs_dir)
    if run is None or str(run) == LATEST_POINTER:
        pointer_file = runs_dir / pointer
        if not pointer_file.is_file() and pointer != LATEST_POINTER:
            pointer_file = runs_dir / LATEST_POINTER
        if not pointer_file.is_file():
            raise RunNotFoundError(
                f"No finished run yet: {pointer_file} does not exist. Train one with "
                f"`python main_train.py`, or name a run folder explicitly (--runs-dir says "
                f"where runs live)."
            )
        candidate = runs_dir / pointer_file.read_text(encoding="utf-8").strip()
        if not candidate.is_dir():
            raise RunNotFoundError(
                f"{pointer_file} points to {candidate}, which no longer exists; name a run "
                f"folder explicitly ({_known_runs(runs_dir)})."
            )
        return candidate
    candidate = resolve_project_path(run)
    if not candidate.is_dir() and (runs_dir / run).is_dir():
        candidate = runs_dir / run
    if not candidate.is_dir():
        raise RunNotFoundError(
            f"Run folder not found: looked for {str(run)!r} as a path ({candidate}) and as a "
            f"run name in {runs_dir}; {_known_runs(runs_dir)}. Pass a run folder, its name "
            f"with the right --runs-dir, or 'latest'."
        )
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


# Where the dataset root of a predictions file came from (ImageRoot.source).
ROOT_FROM_OPTION = "--voc-root"
ROOT_FROM_FILE = "file"
ROOT_FROM_ENV = f"${VOC_ROOT_ENV}"
ROOT_FROM_DEFAULT = "default"


@dataclass(frozen=True)
class ImageRoot:
    """The folder a predictions file's image names are read from, and why that one.

    A predictions file stores the dataset root it was scored on; a crafted file can name any
    folder (`/`, someone's home). Programs still use it when the user gave no root (it is
    what makes `python main_gui.py` work with no arguments), but they say so: `note` is the
    one line to show ("images from /x, named by the file").
    """

    path: Path
    source: str  # ROOT_FROM_OPTION, ROOT_FROM_FILE, ROOT_FROM_ENV or ROOT_FROM_DEFAULT
    note: str

    @property
    def named_by_file(self) -> bool:
        """True when the folder comes from the file itself, not from the user's settings."""
        return self.source == ROOT_FROM_FILE


def image_root_of(
    predictions: Predictions, voc_root: str | os.PathLike[str] | None = None
) -> ImageRoot:
    """The dataset root a predictions file's relative image names refer to: `voc_root` if
    given, else the root the file names (stored relative in its provenance) if it exists
    here, else the one dataset-root setting ($VOC_ROOT or the default). A stored root that is
    the user's own setting anyway counts as that setting, not as named by the file."""
    if voc_root:
        path = resolve_project_path(voc_root)
        return ImageRoot(path, ROOT_FROM_OPTION, f"images from {display_path(path)} (--voc-root)")
    configured = resolve_voc_root()
    from_env = bool(os.environ.get(VOC_ROOT_ENV))
    stored = predictions.provenance.get("voc_root")
    if isinstance(stored, str) and stored and resolve_project_path(stored).is_dir():
        path = resolve_project_path(stored)
        if path.resolve() != configured.resolve():
            return ImageRoot(
                path, ROOT_FROM_FILE, f"images from {display_path(path)}, named by the file"
            )
    source = ROOT_FROM_ENV if from_env else ROOT_FROM_DEFAULT
    setting = f"${VOC_ROOT_ENV}" if from_env else "the default dataset root"
    return ImageRoot(configured, source, f"images from {display_path(configured)} ({setting})")


def voc_root_of(predictions: Predictions, voc_root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of `image_root_of` alone, for callers that need no note."""
    return image_root_of(predictions, voc_root).path

"""Which saved model an activation map of a predictions row comes from. Pure: no torch.

The map must come from the model that produced the row's scores. A predictions file names
its models in its provenance (the convention every writer follows):
- `models`: a list of objects whose `path` is a project-relative path of a `model_best.pt`;
- `row_models` (when different rows were scored by different models, as in the out-of-fold
  file of a `--folds K` run): one integer per row, the index into `models` of the model that
  scored that row.

So a row's map comes from its own model when `row_models` is given, from the one model of a
single-model file, and for an ensemble (several models, every row scored by all) it is the
mean of the members' maps: the ensemble's score is their mean probability, and where the
members look alike the mean stays hot, where they disagree it cools. Older files name no
models: the `model_best.pt` beside the file, then the fold models of a k-fold run's val file
(`fold_models`, relative to its run folder), then the run folder in `run`.

Every named file must exist and be a torch archive before the map is offered; loading it
goes through `training.checkpoint.load_model` (weights only) when a map is first asked for.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predictions import Predictions
from predictions.runs import BEST_MODEL_FILENAME
from vocdata.paths import display_path, resolve_inside, resolve_project_path

NO_MAP = "activation maps need the saved model that scored the file"


def model_file_problem(path: Path) -> str | None:
    """None when `path` looks like a saved model (a torch zip archive); else what it is not.
    The loader checks the rest (format tag, weights only)."""
    if not path.is_file():
        return f"{display_path(path)} does not exist"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return f"{display_path(path)} is not a saved model (not a torch archive)"
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return f"{display_path(path)} is not a saved model (no tensors archive inside)"
    return None


@dataclass(frozen=True)
class CamSource:
    """The models behind a file's rows; `reason` says why there are none."""

    models: tuple[Path, ...] = ()
    row_models: tuple[int, ...] | None = None  # per row: index into `models`
    reason: str = ""
    origin: str = ""  # where the models were found, for the tooltip

    @property
    def available(self) -> bool:
        return bool(self.models)

    def members(self, row: int | None) -> tuple[int, ...]:
        """Indices of the models whose maps make the row's map."""
        if not self.models:
            return ()
        if self.row_models is not None:
            if row is None:
                raise ValueError("this file's rows were scored by different models: give the row")
            return (self.row_models[row],)
        return tuple(range(len(self.models)))

    def describe(self, row: int | None) -> str:
        """Which model a row's map comes from, for the status line under the picture."""
        members = self.members(row)
        if not members:
            return self.reason
        if self.row_models is not None:
            return (
                f"from {display_path(self.models[members[0]])}, the model that scored this "
                f"image (model {members[0] + 1} of {len(self.models)})"
            )
        if len(members) == 1:
            return f"from {display_path(self.models[0])}"
        return f"mean of the {len(members)} ensemble members' maps"

    def tooltip(self) -> str:
        if not self.models:
            return self.reason
        if self.row_models is not None:
            return (
                f"Grad-CAM of the selected class from the model that scored each image: one "
                f"of {len(self.models)} ({self.origin}); in an out-of-fold file, the fold "
                f"model that never trained on it (key C)"
            )
        if len(self.models) == 1:
            return (
                f"Grad-CAM of the selected class from {display_path(self.models[0])} "
                f"({self.origin}) (key C)"
            )
        listed = ", ".join(display_path(p) for p in self.models)
        return (
            f"Grad-CAM of the selected class: the mean of the {len(self.models)} ensemble "
            f"members' maps (each scaled to 0-1; hot where they agree), {self.origin}: "
            f"{listed} (key C)"
        )


def _named_models(provenance: dict[str, Any]) -> tuple[list[Path] | None, str]:
    """The `models` of the provenance as paths (None: not given), or why they are unusable."""
    listed = provenance.get("models")
    if listed is None:
        return None, ""
    if not isinstance(listed, list) or not listed:
        return [], "its provenance's 'models' is not a list of models"
    paths = []
    for entry in listed:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path:
            return [], "its provenance's 'models' holds an entry without a 'path'"
        paths.append(resolve_project_path(path))
    return paths, ""


def _row_models(provenance: dict[str, Any], rows: int, models: int) -> tuple[tuple | None, str]:
    value = provenance.get("row_models")
    if value is None:
        return None, ""
    valid = (
        isinstance(value, list)
        and len(value) == rows
        and all(type(v) is int and 0 <= v < models for v in value)
    )
    if not valid:
        return None, (
            f"its provenance's 'row_models' is not one model index (0 to {models - 1}) per "
            f"row ({rows} rows)"
        )
    return tuple(value), ""


def _checked(paths: list[Path], origin: str) -> CamSource | None:
    """A source of `paths` if every one is a model file; None if not (the caller says why)."""
    if all(model_file_problem(path) is None for path in paths):
        return CamSource(tuple(paths), origin=origin)
    return None


def cam_source_for(predictions: Predictions, predictions_path: str | Path) -> CamSource:
    """The models behind `predictions` (read from `predictions_path`): see the module text."""
    provenance = predictions.provenance
    folder = Path(predictions_path).parent
    paths, problem = _named_models(provenance)
    if problem:
        return CamSource(reason=f"No activation maps: {problem}; {NO_MAP}.")
    if paths is not None:
        bad = next((p for p in map(model_file_problem, paths) if p), None)
        if bad:
            return CamSource(reason=f"No activation maps: {bad} (named by the file); {NO_MAP}.")
        row_models, problem = _row_models(provenance, predictions.num_images, len(paths))
        if problem:
            return CamSource(reason=f"No activation maps: {problem}; {NO_MAP}.")
        if row_models is None and len(paths) > 1 and provenance.get("out_of_fold"):
            return CamSource(
                reason="No activation maps: this out-of-fold file does not say which fold model "
                "scored each image (provenance 'row_models'), and a map from a model that "
                "trained on the image would mislead."
            )
        return CamSource(tuple(paths), row_models, origin="named by the file")
    if provenance.get("out_of_fold"):
        return CamSource(
            reason="No activation maps: this out-of-fold file names no models (provenance "
            "'models' and 'row_models'); a map from a model that trained on the image would "
            "mislead."
        )
    beside = folder / BEST_MODEL_FILENAME
    looked = [display_path(beside)]
    found = _checked([beside], f"the {BEST_MODEL_FILENAME} beside the file")
    if found:
        return found
    fold_models = provenance.get("fold_models")
    if (
        isinstance(fold_models, list)
        and fold_models
        and all(isinstance(p, str) for p in fold_models)
    ):
        inside = [resolve_inside(folder, p) for p in fold_models]
        if all(p is not None for p in inside):
            found = _checked(inside, "the k-fold run's fold models")
            if found:
                return found
            looked.append(f"the fold models under {display_path(folder)}")
    run = provenance.get("run")
    if isinstance(run, str) and run:
        in_run = resolve_project_path(run) / BEST_MODEL_FILENAME
        if in_run != beside:
            looked.append(display_path(in_run))
            found = _checked([in_run], "the run folder named by the file")
            if found:
                return found
    return CamSource(
        reason=f"No {BEST_MODEL_FILENAME} found for this file (looked for "
        f"{', '.join(looked)}; the file names no models): {NO_MAP}."
    )

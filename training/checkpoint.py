"""Checkpoints, written atomically, and loadable with `torch.load(weights_only=True)`.

Two files per run:
- `checkpoint_last.pt`: everything needed to continue exactly (model, optimizer, scheduler,
  AMP scaler, RNG states, epoch, best-so-far, history, config); rewritten every epoch.
- `model_best.pt`: the weights of the epoch with the best validation mAP, with what is
  needed to rebuild the model (arch, class names, image size) and its provenance.
"""

from __future__ import annotations

import math
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.model import MultiLabelClassifier, build_classifier
from training.runfolder import RunFolderError
from vocdata.atomic import atomic_write
from vocdata.paths import display_path
from vocdata.views import View, parse_views

MODEL_FORMAT = "voc-multilabel-classifier/1"
# What torch.load and load_state_dict raise for a damaged or foreign checkpoint.
UNREADABLE_CHECKPOINT = (
    RuntimeError,
    ValueError,
    EOFError,
    pickle.PickleError,
    KeyError,
    TypeError,
)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save` through a temporary file and a rename: never a half-written checkpoint."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_trusted(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load one of our checkpoints (tensors and plain data only, so weights_only works)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states, as plain lists and tensors."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_best_model(
    path: Path,
    model: MultiLabelClassifier,
    *,
    arch: str,
    class_names: tuple[str, ...],
    image_size: int,
    provenance: dict[str, Any],
    head: str = "random",
    view: str = "crop",
    whole_size: int | None = None,
) -> None:
    """`model_best.pt`: the weights with what rebuilds the model (arch, classes, head and its
    structure) and what feeds it (image size, views)."""
    save_atomic(
        {
            "format": MODEL_FORMAT,
            "arch": arch,
            "class_names": list(class_names),
            "image_size": image_size,
            "head": head,  # the head's structure (training/heads.py); older files: "random"
            "spatial_max": bool(getattr(model.head, "uses_feature_map", False)),
            "view": view,  # how it sees images (vocdata/views.py); older files: crop
            "whole_size": whole_size,
            "state_dict": model.state_dict(),
            "provenance": provenance,
        },
        path,
    )


def saved_views(saved: dict[str, Any]) -> tuple[View, ...]:
    """The views a saved model was trained with (a model saved before views: the crop)."""
    return parse_views(
        str(saved.get("view") or "crop"), int(saved["image_size"]), saved.get("whole_size")
    )


ModelHook = Callable[[MultiLabelClassifier], nn.Module]


def load_model(
    path: str | os.PathLike[str], model_hook: ModelHook | None = None
) -> tuple[MultiLabelClassifier, dict[str, Any]]:
    """Rebuild a saved classifier (eval mode) and return it with the saved metadata.

    `model_hook` re-applies a structural change made before training (e.g. wsconv's
    conversion), so the saved weights land in the same modules.
    """
    saved = load_trusted(path)
    if saved.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a model saved by this trainer ({MODEL_FORMAT})")
    model = build_classifier(
        saved["arch"],
        len(saved["class_names"]),
        weights="none",
        head=saved.get("head", "random"),
        class_names=saved["class_names"],
        spatial_max=bool(saved.get("spatial_max", False)),
    )
    if model_hook is not None:
        model = model_hook(model)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved


@dataclass
class TrainState:
    """What the epoch loop carries from one epoch to the next (and across a resume)."""

    epoch: int = 0  # last completed epoch
    best_map: float = -math.inf
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    config: Any,
) -> None:
    """`checkpoint_last.pt`: everything `load_training_state` needs to continue exactly."""
    save_atomic(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": capture_rng_state(),
            "state": asdict(state),
            "config": asdict(config),
        },
        path,
    )


def load_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Restore model, optimizer, scheduler, scaler and RNG states from `path` in place and
    return the epoch loop's state; a damaged or foreign file is a RunFolderError."""
    try:
        saved = load_trusted(path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        restore_rng_state(saved["rng"])
        return TrainState(**saved["state"])
    except UNREADABLE_CHECKPOINT as error:
        raise RunFolderError(
            f"Cannot resume from {display_path(path)}: it is damaged or was written for "
            f"another network ({str(error).splitlines()[0][:200]}). Start a new run "
            f"without --resume"
        ) from error

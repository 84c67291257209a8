"""Checkpoints, written atomically, and loadable with `torch.load(weights_only=True)`.

Two files per run:
- `checkpoint_last.pt`: everything needed to continue exactly (model, optimizer, scheduler,
  AMP scaler, RNG states, epoch, best-so-far, history, config); rewritten every epoch.
- `model_best.pt`: the weights of the epoch with the best validation mAP, with what is
  needed to rebuild the model (arch, class names, image size, head, and the variant: a
  structural change made before training, such as wsconv's conversion) and its provenance.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.model import MultiLabelClassifier, build_classifier
from training.runfolder import RunFolderError, writing
from training.torchfiles import load_error_reason, load_weights_only
from vocdata.atomic import atomic_write
from vocdata.paths import display_path
from vocdata.views import View, parse_views

MODEL_FORMAT = "voc-multilabel-classifier/1"
PLAIN_VARIANT = "plain"  # the network as the backbone registry builds it
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
    """`torch.save` into memory, then the bytes through a temporary file and a rename: never a
    half-written checkpoint, the room needed is known (and checked) before the disk is
    touched, and a full disk is a RunWriteError naming the file, not torch's
    `[enforce fail at inline_container.cc]`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    path = Path(path)
    with writing(path, len(data)), atomic_write(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def load_trusted(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load one of our checkpoints (tensors and plain data only, so weights_only works)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    return load_weights_only(path)


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
    model_variant: str = PLAIN_VARIANT,
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
            "model_variant": model_variant,  # how the modules were changed before training
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


class ModelVariantError(ValueError):
    """A saved model whose modules were changed before training (e.g. wsconv-A), loaded by a
    program that cannot rebuild that change: refused rather than built as a plain network,
    whose predictions would be silently (slightly) wrong."""

    def __init__(self, path: Path, variant: str, known: tuple[str, ...]) -> None:
        self.path, self.variant = path, variant
        if known:
            rebuilt = f"plain networks and {', '.join(known)}"
            advice = "Was it saved by another version of this project?"
        else:
            rebuilt = "plain networks only"
            advice = (
                f"Score it with `python -m predictions --model {display_path(path)}`, which "
                f"rebuilds the wsconv variants"
            )
        super().__init__(
            f"{display_path(path)} holds a '{variant}' network (its layers were changed before "
            f"training), and this program rebuilds {rebuilt}: built as a plain network its "
            f"scores would be wrong. {advice}"
        )


def saved_variant(saved: Mapping[str, Any]) -> str:
    """The variant a saved model was trained as: its own key, else (files saved before the key
    existed) its provenance's, else plain."""
    variant = saved.get("model_variant")
    if variant is None:
        provenance = saved.get("provenance")
        variant = provenance.get("model_variant") if isinstance(provenance, dict) else None
    return str(variant) if variant is not None else PLAIN_VARIANT


def load_model(
    path: str | os.PathLike[str], model_hooks: Mapping[str, ModelHook] | None = None
) -> tuple[MultiLabelClassifier, dict[str, Any]]:
    """Rebuild a saved classifier (eval mode) and return it with the saved metadata.

    A model trained with a structural change (its `model_variant`, e.g. wsconv's conversion)
    is rebuilt only when `model_hooks` holds that variant's hook, which re-applies the change
    so the saved weights land in the same modules; otherwise ModelVariantError. (training/
    does not know the variants: wsconv/ sits above it and gives its hooks to the programs
    that may load its models.)
    """
    path = Path(path)
    saved = load_trusted(path)
    if saved.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a model saved by this trainer ({MODEL_FORMAT})")
    hooks = dict(model_hooks or {})
    variant = saved_variant(saved)
    if variant != PLAIN_VARIANT and variant not in hooks:
        raise ModelVariantError(path, variant, tuple(hooks))
    model = build_classifier(
        saved["arch"],
        len(saved["class_names"]),
        weights="none",
        head=saved.get("head", "random"),
        class_names=saved["class_names"],
        spatial_max=bool(saved.get("spatial_max", False)),
    )
    if variant != PLAIN_VARIANT:
        model = hooks[variant](model)
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
        if saved["scaler"] or not scaler.is_enabled():
            scaler.load_state_dict(saved["scaler"])
        # else: saved without loss scaling (CPU, bf16) and resumed with it (--device cuda,
        # fp16): the scaler starts fresh, as it would at the start of a run.
        restore_rng_state(saved["rng"])
        return TrainState(**saved["state"])
    except UNREADABLE_CHECKPOINT as error:
        raise RunFolderError(
            f"Cannot resume from {display_path(path)}: it is damaged or was written for "
            f"another network ({load_error_reason(error)}). Start a new run without --resume"
        ) from None

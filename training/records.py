"""What a run records, built by pure functions: the epoch record and the model's provenance.

`history.json` holds one epoch record per epoch; `model_best.pt` and `val_predictions.npz`
carry the provenance of the kept model. Both are plain dicts of JSON values built here from
explicit arguments (no trainer state), so a single run and each fold of a k-fold run record
exactly the same keys (the provenance keys are defined in `predictions/provenance.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evaluation.metrics import SplitAP
from training.config import TrainConfig
from training.folds import Fold
from training.labelfixes import FixedSplit
from vocdata.classes import VOC_CLASSES
from vocdata.paths import project_relative
from vocdata.splits import VocSplit
from vocdata.views import parse_views


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: an undefined number (a loss without images, an AP without
    positives) is stored as null."""
    return None if value is None or math.isnan(value) else float(value)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class EpochTiming:
    train_seconds: float
    seconds: float
    images_seen: int


def epoch_record(
    epoch: int,
    train_loss: float,
    val_loss: float,
    val: SplitAP,
    learning_rates: dict[str, float],
    timing: EpochTiming,
    peak_memory_mb: float | None,
) -> dict[str, Any]:
    """One line of history.json (`val_*` is what the epoch is chosen on)."""
    return {
        "epoch": epoch,
        "train_loss": finite_or_none(train_loss),
        "val_loss": val_loss,
        "val_map": finite_or_none(val.mean.value),
        "val_map_classes": val.mean.num_classes,
        "val_ap": dict(zip(VOC_CLASSES, map(finite_or_none, val.per_class), strict=True)),
        "lr_backbone": learning_rates.get("backbone", learning_rates.get("backbone_no_decay")),
        "lr_head": learning_rates.get("head", learning_rates.get("head_no_decay")),
        "train_seconds": timing.train_seconds,
        "seconds": timing.seconds,
        "train_images_per_second": timing.images_seen / max(timing.train_seconds, 1e-9),
        "peak_gpu_memory_mb": peak_memory_mb,
    }


def resolved_whole_size(config: TrainConfig) -> int | None:
    """The whole view's shorter side (None when the run has no whole view)."""
    views = parse_views(config.view, config.image_size, config.whole_size)
    return next((view.size for view in views if view.kind == "whole"), None)


def weights_label(weights: str) -> str:
    return weights if weights in ("imagenet", "none") else project_relative(weights)


def positives_per_class(split: VocSplit) -> dict[str, int]:
    return dict(zip(VOC_CLASSES, (split.labels == 1).sum(0).tolist(), strict=True))


def model_provenance(
    config: TrainConfig,
    record: dict[str, Any],
    *,
    model_variant: str,
    head: str,
    head_kind: str,
    train_split: VocSplit,
    val_split: VocSplit,
    voc_root: Path,
    run_dir: Path,
    fold: Fold | None = None,
    engine: str | None = None,
) -> dict[str, Any]:
    """The provenance of the model kept at `record`'s epoch (and of its predictions). A fold
    model's `val_*` measured its held-out fold, so those become `heldout_*` and val_map is
    None: the val split is not looked at while a fold model trains. A train split with label
    fixes records them (`label_fixes`); `train_positives` counts the fixed labels."""
    provenance = {
        "arch": config.arch,
        "weights": weights_label(config.weights),
        "model_variant": model_variant,
        "epoch": record["epoch"],
        "val_map": record["val_map"],
        "val_map_classes": record["val_map_classes"],
        "seed": config.seed,
        "difficult": config.difficult,
        "image_size": config.image_size,
        "split": "val",
        "train_images": len(train_split),
        "val_images": len(val_split),
        "train_positives": positives_per_class(train_split),
        "head": head,
        "head_kind": head_kind,
        "residual_shrink": config.residual_shrink if head_kind == "prior" else None,
        "tta": config.tta,
        "view": config.view,
        "whole_size": resolved_whole_size(config),
        "spatial_max": config.spatial_max,
        "engine": engine,
        "freeze_backbone": config.freeze_backbone,
        "lp_ft": config.lp_ft,
        "voc_root": project_relative(voc_root),
        "run": project_relative(run_dir),
        "created": now_iso(),
    }
    if isinstance(train_split, FixedSplit) and train_split.fixes is not None:
        provenance["label_fixes"] = train_split.fixes.summary()  # of the whole train split
    if fold is not None:
        provenance.update(
            split=f"train, {fold.label}",
            fold=fold.number,
            folds=fold.count,
            heldout_map=record["val_map"],
            heldout_map_classes=record["val_map_classes"],
            val_map=None,
            val_map_classes=None,
        )
    return provenance

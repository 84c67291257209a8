"""Score images with saved models: a VOC-layout split or a plain folder, one model or several.

The preprocessing and the pass are the trainer's own: the views each model was trained with
(`vocdata/views.py`), the model normalising its own uint8 input, its head inputs computed by
the trainer's feature pass (`training.features`, through an inference engine) and its head
applied by `training.frozen.head_logits` with the same test-time augmentation. So re-scoring
a frozen run's validation split reproduces its `val_predictions.npz` exactly, and whatever
the prediction pass learns reaches every scorer at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from predictions import Predictions, scores_from_logits
from predictions.ensemble import DEFAULT_AVERAGING_RULE, combine_scores
from predictions.provenance import provenance_value
from predictions.runs import (
    BEST_MODEL_FILENAME,
    FOLDS_DIRNAME,
    FOLDS_FILENAME,
    RunNotFoundError,
    resolve_run_dir,
)
from training.checkpoint import ModelHook, ModelVariantError, load_model, saved_views
from training.engine import ForwardEngine, build_engine
from training.features import (
    FeatureSet,
    extract_features,
    forward_engine,
    head_input_digest,
    view_loader,
)
from training.frozen import head_logits
from training.model import HeadInputs, MultiLabelClassifier
from training.runtime import Runtime
from training.torchfiles import load_error_reason
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import VocClassification, load_split_checked
from vocdata.errors import ImageReadError
from vocdata.folder import ImageFolderDataset, list_image_folder
from vocdata.images import SKIP_HINT, find_bad_images, upright_sizes
from vocdata.paths import project_relative, resolve_project_path
from vocdata.splits import image_relative_path, main_dir, read_split
from vocdata.views import View

log = logging.getLogger("predictions")

TTA_NONE = "none"
TTA_AUTO = "auto"  # what the models were validated with


class ScoringError(ValueError):
    """The models or the data cannot be scored as asked; the message says why and the fix."""


# -- models --------------------------------------------------------------------------------------
@dataclass
class SavedModel:
    """One rebuilt model with what was saved beside its weights."""

    path: Path
    network: MultiLabelClassifier
    arch: str
    class_names: tuple[str, ...]
    image_size: int
    provenance: dict[str, Any]
    views: tuple[View, ...] = ()

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def resolve_model_paths(spec: str, runs_dir: str | os.PathLike[str]) -> list[Path]:
    """The model file(s) named by one --model value: a file path, or a run folder / run name
    under `runs_dir` / `latest`, whose `model_best.pt` it is. A k-fold run (`--folds K`) has
    no model of its own: its K fold models are returned, an ensemble."""
    candidate = resolve_project_path(spec)
    if candidate.is_file():
        return [candidate]
    if candidate.suffix == ".pt":
        raise ScoringError(f"Model file not found: {candidate}. Check the path given to --model.")
    try:
        run_dir = resolve_run_dir(spec, runs_dir)
    except RunNotFoundError as error:
        raise ScoringError(
            f"No model at '{spec}': {error} Pass --model with a run folder, a model_best.pt or "
            f"'latest' (looked in {resolve_project_path(runs_dir)})."
        ) from error
    path = run_dir / BEST_MODEL_FILENAME
    if path.is_file():
        return [path]
    fold_models = sorted(
        (run_dir / FOLDS_DIRNAME).glob(f"*/{BEST_MODEL_FILENAME}"), key=lambda p: int(p.parent.name)
    )
    if (run_dir / FOLDS_FILENAME).is_file() and fold_models:
        return fold_models
    raise ScoringError(
        f"{run_dir} holds no {BEST_MODEL_FILENAME} (training saves it after the first validated "
        f"epoch; a --folds run keeps one per fold under folds/). Pass another run to --model."
    )


def ensemble_home(paths: list[Path]) -> Path:
    """The run folder an ensemble's outputs belong to: the k-fold run when every model is one
    of its fold models, else the first model's run folder."""
    if all(path.parent.parent.name == FOLDS_DIRNAME for path in paths):
        homes = {path.parent.parent.parent for path in paths}
        if len(homes) == 1:
            return homes.pop()
    return paths[0].parent


def load_saved_model(path: Path, model_hooks: Mapping[str, ModelHook] | None = None) -> SavedModel:
    """Rebuild a model through `training.checkpoint.load_model` (with the hooks of the model
    variants the caller can rebuild), turning what goes wrong with a file that is not one of
    ours into one readable error."""
    try:
        network, saved = load_model(path, model_hooks)
    except ModelVariantError as error:
        raise ScoringError(str(error)) from None
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
    ) as error:
        raise ScoringError(
            f"{path} is not a model saved by main_train.py ({load_error_reason(error)}). Pass a "
            f"run folder or its model_best.pt to --model."
        ) from None
    image_size = int(saved["image_size"])
    return SavedModel(
        path=path,
        network=network,
        arch=str(saved["arch"]),
        class_names=tuple(saved["class_names"]),
        image_size=image_size,
        provenance=dict(saved.get("provenance", {})),
        views=saved_views(saved),
    )


def check_same_classes(models: list[SavedModel]) -> tuple[str, ...]:
    """The ensemble's class names; models that predict different classes cannot be averaged."""
    first = models[0]
    for other in models[1:]:
        if other.class_names != first.class_names:
            raise ScoringError(
                f"The models predict different classes and cannot be averaged: {first.path} has "
                f"{len(first.class_names)} ({', '.join(first.class_names[:4])}, ...) and "
                f"{other.path} has {len(other.class_names)} "
                f"({', '.join(other.class_names[:4])}, ...). Ensemble models trained on the "
                f"same class list."
            )
    return first.class_names


# -- data ----------------------------------------------------------------------------------------
@dataclass
class ScoringData:
    """What to score: images relative to `root`, their labels (None: unlabelled), and how to
    build the dataset at a given image size."""

    root: Path
    files: tuple[str, ...]
    labels: np.ndarray | None
    dataset_name: str
    split: str
    source: str  # "voc-split" or "image-folder"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    difficult: str = "ignore"
    _voc_split: Any = None

    def dataset(self, view: View, num_classes: int) -> Dataset:
        """The images as `view` shows them (the trainer's own transform for that view)."""
        transform = view.transform()
        if self._voc_split is not None:
            return VocClassification(self.root, self._voc_split, self.difficult, transform)
        return ImageFolderDataset(self.root, self.files, transform, num_classes)

    def sizes(self, workers: int) -> list[tuple[int, int]]:
        """Every image's upright (width, height): a whole view batches them by shape."""
        return upright_sizes(self.root, self.files, max(1, workers))


def voc_split_data(
    voc_root: Path,
    split: str,
    difficult: str,
    skip_bad_images: bool = False,
    workers: int = 8,
) -> ScoringData:
    """A split of a VOC-layout tree, labels read exactly as training reads them; a split whose
    class files carry no labels (VOC2012's `test`) is scored without labels."""
    unlabelled_ids = _ids_of_unlabelled_split(voc_root, split)
    if unlabelled_ids is not None:
        return _unlabelled_split_data(voc_root, split, unlabelled_ids, skip_bad_images, workers)
    listed = read_split(voc_root, split).relative_paths
    voc_split = load_split_checked(voc_root, split, skip_bad_images, max(1, workers))
    kept = set(voc_split.relative_paths)
    return ScoringData(
        root=voc_root,
        files=tuple(voc_split.relative_paths),
        labels=voc_split.labels,
        dataset_name=voc_root.name,
        split=split,
        source="voc-split",
        skipped=[(rel, "missing or undecodable") for rel in listed if rel not in kept],
        difficult=difficult,
        _voc_split=voc_split,
    )


def _ids_of_unlabelled_split(voc_root: Path, split: str) -> list[str] | None:
    """The sorted image ids of `split` if none of its class files holds a label, else None
    (then `read_split` reads the labels, or says what is wrong with them)."""
    main = main_dir(voc_root)
    split_file = main / f"{split}.txt"
    if not split_file.is_file() or "/" in split or "\\" in split:
        return None
    for class_name in VOC_CLASSES:
        class_file = main / f"{class_name}_{split}.txt"
        if class_file.is_file() and any(
            len(line.split()) > 1 for line in class_file.read_text().splitlines()
        ):
            return None
    return sorted({line.strip() for line in split_file.read_text().splitlines() if line.strip()})


def _unlabelled_split_data(
    voc_root: Path, split: str, image_ids: list[str], skip_bad_images: bool, workers: int
) -> ScoringData:
    log.warning(
        "the %s split of %s has no labels (its class files hold none): scoring without labels",
        split,
        voc_root,
    )
    files = [image_relative_path(image_id) for image_id in image_ids]
    bad = find_bad_images(voc_root, files, max(1, workers))
    if bad and not skip_bad_images:
        shown = "; ".join(f"{rel}: {reason}" for rel, reason in bad[:5])
        raise ImageReadError(
            f"{len(bad)} image(s) of the {split} split under {voc_root} cannot be read: {shown}. "
            f"Restore them, or {SKIP_HINT}."
        )
    for relative, reason in bad:
        log.warning("skipped %s: %s", relative, reason)
    bad_names = {relative for relative, _ in bad}
    return ScoringData(
        root=voc_root,
        files=tuple(f for f in files if f not in bad_names),
        labels=None,
        dataset_name=voc_root.name,
        split=split,
        source="voc-split",
        skipped=list(bad),
    )


def image_folder_data(folder: Path, workers: int = 8) -> ScoringData:
    """Every readable JPEG/PNG under `folder`, sorted; the rest is listed and logged."""
    listing = list_image_folder(folder, max(1, workers))
    for relative, reason in listing.skipped:
        log.warning("skipped %s: %s", relative, reason)
    if listing.skipped:
        log.warning(
            "skipped %d file(s) of %s; scoring %d image(s)",
            len(listing.skipped),
            folder,
            len(listing.relative_paths),
        )
    return ScoringData(
        root=listing.root,
        files=listing.relative_paths,
        labels=None,
        dataset_name=listing.root.name,
        split="images",
        source="image-folder",
        skipped=list(listing.skipped),
    )


# -- the pass ------------------------------------------------------------------------------------
class _StackedHeadInputs(nn.Module):
    """Several models' head inputs side by side, so one decoded batch feeds them all."""

    def __init__(self, networks: list[MultiLabelClassifier]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(HeadInputs(network) for network in networks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(images) for part in self.parts], dim=1)


@dataclass
class ScoringResult:
    predictions: Predictions
    seconds: float
    images_per_second: float
    device: str
    engine: str


def _group_forward(
    members: list[SavedModel], engine: str, runtime: Runtime, cache_dir: Path | None
) -> ForwardEngine:
    """One engine for the head inputs of every member (one model: exactly the trainer's
    feature pass, so its export is shared and its numbers are the trainer's)."""
    if len(members) == 1:
        network = members[0].network
        return forward_engine(network, engine, runtime, cache_dir, members[0].image_size)
    stacked = _StackedHeadInputs([m.network for m in members]).eval()
    digest = hashlib.sha256("".join(head_input_digest(m.network) for m in members).encode())
    example = torch.randint(
        0,
        256,
        (2, 3, members[0].image_size, members[0].image_size),
        generator=torch.Generator().manual_seed(0),
    )
    return build_engine(
        stacked,
        engine,
        example=example.to(torch.uint8),
        cache_dir=cache_dir,
        key=digest.hexdigest(),
        device=runtime.device,
        channels_last=runtime.channels_last,
        amp_dtype=runtime.amp_dtype,
    )


def score(
    models: list[SavedModel],
    data: ScoringData,
    runtime: Runtime,
    *,
    batch_size: int = 64,
    workers: int = 0,
    rule: str = DEFAULT_AVERAGING_RULE,
    tta: str = TTA_AUTO,
    engine: str = "auto",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ScoringResult:
    """Sigmoid scores of every image of `data` under every model, combined with `rule`.

    The trainer's two steps: each model's head inputs of every view it was trained with
    (`training.features`, through an inference engine), then its head on them
    (`training.frozen.head_logits`). Models with the same views share one loader per view
    (each image decoded once for all of them). `tta` 'auto' uses the test-time augmentation
    the models were validated with.
    """
    tta = resolve_tta(models, tta)
    class_names = check_same_classes(models)
    if data.labels is not None and data.labels.shape[1] != len(class_names):
        raise ScoringError(
            f"The models predict {len(class_names)} classes but the data has labels for "
            f"{data.labels.shape[1]}."
        )
    started = time.perf_counter()
    sizes = data.sizes(workers) if any(v.kind != "crop" for m in models for v in m.views) else None
    per_model: dict[int, np.ndarray] = {}
    engines = []
    for views in dict.fromkeys(m.views for m in models):
        members = [i for i, m in enumerate(models) if m.views == views]
        forward = _group_forward([models[i] for i in members], engine, runtime, cache_dir)
        engines.append(forward.describe())
        per_view = []
        for view in views:
            view_sizes = sizes if sizes is not None else [(view.size, view.size)] * len(data.files)
            loader = view_loader(
                data.dataset(view, len(class_names)), view, view_sizes, batch_size, workers
            )
            per_view.append(
                extract_features(
                    forward,
                    loader,
                    len(data.files),
                    tta == "hflip",
                    progress,
                    f"scoring {view.name}",
                )
            )
        widths = [models[i].network.head_input_width for i in members]
        bounds = np.cumsum([0, *widths])
        for slot, model_index in enumerate(members):
            columns = slice(int(bounds[slot]), int(bounds[slot + 1]))
            features = FeatureSet.of_views(
                [(p[:, columns], None if f is None else f[:, columns]) for p, f in per_view]
            )
            logits = head_logits(models[model_index].network.head, features, tta, runtime.device)
            per_model[model_index] = scores_from_logits(logits.numpy())
    seconds = time.perf_counter() - started
    scores = combine_scores([per_model[i] for i in range(len(models))], rule)
    provenance = scoring_provenance(models, data, rule, runtime, tta, "; ".join(engines))
    predictions = Predictions(
        scores=scores,
        labels=data.labels,
        files=data.files,
        class_names=class_names,
        provenance=provenance,
    )
    rate = len(data.files) / max(seconds, 1e-9)
    return ScoringResult(predictions, seconds, rate, str(runtime.device), "; ".join(engines))


def resolve_tta(models: list[SavedModel], tta: str) -> str:
    """'auto': the test-time augmentation the models' own validation used (recorded in their
    provenance; older models: none). Models that disagree need an explicit --tta."""
    if tta != TTA_AUTO:
        return tta
    recorded = {provenance_value(m.provenance, "tta") for m in models}
    if len(recorded) > 1:
        raise ScoringError(
            f"The models were validated with different test-time augmentation "
            f"({', '.join(sorted(recorded))}): choose one with --tta."
        )
    return recorded.pop()


def scoring_provenance(
    models: list[SavedModel],
    data: ScoringData,
    rule: str,
    runtime: Runtime,
    tta: str,
    engine: str,
) -> dict[str, Any]:
    """Which models, which data, which averaging, TTA and when: enough to redo the file."""
    first = models[0].provenance

    def same_or_list(key: str) -> Any:
        values = [m.provenance.get(key) for m in models]
        return values[0] if len(models) == 1 else values

    archs = sorted({m.arch for m in models})
    provenance = {
        "arch": "+".join(archs),
        "weights": same_or_list("weights"),
        "epoch": same_or_list("epoch"),
        "val_map": first.get("val_map") if len(models) == 1 else None,
        "seed": same_or_list("seed"),
        "difficult": data.difficult if data.source == "voc-split" else first.get("difficult"),
        "model_variant": first.get("model_variant", "plain"),
        "image_size": same_or_list("image_size"),
        "models": [
            {
                "path": project_relative(m.path),
                "arch": m.arch,
                "epoch": m.provenance.get("epoch"),
                "val_map": m.provenance.get("val_map"),
                "image_size": m.image_size,
            }
            for m in models
        ],
        "ensemble_rule": rule if len(models) > 1 else None,
        "tta": tta,
        "source": data.source,
        "dataset": data.dataset_name,
        "split": data.split,
        "voc_root": project_relative(data.root),
        "images": len(data.files),
        "labelled": data.labels is not None,
        "skipped_count": len(data.skipped),
        "skipped": [{"file": f, "reason": r} for f, r in data.skipped],
        "run": project_relative(ensemble_home([m.path for m in models])),
        "scored_by": "python -m predictions",
        "device": str(runtime.device),
        "engine": engine,
        "view": same_or_list("view"),
        "whole_size": same_or_list("whole_size"),
        "spatial_max": same_or_list("spatial_max"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if len(models) == 1:  # what the report describes about the one model's training
        for key in ("train_images", "train_positives", "head"):
            if key in first:
                provenance[key] = first[key]
    return provenance

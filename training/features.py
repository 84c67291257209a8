"""Backbone features computed once per image (and its mirror image) and cached.

With the backbone frozen, every epoch would push the same images through the same network:
on a CPU that is nearly all of the time. Instead each image is passed through once in eval
mode (the evaluation resize and centre crop), and once mirrored, and the head's input (the
pooled features) is kept. The recipes that train on them are in `training/frozen.py`.

The cache (`<cache-dir>/features/`) is keyed like the image cache (dataset root, files,
their sizes and modification times) plus the image size and a digest of the backbone's
weights, so a changed image, size or network never reuses stale features.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.config import TrainConfig
from training.data import RowSubset, RunData, eval_view
from training.folds import Fold
from training.model import MultiLabelClassifier
from training.runtime import Runtime
from vocdata.atomic import atomic_write
from vocdata.cache import cache_key
from vocdata.paths import resolve_project_path
from vocdata.splits import VocSplit

log = logging.getLogger(__name__)

FEATURES_VERSION = 1


@dataclass
class FeatureSet:
    """Pooled backbone features of one split in split order: plain and mirrored views."""

    plain: torch.Tensor  # (N, F) float32
    flipped: torch.Tensor  # (N, F) float32

    def rows(self, rows: np.ndarray) -> FeatureSet:
        """The features of rows `rows` (a fold's share of its split), in that order."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return FeatureSet(self.plain[index], self.flipped[index])


def backbone_digest(model: MultiLabelClassifier) -> str:
    """sha256 of every backbone tensor except the head's: the features depend on these only."""
    digest = hashlib.sha256()
    head_prefix = f"{model.head_name}."
    for name, tensor in model.backbone.state_dict().items():
        if name.startswith(head_prefix):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_key(
    model: MultiLabelClassifier, voc_root: Path, relative_paths: list[str], image_size: int
) -> str:
    parts = (
        f"features-v{FEATURES_VERSION}|{image_size}|{backbone_digest(model)}|"
        f"{cache_key(voc_root, relative_paths, image_size)}"
    )
    return hashlib.sha256(parts.encode()).hexdigest()


@torch.inference_mode()
def extract_features(
    model: MultiLabelClassifier,
    dataset: Dataset,
    runtime: Runtime,
    batch_size: int,
    workers: int,
    progress: bool = True,
    description: str = "features",
) -> FeatureSet:
    """One eval-mode pass over `dataset` (in order), plain and mirrored: the head's inputs."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    plain, flipped = [], []
    for images, *_ in tqdm(loader, desc=description, leave=False, disable=not progress):
        images = runtime.images_to_device(images)
        with runtime.autocast():
            plain.append(model.forward_with_features(images)[1].float().cpu())
            mirrored = torch.flip(images, dims=(-1,))
            flipped.append(model.forward_with_features(mirrored)[1].float().cpu())
    return FeatureSet(torch.cat(plain), torch.cat(flipped))


def cached_features(
    model: MultiLabelClassifier,
    dataset: Dataset,
    split_name: str,
    voc_root: Path,
    relative_paths: list[str],
    image_size: int,
    cache_dir: Path | None,
    runtime: Runtime,
    batch_size: int,
    workers: int,
    progress: bool = True,
) -> FeatureSet:
    """The split's features from `cache_dir/features/` when the key matches, else computed
    (and stored, unless `cache_dir` is None)."""
    key = feature_key(model, voc_root, relative_paths, image_size)
    path = None
    if cache_dir is not None:
        folder = Path(cache_dir) / "features"
        path = folder / f"{split_name}-{image_size}px-{key[:16]}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                log.info("feature cache hit: %s", path.name)
                return FeatureSet(saved["plain"], saved["flipped"])
    log.info(
        "computing %s features of %d images once (plain and mirrored)",
        split_name,
        len(relative_paths),
    )
    features = extract_features(
        model, dataset, runtime, batch_size, workers, progress, f"{split_name} features"
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{split_name}-{image_size}px-*.pt"):
            stale.unlink(missing_ok=True)
        with atomic_write(path) as tmp:
            torch.save({"key": key, "plain": features.plain, "flipped": features.flipped}, tmp)
    return features


def split_features(
    model: MultiLabelClassifier,
    dataset: Dataset,
    split: VocSplit,
    voc_root: Path,
    config: TrainConfig,
    runtime: Runtime,
) -> FeatureSet:
    """The features of every image of `split` (in split order), `dataset` being the split
    with the evaluation transform: from the feature cache, or computed once and cached."""
    cache_dir = resolve_project_path(config.cache_dir) if config.cache_dir else None
    return cached_features(
        model,
        dataset,
        split.name,
        voc_root,
        split.relative_paths,
        config.image_size,
        cache_dir,
        runtime,
        2 * config.batch_size,
        config.workers,
        progress=config.progress,
    )


def load_features(
    model: MultiLabelClassifier,
    data: RunData,
    config: TrainConfig,
    runtime: Runtime,
    fold: Fold | None = None,
) -> dict[str, FeatureSet]:
    """The features of what the run trains on ("train") and chooses its epoch on ("val").
    A fold run's two parts are rows of the train split, whose features are computed (or
    read from the cache) once for the whole split and shared by every fold."""
    train_set = data.train_loader.dataset
    whole_train = train_set.dataset if isinstance(train_set, RowSubset) else train_set
    full_train_split = whole_train.split
    train = split_features(
        model,
        eval_view(whole_train, data.voc_root, config.difficult, config.image_size),
        full_train_split,
        data.voc_root,
        config,
        runtime,
    )
    if fold is not None:
        return {"train": train.rows(fold.train_rows), "val": train.rows(fold.held_out_rows)}
    val_set = eval_view(data.val_loader.dataset, data.voc_root, config.difficult, config.image_size)
    return {
        "train": train,
        "val": split_features(model, val_set, data.val_split, data.voc_root, config, runtime),
    }

"""Training only the head, on backbone features computed once per image and cached.

With the backbone frozen, every epoch would push the same images through the same network:
on a CPU that is nearly all of the time. Instead each image is passed through once in eval
mode (the evaluation resize and centre crop), and once mirrored, and the head's input (the
pooled features) is kept. Horizontal flip is then the only augmentation: each epoch picks,
per image, the plain or the mirrored features. A whole training costs about one pass over
the images; validation reads the cached features of the val split the same way (with
`--tta hflip`: the mean of both views' logits, as `training.loop.predict` computes).

The cache (`<cache-dir>/features/`) is keyed like the image cache (dataset root, files,
their sizes and modification times) plus the image size and a digest of the backbone's
weights, so a changed image, size or network never reuses stale features.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.loop import Runtime
from training.loss import masked_bce_with_logits
from training.model import MultiLabelClassifier
from vocdata.atomic import atomic_write
from vocdata.cache import cache_key

log = logging.getLogger(__name__)

FEATURES_VERSION = 1


@dataclass
class FeatureSet:
    """Pooled backbone features of one split in split order: plain and mirrored views."""

    plain: torch.Tensor  # (N, F) float32
    flipped: torch.Tensor  # (N, F) float32


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


def train_head_epoch(
    head: nn.Module,
    features: FeatureSet,
    targets: torch.Tensor,
    mask: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, int]:
    """One pass over the cached features in a seeded order, each image plain or mirrored
    at random; the last incomplete batch is dropped, like the image loader, so the schedule
    (stepped per batch) is the same. Returns (sum of batch-mean losses x batch size, images)."""
    head.train()
    n = len(targets)
    order = torch.randperm(n, generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5
    loss_sum, seen = 0.0, 0
    for start in range(0, n - batch_size + 1, batch_size):
        rows = order[start : start + batch_size]
        batch = torch.where(mirror[rows, None], features.flipped[rows], features.plain[rows])
        logits = head(batch.to(device))
        loss = masked_bce_with_logits(logits, targets[rows].to(device), mask[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(rows)
        seen += len(rows)
    return loss_sum, seen


@torch.inference_mode()
def head_logits(
    head: nn.Module, features: FeatureSet, tta: str, device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """(N, C) float32 logits of the head on cached features; `hflip` averages both views."""
    head.eval()
    out = []
    for start in range(0, len(features.plain), batch_size):
        plain = head(features.plain[start : start + batch_size].to(device)).float()
        if tta == "hflip":
            mirrored = head(features.flipped[start : start + batch_size].to(device)).float()
            plain = 0.5 * (plain + mirrored)
        out.append(plain.cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)

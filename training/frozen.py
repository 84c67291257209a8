"""The recipes that train only the head, on cached backbone features (`training/features.py`).

- `--freeze-backbone` (the default recipe): every epoch trains the head on the cached
  features; horizontal flip is the only augmentation (each image's plain or mirrored features,
  drawn per epoch); validation reads the val split's cached features (with `--tta hflip`: the
  mean of both views' logits, as `training.loop.predict` computes it on images).
- `--lp-ft`, first stage: the linear probe, the same head epochs, before the whole network is
  fine-tuned from there (`Trainer` does the second stage).

A whole training costs about one pass over the images.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from training.config import TrainConfig
from training.features import FeatureSet
from training.loss import masked_bce_terms, masked_bce_with_logits
from training.model import MultiLabelClassifier
from training.optim import build_optimizer, build_scheduler
from training.seed import derive_seed
from vocdata.splits import VocSplit

log = logging.getLogger("training")

LP_SEED_OFFSET = 1_000_000  # the linear probe's epochs draw seeds apart from training's


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
    """One pass over the cached features in a seeded order, each image plain or mirrored at
    random (and, with several views, in one of them at random); the last incomplete batch is
    dropped, like the image loader, so the schedule (stepped per batch) is the same. Returns
    (sum of batch-mean losses x batch size, images)."""
    head.train()
    n = len(targets)
    order = torch.randperm(n, generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5
    if features.num_views > 1:
        view = torch.randint(features.num_views, (n,), generator=generator)
    else:
        view = torch.zeros(n, dtype=torch.int64)
    loss_sum, seen = 0.0, 0
    for start in range(0, n - batch_size + 1, batch_size):
        rows = order[start : start + batch_size]
        plain, flipped = features.plain[view[rows], rows], features.flipped[view[rows], rows]
        batch = torch.where(mirror[rows, None], flipped, plain)
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
    """(N, C) float32 logits of the head on cached features: the mean over the views of each
    view's logits, which with `hflip` are the mean of the image's and its mirror's."""
    head.eval()
    out = []
    for start in range(0, len(features), batch_size):
        chunk = slice(start, start + batch_size)
        per_view = []
        for view in range(features.num_views):
            logits = head(features.plain[view, chunk].to(device)).float()
            if tta == "hflip":
                mirrored = head(features.flipped[view, chunk].to(device)).float()
                logits = 0.5 * (logits + mirrored)
            per_view.append(logits)
        logits = per_view[0] if len(per_view) == 1 else torch.stack(per_view).mean(dim=0)
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def head_epoch(
    head: nn.Module,
    features: FeatureSet,
    split: VocSplit,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch_seed: int,
    device: torch.device,
) -> tuple[float, int]:
    """`train_head_epoch` on `split`'s targets, in the order drawn from (seed, epoch)."""
    targets, mask = split.targets_and_mask(config.difficult)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, epoch_seed))
    return train_head_epoch(
        head,
        features,
        torch.from_numpy(targets),
        torch.from_numpy(mask),
        optimizer,
        scheduler,
        config.batch_size,
        generator,
        device,
    )


def validate_on_features(
    head: nn.Module, features: FeatureSet, split: VocSplit, config: TrainConfig, device
) -> tuple[np.ndarray, float]:
    """(logits, mean masked BCE) of `split` from its cached features: what validating the
    whole network on its images gives, without the backbone pass."""
    logits = head_logits(head, features, config.tta, device)
    targets, mask = split.targets_and_mask(config.difficult)
    loss = masked_bce_terms(logits, torch.from_numpy(targets), torch.from_numpy(mask))
    return logits.numpy(), float(loss.sum()) / max(float(mask.sum()), 1.0)


def linear_probe(
    model: MultiLabelClassifier,
    features: FeatureSet,
    split: VocSplit,
    config: TrainConfig,
    steps_per_epoch: int,
    device: torch.device,
) -> None:
    """LP-FT's first stage: the head alone on frozen features, `--epochs` passes with the
    head's recipe, before the whole network is fine-tuned from there."""
    backbone = list(model.backbone_parameters())
    for param in backbone:
        param.requires_grad_(False)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    for epoch in range(1, config.epochs + 1):
        loss_sum, seen = head_epoch(
            model.head,
            features,
            split,
            config,
            optimizer,
            scheduler,
            LP_SEED_OFFSET + epoch,
            device,
        )
    for param in backbone:
        param.requires_grad_(True)
    if config.epochs:
        log.info(
            "linear probe: %d passes on frozen features, train loss %.4f",
            config.epochs,
            loss_sum / max(seen, 1),
        )

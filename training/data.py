"""Datasets, samplers and loaders for a training run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from training.config import TrainConfig
from training.distributed import DistContext
from training.sampling import EpochSampler
from training.seed import seed_worker
from vocdata.dataset import VocClassification, load_split_checked
from vocdata.errors import VocDataError
from vocdata.splits import VocSplit
from vocdata.transforms import eval_transform, train_transform


@dataclass
class RunData:
    voc_root: Path
    train_split: VocSplit
    val_split: VocSplit
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: EpochSampler


def _loader(
    dataset, sampler, config: TrainConfig, batch_size: int, pin_memory: bool, drop_last: bool
) -> DataLoader:
    workers = config.workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(config.seed),
    )


def build_run_data(
    config: TrainConfig, voc_root: Path, context: DistContext, pin_memory: bool
) -> RunData:
    """Check both splits, then build the loaders: shuffled with per-sample seeds for training,
    in split order for validation (never shuffled)."""
    workers = max(1, config.workers)
    train_split = load_split_checked(voc_root, "train", config.skip_bad_images, workers)
    val_split = load_split_checked(voc_root, "val", config.skip_bad_images, workers)
    if len(train_split) < config.batch_size * context.world_size:
        raise VocDataError(
            f"The train split has {len(train_split)} images, fewer than one batch of "
            f"{config.batch_size} x {context.world_size} process(es): lower --batch-size."
        )
    train_set = VocClassification(
        voc_root, train_split, config.difficult, train_transform(config.image_size)
    )
    val_set = VocClassification(
        voc_root, val_split, config.difficult, eval_transform(config.image_size)
    )
    train_sampler = EpochSampler(
        len(train_set),
        config.seed,
        shuffle=True,
        with_seeds=True,
        rank=context.rank,
        world_size=context.world_size,
    )
    val_sampler = EpochSampler(
        len(val_set),
        config.seed,
        shuffle=False,
        with_seeds=False,
        rank=context.rank,
        world_size=context.world_size,
    )
    return RunData(
        voc_root=voc_root,
        train_split=train_split,
        val_split=val_split,
        train_loader=_loader(
            train_set, train_sampler, config, config.batch_size, pin_memory, drop_last=True
        ),
        val_loader=_loader(
            val_set, val_sampler, config, 2 * config.batch_size, pin_memory, drop_last=False
        ),
        train_sampler=train_sampler,
    )

"""Datasets, samplers and loaders for a training run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from training.config import TrainConfig
from training.distributed import DistContext, barrier
from training.sampling import EpochSampler
from training.seed import seed_worker
from vocdata.cache import ImageCache, open_or_build_cache
from vocdata.dataset import VocClassification, load_split_checked
from vocdata.errors import VocDataError
from vocdata.files import resolve_project_path
from vocdata.splits import VocSplit, check_disjoint, main_dir
from vocdata.transforms import eval_resize_size, eval_transform, train_transform


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


def _split_cache(
    config: TrainConfig, voc_root: Path, split: VocSplit, context: DistContext
) -> ImageCache:
    """Rank 0 builds (or finds) the cache; the other processes open it once it is complete."""
    arguments = (
        resolve_project_path(config.cache_dir),
        split.name,
        voc_root,
        split.relative_paths,
        eval_resize_size(config.image_size),
        max(1, config.workers),
    )
    if context.is_main:
        cache = open_or_build_cache(*arguments, progress=config.progress)
    barrier(context)
    if not context.is_main:
        cache = open_or_build_cache(*arguments, progress=False)
    return cache


def build_run_data(
    config: TrainConfig, voc_root: Path, context: DistContext, pin_memory: bool
) -> RunData:
    """Check both splits, then build the loaders: shuffled with per-sample seeds for training,
    in split order for validation (never shuffled)."""
    workers = max(1, config.workers)
    train_split = load_split_checked(voc_root, "train", config.skip_bad_images, workers)
    val_split = load_split_checked(voc_root, "val", config.skip_bad_images, workers)
    check_disjoint(train_split, val_split, main_dir(voc_root))
    if len(train_split) < config.batch_size * context.world_size:
        raise VocDataError(
            f"The train split has {len(train_split)} images, fewer than one batch of "
            f"{config.batch_size} x {context.world_size} process(es): lower --batch-size."
        )
    train_cache = val_cache = None
    if config.cache_dir:
        train_cache = _split_cache(config, voc_root, train_split, context)
        val_cache = _split_cache(config, voc_root, val_split, context)
    train_set = VocClassification(
        voc_root, train_split, config.difficult, train_transform(config.image_size), train_cache
    )
    val_set = VocClassification(
        voc_root, val_split, config.difficult, eval_transform(config.image_size), val_cache
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

"""Datasets, samplers and loaders for a training run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from predictions.runs import LAST_CHECKPOINT_FILENAME
from training.config import TrainConfig
from training.distributed import DistContext, barrier
from training.folds import Fold
from training.labelfixes import LabelFixes, fixes_for_run
from training.sampling import EpochSampler
from training.seed import seed_worker
from vocdata.cache import ImageCache, open_or_build_cache
from vocdata.dataset import SampleKey, VocClassification, load_split_checked
from vocdata.errors import VocDataError
from vocdata.paths import resolve_project_path
from vocdata.splits import VocSplit, check_disjoint, main_dir
from vocdata.transforms import eval_resize_size, eval_transform, train_transform
from vocdata.views import parse_views


@dataclass
class RunData:
    """`val_*` is what the epoch is chosen on: the val split, or in a fold run the fold's
    held-out part of train. `test_*` (fold runs only) is the val split, scored once at the end
    and never used for a choice."""

    voc_root: Path
    train_split: VocSplit
    val_split: VocSplit
    train_loader: DataLoader
    val_loader: DataLoader
    train_sampler: EpochSampler
    test_split: VocSplit | None = None
    test_loader: DataLoader | None = None
    label_fixes: LabelFixes | None = None  # applied to the train split (training/labelfixes.py)


class RowSubset(Dataset):
    """Rows `rows` of a `VocClassification`, renumbered 0..n-1 (also the index each sample
    reports), so samplers and prediction gathering work on the subset as on a whole split."""

    def __init__(self, dataset: VocClassification, rows: np.ndarray) -> None:
        self.dataset = dataset
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: SampleKey):
        position, seed = key if isinstance(key, tuple) else (key, None)
        row = int(self.rows[position])
        pixels, target, mask, _ = self.dataset[row if seed is None else (row, seed)]
        return pixels, target, mask, position


def split_rows(split: VocSplit, rows: np.ndarray) -> VocSplit:
    """The images of `split` at `rows` (a fold's share), in the split's order."""
    keep = np.zeros(len(split), dtype=bool)
    keep[rows] = True
    return split.subset(keep)


def seeded_loader_options(workers: int, seed: int, pin_memory: bool) -> dict:
    """The DataLoader options every loader of this project uses (besides batching): persistent
    workers with a deep prefetch queue, seeded workers and generator, pinned memory on CUDA."""
    return {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "persistent_workers": workers > 0,
        "prefetch_factor": 4 if workers > 0 else None,
        "worker_init_fn": seed_worker,
        "generator": torch.Generator().manual_seed(seed),
    }


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    pin_memory: bool,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """The one way this project builds a batching DataLoader (`seeded_loader_options`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        **seeded_loader_options(workers, seed, pin_memory),
    )


def eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    pin_memory: bool,
    context: DistContext | None = None,
) -> DataLoader:
    """Rows in dataset order (never shuffled), each process its share: the loader of every
    split that is only scored (validation, a fold's held-out part, `python -m predictions`)."""
    context = context or DistContext()
    sampler = EpochSampler(
        len(dataset),
        seed,
        shuffle=False,
        with_seeds=False,
        rank=context.rank,
        world_size=context.world_size,
    )
    return make_loader(
        dataset,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        pin_memory=pin_memory,
        sampler=sampler,
    )


def eval_view(dataset: Dataset, voc_root: Path, difficult: str, image_size: int) -> Dataset:
    """The same rows as a training loader's `dataset`, with the evaluation transform (no
    augmentation): what frozen features are computed from. A fold run's rows are a subset of
    the train split, read through the whole split's image cache."""
    base = dataset.dataset if isinstance(dataset, RowSubset) else dataset
    view = VocClassification(
        voc_root, base.split, difficult, eval_transform(image_size), base.image_cache
    )
    return RowSubset(view, dataset.rows) if isinstance(dataset, RowSubset) else view


def _split_cache(
    config: TrainConfig, voc_root: Path, split: VocSplit, context: DistContext
) -> ImageCache:
    """Rank 0 builds (or finds) the cache; the other processes open it once it is complete."""
    if context.is_main:
        cache = split_image_cache(config, voc_root, split)
    barrier(context)
    if not context.is_main:
        cache = split_image_cache(config, voc_root, split, progress=False)
    return cache


def reads_image_cache(config: TrainConfig) -> bool:
    """Whether anything of this run reads the image cache (the crop view's resized pixels):
    fine-tuning's loaders, or a frozen recipe's crop view. A frozen whole-view run computes its
    features from the images themselves, so building the cache would be wasted time and disk."""
    views = parse_views(config.view, config.image_size, config.whole_size)
    return not config.freeze_backbone or config.lp_ft or any(v.kind == "crop" for v in views)


def split_image_cache(
    config: TrainConfig, voc_root: Path, split: VocSplit, *, progress: bool | None = None
) -> ImageCache:
    """The decoded images of `split` under --cache-dir at the evaluation resize, built (with
    a progress bar as --progress says) or found and verified."""
    return open_or_build_cache(
        resolve_project_path(config.cache_dir),
        split.name,
        voc_root,
        split.relative_paths,
        eval_resize_size(config.image_size),
        max(1, config.workers),
        progress=config.progress if progress is None else progress,
    )


def run_label_fixes(
    config: TrainConfig, train: VocSplit, val: VocSplit, fold: Fold | None = None
) -> LabelFixes | None:
    """The label fixes of this run's train split. A fold model reads the copy its k-fold run
    keeps (written before any fold trains); a resumed single run its own copy; a new run the
    --label-fixes file, checked before anything is created."""
    run_dir, started = None, False
    if fold is not None:
        run_dir, started = fold.run_dir.parent.parent, True
    elif config.resume:
        run_dir = resolve_project_path(config.resume)
        started = (run_dir / LAST_CHECKPOINT_FILENAME).is_file()
    return fixes_for_run(
        config.label_fixes, config.label_fix_mode, train, val.image_ids, run_dir, started
    )


def build_run_data(
    config: TrainConfig,
    voc_root: Path,
    context: DistContext,
    pin_memory: bool,
    fold: Fold | None = None,
) -> RunData:
    """Check both splits, then build the loaders: shuffled with per-sample seeds for training,
    in split order for validation (never shuffled). With a `fold`, training uses its training
    rows of the train split and validation its held-out rows; the val split becomes `test_*`."""
    workers = max(1, config.workers)
    full_train = load_split_checked(voc_root, "train", config.skip_bad_images, workers)
    val_split = load_split_checked(voc_root, "val", config.skip_bad_images, workers)
    check_disjoint(full_train, val_split, main_dir(voc_root))
    label_fixes = run_label_fixes(config, full_train, val_split, fold)
    if label_fixes is not None:  # before a fold's rows are taken: a fold keeps its fixes
        full_train = label_fixes.apply(full_train)
    train_split = full_train
    if fold is not None:
        train_split = split_rows(full_train, fold.train_rows)
    if len(train_split) < config.batch_size * context.world_size:
        raise VocDataError(
            f"The train split has {len(train_split)} images, fewer than one batch of "
            f"{config.batch_size} x {context.world_size} process(es): lower --batch-size."
        )
    train_cache = val_cache = None
    if config.cache_dir and reads_image_cache(config):
        train_cache = _split_cache(config, voc_root, full_train, context)
        val_cache = _split_cache(config, voc_root, val_split, context)
    train_set = VocClassification(
        voc_root, full_train, config.difficult, train_transform(config.image_size), train_cache
    )
    val_set = VocClassification(
        voc_root, val_split, config.difficult, eval_transform(config.image_size), val_cache
    )
    test_split = test_set = None
    if fold is not None:
        test_split, test_set = val_split, val_set
        val_split = split_rows(full_train, fold.held_out_rows)
        val_set = RowSubset(
            VocClassification(
                voc_root,
                full_train,
                config.difficult,
                eval_transform(config.image_size),
                train_cache,
            ),
            fold.held_out_rows,
        )
        train_set = RowSubset(train_set, fold.train_rows)
    train_sampler = EpochSampler(
        len(train_set),
        config.seed,
        shuffle=True,
        with_seeds=True,
        rank=context.rank,
        world_size=context.world_size,
    )

    def scored(dataset: Dataset) -> DataLoader:  # twice the batch: no gradients are kept
        return eval_loader(
            dataset,
            batch_size=2 * config.batch_size,
            workers=config.workers,
            seed=config.seed,
            pin_memory=pin_memory,
            context=context,
        )

    return RunData(
        voc_root=voc_root,
        train_split=train_split,
        val_split=val_split,
        train_loader=make_loader(
            train_set,
            batch_size=config.batch_size,
            workers=config.workers,
            seed=config.seed,
            pin_memory=pin_memory,
            sampler=train_sampler,
            drop_last=True,
        ),
        val_loader=scored(val_set),
        train_sampler=train_sampler,
        test_split=test_split,
        test_loader=None if test_set is None else scored(test_set),
        label_fixes=label_fixes,
    )

"""The K-fold CV estimate of a frozen-backbone recipe, computed on cached features in seconds.

`main_train.py --folds K` with a frozen backbone trains K fold models, each on its share of the
train split's cached features, choosing its epoch on its held-out fold; the CV estimate is the
mean of the folds' best held-out mAPs. This module computes the same number without run
folders, models on disk or the val split: the features of the whole train split are read (or
computed) once by `prepare`, then `cross_validate` trains each fold's head exactly as the
trainer does (the same folds from `--seed`, the same starting head, the same optimizer,
schedule, epoch seeds, `head_epoch` and `validate_on_features`), so on the same machine it
returns the very numbers `crossval.json` reports (tests/test_sweep.py checks it). It also
returns each fold model's held-out mAP at its last epoch, the sweep's objective: the final
model, trained on all of train, has nothing held out to choose an epoch on.

Only the train split is read: the val split's labels are never opened here.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluation.metrics import split_average_precision
from predictions import scores_from_logits
from training.config import TrainConfig
from training.crossval import cv_estimate, draw_folds
from training.data import reads_image_cache, split_image_cache, split_rows
from training.distributed import DistContext
from training.features import FeaturePass, FeatureSet, image_source
from training.folds import Fold, FoldsError, make_folds
from training.frozen import head_epoch, validate_on_features
from training.heads import PriorHead
from training.labelfixes import fixes_for_run, labels_for_ap
from training.model import MultiLabelClassifier
from training.optim import build_optimizer, build_scheduler
from training.records import finite_or_none
from training.runtime import Runtime, configure_determinism
from training.seed import derive_seed, seed_everything
from training.trainer import build_model, runtime_for
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import load_split_checked
from vocdata.download import ensure_voc_root
from vocdata.splits import VocSplit, read_split, resolve_voc_root

# What a trial may change. Everything else (network, image size, difficult mode, batch size,
# seed, folds) fixes the features or the folds, which are computed once for every trial.
TRIAL_OPTIONS = (
    "lr_head",
    "lr_backbone",
    "weight_decay",
    "epochs",
    "warmup_epochs",
    "residual_shrink",
    "tta",
    "optimizer",
)


@dataclass
class TrainFeatures:
    """What every trial shares: the train split, its cached features, its folds, and the
    model (frozen backbone) whose head each fold starts again from `initial_head`."""

    config: TrainConfig  # the options the features and folds were made with
    split: VocSplit
    features: FeatureSet
    folds: list[Fold]
    model: MultiLabelClassifier
    initial_head: dict[str, torch.Tensor]
    head_kind: str
    runtime: Runtime
    seconds: float  # the feature pass (or the cache read)


@dataclass(frozen=True)
class CVResult:
    """The CV estimates of one configuration: each fold model at the epoch it chose on its own
    held-out fold (`fold_heldout_map`, `cv_map_mean`: what `crossval.json` states), and each
    at its last epoch (`fold_last_map`, `last_mean`: what a model trained on all of train,
    which has no held-out part to choose an epoch on, is estimated to score)."""

    fold_heldout_map: list[float]
    fold_epochs: list[int | None]
    cv_map_mean: float | None
    cv_map_std: float | None
    seconds: float
    fold_last_map: list[float | None]

    @property
    def last_mean(self) -> float | None:
        if any(value is None for value in self.fold_last_map):
            return None  # a fold without a defined mAP: no estimate (as --folds refuses it)
        return finite_or_none(cv_estimate(self.fold_last_map)[0])

    @property
    def last_std(self) -> float | None:
        return finite_or_none(cv_estimate(self.fold_last_map)[1])


def prepare(config: TrainConfig, folds: int) -> TrainFeatures:
    """Read the train split, draw its `folds` folds from `config.seed` (as `--folds` does) and
    get its frozen features (from `--cache-dir` when cached). Nothing of the val split."""
    started = time.perf_counter()
    runtime = runtime_for(config, DistContext())
    configure_determinism(runtime, config.cudnn_benchmark, config.deterministic)
    seed_everything(derive_seed(config.seed, 0))  # as the trainer's rank 0: same starting head
    voc_root = resolve_voc_root(config.voc_root)
    ensure_voc_root(voc_root, download=config.download)
    split = load_split_checked(voc_root, "train", config.skip_bad_images, max(1, config.workers))
    val_ids = read_split(voc_root, "val").image_ids  # names only: a fix of one is refused
    fixes = fixes_for_run(config.label_fixes, config.label_fix_mode, split, val_ids)
    if fixes is not None:  # as --folds does: the folds are drawn on the fixed labels
        split = fixes.apply(split)
    assignment = draw_folds(split, config, folds)  # as --folds draws and checks them
    model, head_kind = build_model(config)
    model.to(runtime.device, memory_format=runtime.memory_format)
    for param in model.backbone_parameters():
        param.requires_grad_(False)
    initial_head = copy.deepcopy(model.head.state_dict())
    image_cache = None
    if config.cache_dir and reads_image_cache(config):
        image_cache = split_image_cache(config, voc_root, split)
    source = image_source(voc_root, split, config, image_cache)
    features = FeaturePass.of(model, config, runtime).features(source, config)
    return TrainFeatures(
        config=config,
        split=split,
        features=features,
        folds=make_folds(assignment, Path(".")),  # the folders are not used: nothing is saved
        model=model,
        initial_head=initial_head,
        head_kind=head_kind,
        runtime=runtime,
        seconds=time.perf_counter() - started,
    )


def _fold_best(
    shared: TrainFeatures, config: TrainConfig, fold: Fold
) -> tuple[float, int | None, float | None]:
    """One fold model, as `Trainer(fold=...)` trains it with a frozen backbone: its best
    held-out mAP (-inf if no epoch had one), that epoch, and its held-out mAP at the last
    epoch."""
    model, device = shared.model, shared.runtime.device
    model.head.load_state_dict(shared.initial_head)
    train_split = split_rows(shared.split, fold.train_rows)
    held_out = split_rows(shared.split, fold.held_out_rows)
    if isinstance(model.head, PriorHead):
        model.head.set_train_positives(
            (train_split.labels == 1).sum(0), shrink=config.residual_shrink
        )
    optimizer = build_optimizer(model, config)
    steps_per_epoch = len(train_split) // config.batch_size  # the loader drops the last batch
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    train_features = shared.features.rows(fold.train_rows)
    held_out_features = shared.features.rows(fold.held_out_rows)
    best_map, best_epoch = -math.inf, None
    epochs = range(1, config.epochs + 1) if config.epochs else range(0, 1)
    for epoch in epochs:
        torch.manual_seed(derive_seed(config.seed, epoch, 0))
        if epoch:
            head_epoch(
                model.head,
                train_features,
                train_split,
                config,
                optimizer,
                scheduler,
                epoch,
                device,
            )
        logits, _ = validate_on_features(model.head, held_out_features, held_out, config, device)
        labels, mode = labels_for_ap(held_out, config.difficult)
        value = split_average_precision(
            scores_from_logits(logits), labels, VOC_CLASSES, mode
        ).mean.value
        value = finite_or_none(value)
        if value is not None and value > best_map:
            best_map, best_epoch = value, epoch
    return best_map, best_epoch, value


def cross_validate(shared: TrainFeatures, config: TrainConfig) -> CVResult:
    """The CV estimate of `config` on `shared`'s folds. `config` may differ from the one the
    features were made with only in TRIAL_OPTIONS."""
    changed = [
        name
        for name in (
            *("arch", "weights", "head", "image_size", "difficult", "seed", "batch_size"),
            *("view", "whole_size", "spatial_max", "label_fixes", "label_fix_mode"),
        )
        if getattr(config, name) != getattr(shared.config, name)
    ]
    if changed:
        raise ValueError(f"{changed} differ from the options the features were made with")
    started = time.perf_counter()
    maps, epochs, last = [], [], []
    for fold in shared.folds:
        best_map, best_epoch, last_map = _fold_best(shared, config, fold)
        last.append(last_map)
        if not math.isfinite(best_map):  # where `--folds` stops too
            raise FoldsError(
                f"fold {fold.number} had no epoch with a defined held-out mAP (no positive in "
                f"its held-out images): use fewer folds"
            )
        maps.append(best_map)
        epochs.append(best_epoch)
    mean, std = cv_estimate(maps)
    return CVResult(
        fold_heldout_map=maps,
        fold_epochs=epochs,
        cv_map_mean=finite_or_none(mean),
        cv_map_std=finite_or_none(std),
        seconds=time.perf_counter() - started,
        fold_last_map=last,
    )

"""One model's training, read top to bottom: build the parts, then per epoch train, validate,
record, keep the best model and write a resumable checkpoint.

Per epoch: train (on images, or on cached features with a frozen backbone), predict the
validation split in its fixed order, compute per-class AP and mAP, append to the history,
keep the model and predictions of the best mAP so far, and write a checkpoint. Every file is
written atomically, so stopping at any moment (Ctrl-C, a crash, a time limit) loses at most
the epoch in progress. With a `Fold` (training/crossval.py), the same loop trains on the
fold's share of the train split and chooses the epoch on its held-out rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from evaluation.metrics import SplitAP, split_average_precision
from predictions import (
    PREDICTIONS_FILENAME,
    Predictions,
    save_predictions,
    scores_from_logits,
    write_latest_pointer,
)
from predictions.format import file_size_bound
from predictions.runs import (
    BEST_MODEL_FILENAME,
    HELD_OUT_PREDICTIONS_FILENAME,
    LAST_CHECKPOINT_FILENAME,
    LATEST_POINTER,
)
from training.backbones import check_pretrained_weights
from training.checkpoint import (
    ModelHook,
    TrainState,
    load_training_state,
    load_trusted,
    save_best_model,
    save_training_state,
)
from training.config import TrainConfig
from training.data import RunData, build_run_data
from training.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    gather_rows,
    init_distributed,
    shutdown_distributed,
    sum_across,
)
from training.features import FeaturePass, FeatureSet, image_source, load_features
from training.folds import Fold
from training.frozen import head_epoch, head_logits, linear_probe, validate_on_features
from training.heads import PriorHead, describe_head, resolve_head
from training.hparams import model_hparams
from training.labelfixes import labels_for_ap, write_run_copy
from training.loop import predict, train_one_epoch
from training.model import MultiLabelClassifier, build_classifier
from training.optim import build_optimizer, build_scheduler
from training.records import EpochTiming, epoch_record, model_provenance, resolved_whole_size
from training.runfolder import (
    EarlyLog,
    EpochLog,
    RunFolderError,
    RunLock,
    RunWriteError,
    TrainingInterrupted,
    attach_log_file,
    check_resumable,
    create_run_dir,
    detach_log_file,
    write_config,
    write_history,
    write_run_provenance,
    writing,
)
from training.runtime import Runtime, configure_determinism, pick_runtime
from training.seed import derive_seed, seed_everything
from training.selection import check_val_split
from vocdata.atomic import remove_abandoned
from vocdata.classes import VOC_CLASSES
from vocdata.download import ensure_voc_root
from vocdata.paths import display_path, project_relative, resolve_project_path
from vocdata.splits import VocSplit, resolve_voc_root

log = logging.getLogger("training")


@dataclass
class TrainingParts:
    """What one training process trains with; built by `build_training_parts` for the trainer
    and for `python -m training.bench` alike, so the benchmark measures what training runs."""

    data: RunData
    model: MultiLabelClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    head_kind: str  # what --head resolved to ('auto' -> prior or random)


def runtime_for(config: TrainConfig, context: DistContext) -> Runtime:
    """The runtime `config` asks for, on this process's GPU under torchrun."""
    local_rank = context.local_rank if context.enabled else None
    return pick_runtime(config.device, config.amp, config.channels_last, local_rank)


def build_training_parts(
    config: TrainConfig,
    runtime: Runtime,
    context: DistContext,
    voc_root: Path,
    model_hook: ModelHook | None = None,
    fold: Fold | None = None,
) -> TrainingParts:
    """Loaders, model (on the device, in its memory layout), optimizer, scheduler, scaler.

    With `fold`, training uses that fold's share of the train split and selection its held-out
    part (the val split is then only scored, never used for a choice).
    """
    data = build_run_data(
        config, voc_root, context, pin_memory=runtime.device.type == "cuda", fold=fold
    )
    model, head_kind = build_model(config)
    if model_hook is not None:
        model = model_hook(model)
    model.to(runtime.device, memory_format=runtime.memory_format)
    if isinstance(model.head, PriorHead) and not restores_checkpoint(config):  # else restored
        model.head.set_train_positives(
            (data.train_split.labels == 1).sum(0), shrink=config.residual_shrink
        )
    if config.freeze_backbone:  # before the optimizer, which takes trainable tensors only
        for param in model.backbone_parameters():
            param.requires_grad_(False)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(data.train_loader))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    return TrainingParts(data, model, optimizer, scheduler, scaler, head_kind)


def build_model(config: TrainConfig) -> tuple[MultiLabelClassifier, str]:
    """The run's classifier (on the CPU, weights as --weights says) and what --head resolved
    to ('auto' -> prior or random); the trainer and the feature-level CV build it alike."""
    head_kind = resolve_head(config.head, config.weights)
    model = build_classifier(
        config.arch,
        len(VOC_CLASSES),
        config.weights,
        head=head_kind,
        spatial_max=config.spatial_max,
    )
    return model, head_kind


def restores_checkpoint(config: TrainConfig) -> bool:
    """Whether this run continues from a checkpoint. A run resumed before its first
    checkpoint restarts in place and must set itself up exactly as it first did."""
    return (
        bool(config.resume)
        and (resolve_project_path(config.resume) / LAST_CHECKPOINT_FILENAME).is_file()
    )


def warn_undefined_classes(split: VocSplit, difficult: str, scored_on: str) -> None:
    """Said once at the start: classes without a positive have no AP, every epoch."""
    targets, mask = split.targets_and_mask(difficult)
    empty = [name for c, name in enumerate(VOC_CLASSES) if not (targets[:, c] * mask[:, c]).any()]
    if empty:
        log.warning(
            "no positive %s image for %s: AP undefined there, mAP covers the other %d classes",
            scored_on,
            ", ".join(empty),
            len(VOC_CLASSES) - len(empty),
        )


class Trainer:
    """One model's training: `Trainer(config)` builds everything, `fit()` runs the epochs.

    With a `fold` (training/crossval.py) it trains on the fold's training rows of the train
    split, chooses the epoch on its held-out rows, and keeps the run in `fold.run_dir`.
    """

    def __init__(
        self,
        config: TrainConfig,
        model_hook: ModelHook | None = None,
        model_variant: str = "plain",
        fold: Fold | None = None,
    ) -> None:
        self.config, self.model_variant, self.fold = config, model_variant, fold
        self.run_lock: RunLock | None = None  # held while this process trains in run_dir
        self.context = init_distributed(
            use_cuda=config.device != "cpu" and torch.cuda.is_available()
        )
        self.early_log = EarlyLog().start()
        try:
            self._build(model_hook)
        except BaseException:
            self.early_log.stop()
            self.close()
            shutdown_distributed(self.context)  # bad input must not leave the group behind
            raise

    def close(self) -> None:
        """Give the run folder up (its lock), once training in it is over."""
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None

    def _build(self, model_hook: ModelHook | None) -> None:
        config, context = self.config, self.context
        if config.resume and context.is_main:
            resumed = resolve_project_path(config.resume)
            check_resumable(resumed)
            if self.fold is None:  # a fold's folder is inside its k-fold run's, locked there
                self.run_lock = RunLock(resumed).acquire()
            remove_abandoned(resumed)  # temporaries of a session that was killed
        self.runtime = runtime_for(config, context)
        # A missing, untrusted or unreadable weights file is named before the data is read.
        check_pretrained_weights(config.arch, config.weights)
        configure_determinism(self.runtime, config.cudnn_benchmark, config.deterministic)
        seed_everything(derive_seed(config.seed, context.rank))

        voc_root = resolve_voc_root(config.voc_root)
        if context.is_main:
            ensure_voc_root(voc_root, download=config.download)
        barrier(context)
        parts = build_training_parts(
            config, self.runtime, context, voc_root, model_hook, fold=self.fold
        )
        self.data: RunData = parts.data
        if self.fold is None:  # a fold's held-out part was checked with the folds
            check_val_split(self.data.val_split, config.difficult, display_path(voc_root))
        self.model: MultiLabelClassifier = parts.model
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.head_kind = parts.head_kind

        # Frozen features: the default recipe trains on them; LP-FT's probe starts from them
        # (a checkpoint already holds the probe's result).
        probe = config.lp_ft and not restores_checkpoint(config)
        self.features: dict[str, FeatureSet] = {}
        self.feature_pass: FeaturePass | None = None
        if config.freeze_backbone or probe:
            self.feature_pass = FeaturePass.of(self.model, config, self.runtime)
            self.features = load_features(self.feature_pass, self.data, config, self.fold)
        if probe:
            linear_probe(
                self.model,
                self.features["train"],
                self.data.train_split,
                config,
                len(self.data.train_loader),
                self.runtime.device,
            )

        self.state = TrainState()
        self.checkpoint_epoch = 0  # the epoch of the last complete checkpoint_last.pt
        if config.resume:
            self.run_dir = resolve_project_path(config.resume)
            self._resume()
        elif self.fold is not None:
            self.run_dir = self.fold.run_dir
            if context.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            created = None
            if context.is_main:
                run_dir, self.run_lock = create_run_dir(config)
                created = str(run_dir)
            self.run_dir = Path(broadcast_object(created, context))

        self.train_model: nn.Module = self.model
        if context.enabled:
            device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids
            )
        if config.compile:
            self.train_model = torch.compile(self.train_model)

    def _resume(self) -> None:
        """Continue from the run's checkpoint; a run stopped before its first checkpoint has
        nothing to continue from and restarts in place, exactly as it first started."""
        checkpoint = self.run_dir / LAST_CHECKPOINT_FILENAME
        if not checkpoint.is_file():
            log.info(
                "%s has no %s (stopped during its first epoch): restarting it in place "
                "from epoch 1",
                display_path(self.run_dir),
                LAST_CHECKPOINT_FILENAME,
            )
            return
        self.state = load_training_state(
            checkpoint, self.model, self.optimizer, self.scheduler, self.scaler
        )
        self.checkpoint_epoch = self.state.epoch
        log.info(
            "resumed %s after epoch %d (best mAP %.4f at epoch %s)",
            self.run_dir,
            self.state.epoch,
            self.state.best_map,
            self.state.best_epoch,
        )
        # A fold model that finished its epochs but was stopped before the ensemble scored it
        # goes straight on to scoring (its epoch loop is empty).
        if self.fold is None and self.state.epoch >= self.config.epochs:
            raise RunFolderError(
                f"{display_path(self.run_dir)} already finished its {self.state.epoch} "
                f"epoch(s): nothing to resume. Pass a larger --epochs to train it further, or "
                f"start a new run without --resume"
            )

    @property
    def scored_on(self) -> str:
        """What `val_*` of the epoch records measure: the val split, or a fold's held-out part."""
        return "val" if self.fold is None else f"held-out (fold {self.fold.number})"

    # -- the epochs ----------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train the remaining epochs; return the run folder."""
        try:
            return self._fit()
        except RunWriteError as error:  # a full disk: say what is kept and how to go on
            raise RunWriteError(f"{error}. {self._resume_advice()}") from None

    def _resume_advice(self) -> str:
        folder = display_path(self.run_dir if self.fold is None else self.fold.run_dir.parents[1])
        kept = (
            f"its last complete checkpoint (epoch {self.checkpoint_epoch}) is kept"
            if self.checkpoint_epoch
            else "it has no complete epoch yet, so resuming restarts it from epoch 1"
        )
        return (
            f"The run can be resumed: {kept}. Free some space, then continue it with "
            f"`python main_train.py --resume {folder}`"
        )

    def _fit(self) -> Path:
        config, main = self.config, self.context.is_main
        self.early_log.stop()
        handler = epoch_log = None
        if main:
            handler = attach_log_file(self.run_dir, self.early_log)
            write_config(self.run_dir, config)
            write_run_provenance(self.run_dir)
            write_run_copy(self.run_dir, self.data.label_fixes)  # what --resume applies
            epoch_log = EpochLog(self.run_dir, self.state.epoch + 1, self.scored_on)
            warn_undefined_classes(self.data.val_split, config.difficult, self.scored_on)
            log.info(
                "run folder %s | %s on %s, amp=%s, %d train / %d %s images",
                project_relative(self.run_dir),
                config.arch,
                self.runtime.device,
                self.runtime.amp_dtype,
                len(self.data.train_split),
                len(self.data.val_split),
                self.scored_on,
            )
        try:
            epochs = range(self.state.epoch + 1, config.epochs + 1)
            if config.epochs == 0 and not self.state.history:
                epochs = range(0, 1)  # no training: validate the starting model as "epoch 0"
            bar = tqdm(epochs, desc="epochs", disable=not (config.progress and main), unit="ep")
            for done_this_session, epoch in enumerate(bar, start=1):
                record, scores = self.run_epoch(epoch)
                improved = record["val_map"] is not None and record["val_map"] > self.state.best_map
                if improved:
                    self.state.best_map, self.state.best_epoch = record["val_map"], epoch
                self.state.epoch = epoch
                self.state.history.append(record)
                if main:
                    if improved:
                        self.save_best(record, scores)
                    write_history(self.run_dir, self.state.history)
                    save_training_state(
                        self.run_dir / LAST_CHECKPOINT_FILENAME,
                        self.model,
                        self.optimizer,
                        self.scheduler,
                        self.scaler,
                        self.state,
                        config,
                    )
                    self.checkpoint_epoch = epoch
                    epoch_log.epoch(record, improved)
                barrier(self.context)
                if config.stop_after is not None and done_this_session >= config.stop_after:
                    log.info(
                        "stopping after %d epoch(s) as asked; continue with "
                        "`python main_train.py --resume %s`",
                        done_this_session,
                        display_path(self.run_dir),
                    )
                    break
            if main:
                peak = self.runtime.peak_memory_mb()
                log.info(
                    "best epoch %s: val mAP %.4f | peak GPU memory %s | %s",
                    self.state.best_epoch,
                    self.state.best_map,
                    f"{peak:.0f} MiB" if peak is not None else "n/a (CPU)",
                    project_relative(self.run_dir),
                )
                model_hparams(self.run_dir, config, self.state, self.fold)
        finally:
            if epoch_log is not None:
                epoch_log.close()
            detach_log_file(handler)
        return self.run_dir

    def run_epoch(self, epoch: int) -> tuple[dict, np.ndarray]:
        """Train one epoch and validate; epoch 0 (`--epochs 0`) only validates."""
        config = self.config
        started = time.perf_counter()
        torch.manual_seed(derive_seed(config.seed, epoch, self.context.rank))
        self.data.train_sampler.set_epoch(epoch)
        if epoch == 0:
            loss_sum, seen = float("nan"), 0
        elif config.freeze_backbone:
            loss_sum, seen = head_epoch(
                self.model.head,
                self.features["train"],
                self.data.train_split,
                config,
                self.optimizer,
                self.scheduler,
                epoch,
                self.runtime.device,
            )
        else:
            loss_sum, seen = train_one_epoch(
                self.train_model,
                self.data.train_loader,
                self.optimizer,
                self.scheduler,
                self.scaler,
                self.runtime,
                progress=config.progress and self.context.is_main,
                description=f"epoch {epoch}/{config.epochs}",
            )
            loss_sum, seen = sum_across([loss_sum, float(seen)], self.context)
        train_seconds = time.perf_counter() - started
        scores, val_loss = self.validate()
        val = self.val_ap(scores, self.data.val_split)
        record = epoch_record(
            epoch,
            loss_sum / max(seen, 1.0),
            val_loss,
            val,
            {group["name"]: group["lr"] for group in self.optimizer.param_groups},
            EpochTiming(train_seconds, time.perf_counter() - started, int(seen)),
            self.runtime.peak_memory_mb(),
        )
        return record, scores

    def val_ap(self, scores: np.ndarray, split: VocSplit) -> SplitAP:
        labels, difficult = labels_for_ap(split, self.config.difficult)  # label fixes' mask
        return split_average_precision(scores, labels, VOC_CLASSES, difficult)

    def validate(
        self, loader: DataLoader | None = None, size: int | None = None
    ) -> tuple[np.ndarray, float]:
        """Sigmoid scores of the whole val split (or of `loader`'s `size` rows) in split order
        (gathered from all processes), and the mean masked BCE. With a frozen backbone the val
        split is scored from its cached features (the same numbers, without the backbone)."""
        if self.config.freeze_backbone and loader is None:
            logits, loss = validate_on_features(
                self.model.head,
                self.features["val"],
                self.data.val_split,
                self.config,
                self.runtime.device,
            )
            return scores_from_logits(logits), loss
        result = predict(
            self.train_model,
            self.data.val_loader if loader is None else loader,
            self.runtime,
            progress=self.config.progress and self.context.is_main,
            tta=self.config.tta,
        )
        loss_sum, mask_sum = sum_across([result.loss_sum, result.mask_sum], self.context)
        size = len(self.data.val_split) if size is None else size
        logits = gather_rows(result.indices, result.logits, size, self.context)
        return scores_from_logits(logits), loss_sum / max(mask_sum, 1.0)

    # -- what is kept ----------------------------------------------------------------------
    def save_best(self, record: dict, scores: np.ndarray) -> None:
        """`model_best.pt` and the predictions of the epoch that improved (a fold model's
        predictions are of its held-out fold)."""
        config, fold = self.config, self.fold
        provenance = model_provenance(
            config,
            record,
            model_variant=self.model_variant,
            head=describe_head(self.model.head, self.head_kind, config.residual_shrink),
            head_kind=self.head_kind,
            train_split=self.data.train_split,
            val_split=self.data.val_split,
            voc_root=self.data.voc_root,
            run_dir=self.run_dir,
            fold=fold,
            engine=None if self.feature_pass is None else self.feature_pass.forward.describe(),
        )
        save_best_model(
            self.run_dir / BEST_MODEL_FILENAME,
            self.model,
            arch=config.arch,
            class_names=VOC_CLASSES,
            image_size=config.image_size,
            provenance=provenance,
            head=self.head_kind,
            view=config.view,
            whole_size=resolved_whole_size(config),
            model_variant=self.model_variant,
        )
        name = PREDICTIONS_FILENAME if fold is None else HELD_OUT_PREDICTIONS_FILENAME
        predictions = Predictions(
            scores=scores,
            labels=self.data.val_split.labels,
            files=tuple(self.data.val_split.relative_paths),
            class_names=VOC_CLASSES,
            provenance=provenance,
        )
        with writing(
            self.run_dir / name,
            file_size_bound(
                predictions.files, len(predictions.class_names), predictions.labels is not None
            ),
        ):
            save_predictions(self.run_dir / name, predictions)
        if fold is None:  # a fold run's pointer names the whole run (training.crossval)
            pointer = resolve_project_path(config.runs_dir) / LATEST_POINTER
            with writing(pointer, 4096):
                write_latest_pointer(config.runs_dir, self.run_dir)

    def score_test_split(self) -> np.ndarray:
        """In a fold run, after `fit`: the val split scored by this fold's chosen model (it
        was never used for a choice). All processes must call it."""
        if self.data.test_loader is None or self.data.test_split is None:
            raise RuntimeError("score_test_split is for fold runs (Trainer(..., fold=...))")
        best = load_trusted(self.run_dir / BEST_MODEL_FILENAME)
        self.model.load_state_dict(best["state_dict"])
        if self.config.freeze_backbone and self.feature_pass is not None:
            # The val split's features are the same for every fold model (one frozen
            # backbone): computed for the first fold, read from the cache by the others.
            cache = self.data.test_loader.dataset.image_cache
            source = image_source(self.data.voc_root, self.data.test_split, self.config, cache)
            features = self.feature_pass.features(source, self.config)
            logits = head_logits(self.model.head, features, self.config.tta, self.runtime.device)
            return scores_from_logits(logits.numpy())
        scores, _ = self.validate(self.data.test_loader, len(self.data.test_split))
        return scores


def run_single(
    config: TrainConfig, model_hook: ModelHook | None = None, model_variant: str = "plain"
) -> Path:
    """Train one model (resuming if `config.resume`); return its run folder."""
    trainer = Trainer(config, model_hook, model_variant)
    try:
        return trainer.fit()
    except KeyboardInterrupt as error:
        raise TrainingInterrupted(trainer.run_dir, trainer.checkpoint_epoch) from error
    finally:
        trainer.close()
        shutdown_distributed(trainer.context)

"""`run(config)`: a whole training run, from the dataset root to the predictions file.

Per epoch: train, predict the validation split in its fixed order, compute per-class AP and
mAP, append to the history, keep the model and predictions of the best mAP so far, and write
a resumable checkpoint. Every file is written atomically, so stopping at any moment (Ctrl-C,
a crash, a time limit) loses at most the epoch in progress.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from evaluation.metrics import (
    UndefinedAPWarning,
    mean_average_precision,
    per_class_average_precision,
)
from predictions import PREDICTIONS_FILENAME, Predictions, save_predictions, write_latest_pointer
from predictions.runs import HISTORY_FILENAME, LAST_STARTED_POINTER, RUN_PROVENANCE_FILENAME
from training.backbones import read_state_dict
from training.checkpoint import (
    BEST_MODEL,
    LAST_CHECKPOINT,
    ModelHook,
    capture_rng_state,
    load_trusted,
    restore_rng_state,
    save_atomic,
    save_best_model,
)
from training.config import CONFIG_FILENAME, TrainConfig
from training.config_checks import ConfigError
from training.data import RowSubset, RunData, build_run_data
from training.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    gather_rows,
    init_distributed,
    shutdown_distributed,
    sum_across,
)
from training.folds import FOLDS_FILENAME, Fold
from training.frozen import FeatureSet, cached_features, head_logits, train_head_epoch
from training.heads import PriorHead, describe_head, resolve_head
from training.loop import Runtime, predict, train_one_epoch
from training.loss import masked_bce_terms
from training.model import MultiLabelClassifier, build_classifier
from training.optim import build_optimizer, build_scheduler
from training.provenance import collect_run_provenance
from training.seed import derive_seed, seed_everything
from vocdata.atomic import atomic_write, probe_writable
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import VocClassification
from vocdata.download import ensure_voc_root
from vocdata.paths import display_path, project_relative, resolve_project_path
from vocdata.splits import resolve_voc_root
from vocdata.transforms import eval_transform

log = logging.getLogger("training")

HELD_OUT_PREDICTIONS = "heldout_predictions.npz"  # a fold model's scores of its held-out fold
LOG_FILENAME = "train.log"
LP_SEED_OFFSET = 1_000_000  # the linear probe's epochs draw seeds apart from training's


# What torch.load and load_state_dict raise for a damaged or foreign checkpoint.
_UNREADABLE = (RuntimeError, ValueError, EOFError, pickle.PickleError)


class RunFolderError(RuntimeError):
    """A run folder cannot be created, written or resumed; the message says what to do."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run whose folder exists: says which folder and how to continue it."""

    def __init__(self, run_dir: Path, epochs_done: int) -> None:
        super().__init__(str(run_dir))
        self.run_dir, self.epochs_done = run_dir, epochs_done

    def message(self) -> str:
        folder = display_path(self.run_dir)
        kept = (
            f"it keeps the {self.epochs_done} completed epoch(s)"
            if self.epochs_done
            else "no epoch was completed, so resuming restarts it in place from epoch 1"
        )
        return (
            f"interrupted: run folder {folder} ({kept}); continue it with "
            f"`python main_train.py --resume {folder}`"
        )


class _BufferedLog(logging.Handler):
    """Keeps the records logged before the run folder exists (skipped images, the resume
    line) so that they reach the run's train.log too, not only the screen."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class TrainState:
    """What the epoch loop carries from one epoch to the next (and across a resume)."""

    epoch: int = 0  # last completed epoch
    best_map: float = -math.inf
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def pick_runtime(config: TrainConfig, context: DistContext) -> Runtime:
    """Device, AMP dtype and memory layout from the config and what the machine has."""
    wanted = config.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was asked for but torch sees no CUDA GPU; use --device cpu (or auto)"
        )
    if wanted == "cuda" and context.enabled:
        wanted = f"cuda:{context.local_rank}"
    device = torch.device(wanted)
    amp_dtype = None
    if device.type == "cuda" and config.amp != "off":
        use_bf16 = config.amp == "bf16" or (config.amp == "auto" and torch.cuda.is_bf16_supported())
        amp_dtype = torch.bfloat16 if use_bf16 else torch.float16
    elif device.type != "cuda" and config.amp in ("bf16", "fp16"):
        log.warning("--amp %s ignored: mixed precision is only used on CUDA", config.amp)
    channels_last = config.channels_last and device.type == "cuda"
    return Runtime(device=device, amp_dtype=amp_dtype, channels_last=channels_last)


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
    head_kind = resolve_head(config.head, config.weights)
    model = build_classifier(config.arch, len(VOC_CLASSES), config.weights, head=head_kind)
    if model_hook is not None:
        model = model_hook(model)
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    model.to(runtime.device, memory_format=memory_format)
    if isinstance(model.head, PriorHead) and not restores_checkpoint(config):  # else restored
        model.head.set_train_positives((data.train_split.labels == 1).sum(0))
    if config.freeze_backbone:  # before the optimizer, which takes trainable tensors only
        for param in model.backbone_parameters():
            param.requires_grad_(False)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(data.train_loader))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    return TrainingParts(data, model, optimizer, scheduler, scaler, head_kind)


def restores_checkpoint(config: TrainConfig) -> bool:
    """Whether this run continues from a checkpoint. A run resumed before its first
    checkpoint restarts in place and must set itself up exactly as it first did."""
    return bool(config.resume) and (resolve_project_path(config.resume) / LAST_CHECKPOINT).is_file()


def configure_determinism(config: TrainConfig, runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark and not config.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _new_run_dir(config: TrainConfig) -> Path:
    """Create the run folder with its config.json, and point `last-started` at it at once, so
    that `--resume latest` finds it even if it is stopped before its first checkpoint."""
    runs_dir = resolve_project_path(config.runs_dir)
    base = config.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{config.arch}"
    run_dir, suffix = runs_dir / base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir / f"{base}-{suffix}"
    try:
        run_dir.mkdir(parents=True)
        _write_config(run_dir, config)
        write_latest_pointer(runs_dir, run_dir, pointer=LAST_STARTED_POINTER)
    except OSError as error:
        raise RunFolderError(
            f"Cannot create the run folder {run_dir} ({error.strerror or error}); choose a "
            f"writable --runs-dir"
        ) from error
    return run_dir


def _write_config(run_dir: Path, config: TrainConfig) -> None:
    with atomic_write(run_dir / CONFIG_FILENAME) as tmp:
        tmp.write_text(config.to_json() + "\n")


def _check_writable(run_dir: Path) -> None:
    """Before any data is read: a resumed run folder must take our files (a read-only folder,
    or a file where a folder belongs, fails here with a message instead of mid-run)."""
    folder = display_path(run_dir)
    for name in (LOG_FILENAME, CONFIG_FILENAME, HISTORY_FILENAME, LAST_CHECKPOINT):
        if (run_dir / name).is_dir():
            raise RunFolderError(
                f"Cannot resume {folder}: {name} there is a folder, not a file; move it away"
            )
    if (run_dir / "tensorboard").exists() and not (run_dir / "tensorboard").is_dir():
        raise RunFolderError(
            f"Cannot resume {folder}: its tensorboard is a file, not a folder; move it away"
        )
    try:
        probe_writable(run_dir)
    except OSError as error:
        raise RunFolderError(
            f"Cannot resume {folder}: it is not writable ({error.strerror or error}). Make it "
            f"writable (chmod u+w), or copy the run folder somewhere writable and resume that"
        ) from error


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / LOG_FILENAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _write_json(path: Path, data: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def _weights_label(weights: str) -> str:
    return weights if weights in ("imagenet", "none") else project_relative(weights)


def _finite_or_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _peak_memory_mb(runtime: Runtime) -> float | None:
    if runtime.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(runtime.device) / 2**20


class Trainer:
    """Holds the pieces of one run; `fit()` runs the epochs."""

    def __init__(
        self,
        config: TrainConfig,
        model_hook: ModelHook | None = None,
        model_variant: str = "plain",
        fold: Fold | None = None,
    ) -> None:
        """With a `fold` (see training.crossval), train on its training rows of the train split,
        choose the epoch on its held-out rows, and keep the run in `fold.run_dir`."""
        self.config = config
        self.model_variant = model_variant
        self.fold = fold
        self.context = init_distributed(
            use_cuda=config.device != "cpu" and torch.cuda.is_available()
        )
        self.early_log = _BufferedLog()
        logging.getLogger().addHandler(self.early_log)
        try:
            self._build(config, model_hook)
        except BaseException:
            logging.getLogger().removeHandler(self.early_log)
            shutdown_distributed(self.context)  # bad input must not leave the group behind
            raise

    def _build(self, config: TrainConfig, model_hook: ModelHook | None) -> None:
        if (config.freeze_backbone or config.lp_ft) and self.context.enabled:  # before any data
            raise ConfigError(
                "--freeze-backbone and --lp-ft train the head on cached features in one "
                "process: run them without torchrun, or fine-tune (--no-freeze-backbone)"
            )
        if config.resume and self.context.is_main:
            _check_writable(resolve_project_path(config.resume))
        self.runtime = pick_runtime(config, self.context)
        if config.weights not in ("imagenet", "none"):
            read_state_dict(config.weights)  # a bad file is named before the data is read
        configure_determinism(config, self.runtime)
        seed_everything(derive_seed(config.seed, self.context.rank))

        voc_root = resolve_voc_root(config.voc_root)
        if self.context.is_main:
            ensure_voc_root(voc_root, download=config.download)
        barrier(self.context)
        parts = build_training_parts(
            config, self.runtime, self.context, voc_root, model_hook, fold=self.fold
        )
        self.data: RunData = parts.data
        self.model: MultiLabelClassifier = parts.model
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.head_kind = parts.head_kind
        self.features: dict[str, FeatureSet] = {}
        probe = config.lp_ft and not restores_checkpoint(config)  # a checkpoint holds its result
        if config.freeze_backbone or probe:
            self._load_features()
        if probe:
            self._linear_probe()
        self.state = TrainState()

        if config.resume:
            self._resume(resolve_project_path(config.resume))
        elif self.fold is not None:
            self.run_dir = self.fold.run_dir
            if self.context.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.run_dir = Path(
                broadcast_object(
                    str(_new_run_dir(config)) if self.context.is_main else None, self.context
                )
            )
        self.train_model: nn.Module = self.model
        if self.context.enabled:
            device_ids = [self.runtime.device.index] if self.runtime.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids
            )
        if config.compile:
            self.train_model = torch.compile(self.train_model)

    # -- frozen features (--freeze-backbone, --lp-ft) -----------------------------------------
    def _load_features(self) -> None:
        """Both splits' features, from the feature cache or computed once (training/frozen.py)."""
        config, data = self.config, self.data
        cache_dir = resolve_project_path(config.cache_dir) if config.cache_dir else None
        fold_suffix = "" if self.fold is None else f"-fold{self.fold.number}"
        for role, split, dataset in (
            ("train", data.train_split, data.train_loader.dataset),
            ("val", data.val_split, data.val_loader.dataset),
        ):
            eval_set = _eval_view(dataset, data.voc_root, config)
            # Keyed by role: in a fold run both are parts of the train split.
            self.features[role] = cached_features(
                self.model,
                eval_set,
                f"{split.name}{fold_suffix}" if role == "train" else f"{role}{fold_suffix}",
                data.voc_root,
                split.relative_paths,
                config.image_size,
                cache_dir,
                self.runtime,
                2 * config.batch_size,
                config.workers,
                progress=config.progress,
            )

    def _head_epoch(self, optimizer, scheduler, epoch: int) -> tuple[float, int]:
        targets, mask = self.data.train_split.targets_and_mask(self.config.difficult)
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, epoch))
        return train_head_epoch(
            self.model.head,
            self.features["train"],
            torch.from_numpy(targets),
            torch.from_numpy(mask),
            optimizer,
            scheduler,
            self.config.batch_size,
            generator,
            self.runtime.device,
        )

    def _linear_probe(self) -> None:
        """LP-FT's first stage: the head alone on frozen features, `--epochs` passes with the
        head's recipe, before the whole network is fine-tuned from there."""
        config = self.config
        backbone = list(self.model.backbone_parameters())
        for param in backbone:
            param.requires_grad_(False)
        optimizer = build_optimizer(self.model, config)
        scheduler = build_scheduler(optimizer, config, len(self.data.train_loader))
        for epoch in range(1, config.epochs + 1):
            loss_sum, seen = self._head_epoch(optimizer, scheduler, LP_SEED_OFFSET + epoch)
        for param in backbone:
            param.requires_grad_(True)
        if config.epochs:
            log.info(
                "linear probe: %d passes on frozen features, train loss %.4f",
                config.epochs,
                loss_sum / max(seen, 1),
            )

    # -- checkpoints -------------------------------------------------------------------------
    def _resume(self, run_dir: Path) -> None:
        """Continue from the run's checkpoint; a run stopped before its first checkpoint has
        nothing to continue from and restarts in place, exactly as it first started."""
        self.run_dir = run_dir
        checkpoint = run_dir / LAST_CHECKPOINT
        if not checkpoint.is_file():
            log.info(
                "%s has no %s (stopped during its first epoch): restarting it in place "
                "from epoch 1",
                display_path(run_dir),
                LAST_CHECKPOINT,
            )
            return
        self._load_checkpoint(checkpoint)
        # A fold model that finished its epochs but was stopped before the ensemble scored it
        # goes straight on to scoring (its epoch loop is empty).
        if self.fold is None and self.state.epoch >= self.config.epochs:
            raise RunFolderError(
                f"{display_path(run_dir)} already finished its {self.state.epoch} epoch(s): "
                f"nothing to resume. Pass a larger --epochs to train it further, or start a "
                f"new run without --resume"
            )

    def _load_checkpoint(self, path: Path) -> None:
        try:
            saved = load_trusted(path)
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            restore_rng_state(saved["rng"])
            self.state = TrainState(**saved["state"])
        except (*_UNREADABLE, KeyError, TypeError) as error:
            raise RunFolderError(
                f"Cannot resume from {display_path(path)}: it is damaged or was written for "
                f"another network ({str(error).splitlines()[0][:200]}). Start a new run "
                f"without --resume"
            ) from error
        log.info(
            "resumed %s after epoch %d (best mAP %.4f at epoch %s)",
            self.run_dir,
            self.state.epoch,
            self.state.best_map,
            self.state.best_epoch,
        )

    def _save_checkpoint(self) -> None:
        save_atomic(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": capture_rng_state(),
                "state": asdict(self.state),
                "config": asdict(self.config),
            },
            self.run_dir / LAST_CHECKPOINT,
        )

    # -- one epoch ---------------------------------------------------------------------------
    def _validate(
        self, loader: DataLoader | None = None, size: int | None = None
    ) -> tuple[np.ndarray, float]:
        """Sigmoid scores of the whole val split (or of `loader`'s `size` rows) in split order
        (gathered from all processes). With a frozen backbone the val split is scored from its
        cached features (the same numbers, without the backbone pass)."""
        if self.config.freeze_backbone and loader is None:
            return self._validate_features()
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
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return scores.astype(np.float32), loss_sum / max(mask_sum, 1.0)

    def _validate_features(self) -> tuple[np.ndarray, float]:
        """`_validate` with a frozen backbone: the head on the cached val features."""
        logits = head_logits(
            self.model.head, self.features["val"], self.config.tta, self.runtime.device
        )
        targets, mask = self.data.val_split.targets_and_mask(self.config.difficult)
        loss = masked_bce_terms(logits, torch.from_numpy(targets), torch.from_numpy(mask))
        scores = torch.sigmoid(logits.double()).numpy().astype(np.float32)
        return scores, float(loss.sum()) / max(float(mask.sum()), 1.0)

    def _epoch(self, epoch: int) -> tuple[dict[str, Any], np.ndarray]:
        """Train one epoch and validate; epoch 0 (`--epochs 0`) only validates."""
        config = self.config
        started = time.perf_counter()
        torch.manual_seed(derive_seed(config.seed, epoch, self.context.rank))
        self.data.train_sampler.set_epoch(epoch)
        if epoch == 0:
            loss_sum, seen = math.nan, 0
        elif config.freeze_backbone:
            loss_sum, seen = self._head_epoch(self.optimizer, self.scheduler, epoch)
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
        scores, val_loss = self._validate()
        with warnings.catch_warnings():  # said once at the start, not every epoch
            warnings.simplefilter("ignore", UndefinedAPWarning)
            per_class = per_class_average_precision(
                scores, self.data.val_split.labels, VOC_CLASSES, config.difficult
            )
        mean_ap = mean_average_precision(per_class)
        lrs = {group["name"]: group["lr"] for group in self.optimizer.param_groups}
        record = {
            "epoch": epoch,
            "train_loss": _finite_or_none(loss_sum / max(seen, 1.0)),
            "val_loss": val_loss,
            "val_map": _finite_or_none(mean_ap.value),
            "val_map_classes": mean_ap.num_classes,
            "val_ap": dict(zip(VOC_CLASSES, map(_finite_or_none, per_class), strict=True)),
            "lr_backbone": lrs.get("backbone", lrs.get("backbone_no_decay")),
            "lr_head": lrs.get("head", lrs.get("head_no_decay")),
            "train_seconds": train_seconds,
            "seconds": time.perf_counter() - started,
            "train_images_per_second": seen / max(train_seconds, 1e-9),
            "peak_gpu_memory_mb": _peak_memory_mb(self.runtime),
        }
        return record, scores

    def _save_best(self, record: dict[str, Any], scores: np.ndarray) -> None:
        config = self.config
        provenance = {
            "arch": config.arch,
            "weights": _weights_label(config.weights),
            "model_variant": self.model_variant,
            "epoch": record["epoch"],
            "val_map": record["val_map"],
            "val_map_classes": record["val_map_classes"],
            "seed": config.seed,
            "difficult": config.difficult,
            "image_size": config.image_size,
            "split": "val",
            "train_images": len(self.data.train_split),
            "val_images": len(self.data.val_split),
            "train_positives": dict(
                zip(VOC_CLASSES, (self.data.train_split.labels == 1).sum(0).tolist(), strict=True)
            ),
            "head": describe_head(self.model.head, self.head_kind),
            "head_kind": self.head_kind,
            "tta": config.tta,
            "freeze_backbone": config.freeze_backbone,
            "lp_ft": config.lp_ft,
            "voc_root": project_relative(self.data.voc_root),
            "run": project_relative(self.run_dir),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if self.fold is not None:
            provenance.update(
                split=f"train, {self.fold.label}",
                fold=self.fold.number,
                folds=self.fold.count,
                heldout_map=record["val_map"],
                heldout_map_classes=record["val_map_classes"],
                val_map=None,  # the val split is not looked at while a fold model trains
                val_map_classes=None,
            )
        save_best_model(
            self.run_dir / BEST_MODEL,
            self.model,
            arch=config.arch,
            class_names=VOC_CLASSES,
            image_size=config.image_size,
            provenance=provenance,
            head=self.head_kind,
        )
        save_predictions(
            self.run_dir / (PREDICTIONS_FILENAME if self.fold is None else HELD_OUT_PREDICTIONS),
            Predictions(
                scores=scores,
                labels=self.data.val_split.labels,
                files=tuple(self.data.val_split.relative_paths),
                class_names=VOC_CLASSES,
                provenance=provenance,
            ),
        )
        if self.fold is None:  # a fold run's pointer names the whole run (training.crossval)
            write_latest_pointer(config.runs_dir, self.run_dir)

    @property
    def _scored_on(self) -> str:
        """What `val_*` of the epoch records measure: the val split, or a fold's held-out part."""
        return "val" if self.fold is None else f"held-out (fold {self.fold.number})"

    def score_test_split(self) -> np.ndarray:
        """In a fold run, after `fit`: the val split scored by this fold's chosen model (it
        was never used for a choice). All processes must call it."""
        if self.data.test_loader is None or self.data.test_split is None:
            raise RuntimeError("score_test_split is for fold runs (Trainer(..., fold=...))")
        best = load_trusted(self.run_dir / BEST_MODEL)
        self.model.load_state_dict(best["state_dict"])
        scores, _ = self._validate(self.data.test_loader, len(self.data.test_split))
        return scores

    def fit(self) -> Path:
        """Train the remaining epochs; return the run folder."""
        config, main = self.config, self.context.is_main
        writer, handler = None, None
        logging.getLogger().removeHandler(self.early_log)
        if main:
            handler = _attach_log_file(self.run_dir)
            for record in self.early_log.records:
                handler.handle(record)
            _write_config(self.run_dir, config)
            if not (self.run_dir / RUN_PROVENANCE_FILENAME).exists():  # kept across resumes
                _write_json(self.run_dir / RUN_PROVENANCE_FILENAME, collect_run_provenance())
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.state.epoch + 1)
            _warn_undefined_classes(self.data.val_split, config.difficult, self._scored_on)
            log.info(
                "run folder %s | %s on %s, amp=%s, %d train / %d %s images",
                project_relative(self.run_dir),
                config.arch,
                self.runtime.device,
                self.runtime.amp_dtype,
                len(self.data.train_split),
                len(self.data.val_split),
                self._scored_on,
            )
        try:
            epochs = range(self.state.epoch + 1, config.epochs + 1)
            if config.epochs == 0 and not self.state.history:
                epochs = range(0, 1)  # no training: validate the starting model as "epoch 0"
            bar = tqdm(epochs, desc="epochs", disable=not (config.progress and main), unit="ep")
            for done_this_session, epoch in enumerate(bar, start=1):
                record, scores = self._epoch(epoch)
                improved = record["val_map"] is not None and record["val_map"] > self.state.best_map
                if improved:
                    self.state.best_map, self.state.best_epoch = record["val_map"], epoch
                self.state.epoch = epoch
                self.state.history.append(record)
                if main:
                    if improved:
                        self._save_best(record, scores)
                    _write_json(self.run_dir / HISTORY_FILENAME, self.state.history)
                    self._save_checkpoint()
                    _log_epoch(writer, record, improved, self._scored_on)
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
                peak = _peak_memory_mb(self.runtime)
                log.info(
                    "best epoch %s: val mAP %.4f | peak GPU memory %s | %s",
                    self.state.best_epoch,
                    self.state.best_map,
                    f"{peak:.0f} MiB" if peak is not None else "n/a (CPU)",
                    project_relative(self.run_dir),
                )
        finally:
            if writer is not None:
                writer.close()
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
        return self.run_dir


def _eval_view(dataset: Dataset, voc_root: Path, config: TrainConfig) -> Dataset:
    """The same rows as a training loader's `dataset`, with the evaluation transform (no
    augmentation): what frozen features are computed from. A fold run's rows are a subset of
    the train split, read through the whole split's image cache."""
    base = dataset.dataset if isinstance(dataset, RowSubset) else dataset
    view = VocClassification(
        voc_root, base.split, config.difficult, eval_transform(config.image_size), base.image_cache
    )
    return RowSubset(view, dataset.rows) if isinstance(dataset, RowSubset) else view


def _warn_undefined_classes(val_split, difficult: str, scored_on: str = "val") -> None:
    targets, mask = val_split.targets_and_mask(difficult)
    empty = [name for c, name in enumerate(VOC_CLASSES) if not (targets[:, c] * mask[:, c]).any()]
    if empty:
        log.warning(
            "no positive %s image for %s: AP undefined there, mAP covers the other %d classes",
            scored_on,
            ", ".join(empty),
            len(VOC_CLASSES) - len(empty),
        )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _log_epoch(writer, record: dict[str, Any], improved: bool, scored_on: str = "val") -> None:
    epoch = record["epoch"]
    if record["train_loss"] is not None:
        writer.add_scalar("loss/train", record["train_loss"], epoch)
    writer.add_scalar("loss/val", record["val_loss"], epoch)
    if record["val_map"] is not None:
        writer.add_scalar("mAP/val", record["val_map"], epoch)
    for name, ap in record["val_ap"].items():
        if ap is not None:
            writer.add_scalar(f"AP/{name}", ap, epoch)
    if record["lr_backbone"] is not None:  # None: frozen backbone
        writer.add_scalar("lr/backbone", record["lr_backbone"], epoch)
    writer.add_scalar("lr/head", record["lr_head"], epoch)
    writer.flush()
    val_map = record["val_map"]
    tqdm.write(
        f"epoch {epoch}: train loss {_or_nan(record['train_loss']):.4f}  "
        f"{scored_on} loss {record['val_loss']:.4f}"
        f"  {scored_on} mAP {val_map if val_map is None else round(val_map, 4)} "
        f"({record['val_map_classes']} classes)  {record['seconds']:.1f}s"
        + ("  * best, saved" if improved else "")
    )
    log.info("epoch %d: %s", epoch, json.dumps({k: v for k, v in record.items() if k != "val_ap"}))


def run(
    config: TrainConfig, model_hook: ModelHook | None = None, model_variant: str = "plain"
) -> Path:
    """Train with `config` (resuming if `config.resume`); return the run folder."""
    fold_run = config.resume and (resolve_project_path(config.resume) / FOLDS_FILENAME).is_file()
    if config.folds > 1 or fold_run:  # (a fold run resumed with --folds 1 is told it was one)
        from training.crossval import run_cross_validation  # it builds on this module

        return run_cross_validation(config, model_hook, model_variant)
    trainer = Trainer(config, model_hook, model_variant)
    try:
        return trainer.fit()
    except KeyboardInterrupt as error:
        raise TrainingInterrupted(trainer.run_dir, trainer.state.epoch) from error
    finally:
        shutdown_distributed(trainer.context)

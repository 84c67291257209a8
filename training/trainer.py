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
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from evaluation.metrics import (
    UndefinedAPWarning,
    mean_average_precision,
    per_class_average_precision,
)
from predictions import PREDICTIONS_FILENAME, Predictions, save_predictions, write_latest_pointer
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
from training.frozen import FeatureSet, cached_features, head_logits, train_head_epoch
from training.heads import PriorHead, describe_head, resolve_head
from training.loop import Runtime, predict, train_one_epoch
from training.loss import masked_bce_terms
from training.model import MultiLabelClassifier, build_classifier
from training.optim import build_optimizer, build_scheduler
from training.seed import derive_seed, seed_everything
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import VocClassification
from vocdata.download import ensure_voc_root
from vocdata.files import atomic_write, project_relative, resolve_project_path
from vocdata.splits import resolve_voc_root
from vocdata.transforms import eval_transform

log = logging.getLogger("training")

HISTORY_FILENAME = "history.json"
LOG_FILENAME = "train.log"
LP_SEED_OFFSET = 1_000_000  # the linear probe's epochs draw seeds apart from training's


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


def _configure_determinism(config: TrainConfig, runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark and not config.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _new_run_dir(config: TrainConfig) -> Path:
    runs_dir = resolve_project_path(config.runs_dir)
    base = config.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{config.arch}"
    run_dir, suffix = runs_dir / base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir / f"{base}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


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
        self, config: TrainConfig, model_hook: ModelHook | None = None, model_variant: str = "plain"
    ) -> None:
        self.config = config
        self.model_variant = model_variant
        self.context = init_distributed(
            use_cuda=config.device != "cpu" and torch.cuda.is_available()
        )
        try:
            self._build(config, model_hook)
        except BaseException:
            shutdown_distributed(self.context)  # bad input must not leave the group behind
            raise

    def _build(self, config: TrainConfig, model_hook: ModelHook | None) -> None:
        self.runtime = pick_runtime(config, self.context)
        _configure_determinism(config, self.runtime)
        seed_everything(derive_seed(config.seed, self.context.rank))

        voc_root = resolve_voc_root(config.voc_root)
        if self.context.is_main:
            ensure_voc_root(voc_root, download=config.download)
        barrier(self.context)
        self.data: RunData = build_run_data(
            config, voc_root, self.context, pin_memory=self.runtime.device.type == "cuda"
        )

        self.head_kind = resolve_head(config.head, config.weights)
        self.model: MultiLabelClassifier = build_classifier(
            config.arch, len(VOC_CLASSES), config.weights, head=self.head_kind
        )
        if model_hook is not None:
            self.model = model_hook(self.model)
        memory_format = torch.channels_last if self.runtime.channels_last else torch.preserve_format
        self.model.to(self.runtime.device, memory_format=memory_format)
        if isinstance(self.model.head, PriorHead) and not config.resume:
            self.model.head.set_train_positives((self.data.train_split.labels == 1).sum(0))
        self.features: dict[str, FeatureSet] = {}
        if config.freeze_backbone or (config.lp_ft and not config.resume):
            if self.context.enabled:
                raise ValueError("--freeze-backbone and --lp-ft run in one process, not torchrun")
            self._load_features()
        if config.lp_ft and not config.resume:
            self._linear_probe()
        if config.freeze_backbone:
            for param in self.model.backbone_parameters():
                param.requires_grad_(False)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, len(self.data.train_loader))
        self.scaler = torch.amp.GradScaler(
            self.runtime.device.type, enabled=self.runtime.amp_dtype == torch.float16
        )
        self.state = TrainState()

        if config.resume:
            self.run_dir = resolve_project_path(config.resume)
            self._load_checkpoint(self.run_dir / LAST_CHECKPOINT)
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
        for split, dataset in (
            (data.train_split, data.train_loader.dataset),
            (data.val_split, data.val_loader.dataset),
        ):
            eval_set = VocClassification(
                data.voc_root,
                split,
                config.difficult,
                eval_transform(config.image_size),
                dataset.image_cache,
            )
            self.features[split.name] = cached_features(
                self.model,
                eval_set,
                split.name,
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
    def _load_checkpoint(self, path: Path) -> None:
        saved = load_trusted(path)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        restore_rng_state(saved["rng"])
        self.state = TrainState(**saved["state"])
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
    def _validate(self) -> tuple[np.ndarray, float]:
        """Sigmoid scores of the whole val split in split order (gathered from all processes)."""
        if self.config.freeze_backbone:
            return self._validate_features()
        result = predict(
            self.train_model,
            self.data.val_loader,
            self.runtime,
            progress=self.config.progress and self.context.is_main,
            tta=self.config.tta,
        )
        loss_sum, mask_sum = sum_across([result.loss_sum, result.mask_sum], self.context)
        logits = gather_rows(result.indices, result.logits, len(self.data.val_split), self.context)
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
            self.run_dir / PREDICTIONS_FILENAME,
            Predictions(
                scores=scores,
                labels=self.data.val_split.labels,
                files=tuple(self.data.val_split.relative_paths),
                class_names=VOC_CLASSES,
                provenance=provenance,
            ),
        )
        write_latest_pointer(config.runs_dir, self.run_dir)

    def fit(self) -> Path:
        """Train the remaining epochs; return the run folder."""
        config, main = self.config, self.context.is_main
        writer, handler = None, None
        if main:
            handler = _attach_log_file(self.run_dir)
            with atomic_write(self.run_dir / CONFIG_FILENAME) as tmp:
                tmp.write_text(config.to_json() + "\n")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.state.epoch + 1)
            _warn_undefined_classes(self.data.val_split, config.difficult)
            log.info(
                "run folder %s | %s on %s, amp=%s, %d train / %d val images",
                project_relative(self.run_dir),
                config.arch,
                self.runtime.device,
                self.runtime.amp_dtype,
                len(self.data.train_split),
                len(self.data.val_split),
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
                    _log_epoch(writer, record, improved)
                barrier(self.context)
                if config.stop_after is not None and done_this_session >= config.stop_after:
                    log.info(
                        "stopping after %d epoch(s) as asked; continue with --resume %s",
                        done_this_session,
                        project_relative(self.run_dir),
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


def _warn_undefined_classes(val_split, difficult: str) -> None:
    targets, mask = val_split.targets_and_mask(difficult)
    empty = [name for c, name in enumerate(VOC_CLASSES) if not (targets[:, c] * mask[:, c]).any()]
    if empty:
        log.warning(
            "no positive validation image for %s: AP undefined there, mAP covers the other "
            "%d classes",
            ", ".join(empty),
            len(VOC_CLASSES) - len(empty),
        )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _log_epoch(writer, record: dict[str, Any], improved: bool) -> None:
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
        f"val loss {record['val_loss']:.4f}"
        f"  val mAP {val_map if val_map is None else round(val_map, 4)} "
        f"({record['val_map_classes']} classes)  {record['seconds']:.1f}s"
        + ("  * best, saved" if improved else "")
    )
    log.info("epoch %d: %s", epoch, json.dumps({k: v for k, v in record.items() if k != "val_ap"}))


def run(
    config: TrainConfig, model_hook: ModelHook | None = None, model_variant: str = "plain"
) -> Path:
    """Train with `config` (resuming if `config.resume`); return the run folder."""
    trainer = Trainer(config, model_hook, model_variant)
    try:
        return trainer.fit()
    finally:
        shutdown_distributed(trainer.context)

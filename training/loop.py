"""One training epoch and one prediction pass. Nothing else: no files, no logging setup."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.loss import masked_bce_terms, masked_bce_with_logits
from training.runtime import Runtime

POSTFIX_EVERY = 10  # steps between progress-bar loss updates (each costs a device sync)


@dataclass
class StepTimes:
    """Where the training steps' time goes, filled in by `train_one_epoch` when passed one.

    Each phase boundary synchronises the device so that the time of queued GPU work lands in
    the phase that queued it; that costs a little, so it is for measuring (`python -m
    training.bench`), never for training runs. Phases: "data wait" (the loader's next batch
    and its copy to the device), "forward+backward", "optimizer" (step, scaler, scheduler).
    """

    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("data wait", "forward+backward", "optimizer"), 0.0)
    )
    steps: int = 0

    def lap(self, phase: str, since: float, device: torch.device) -> float:
        """Add the time from `since` to now (device synchronised) to `phase`; return now."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        self.seconds[phase] += now - since
        return now

    def milliseconds_per_step(self) -> dict[str, float]:
        return {phase: 1000 * total / max(self.steps, 1) for phase, total in self.seconds.items()}


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    progress: bool = True,
    description: str = "train",
    step_times: StepTimes | None = None,
) -> tuple[float, int]:
    """Train for one pass over `loader`; returns (sum of batch-mean losses x batch size, images).

    With `step_times`, also time each phase of every step into it (see `StepTimes`).
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    images_seen = 0
    bar = tqdm(loader, desc=description, leave=False, disable=not progress, unit="batch")
    mark = time.perf_counter()
    for step, (images, targets, mask, _) in enumerate(bar, start=1):
        images = runtime.images_to_device(images)
        targets = targets.to(runtime.device, non_blocking=True)
        mask = mask.to(runtime.device, non_blocking=True)
        if step_times is not None:
            mark = step_times.lap("data wait", mark, runtime.device)
        with runtime.autocast():
            logits = model(images)
        loss = masked_bce_with_logits(logits, targets, mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if step_times is not None:
            mark = step_times.lap("forward+backward", mark, runtime.device)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if step_times is not None:
            mark = step_times.lap("optimizer", mark, runtime.device)
            step_times.steps += 1
        loss_sum += loss.detach() * images.shape[0]
        images_seen += images.shape[0]
        if progress and step % POSTFIX_EVERY == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / images_seen:.4f}")
    return float(loss_sum.item()), images_seen


@dataclass
class PredictionPass:
    """Raw output of `predict` for this process's share of the data."""

    indices: np.ndarray  # (n,) rows of the split
    logits: np.ndarray  # (n, C) float32
    loss_sum: float  # sum of masked BCE terms
    mask_sum: float  # number of (image, class) pairs that count


TTA_MODES = ("none", "hflip")


def tta_logits(model: nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's logits, or with `hflip` the mean of the image's and its mirror's logits.

    Logits, not probabilities, are averaged: one forward per view and the result is again a
    logit, so every caller (loss, sigmoid scores) treats it like a plain prediction.
    """
    if tta == "none":
        return model(images)
    if tta == "hflip":
        return 0.5 * (model(images) + model(torch.flip(images, dims=(-1,))))
    raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of {TTA_MODES}")


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader,
    runtime: Runtime,
    progress: bool = True,
    description: str = "val",
    tta: str = "none",
) -> PredictionPass:
    """Logits for every sample of `loader` (eval mode), with the summed masked BCE.

    `tta="hflip"` averages each image's logits with its mirror image's (`tta_logits`).
    """
    model.eval()
    indices, logits_list = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    mask_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    for images, targets, mask, index in tqdm(
        loader, desc=description, leave=False, disable=not progress, unit="batch"
    ):
        images = runtime.images_to_device(images)
        targets = targets.to(runtime.device, non_blocking=True)
        mask = mask.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = tta_logits(model, images, tta)
        loss_sum += masked_bce_terms(logits, targets, mask).sum()
        mask_sum += mask.sum()
        logits_list.append(logits.float().cpu())
        indices.append(index)
    return PredictionPass(
        indices=torch.cat(indices).numpy() if indices else np.zeros(0, dtype=np.int64),
        logits=torch.cat(logits_list).numpy() if logits_list else np.zeros((0, 0), np.float32),
        loss_sum=float(loss_sum.item()),
        mask_sum=float(mask_sum.item()),
    )

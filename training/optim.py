"""Optimizer and learning-rate schedule: a lower rate for the pretrained backbone than for the
new head, no weight decay on biases and norm layers, linear warm-up then cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import TrainConfig
from training.model import MultiLabelClassifier


def _split_decay(params) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    params = [p for p in params if p.requires_grad]
    return [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]


def build_optimizer(model: MultiLabelClassifier, config: TrainConfig) -> torch.optim.Optimizer:
    groups = []
    for name, params, lr in (
        ("backbone", model.backbone_parameters(), config.lr_backbone),
        ("head", model.head_parameters(), config.lr_head),
    ):
        decay, no_decay = _split_decay(params)
        groups.append(
            {"name": name, "params": decay, "lr": lr, "weight_decay": config.weight_decay}
        )
        groups.append(
            {"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}
        )
    groups = [g for g in groups if g["params"]]
    # On the GPU one fused kernel updates every tensor: measured 3-4 ms -> well under 1 ms per
    # step for ResNet-18 / EfficientNet-Lite0, where the whole step is 20-30 ms.
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, fused=fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, fused=fused)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per batch, so the schedule does not depend on how long an epoch is."""
    total = config.epochs * steps_per_epoch
    warmup = min(total, round(config.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total)
    )

"""Transfer learning on VOC: the backbone registry, the loss, the epoch loop, checkpoints.

`run(config)` is the whole job; `main_train.py` only parses options into a `TrainConfig`.
It is the one place that knows both kinds of run: one model (`training.trainer`) or k-fold
cross-validation (`training.crossval`, which trains each fold model with the same trainer).
"""

from __future__ import annotations

from pathlib import Path

from predictions.runs import FOLDS_FILENAME
from training.checkpoint import ModelHook
from training.config import TrainConfig, build_parser, config_from_argv
from training.crossval import run_cross_validation
from training.trainer import run_single
from vocdata.paths import resolve_project_path

__all__ = ["TrainConfig", "build_parser", "config_from_argv", "run"]


def run(
    config: TrainConfig, model_hook: ModelHook | None = None, model_variant: str = "plain"
) -> Path:
    """Train with `config` (resuming if `config.resume`); return the run folder. A k-fold run
    resumed without --folds is still a k-fold run (its folder says so)."""
    resumed_folds = (
        bool(config.resume) and (resolve_project_path(config.resume) / FOLDS_FILENAME).is_file()
    )
    if config.folds > 1 or resumed_folds:
        return run_cross_validation(config, model_hook, model_variant)
    return run_single(config, model_hook, model_variant)

"""TensorBoard's HParams dashboard: every run, and every fold model, as one row of options and
final metrics, so `tensorboard --logdir runs` compares them without a script.

Each row is written into the run's own `tensorboard/` folder, beside its epoch scalars, so the
dashboard's row and the run's curves are one TensorBoard run (`SummaryWriter.add_hparams`
would make a new timestamped sub-folder, i.e. a second run without the curves). The summaries
are torch's (`torch.utils.tensorboard.summary.hparams`): the experiment (which columns exist),
the session start (the option values) and end, and one scalar per metric.

They go into their own events file (suffix `.hparams`), rewritten whole at the end of every
session: TensorBoard keeps the first session-start it reads in a folder, so a resumed run
(a larger `--epochs`) replaces the file rather than adding a second, stale row.

Which options: the hyper-parameters of the comparison grid (`evaluation.compare_table`:
every `config.json` key but paths, names, reporting and machine settings), plus `model`
saying what the row is (one model, a fold model, a k-fold ensemble). Every run declares the
same metric columns (METRICS); a run without one of them leaves its cell empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from evaluation.compare_table import flatten_options, is_hyperparameter
from predictions.runs import TENSORBOARD_DIRNAME
from training.checkpoint import TrainState
from training.config import TrainConfig
from training.folds import Fold

HPARAMS_SUFFIX = ".hparams"  # the events file this module owns in a tensorboard/ folder
# The metric columns, the same for every run: a single run fills val mAP and best epoch, a fold
# model its held-out mAP and best epoch, a k-fold run its CV estimate and its ensemble's val mAP.
METRICS = (
    "hparams/val_map",
    "hparams/heldout_map",
    "hparams/cv_map_mean",
    "hparams/cv_map_std",
    "hparams/best_epoch",
)


def _tensorboard_value(value: Any) -> str | float:
    """A number stays a number (TensorBoard can plot it); everything else becomes text.
    Booleans are text too: torch's summary would store True as the number 1."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return float(value)
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def hparam_values(config: TrainConfig, model: str) -> dict[str, str | float]:
    """The run's hyper-parameters as TensorBoard takes them, and `model` (what the row is)."""
    options = flatten_options(json.loads(config.to_json()))
    values = {"model": model}
    values.update(
        {key: _tensorboard_value(options[key]) for key in sorted(options) if is_hyperparameter(key)}
    )
    return values


def write_hparams(
    run_dir: Path, hparams: dict[str, str | float], metrics: dict[str, float | None], step: int
) -> Path:
    """Write (or rewrite) the HParams row of `run_dir` into `run_dir/tensorboard/`; metrics
    that are None or NaN are left out (an empty cell). Returns the events file."""
    from torch.utils.tensorboard import SummaryWriter  # slow import, only when training
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown HParams metric(s) {sorted(unknown)}; add them to METRICS")
    folder = run_dir / TENSORBOARD_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    earlier = sorted(folder.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"))
    experiment, session_start, session_end = hparams_summaries(hparams, dict.fromkeys(METRICS, 0.0))
    writer = SummaryWriter(folder, filename_suffix=HPARAMS_SUFFIX)
    try:
        for summary in (experiment, session_start, session_end):
            writer.file_writer.add_summary(summary, step)
        for name, value in metrics.items():
            if value is not None and math.isfinite(value):
                writer.add_scalar(name, value, step)
    finally:
        writer.close()
    (written,) = set(folder.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}")) - set(earlier)
    for stale in earlier:  # only once the new row is complete
        stale.unlink(missing_ok=True)
    return written


def model_hparams(
    run_dir: Path, config: TrainConfig, state: TrainState, fold: Fold | None = None
) -> Path:
    """The row of one trained model after `state`'s epochs: a single run (its best val mAP)
    or a fold model (its best held-out mAP: a fold model never looks at val)."""
    best = state.best_map if math.isfinite(state.best_map) else None
    epoch = None if state.best_epoch is None else float(state.best_epoch)
    if fold is None:
        label, metrics = "one model", {"hparams/val_map": best, "hparams/best_epoch": epoch}
    else:
        label = f"fold {fold.number} of {fold.count}"
        metrics = {"hparams/heldout_map": best, "hparams/best_epoch": epoch}
    return write_hparams(run_dir, hparam_values(config, label), metrics, state.epoch)


def ensemble_hparams(run_dir: Path, config: TrainConfig, summary: dict[str, Any]) -> Path:
    """The row of a k-fold run (`crossval.json`'s summary): its CV estimate on train and its
    ensemble's val mAP; in the run's own `tensorboard/` folder, above its fold models'."""
    metrics = {
        "hparams/val_map": summary.get("ensemble_val_map"),
        "hparams/cv_map_mean": summary.get("cv_map_mean"),
        "hparams/cv_map_std": summary.get("cv_map_std"),
    }
    label = f"ensemble of {summary['folds']} fold models"
    return write_hparams(run_dir, hparam_values(config, label), metrics, config.epochs)

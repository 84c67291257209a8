"""The run folder's life: created (or checked for a resume), written while training, closed.

Everything a run writes besides its models and predictions goes through here: `config.json`,
the `last-started` pointer, `train.log` (with what was logged before the folder existed),
`provenance.json`, the TensorBoard events and the console line of every epoch. A single
run and a k-fold run use the same functions, so both folders look alike.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from predictions.runs import (
    CONFIG_FILENAME,
    HISTORY_FILENAME,
    LAST_CHECKPOINT_FILENAME,
    LAST_STARTED_POINTER,
    LOG_FILENAME,
    RUN_PROVENANCE_FILENAME,
    TENSORBOARD_DIRNAME,
    write_latest_pointer,
)
from training.config import TrainConfig
from training.provenance import collect_run_provenance
from vocdata.atomic import atomic_write, probe_writable
from vocdata.jsonio import write_json
from vocdata.paths import display_path, resolve_project_path

log = logging.getLogger("training")


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


class EarlyLog(logging.Handler):
    """Keeps the records logged before the run folder exists (skipped images, the resume
    line) so that they reach the run's train.log too, not only the screen."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def start(self) -> EarlyLog:
        logging.getLogger().addHandler(self)
        return self

    def stop(self) -> None:
        logging.getLogger().removeHandler(self)


def write_config(run_dir: Path, config: TrainConfig) -> None:
    with atomic_write(run_dir / CONFIG_FILENAME) as tmp:
        tmp.write_text(config.to_json() + "\n")


def create_run_dir(config: TrainConfig) -> Path:
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
        write_config(run_dir, config)
        write_latest_pointer(runs_dir, run_dir, pointer=LAST_STARTED_POINTER)
    except OSError as error:
        raise RunFolderError(
            f"Cannot create the run folder {run_dir} ({error.strerror or error}); choose a "
            f"writable --runs-dir"
        ) from error
    return run_dir


def check_resumable(run_dir: Path) -> None:
    """Before any data is read: a resumed run folder must take our files (a read-only folder,
    or a file where a folder belongs, fails here with a message instead of mid-run)."""
    folder = display_path(run_dir)
    for name in (LOG_FILENAME, CONFIG_FILENAME, HISTORY_FILENAME, LAST_CHECKPOINT_FILENAME):
        if (run_dir / name).is_dir():
            raise RunFolderError(
                f"Cannot resume {folder}: {name} there is a folder, not a file; move it away"
            )
    if (run_dir / TENSORBOARD_DIRNAME).exists() and not (run_dir / TENSORBOARD_DIRNAME).is_dir():
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


def attach_log_file(run_dir: Path, early: EarlyLog | None = None) -> logging.Handler:
    """Send the root logger to `run_dir/train.log` (appending), first with what `early`
    kept from before the folder existed."""
    handler = logging.FileHandler(run_dir / LOG_FILENAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for record in early.records if early is not None else ():
        handler.handle(record)
    logging.getLogger().addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def write_run_provenance(run_dir: Path) -> None:
    """`provenance.json`, once: a resumed run keeps what its first session recorded."""
    if not (run_dir / RUN_PROVENANCE_FILENAME).exists():
        write_json(run_dir / RUN_PROVENANCE_FILENAME, collect_run_provenance())


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_json(run_dir / HISTORY_FILENAME, history)


class EpochLog:
    """Where every epoch's record goes besides history.json: TensorBoard scalars, one console
    line, and one line of train.log. `scored_on` names what `val_*` measures."""

    def __init__(self, run_dir: Path, first_epoch: int, scored_on: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self.writer = SummaryWriter(run_dir / TENSORBOARD_DIRNAME, purge_step=first_epoch)
        self.scored_on = scored_on

    def epoch(self, record: dict[str, Any], improved: bool) -> None:
        writer, epoch = self.writer, record["epoch"]
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
        scored_on, val_map = self.scored_on, record["val_map"]
        train_loss = record["train_loss"]
        tqdm.write(
            f"epoch {epoch}: train loss "
            f"{float('nan') if train_loss is None else train_loss:.4f}  "
            f"{scored_on} loss {record['val_loss']:.4f}"
            f"  {scored_on} mAP {val_map if val_map is None else round(val_map, 4)} "
            f"({record['val_map_classes']} classes)  {record['seconds']:.1f}s"
            + ("  * best, saved" if improved else "")
        )
        summary = {key: value for key, value in record.items() if key != "val_ap"}
        log.info("epoch %d: %s", epoch, json.dumps(summary))

    def close(self) -> None:
        self.writer.close()

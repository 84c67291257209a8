"""The run folder's life: created (or checked for a resume), written while training, closed.

Everything a run writes besides its models and predictions goes through here: `config.json`,
the `last-started` pointer, `train.log` (with what was logged before the folder existed),
`provenance.json`, the TensorBoard events and the console line of every epoch. A single
run and a k-fold run use the same functions, so both folders look alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from predictions.runs import (
    CONFIG_FILENAME,
    HISTORY_FILENAME,
    LAST_CHECKPOINT_FILENAME,
    LAST_STARTED_POINTER,
    LOCK_FILENAME,
    LOG_FILENAME,
    RUN_PROVENANCE_FILENAME,
    TENSORBOARD_DIRNAME,
    write_latest_pointer,
)
from training.config import TrainConfig
from training.provenance import collect_run_provenance
from vocdata.atomic import atomic_write, free_bytes, megabytes, why_not_writable
from vocdata.jsonio import write_json
from vocdata.locks import LockFile
from vocdata.paths import display_path, resolve_project_path

log = logging.getLogger("training")


class RunFolderError(RuntimeError):
    """A run folder cannot be created, written or resumed; the message says what to do."""


class RunWriteError(RunFolderError):
    """A file of the run could not be written (a full disk, a quota, a file size limit)."""


class RunBusyError(RunFolderError):
    """Another process is training in the run folder."""


@contextlib.contextmanager
def writing(path: Path, needed: int | None = None) -> Iterator[None]:
    """Write `path` inside this block: a disk without `needed` bytes free is refused before
    anything is written, and any OSError while writing (no space, a quota, a file size limit,
    a folder that went away) becomes one RunWriteError naming the path, the room it needs and
    the room there is. The writes are atomic, so the file's previous version stays whole."""
    free = free_bytes(path.parent)
    if needed is not None and free is not None and free < needed:
        raise RunWriteError(
            f"Cannot write {display_path(path)}: it needs {megabytes(needed)}, and only "
            f"{megabytes(free)} are free there"
        )
    try:
        yield
    except OSError as error:
        free = free_bytes(path.parent)
        room = "" if free is None else f", {megabytes(free)} are free there"
        size = "" if needed is None else f"it needs {megabytes(needed)}{room}"
        raise RunWriteError(
            f"Cannot write {display_path(path)} ({error.strerror or error}"
            f"{'; ' + size if size else room})"
        ) from None


def json_size(data: Any) -> int:
    """Bytes a JSON file of `data` takes (as `write_json` and `write_config` write it)."""
    return len(json.dumps(data, indent=2, default=str).encode()) + 1


class RunLock:
    """`run.lock` in a run folder, held (flock) while a process trains there, so that a second
    process (`--resume latest` while the run is still going) is refused instead of writing
    into the same folder. The kernel drops the lock when its process ends, `kill -9`
    included: a lock file left behind is stale and simply taken over. The file holds who
    holds it (pid, host, since), for the refusal message."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock = LockFile(run_dir / LOCK_FILENAME)

    def acquire(self) -> RunLock:
        """Hold the lock, or raise RunBusyError naming the process that holds it."""
        try:
            taken = self._lock.acquire(wait=False)
        except OSError as error:
            raise RunFolderError(
                f"Cannot use the lock file {display_path(self._lock.path)} "
                f"({error.strerror or error}): move it away, or make the run folder writable"
            ) from None
        if not taken:
            raise RunBusyError(
                f"{display_path(self.run_dir)} is being trained by {self._holder()}; wait for "
                f"it to finish or stop it, then resume it, or start a new run without --resume"
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        with contextlib.suppress(OSError):  # who holds it is only for the message
            (self.run_dir / LOCK_FILENAME).write_text(json.dumps(holder) + "\n")
        return self

    def _holder(self) -> str:
        try:
            holder = json.loads((self.run_dir / LOCK_FILENAME).read_text(encoding="utf-8"))
            return f"pid {int(holder['pid'])} on host {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError, RecursionError):  # written later
            return "another process (it has not written its pid yet)"

    def release(self) -> None:
        """Unlock and remove the lock file (a finished run folder holds none)."""
        self._lock.release(delete=True)


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
    text = config.to_json() + "\n"
    path = run_dir / CONFIG_FILENAME
    with writing(path, len(text.encode())), atomic_write(path) as tmp:
        tmp.write_text(text)


def create_run_dir(config: TrainConfig) -> tuple[Path, RunLock]:
    """Create the run folder, locked by this process, with its config.json, and point
    `last-started` at it at once, so that `--resume latest` finds it even if it is stopped
    before its first checkpoint. Two runs started at the same moment with the same name get
    separate folders: the one that loses the race takes the next suffix."""
    runs_dir = resolve_project_path(config.runs_dir)
    base = config.run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{config.arch}"
    run_dir, suffix = runs_dir / base, 1
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                run_dir.mkdir()
                break
            except FileExistsError:  # an older run, or one started a moment ago
                suffix += 1
                run_dir = runs_dir / f"{base}-{suffix}"
        lock = RunLock(run_dir).acquire()  # before the pointer: no one resumes it meanwhile
    except OSError as error:
        raise RunFolderError(
            f"Cannot create the run folder {run_dir} ({error.strerror or error}); choose a "
            f"writable --runs-dir"
        ) from error
    try:
        write_config(run_dir, config)
        pointer = runs_dir / LAST_STARTED_POINTER
        with writing(pointer, 4096):
            write_latest_pointer(runs_dir, run_dir, pointer=LAST_STARTED_POINTER)
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


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
    if reason := why_not_writable(run_dir, create=False):
        raise RunFolderError(
            f"Cannot resume {folder}: it is not writable ({reason}). Make it writable "
            f"(chmod u+w), or copy the run folder somewhere writable and resume that"
        )


class RunLogHandler(logging.FileHandler):
    """train.log: a record that cannot be written (a full disk) is said once, in one line,
    instead of logging's traceback for every record; the screen keeps every line."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            reason = getattr(error, "strerror", None) or error
            sys.stderr.write(
                f"WARNING training: cannot write {display_path(Path(self.baseFilename))} "
                f"({reason}); the log goes on on the screen only\n"
            )


def attach_log_file(run_dir: Path, early: EarlyLog | None = None) -> logging.Handler:
    """Send the root logger to `run_dir/train.log` (appending), first with what `early`
    kept from before the folder existed."""
    handler = RunLogHandler(run_dir / LOG_FILENAME)
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
    path = run_dir / RUN_PROVENANCE_FILENAME
    if not path.exists():
        provenance = collect_run_provenance()
        with writing(path, json_size(provenance)):
            write_json(path, provenance)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    path = run_dir / HISTORY_FILENAME
    with writing(path, json_size(history)):
        write_json(path, history)


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

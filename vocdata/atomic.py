"""Atomic writes: write beside the target, then rename, so no reader sees half a file (or
half a folder).

Every temporary is locked (vocdata/locks.py) by the process writing it, so one left behind
by a process that was killed (`kill -9`, a power cut) is told apart from one still being
written, and `remove_abandoned` deletes only the former.

Ground floor of the house (no dependency on any other package of the project).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vocdata.locks import holding, is_abandoned

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"  # a file being written: .<name>.<random>.tmp
STAGING_SUFFIX = ".partial"  # a folder being written: .<name>.<random>.partial
REPLACED_SUFFIX = ".old"  # a folder being replaced: .<name>.<random>.old
# A temporary younger than this is never removed, even unlocked: its writer may be between
# creating it and locking it.
ABANDONED_MIN_AGE_S = 60.0


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _new_file_mode(target: Path) -> int:
    """The mode a plainly created file would get: the target's own if it exists (a rewrite
    keeps it), else 0o666 minus the umask (a temporary file alone would be 0o600)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    A crash, Ctrl-C or exception while writing never leaves a half-written `path` behind:
    readers see either the old complete file or the new complete one. The file gets the
    permissions the umask gives (others may read reports on a shared machine).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        with holding(tmp_path):  # locked while written: never mistaken for an abandoned one
            yield tmp_path
            os.chmod(tmp_path, _new_file_mode(target))
            os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _sibling_folder(target: Path, suffix: str) -> Path:
    """A new empty folder `.<target name>.<random><suffix>` beside `target`."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))


def _new_folder_mode() -> int:
    return 0o777 & ~_current_umask()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty folder beside `path`; on success it replaces `path` whole (an
    existing folder there is removed), else it is deleted and `path` stays as it was.

    Readers see the old folder complete or the new one complete, never a mix of both. Only
    the moment between the two renames is unprotected (a crash there leaves the old folder
    as `.<name>.<random>.old` beside the new place). Callers check that `path` may be
    replaced (it is theirs) before calling.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling_folder(target, STAGING_SUFFIX)
    try:
        with holding(staging):
            yield staging
            os.chmod(staging, _new_folder_mode())
            if not target.exists():
                os.rename(staging, target)
                return
            old = _sibling_folder(target, REPLACED_SUFFIX)
            with holding(target):  # not abandoned while it waits to be removed
                os.replace(target, old)  # onto the empty folder just made
                try:
                    os.rename(staging, target)
                except OSError:
                    os.rename(old, target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_abandoned(
    folder: str | os.PathLike[str],
    min_age_s: float = ABANDONED_MIN_AGE_S,
    name: str | None = None,
) -> list[Path]:
    """Delete the temporaries in `folder` (files and folders named `.*.tmp`, `.*.partial`,
    `.*.old`; with `name`, only those of that target) whose writer is gone: unlocked and
    older than `min_age_s`. Returns them."""
    removed = []
    now = time.time()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    suffixes = (TEMPORARY_SUFFIX, STAGING_SUFFIX, REPLACED_SUFFIX)
    start = "." if name is None else f".{name}."
    for entry in entries:
        if not (entry.name.startswith(start) and entry.name.endswith(suffixes)):
            continue
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if age < min_age_s or entry.is_symlink() or not is_abandoned(entry):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        if not entry.exists():
            log.info("removed %s, left behind by a process that ended while writing", entry)
            removed.append(entry)
    return removed


def probe_writable(folder: str | os.PathLike[str]) -> None:
    """Create and remove a file in `folder`: an OSError now (a read-only folder, a file where
    the folder should be, a full disk) instead of after minutes of work. Unlike `os.access`,
    this is also true for root, whom permission bits do not stop."""
    handle, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(handle)
    os.unlink(probe)


def megabytes(size: int) -> str:
    """A size for a message: "12.3 MB"."""
    return f"{size / 1e6:,.1f} MB"


def free_bytes(path: Path) -> int | None:
    """Free space on the disk that holds `path` (its nearest existing folder); None if unknown."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def why_not_writable(folder: Path, *, create: bool = True) -> str | None:
    """None when files can be written in `folder` (made first when `create`), else the reason
    in a few words ("Permission denied"), for an error message that also says what to do."""
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probe_writable(folder)
    except OSError as error:
        return error.strerror or str(error)
    return None

"""Atomic file writes: write beside the target, then rename, so no reader sees half a file.

Ground floor of the house (no dependency on any other package of the project).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.chmod(tmp_path, _new_file_mode(target))
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def probe_writable(folder: str | os.PathLike[str]) -> None:
    """Create and remove a file in `folder`: an OSError now (a read-only folder, a file where
    the folder should be, a full disk) instead of after minutes of work. Unlike `os.access`,
    this is also true for root, whom permission bits do not stop."""
    handle, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
    os.close(handle)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new temporary folder beside `path`; on success it takes the place of `path`
    whole (an older `path` is moved aside first, then deleted), else it is deleted.

    Readers see the old complete folder or the new complete one, never a mix of files from
    two writes: each step is one rename within the parent folder. Only between the two
    renames is there no `path` at all (a crash right then leaves the old folder beside it,
    named `.<name>.old-*`). The caller decides whether `path` may be replaced.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old: Path | None = None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_current_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)  # a fresh unused name: rename onto a folder fails on some systems
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except OSError:
            if old is not None:  # put the old folder back rather than lose both
                os.replace(old, target)
                old = None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask

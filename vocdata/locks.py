"""Advisory file locks (`fcntl.flock`) that say whether some process is still at work.

A lock held with `flock` belongs to an open file: the kernel drops it when the process ends,
`kill -9` included. That makes it the one reliable answer to "is the process that wrote this
temporary file (or is building this cache) still alive?", with no pid files that outlive
their process or name a reused pid.

On systems without `fcntl` (Windows) locking is skipped: every lock is granted and nothing
counts as abandoned, so nothing is ever deleted on a guess.

Ground floor of the house (no dependency on any other package of the project).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCKING_AVAILABLE = fcntl is not None


def try_lock(fd: int, shared: bool = False) -> bool:
    """Take a lock on the open file `fd` without waiting; False when another process holds a
    conflicting one."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def wait_lock(fd: int, shared: bool = False) -> None:
    """Take a lock on the open file `fd`, waiting as long as another process holds one."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)


def is_abandoned(path: str | os.PathLike[str]) -> bool:
    """True when no process holds a lock on `path` (a file or a folder), so the process that
    created it is gone; False while one does, or when `path` is gone or cannot be opened."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return try_lock(fd)
    finally:
        os.close(fd)  # closing drops the probe's own lock


class LockFile:
    """A lock file `path` (created if missing) held shared or exclusive by this process.

    `acquire` re-checks after locking that `path` is still the file it locked: whoever
    deletes a lock file does so while holding it exclusively, so a process that opened the
    old file just before it was deleted notices and locks the new one instead.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.shared = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, shared: bool = False, wait: bool = True, waiting_message: str = "") -> bool:
        """Lock; with `wait` False, give up (False) when another process holds it. The first
        wait logs `waiting_message` (so a long wait is explained, not a silent hang)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is locked by this object already")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not try_lock(fd, shared):
                if not wait:
                    os.close(fd)
                    return False
                if waiting_message:
                    log.warning("%s", waiting_message)
                    waiting_message = ""
                wait_lock(fd, shared)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd, self.shared = fd, shared
                return True
            os.close(fd)  # deleted (and maybe recreated) while we waited: lock the new one

    def downgrade(self) -> None:
        """Exclusive to shared. Not atomic with flock: another process may take it in
        between, so callers re-check what they protect afterwards."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not locked")
        wait_lock(self._fd, shared=True)
        self.shared = True

    def release(self, delete: bool = False) -> None:
        """Unlock; with `delete` (only while held exclusively) remove the lock file first."""
        if self._fd is None:
            return
        if delete and not self.shared:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None

    @contextlib.contextmanager
    def acquired(self, waiting_message: str = "", shared: bool = False) -> Iterator[LockFile]:
        """Hold the lock for the block (waiting for it, with `waiting_message` logged)."""
        self.acquire(shared=shared, waiting_message=waiting_message)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> LockFile:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


@contextlib.contextmanager
def holding(path: str | os.PathLike[str]) -> Iterator[int | None]:
    """Keep an exclusive lock on the existing file or folder `path` (its open descriptor is
    yielded; None where locking is unavailable) so that `is_abandoned(path)` is False until
    the block ends."""
    if fcntl is None:
        yield None
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        wait_lock(fd)  # at most a clean-up's momentary probe holds it
        yield fd
    finally:
        os.close(fd)

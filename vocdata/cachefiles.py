"""The pieces every on-disk cache needs to be trusted and shared: a lock per cache entry,
checksums of its files, and the removal of stale entries and abandoned temporaries.

A cache entry is a group of files with one prefix (`<folder>/<name>`: `<name>.u8`,
`<name>.json`, ...) and two lock files:
- `<name>.inuse`, held shared by every process that builds or reads the entry, for as long
  as it does. Stale clean-up takes it exclusively without waiting, so it never removes an
  entry another process is building or reading.
- `<name>.lock`, held exclusively by the one process (re)building the entry, so two
  processes never build the same entry at once; readers never wait for it, so a process that
  reads an entry can also rebuild it without waiting for itself.
A killed process's locks are released by the kernel.
- `file_checksums` records, at build time, the size and a CRC-32 per 4 MiB chunk of each
  file; `checksum_problem` finds an entry damaged since (zeroed, cut short, replaced).
- `remove_abandoned` (vocdata/atomic.py) deletes the temporaries of a builder that was
  killed; the live ones are locked by their writers.

Used by the image cache (vocdata/cache.py) and meant for every other cache of the project.
Ground floor of the house (no dependency on any other package of the project).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

from vocdata.atomic import remove_abandoned
from vocdata.locks import LockFile

LOCK_SUFFIX = ".lock"
IN_USE_SUFFIX = ".inuse"
CHUNK_BYTES = 4 * 2**20

__all__ = [
    "CHUNK_BYTES",
    "IN_USE_SUFFIX",
    "LOCK_SUFFIX",
    "checksum_problem",
    "entry_in_use",
    "entry_lock",
    "file_checksums",
    "remove_abandoned",
    "remove_entry",
]


def entry_lock(prefix: str | os.PathLike[str]) -> LockFile:
    """The (not yet acquired) build lock of the cache entry `prefix`: `<prefix>.lock`."""
    prefix = Path(prefix)
    return LockFile(prefix.with_name(prefix.name + LOCK_SUFFIX))


def entry_in_use(prefix: str | os.PathLike[str]) -> LockFile:
    """The (not yet acquired) in-use lock of the cache entry `prefix`: `<prefix>.inuse`,
    to be acquired shared."""
    prefix = Path(prefix)
    return LockFile(prefix.with_name(prefix.name + IN_USE_SUFFIX))


def _chunk_sums(path: Path, chunk_bytes: int) -> tuple[int, list[int]]:
    sums, size = [], 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            sums.append(zlib.crc32(chunk))
            size += len(chunk)
    return size, sums


def file_checksums(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
    """What `checksum_problem` later compares with: the size of `path` and the CRC-32 of
    every `chunk_bytes` chunk (JSON-ready)."""
    size, sums = _chunk_sums(Path(path), chunk_bytes)
    return {"size": size, "chunk_bytes": chunk_bytes, "crc32": sums}


def checksum_problem(path: str | os.PathLike[str], recorded: Any) -> str | None:
    """None when `path` still has the size and chunk checksums `recorded` at build time;
    else what is wrong, in a few words ("cut short: 10 of 20 bytes", "chunk 3 changed")."""
    path = Path(path)
    try:
        size = int(recorded["size"])
        chunk_bytes = int(recorded["chunk_bytes"])
        expected = [int(value) for value in recorded["crc32"]]
    except (KeyError, TypeError, ValueError):
        return "its recorded checksums are unreadable"
    if chunk_bytes <= 0:
        return "its recorded checksums are unreadable"
    try:
        actual_size = path.stat().st_size
        if actual_size != size:
            return f"{path.name} has {actual_size:,} bytes, {size:,} were written"
        _, sums = _chunk_sums(path, chunk_bytes)
    except OSError as error:
        return f"{path.name} cannot be read ({error.strerror or error})"
    for number, (got, want) in enumerate(zip(sums, expected, strict=False)):
        if got != want:
            return f"{path.name} changed since it was written (checksum of chunk {number})"
    if len(sums) != len(expected):
        return f"{path.name} does not match its recorded checksums"
    return None


def remove_entry(prefix: str | os.PathLike[str], suffixes: tuple[str, ...]) -> bool:
    """Delete the files `<prefix><suffix>` and the entry's locks, unless a process (this one
    included) builds or reads the entry: then nothing is touched and False is returned."""
    prefix = Path(prefix)
    in_use = entry_in_use(prefix)
    if not in_use.acquire(wait=False):
        return False
    try:
        for suffix in (*suffixes, LOCK_SUFFIX):
            prefix.with_name(prefix.name + suffix).unlink(missing_ok=True)
    finally:
        in_use.release(delete=True)
    return True

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

import glob
import hashlib
import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vocdata.atomic import remove_abandoned
from vocdata.jsonio import JsonFileError, read_json, write_json
from vocdata.locks import LockFile

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
IN_USE_SUFFIX = ".inuse"
CHUNK_BYTES = 4 * 2**20

__all__ = [
    "CHUNK_BYTES",
    "IN_USE_SUFFIX",
    "LOCK_SUFFIX",
    "MANIFEST_SUFFIX",
    "CacheEntry",
    "checksum_problem",
    "entry_in_use",
    "entry_lock",
    "entry_problem",
    "file_checksums",
    "open_entry",
    "remove_abandoned",
    "remove_entry",
    "remove_stale_entries",
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


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a whole file, read in 1 MiB blocks (a weights file, an exported network)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# -- one verified entry, opened or built ---------------------------------------------------------
MANIFEST_SUFFIX = ".manifest.json"  # written last: an entry without it is incomplete
MISSING = "missing"


def entry_problem(prefix: Path, key: str, suffixes: tuple[str, ...]) -> str | None:
    """None when the entry `prefix` was completed for `key` and its files still match the
    checksums its manifest recorded; else what is wrong (MISSING when it was never built)."""
    manifest = prefix.with_name(prefix.name + MANIFEST_SUFFIX)
    if not manifest.is_file():
        return MISSING
    try:
        recorded = read_json(manifest, "a cache manifest", dict)
    except JsonFileError:
        return "its manifest is unreadable"
    if recorded.get("key") != key:
        return "it was made from other inputs"
    files = recorded.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(suffixes):
        return "its manifest lists other files"
    for suffix in suffixes:
        problem = checksum_problem(prefix.with_name(prefix.name + suffix), files[suffix])
        if problem is not None:
            return problem
    return None


@dataclass
class CacheEntry:
    """An entry opened for reading: its files stay until `release` (the in-use lock)."""

    prefix: Path
    in_use: LockFile
    built: bool  # built (or rebuilt) by this call

    def file(self, suffix: str) -> Path:
        return self.prefix.with_name(self.prefix.name + suffix)

    def release(self) -> None:
        self.in_use.release()


def open_entry(
    prefix: Path,
    key: str,
    suffixes: tuple[str, ...],
    build: Callable[[Path], None],
    what: str,
) -> CacheEntry:
    """The cache entry `prefix` for `key`, verified, or (re)built by `build(prefix)`.

    `build` writes the files `<prefix><suffix>` (atomically); the manifest with their
    checksums is written after them. A damaged entry (changed, cut short, half written) is
    rebuilt with a warning naming it; two processes never build one entry at once (the second
    waits, then finds it built); no clean-up removes an entry while it is open. `what` names
    the cache in messages ("the feature cache").
    """
    prefix.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(prefix.parent)
    in_use = entry_in_use(prefix)
    in_use.acquire(shared=True)
    try:
        problem = entry_problem(prefix, key, suffixes)
        if problem is not None:
            waiting = f"waiting for another process that is building {what} {prefix}"
            with entry_lock(prefix).acquired(waiting):
                problem = entry_problem(prefix, key, suffixes)  # built while we waited?
                if problem is not None:
                    if problem != MISSING:
                        log.warning("%s %s is damaged (%s): rebuilding it", what, prefix, problem)
                    manifest = prefix.with_name(prefix.name + MANIFEST_SUFFIX)
                    manifest.unlink(missing_ok=True)  # incomplete from now on
                    build(prefix)
                    files = {
                        suffix: file_checksums(prefix.with_name(prefix.name + suffix))
                        for suffix in suffixes
                    }
                    write_json(manifest, {"key": key, "files": files})
        return CacheEntry(prefix, in_use, built=problem is not None)
    except BaseException:
        in_use.release()
        raise


def remove_stale_entries(
    folder: Path, family: str, keep: Path, suffixes: tuple[str, ...]
) -> list[str]:
    """Remove the entries `<family>-<16 hex digits>` of `folder` other than `keep` (outdated
    keys of the same inputs' family), unless a process still uses them; returns their names."""
    pattern = re.compile(re.escape(family) + r"-[0-9a-f]{16}")
    all_suffixes = (*suffixes, MANIFEST_SUFFIX, LOCK_SUFFIX, IN_USE_SUFFIX)
    names = set()
    for path in folder.glob(f"{glob.escape(family)}-*"):
        for suffix in all_suffixes:
            if path.name.endswith(suffix):
                names.add(path.name.removesuffix(suffix))
    removed = []
    for name in sorted(n for n in names if pattern.fullmatch(n) and n != keep.name):
        if remove_entry(folder / name, (*suffixes, MANIFEST_SUFFIX)):
            removed.append(name)
    return removed

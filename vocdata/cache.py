"""A one-time cache of decoded images, resized so their shorter side is the evaluation scale.

Decoding JPEGs and resizing them is most of the CPU work per sample. The cache stores every
image of a split once as raw uint8 pixels in one memory-mapped file, so later epochs and
later runs skip both. Validation reads exactly the pixels the uncached path computes (the
same resize, then a crop), so predictions do not change; training crops come from the
resized image instead of the original, an equivalent augmentation.

Files in the cache folder, per dataset, split and scale:
`<split>-<side>px-<dataset>-<key>.u8` (pixels), `.index.npy` (offset, height, width per
image), `.json` (what the key was made of, and the checksums of the other two; written last,
so a cache without it is incomplete and never used), `.inuse` and `.lock` (the locks of
vocdata/cachefiles.py: held shared by every process using the cache, and by the one process
building it). `<dataset>`
is a digest of the dataset root, so runs on different datasets sharing a cache folder never
touch each other's caches. The key covers the dataset root, the scale, the list of files and
each file's size and modification time: when any of them changes, the cache is rebuilt and
the outdated one of the same dataset removed, unless another process still uses it.

Every open verifies the cache (sizes, the index, the file list and a CRC-32 per 4 MiB of
pixels: about 0.2 s per GB, see docs): a damaged cache is rebuilt with a warning, never read.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.transforms import v2
from tqdm import tqdm

from vocdata.atomic import atomic_write, free_bytes
from vocdata.cachefiles import (
    IN_USE_SUFFIX,
    LOCK_SUFFIX,
    checksum_problem,
    entry_in_use,
    entry_lock,
    file_checksums,
    remove_abandoned,
    remove_entry,
)
from vocdata.errors import CacheError
from vocdata.images import open_rgb
from vocdata.jsonio import JsonFileError, read_json, write_json
from vocdata.locks import LockFile

log = logging.getLogger(__name__)

# 2: images opened through vocdata.images.open_rgb with EXIF orientation and exact mode
# conversion (other pixels for some images); checksums; the dataset digest in the name.
CACHE_VERSION = 2
PIXELS_SUFFIX = ".u8"
INDEX_SUFFIX = ".index.npy"
META_SUFFIX = ".json"
ENTRY_SUFFIXES = (PIXELS_SUFFIX, INDEX_SUFFIX, META_SUFFIX)
_MISSING = "not built yet"


def cache_key(voc_root: Path, relative_paths: Sequence[str], shorter_side: int) -> str:
    """Digest of everything the cached pixels depend on."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{Path(voc_root).resolve()}|{shorter_side}".encode())
    for relative in relative_paths:
        stat = (Path(voc_root) / relative).stat()
        digest.update(f"\n{relative}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def dataset_digest(voc_root: Path) -> str:
    """8 hex digits naming the dataset root in cache file names."""
    return hashlib.sha256(str(Path(voc_root).resolve()).encode()).hexdigest()[:8]


def _file(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


class ImageCache:
    """Read side: `array(i)` is image i as an (H, W, 3) uint8 view into the memory map.

    Holds the cache's in-use lock while open (`close()` releases it), so no other process
    removes the files under it; loader workers receive the path, not the pixels or the lock.
    """

    def __init__(self, prefix: Path, lock: LockFile | None = None) -> None:
        self.prefix = Path(prefix)
        self.meta = read_json(_file(self.prefix, META_SUFFIX), "an image cache's .json", dict)
        self.index = np.load(_file(self.prefix, INDEX_SUFFIX), allow_pickle=False)
        self._pixels: np.memmap | None = None
        self._lock = lock

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # Loader workers re-open the map instead of receiving a pickled copy of the pixels.
        return {**self.__dict__, "_pixels": None, "_lock": None}

    @property
    def relative_paths(self) -> list[str]:
        return self.meta["files"]

    def array(self, i: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(_file(self.prefix, PIXELS_SUFFIX), dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.index[i])
        return self._pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(np.array(self.array(i)))

    def close(self) -> None:
        """Let other processes replace or remove the cache again."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _resized(path: Path, resize: v2.Resize) -> np.ndarray:
    return np.asarray(resize(open_rgb(path)))


def _build(
    prefix: Path,
    voc_root: Path,
    relative_paths: Sequence[str],
    shorter_side: int,
    key: str,
    workers: int,
    progress: bool,
) -> None:
    resize = v2.Resize(shorter_side, antialias=True)  # the eval transform's own first step
    index = np.zeros((len(relative_paths), 3), dtype=np.int64)
    offset = 0
    with (
        atomic_write(_file(prefix, PIXELS_SUFFIX)) as tmp,
        open(tmp, "wb") as handle,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
    ):
        arrays = pool.map(
            _resized, (voc_root / r for r in relative_paths), [resize] * len(relative_paths)
        )
        for i, pixels in enumerate(
            tqdm(
                arrays,
                total=len(relative_paths),
                unit="img",
                desc=f"caching {prefix.name}",
                disable=not progress,
            )
        ):
            handle.write(np.ascontiguousarray(pixels).tobytes())
            index[i] = (offset, pixels.shape[0], pixels.shape[1])
            offset += pixels.size
    with atomic_write(_file(prefix, INDEX_SUFFIX)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, index)
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "voc_root": str(Path(voc_root).resolve()),
        "shorter_side": shorter_side,
        "bytes": offset,
        "files": list(relative_paths),
        "checksums": {
            suffix: file_checksums(_file(prefix, suffix))
            for suffix in (PIXELS_SUFFIX, INDEX_SUFFIX)
        },
    }
    write_json(_file(prefix, META_SUFFIX), meta)


def _index_problem(index: Any, count: int, total: int) -> str | None:
    """None when `index` is (count, 3) int64 rows of consecutive (offset, height, width)."""
    if not isinstance(index, np.ndarray) or index.dtype != np.int64 or index.shape != (count, 3):
        return "its index does not match its file list"
    sizes = index[:, 1] * index[:, 2] * 3
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if count else np.zeros(0, np.int64)
    if (index[:, 1:] <= 0).any() or not np.array_equal(index[:, 0], starts):
        return "its index is inconsistent"
    if int(sizes.sum()) != total:
        return "its index does not add up to its pixel file"
    return None


def cache_problem(prefix: Path, key: str, relative_paths: Sequence[str]) -> str | None:
    """None when the cache at `prefix` is complete, for these files, and undamaged; else
    what is wrong with it (`_MISSING` when it was never completed)."""
    meta_file = _file(prefix, META_SUFFIX)
    if not meta_file.is_file():
        return _MISSING
    try:
        meta = read_json(meta_file, "an image cache's .json", dict)
    except JsonFileError:
        return f"{meta_file.name} is not valid JSON"
    if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
        return f"{meta_file.name} belongs to another cache"
    if meta.get("files") != list(relative_paths):
        return f"{meta_file.name} lists other files than this split"
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict):
        return f"{meta_file.name} records no checksums"
    for suffix in (INDEX_SUFFIX, PIXELS_SUFFIX):  # the small file first
        problem = checksum_problem(_file(prefix, suffix), checksums.get(suffix))
        if problem:
            return problem
    try:
        index = np.load(_file(prefix, INDEX_SUFFIX), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return "its index is not a NumPy array"
    return _index_problem(index, len(relative_paths), _file(prefix, PIXELS_SUFFIX).stat().st_size)


def _entry_name(file_name: str) -> str | None:
    """The entry (prefix) name of one of a cache's files, or None for any other file."""
    for suffix in (*ENTRY_SUFFIXES, LOCK_SUFFIX, IN_USE_SUFFIX):
        if file_name.endswith(suffix):
            return file_name.removesuffix(suffix)
    return None


def _remove_stale(cache_dir: Path, family: str, keep: Path, stem: str) -> None:
    """Remove the other caches of this dataset, split and scale (outdated keys), and caches
    of version 1 of this split and scale, unless a process still uses them."""
    outdated = re.compile(re.escape(family) + r"-[0-9a-f]{16}")
    version_1 = re.compile(re.escape(stem) + r"-[0-9a-f]{16}")
    names = {_entry_name(path.name) for path in cache_dir.glob(f"{glob.escape(stem)}-*")}
    for name in sorted(n for n in names if n and n != keep.name):
        if not (outdated.fullmatch(name) or version_1.fullmatch(name)):
            continue  # another dataset's cache, or not a cache
        if remove_entry(cache_dir / name, ENTRY_SUFFIXES):
            log.info("removed the outdated image cache %s", name)
        else:
            log.debug("kept the outdated image cache %s: it is in use", name)


def _cache_error(path: Path, error: OSError, needed: int | None = None) -> CacheError:
    space = ""
    if needed is not None:
        space = f" (the cache needs about {needed / 1e6:,.0f} MB"
        try:
            space += f", {(free_bytes(path.parent) or 0) / 1e6:,.0f} MB are free there)"
        except OSError:
            space += ")"
    return CacheError(
        f"Cannot write the image cache {path}: {error.strerror or error}{space}. Free some "
        f"space, or pass --cache-dir with another folder (none: no image cache)"
    )


def _estimated_bytes(
    voc_root: Path, relative_paths: Sequence[str], shorter_side: int
) -> int | None:
    """Pixels of the first image at the cache's scale, times the number of images."""
    try:
        with Image.open(voc_root / relative_paths[0]) as image:
            width, height = image.size
    except (IndexError, OSError, ValueError):
        return None
    scale = shorter_side / max(1, min(width, height))
    return round(width * scale) * round(height * scale) * 3 * len(relative_paths)


def open_or_build_cache(
    cache_dir: str | os.PathLike[str],
    split_name: str,
    voc_root: Path,
    relative_paths: Sequence[str],
    shorter_side: int,
    workers: int = 8,
    progress: bool = True,
) -> ImageCache:
    """The cache for these images at this scale: reused when its key matches and it is
    undamaged, else built (a damaged one with a warning). Errors are CacheError naming the
    cache path."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_abandoned(cache_dir)
    except OSError as error:
        raise _cache_error(cache_dir, error) from None
    key = cache_key(voc_root, relative_paths, shorter_side)
    stem = f"{split_name}-{shorter_side}px"
    family = f"{stem}-{dataset_digest(voc_root)}"
    prefix = cache_dir / f"{family}-{key[:16]}"
    in_use = entry_in_use(prefix)
    try:
        in_use.acquire(shared=True)  # from now on no clean-up removes this cache
    except OSError as error:
        raise _cache_error(in_use.path, error) from None
    try:
        problem = cache_problem(prefix, key, relative_paths)
        if problem is None:
            log.info("image cache hit: %s", prefix.name)
        else:
            waiting = f"waiting for another process that is building the image cache {prefix}"
            with entry_lock(prefix).acquired(waiting):
                problem = cache_problem(prefix, key, relative_paths)  # built while we waited?
                if problem is not None:
                    arguments = (voc_root, relative_paths, shorter_side, key, workers, progress)
                    _rebuild(prefix, problem, *arguments)
        _remove_stale(cache_dir, family, prefix, stem)
        cache = ImageCache(prefix, in_use)
    except BaseException:
        in_use.release()
        raise
    if problem is not None:
        log.info("image cache %s: %.0f MB", prefix.name, cache.meta["bytes"] / 1e6)
    return cache


def _rebuild(
    prefix: Path,
    problem: str,
    voc_root: Path,
    relative_paths: Sequence[str],
    shorter_side: int,
    key: str,
    workers: int,
    progress: bool,
) -> None:
    """Build the cache at `prefix` (held exclusively), replacing whatever is there."""
    if problem == _MISSING:
        log.info("image cache miss: decoding %d images once into %s", len(relative_paths), prefix)
    else:
        log.warning("the image cache %s is damaged (%s): rebuilding it", prefix, problem)
    try:
        for suffix in ENTRY_SUFFIXES[::-1]:  # the .json first: incomplete from now on
            _file(prefix, suffix).unlink(missing_ok=True)
        _build(prefix, voc_root, relative_paths, shorter_side, key, workers, progress)
    except OSError as error:  # writing (an unreadable image is an ImageReadError)
        needed = _estimated_bytes(voc_root, relative_paths, shorter_side)
        raise _cache_error(_file(prefix, PIXELS_SUFFIX), error, needed) from None

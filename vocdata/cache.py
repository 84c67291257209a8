"""A one-time cache of decoded images, resized so their shorter side is the evaluation scale.

Decoding JPEGs and resizing them is most of the CPU work per sample. The cache stores every
image of a split once as raw uint8 pixels in one memory-mapped file, so later epochs and
later runs skip both. Validation reads exactly the pixels the uncached path computes (the
same resize, then a crop), so predictions do not change; training crops come from the
resized image instead of the original, an equivalent augmentation.

Files in the cache folder, per split and scale: `<split>-<side>px-<key>.u8` (pixels),
`.index.npy` (offset, height, width per image) and `.json` (what the key was made of),
written last, so a cache without its `.json` is incomplete and never used. The key covers the
dataset root, the scale, the list of files and each file's size and modification time: when
any of them changes, the cache is rebuilt (and the outdated one removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import v2
from tqdm import tqdm

from vocdata.atomic import atomic_write
from vocdata.images import open_rgb

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def cache_key(voc_root: Path, relative_paths: Sequence[str], shorter_side: int) -> str:
    """Digest of everything the cached pixels depend on."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{Path(voc_root).resolve()}|{shorter_side}".encode())
    for relative in relative_paths:
        stat = (Path(voc_root) / relative).stat()
        digest.update(f"\n{relative}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class ImageCache:
    """Read side: `array(i)` is image i as an (H, W, 3) uint8 view into the memory map."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)
        self.meta = json.loads(self.prefix.with_suffix(".json").read_text())
        self.index = np.load(self.prefix.with_suffix(".index.npy"))
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # Loader workers re-open the map instead of receiving a pickled copy of the pixels.
        return {"prefix": self.prefix, "meta": self.meta, "index": self.index, "_pixels": None}

    @property
    def relative_paths(self) -> list[str]:
        return self.meta["files"]

    def array(self, i: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.prefix.with_suffix(".u8"), dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.index[i])
        return self._pixels[offset : offset + height * width * 3].reshape(height, width, 3)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(np.array(self.array(i)))


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
        atomic_write(prefix.with_suffix(".u8")) as tmp,
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
    with atomic_write(prefix.with_suffix(".index.npy")) as tmp, open(tmp, "wb") as handle:
        np.save(handle, index)
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "voc_root": str(Path(voc_root).resolve()),
        "shorter_side": shorter_side,
        "bytes": offset,
        "files": list(relative_paths),
    }
    with atomic_write(prefix.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta))


def open_or_build_cache(
    cache_dir: str | os.PathLike[str],
    split_name: str,
    voc_root: Path,
    relative_paths: Sequence[str],
    shorter_side: int,
    workers: int = 8,
    progress: bool = True,
) -> ImageCache:
    """The cache for these images at this scale: reused when its key matches, else built."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(voc_root, relative_paths, shorter_side)
    stem = f"{split_name}-{shorter_side}px"
    prefix = cache_dir / f"{stem}-{key[:16]}"
    meta_file = prefix.with_suffix(".json")
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("key") == key:
        log.info("image cache hit: %s", prefix.name)
        return ImageCache(prefix)
    log.info(
        "image cache miss: decoding %d %s images once into %s",
        len(relative_paths),
        split_name,
        cache_dir,
    )
    _build(prefix, voc_root, relative_paths, shorter_side, key, workers, progress)
    for stale in cache_dir.glob(f"{stem}-*"):
        if not stale.name.startswith(prefix.name):
            stale.unlink(missing_ok=True)
    cache = ImageCache(prefix)
    log.info("image cache %s: %.0f MB", prefix.name, cache.meta["bytes"] / 1e6)
    return cache

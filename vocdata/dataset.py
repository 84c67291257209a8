"""The torch Dataset: one sample per image, with its 20-dim target and difficult mask."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vocdata.cache import ImageCache
from vocdata.errors import ImageReadError
from vocdata.images import SKIP_HINT, find_bad_images, open_rgb
from vocdata.splits import DifficultMode, VocSplit, read_split
from vocdata.transforms import Transform

log = logging.getLogger(__name__)

SampleKey = int | tuple[int, int]


class VocClassification(Dataset):
    """Samples `(image uint8 CHW, target float32 (20,), mask float32 (20,), index)`.

    `index` is the row in the split, so predictions can be put back in split order whatever
    the sampler (shuffling, several processes). A key may also be `(index, seed)`: the
    augmentation is then drawn from that seed alone, which makes every crop independent of
    worker count, process count and resumption (see `training.sampling`).
    """

    def __init__(
        self,
        voc_root: str | os.PathLike[str],
        split: VocSplit,
        difficult: DifficultMode | str,
        transform: Transform,
        image_cache: ImageCache | None = None,
    ) -> None:
        if image_cache is not None and image_cache.relative_paths != split.relative_paths:
            raise ValueError("the image cache was built for other files than this split")
        self.image_cache = image_cache
        self.voc_root = Path(voc_root)
        self.split = split
        self.difficult = DifficultMode(difficult)
        self.transform = transform
        targets, mask = split.targets_and_mask(self.difficult)
        self.targets = torch.from_numpy(targets)
        self.mask = torch.from_numpy(mask)
        self.relative_paths = split.relative_paths

    def __len__(self) -> int:
        return len(self.split)

    def load_image(self, index: int):
        """The decoded RGB image of row `index` (a PIL image), from the cache if there is one."""
        if self.image_cache is not None:
            return self.image_cache.image(index)
        return open_rgb(self.voc_root / self.relative_paths[index])

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.load_image(index)
        if seed is None:
            pixels = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                pixels = self.transform(image)
        return pixels, self.targets[index], self.mask[index], index


def load_split_checked(
    voc_root: Path, split_name: str, skip_bad_images: bool = False, workers: int = 8
) -> VocSplit:
    """Read a split and test-decode every one of its images before any training starts.

    A missing or undecodable image is an error naming it (found in seconds, not in the middle
    of epoch 3), unless `skip_bad_images`: then such images are dropped, counted and logged.
    The check decodes JPEGs at 1/8 scale, about half a millisecond per image.
    """
    split = read_split(voc_root, split_name)
    bad = find_bad_images(voc_root, split.relative_paths, workers)
    if not bad:
        return split
    if not skip_bad_images:
        shown = "; ".join(f"{rel}: {reason}" for rel, reason in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ImageReadError(
            f"{len(bad)} image(s) of the {split_name} split under {voc_root} cannot be read: "
            f"{shown}{more}. Restore or replace them, or {SKIP_HINT}."
        )
    for rel, reason in bad:
        log.warning("skipping %s image %s: %s", split_name, rel, reason)
    log.warning("skipped %d of %d %s images", len(bad), len(split), split_name)
    bad_set = {rel for rel, _ in bad}
    return split.subset(np.array([rel not in bad_set for rel in split.relative_paths]))

"""A plain folder of photos (no labels) as a dataset: every JPEG/PNG under it, in sorted order.

Used to score new images with a trained model. Names are stored relative to the folder, the
same convention as VOC names relative to the dataset root, so the GUI and the evaluation find
the images through one `voc_root`-style setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vocdata.errors import VocDataError
from vocdata.images import find_bad_images, open_rgb
from vocdata.transforms import Transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NOT_AN_IMAGE = "not a JPEG or PNG file"


@dataclass(frozen=True)
class ImageFolderListing:
    """The readable images of a folder (relative names, sorted) and what was left out, why."""

    root: Path
    relative_paths: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (relative name, reason)


def list_image_folder(folder: str | os.PathLike[str], workers: int = 8) -> ImageFolderListing:
    """Every JPEG/PNG under `folder` (recursively) that decodes, sorted by relative name.

    Other files and images that do not decode are skipped and named in `skipped`, never a
    crash: a folder of holiday photos often holds a stray video, a .txt or a broken download.
    A folder with nothing to score is an error.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VocDataError(f"Image folder not found: {root}. Pass --images an existing folder.")
    candidates, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() in IMAGE_SUFFIXES:
            candidates.append(relative)
        else:
            skipped.append((relative, NOT_AN_IMAGE))
    bad = dict(find_bad_images(root, candidates, workers))
    skipped += [(relative, bad[relative]) for relative in candidates if relative in bad]
    readable = tuple(relative for relative in candidates if relative not in bad)
    if not readable:
        found = f"{len(skipped)} file(s), none a readable JPEG/PNG" if skipped else "no files"
        raise VocDataError(
            f"Nothing to score in {root}: {found}. Point --images at a folder that holds "
            f"JPEG or PNG photos (sub-folders are searched too)."
        )
    return ImageFolderListing(root, readable, tuple(sorted(skipped)))


class ImageFolderDataset(Dataset):
    """Samples shaped like `VocClassification`'s, `(image, target, mask, index)`, with an
    all-zero mask: the same prediction loop runs on labelled and unlabelled images, and no
    (image, class) pair counts towards a loss."""

    def __init__(
        self, root: Path, relative_paths: tuple[str, ...], transform: Transform, num_classes: int
    ) -> None:
        self.root = Path(root)
        self.relative_paths = relative_paths
        self.transform = transform
        self._zeros = torch.zeros(num_classes)

    def __len__(self) -> int:
        return len(self.relative_paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        pixels = self.transform(open_rgb(self.root / self.relative_paths[index]))
        return pixels, self._zeros, self._zeros, index

"""Write a tiny but genuine-layout VOC tree: JPEGImages, ImageSets/Main split and class files.

Images are small generated JPEGs in which each present class paints its own colour patch, so
a model can learn something from them. The ground truth is returned for exact assertions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vocdata.classes import VOC_CLASSES


@dataclass
class TinyVoc:
    root: Path
    ids: dict[str, list[str]]  # split -> sorted ids
    labels: dict[str, np.ndarray]  # split -> (N, 20) int8 in {1, 0, -1}

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"


def _class_colour(column: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(1000 + column)
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _write_image(path: Path, row: np.ndarray, rng: np.random.Generator) -> None:
    height, width = (int(v) for v in rng.choice([(40, 56), (56, 40), (48, 48)]))
    pixels = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
    for column in np.flatnonzero(row >= 0):
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        pixels[top : top + height // 2, left : left + width // 2] = _class_colour(column)
    Image.fromarray(pixels).save(path, quality=90)


def _random_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.full((n, len(VOC_CLASSES)), -1, dtype=np.int8)
    for row in labels:
        present = rng.choice(len(VOC_CLASSES), size=int(rng.integers(1, 4)), replace=False)
        row[present] = 1
        if rng.random() < 0.3:  # some classes present only as difficult objects
            row[present[0]] = 0
    return labels


def write_tiny_voc(root: Path, n_train: int = 24, n_val: int = 16, seed: int = 0) -> TinyVoc:
    """Create the tree under `root` (which ends up holding ImageSets/ and JPEGImages/)."""
    rng = np.random.default_rng(seed)
    main = root / "ImageSets" / "Main"
    images = root / "JPEGImages"
    main.mkdir(parents=True)
    images.mkdir(parents=True)
    all_ids = [f"2008_{i:06d}" for i in range(1, n_train + n_val + 1)]
    shuffled = list(rng.permutation(all_ids))  # split membership is not in id order
    ids = {"train": sorted(shuffled[:n_train]), "val": sorted(shuffled[n_train:])}
    ids["trainval"] = sorted(ids["train"] + ids["val"])
    labels = {split: _random_labels(len(ids[split]), rng) for split in ("train", "val")}
    row_of = {i: ("train", r) for r, i in enumerate(ids["train"])}
    row_of.update({i: ("val", r) for r, i in enumerate(ids["val"])})
    labels["trainval"] = np.stack([labels[s][r] for s, r in (row_of[i] for i in ids["trainval"])])
    for split in ("train", "val"):
        for image_id, row in zip(ids[split], labels[split], strict=True):
            _write_image(images / f"{image_id}.jpg", row, rng)
    for split, split_ids in ids.items():
        # the real files are not sorted by id either
        order = rng.permutation(len(split_ids))
        (main / f"{split}.txt").write_text("".join(f"{split_ids[k]}\n" for k in order))
        for column, name in enumerate(VOC_CLASSES):
            lines = [f"{split_ids[k]} {labels[split][k, column]:2d}\n" for k in order]
            (main / f"{name}_{split}.txt").write_text("".join(lines))
    return TinyVoc(root=root, ids=ids, labels=labels)


def tiny_run_args(voc_root: Path, runs_dir: Path, *extra: str) -> list[str]:
    """main_train.py options for a fast run on the fixture; the image cache (on by default)
    goes beside the runs, never into the project."""
    return [
        *("--voc-root", str(voc_root), "--runs-dir", str(runs_dir)),
        *("--cache-dir", str(runs_dir.parent / "cache")),
        *("--weights", "none", "--image-size", "32", "--batch-size", "8", "--workers", "0"),
        *("--no-progress", "--no-download"),
        *extra,
    ]

"""Parse `ImageSets/Main` into one record per image: the official splits with 20-dim labels.

VOC ships one file per class and split (`<class>_<split>.txt`, lines `<image id> <label>`),
with label `1` (present), `-1` (absent) or `0` (present only as objects marked difficult).
Reading them per class and joining on the image id gives one row per image and never one
sample per (image, class) pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from vocdata.classes import VOC_CLASSES
from vocdata.errors import VocDataError, VocRootNotFoundError
from vocdata.paths import is_plain_name, resolve_project_path

DEFAULT_VOC_ROOT = "data/VOCdevkit/VOC2012"
VOC_ROOT_ENV = "VOC_ROOT"
SPLITS = ("train", "val", "trainval")
POSITIVE, DIFFICULT, NEGATIVE = 1, 0, -1


class DifficultMode(StrEnum):
    """How an image whose only objects of class c are marked difficult (label 0) counts for c.

    - `ignore` (the VOC protocol, default): left out of class c's loss and of its AP.
    - `positive`: counted as containing c.
    - `negative`: counted as not containing c.
    """

    IGNORE = "ignore"
    POSITIVE = "positive"
    NEGATIVE = "negative"


def resolve_voc_root(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """The one dataset-root setting: `--voc-root`, else `$VOC_ROOT`, else the default.

    Relative paths are taken relative to the project root.
    """
    value = cli_value or os.environ.get(VOC_ROOT_ENV) or DEFAULT_VOC_ROOT
    return resolve_project_path(value)


def image_relative_path(image_id: str) -> str:
    """Where VOC keeps an image, relative to the dataset root (stored in every output file)."""
    return f"JPEGImages/{image_id}.jpg"


@dataclass(frozen=True)
class VocSplit:
    """One official split: sorted image ids and their (N, 20) int8 labels in {1, 0, -1}."""

    name: str
    image_ids: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...] = VOC_CLASSES

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.image_ids), len(self.class_names)):
            raise ValueError(
                f"labels have shape {self.labels.shape}, expected "
                f"({len(self.image_ids)}, {len(self.class_names)})"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def relative_paths(self) -> list[str]:
        """Image file names relative to the dataset root, in split order."""
        return [image_relative_path(image_id) for image_id in self.image_ids]

    def targets_and_mask(self, difficult: DifficultMode | str) -> tuple[np.ndarray, np.ndarray]:
        """Float32 multi-hot targets and the loss/AP mask (1 = counts) under a difficult mode."""
        return targets_and_mask(self.labels, difficult)

    def subset(self, keep: np.ndarray) -> VocSplit:
        """The split restricted to the rows where `keep` is true (order preserved)."""
        keep = np.asarray(keep, dtype=bool)
        ids = tuple(i for i, k in zip(self.image_ids, keep, strict=True) if k)
        return VocSplit(self.name, ids, self.labels[keep], self.class_names)


def targets_and_mask(
    labels: np.ndarray, difficult: DifficultMode | str
) -> tuple[np.ndarray, np.ndarray]:
    """Turn VOC labels {1, 0, -1} into (targets, mask) float32 arrays of the same shape."""
    mode = DifficultMode(difficult)
    labels = np.asarray(labels)
    targets = labels >= DIFFICULT if mode is DifficultMode.POSITIVE else labels == POSITIVE
    if mode is DifficultMode.IGNORE:
        mask = labels != DIFFICULT
    else:
        mask = np.ones(labels.shape, dtype=bool)
    return targets.astype(np.float32), mask.astype(np.float32)


def describe_missing_root(voc_root: Path) -> str:
    """Why `voc_root` is not a VOC tree: absent, empty, or holding something else."""
    voc_root = Path(voc_root)
    if not voc_root.exists():
        return f"VOC root not found at {voc_root}"
    if not voc_root.is_dir():
        return f"VOC root {voc_root} is a file, not a folder"
    entries = sorted(p.name for p in voc_root.iterdir())
    if not entries:
        return f"VOC root {voc_root} exists but is empty (no ImageSets/Main)"
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    return f"VOC root {voc_root} has no ImageSets/Main (it holds {shown})"


def main_dir(voc_root: Path) -> Path:
    """`ImageSets/Main` under the root, or a clear error when the root is not a VOC tree."""
    main = Path(voc_root) / "ImageSets" / "Main"
    if not main.is_dir():
        raise VocRootNotFoundError(
            f"{describe_missing_root(voc_root)}. Set --voc-root or "
            f"{VOC_ROOT_ENV} to the folder that holds ImageSets/ and JPEGImages/ (usually "
            f".../VOCdevkit/VOC2012), or let main_train.py download it (no --no-download)."
        )
    return main


def _read_lines(path: Path) -> list[str]:
    """The lines of a split or class file; a UTF-8 byte-order mark (Windows editors) is
    dropped, so it cannot glue itself to the first image id."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise VocDataError(f"{path} is not a UTF-8 text file ({error}).") from error


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise VocDataError(f"Split file missing: {path}. The VOC tree looks incomplete.")
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if not is_plain_name(image_id):
            raise VocDataError(
                f"{path}:{number}: {image_id[:80]!r} is not an image id (letters, digits and "
                f"_ - . only): an id names a file in JPEGImages/, never a path elsewhere."
            )
        if image_id in first_line:
            raise VocDataError(
                f"{path}:{number}: image {image_id} is listed again (first on line "
                f"{first_line[image_id]}); remove one of the two lines."
            )
        first_line[image_id] = number
        ids.append(image_id)
    return ids


def _read_class_file(
    path: Path, split_file: Path, row_of: dict[str, int], column: np.ndarray
) -> None:
    """Fill `column` (one class, all images) from `<class>_<split>.txt`, validating each line."""
    if not path.is_file():
        raise VocDataError(f"Class file missing: {path}. Every class needs one per split.")
    seen = np.zeros(len(row_of), dtype=bool)
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
            raise VocDataError(
                f"{path}:{number}: expected '<image id> <label>' with label 1, 0 or -1, "
                f"got {line!r}"
            )
        row = row_of.get(fields[0])
        if row is None:
            raise VocDataError(
                f"{path}:{number}: image {fields[0]} is not listed in the split file {split_file}."
            )
        if seen[row]:
            raise VocDataError(f"{path}:{number}: image {fields[0]} is listed twice.")
        seen[row] = True
        column[row] = int(fields[1])
    if not seen.all():
        missing = [image_id for image_id, row in row_of.items() if not seen[row]]
        raise VocDataError(
            f"{path} has no label for {len(missing)} image(s) of the split, e.g. {missing[0]}."
        )


def _check_no_unknown_class_files(main: Path, split: str, class_names: tuple[str, ...]) -> None:
    suffix = f"_{split}.txt"
    for path in sorted(main.glob(f"*{suffix}")):
        name = path.name[: -len(suffix)]
        if name not in class_names:
            raise VocDataError(
                f"Unknown class file {path}: '{name}' is not one of the 20 VOC classes "
                f"({', '.join(class_names)}). Remove it or fix its name."
            )


def read_split(voc_root: str | os.PathLike[str], split: str) -> VocSplit:
    """Read a split of a VOC tree: an official one (`train`, `val`, `trainval`) or any other
    that has its files in `ImageSets/Main` (VOC2007's `test`, a user's own).

    Image ids come from `ImageSets/Main/<split>.txt`, sorted for a deterministic order; labels
    from the 20 `<class>_<split>.txt` files, which must agree with that list exactly.
    """
    if not split or any(sep in split for sep in ("/", "\\")) or split.startswith("."):
        raise VocDataError(f"A split is a plain name like {', '.join(SPLITS)}; got {split!r}.")
    main = main_dir(Path(voc_root))
    split_file = main / f"{split}.txt"
    if split not in SPLITS and not split_file.is_file():
        available = sorted(path.stem for path in main.glob("*.txt") if "_" not in path.stem)
        raise VocDataError(
            f"No split '{split}' in {main} (no {split_file.name}). Splits there: "
            f"{', '.join(available) or 'none'}."
        )
    image_ids = sorted(_read_id_list(split_file))
    if not image_ids:
        raise VocDataError(f"{split_file} lists no images.")
    _check_no_unknown_class_files(main, split, VOC_CLASSES)
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    labels = np.empty((len(image_ids), len(VOC_CLASSES)), dtype=np.int8)
    for column, class_name in enumerate(VOC_CLASSES):
        _read_class_file(main / f"{class_name}_{split}.txt", split_file, row_of, labels[:, column])
    return VocSplit(split, tuple(image_ids), labels)


def check_disjoint(train: VocSplit, val: VocSplit, main: Path) -> None:
    """An image in both splits would be validated after being trained on (leakage)."""
    shared = sorted(set(train.image_ids) & set(val.image_ids))
    if shared:
        more = f" (and {len(shared) - 5} more)" if len(shared) > 5 else ""
        shown = ", ".join(shared[:5]) + more
        raise VocDataError(
            f"{len(shared)} image id(s) are listed in both {main / 'train.txt'} and "
            f"{main / 'val.txt'}: {shown}. Validation must not see training images; remove "
            f"them from one of the two splits."
        )

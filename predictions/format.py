"""Write and read predictions files (`.npz`, no pickle), validating everything on load.

Layout of the archive (N images, C classes):
- `scores`       float32 (N, C), sigmoid probabilities in [0, 1]
- `labels`       int8    (N, C), VOC labels: 1 present, 0 difficult, -1 absent. Absent from
                                 the archive when the images have no labels (version 2 on;
                                 `Predictions.labels` is then None: a plain folder of photos)
- `files`        str     (N,),   image paths relative to the dataset root, unique
- `class_names`  str     (C,)
- `provenance`   str     (),     JSON object: where the scores came from; every key, its type,
                                 meaning and default is defined in `predictions/provenance.py`

A file from elsewhere may be crafted: every class name must be a plain name (it becomes part
of output file names), and the array headers inside the archive are checked against the caps
below before any array is read, so a small file that unpacks to gigabytes is refused at once.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from predictions.provenance import ProvenanceError, check_provenance, provenance_value
from vocdata.atomic import atomic_write
from vocdata.jsonio import JsonFileError, parse_json_text
from vocdata.paths import is_plain_name

FORMAT_VERSION = 2
# Version 1 always had labels; version 2 allows none. Both are read.
READABLE_VERSIONS = (1, 2)
PREDICTIONS_FILENAME = "val_predictions.npz"
_ARRAYS = ("scores", "labels", "files", "class_names", "provenance")
_REQUIRED_ARRAYS = {1: _ARRAYS, 2: ("scores", "files", "class_names", "provenance")}

# What a predictions file may hold, checked from the array headers before anything is read.
# 1 GiB uncompressed is e.g. 2 million images x 20 classes with 100-character file names.
MAX_ARRAY_BYTES = 2**30  # all arrays together, uncompressed
MAX_CLASSES = 1_000
MAX_CLASS_NAME_CHARS = 100
MAX_FILE_NAME_CHARS = 1_024
MAX_PROVENANCE_CHARS = 4 * 2**20
# Per array: the dtype kinds accepted and the number of dimensions.
_ARRAY_KINDS = {
    "scores": ("f", 2),
    "labels": ("iub", 2),
    "files": ("U", 1),
    "class_names": ("U", 1),
    "provenance": ("U", 0),
}
_KIND_WORDS = {"f": "floating-point numbers", "iub": "integers", "U": "text"}


class PredictionsFormatError(ValueError):
    """A predictions file (or the arrays meant for one) breaks the contract above."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise PredictionsFormatError(message)


@dataclass(frozen=True)
class Predictions:
    """Validated scores and labels of N images for C classes, rows in a fixed file order.

    `labels` is None for unlabelled images: they can be ranked and browsed, not scored (AP,
    precision and Tailacc need the truth).
    """

    scores: np.ndarray
    labels: np.ndarray | None
    files: tuple[str, ...]
    class_names: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        scores = np.asarray(self.scores)
        labels = None if self.labels is None else np.asarray(self.labels)
        n, c = len(self.files), len(self.class_names)
        _check(c > 0, "class_names is empty")
        _check(
            scores.shape == (n, c),
            f"scores have shape {scores.shape}, expected ({n}, {c}) "
            f"= (number of files, number of class names)",
        )
        if labels is not None:
            _check(labels.shape == (n, c), f"labels have shape {labels.shape}, expected ({n}, {c})")
            _check(bool(np.isin(labels, (-1, 0, 1)).all()), "labels must be 1, 0 (difficult) or -1")
        _check(
            np.issubdtype(scores.dtype, np.floating), f"scores must be floats, not {scores.dtype}"
        )
        _check(bool(np.isfinite(scores).all()), "scores contain NaN or infinity")
        _check(
            bool(((scores >= 0) & (scores <= 1)).all()),
            "scores must be probabilities in [0, 1] (apply the sigmoid before saving)",
        )
        _check(len(set(self.files)) == n, "file names are not unique")
        _check(len(set(self.class_names)) == c, "class names are not unique")
        for name in self.class_names:
            _check(
                is_plain_name(name) and len(name) <= MAX_CLASS_NAME_CHARS,
                f"class name {name[:MAX_CLASS_NAME_CHARS]!r} is not a plain name (letters, "
                f"digits and _ - . only, at most {MAX_CLASS_NAME_CHARS} characters): class "
                f"names become parts of file names",
            )
        for name in self.files:
            path = PurePosixPath(name)
            _check(
                not path.is_absolute() and ".." not in path.parts and "\\" not in name,
                f"file name {name!r} must be relative to the dataset root (forward slashes)",
            )
        object.__setattr__(self, "scores", scores.astype(np.float32, copy=False))
        if labels is not None:
            object.__setattr__(self, "labels", labels.astype(np.int8, copy=False))

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def num_images(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def provenance_value(self, name: str) -> Any:
        """Provenance key `name`, or its documented default (predictions/provenance.py)."""
        return provenance_value(self.provenance, name)

    def class_index(self, name: str) -> int:
        """Column of class `name`, with an error listing the known names."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise KeyError(
                f"unknown class {name!r}; known: {', '.join(self.class_names)}"
            ) from None


# Room for the provenance (models, skipped files) beyond the arrays, in bytes.
PROVENANCE_ALLOWANCE = 1 * 2**20


def file_size_bound(files: Sequence[str], num_classes: int, labelled: bool) -> int:
    """Bytes a predictions file of these images can take at most (its arrays uncompressed:
    scores, labels, fixed-width file names, and the provenance); the written file is smaller.
    Checked against the free space before a long pass, and named when a write fails."""
    longest = max((len(name) for name in files), default=1)
    per_image = num_classes * (4 + (1 if labelled else 0)) + 4 * longest
    return len(files) * per_image + PROVENANCE_ALLOWANCE


def scores_from_logits(logits: np.ndarray) -> np.ndarray:
    """The stored scores of (N, C) logits: the sigmoid computed in float64, then float32.

    Every writer goes through this one function, so a file re-scored later (`python -m
    predictions`) matches the trainer's own file bit for bit.
    """
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def save_predictions(path: str | os.PathLike[str], predictions: Predictions) -> Path:
    """Write `predictions` atomically, always in the current format version (recorded in the
    provenance); unlabelled predictions are written without a `labels` array."""
    provenance = {**predictions.provenance, "format_version": FORMAT_VERSION}
    try:
        check_provenance(provenance, writing=True)
    except ProvenanceError as error:
        raise PredictionsFormatError(str(error)) from None
    path = Path(path)
    arrays = {
        "scores": predictions.scores,
        "files": np.array(predictions.files, dtype=np.str_),
        "class_names": np.array(predictions.class_names, dtype=np.str_),
        "provenance": np.array(json.dumps(provenance, sort_keys=True, allow_nan=False)),
    }
    if predictions.labels is not None:
        arrays["labels"] = predictions.labels
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def _not_readable(path: Path) -> PredictionsFormatError:
    # numpy's own message would advise loading "unsafely" with pickle: never do that.
    return PredictionsFormatError(
        f"{path} is not a predictions file: it cannot be read as a NumPy .npz archive "
        f"(another kind of file, or cut short). Pass a {PREDICTIONS_FILENAME} written by "
        f"main_train.py"
    )


def _read_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy file `member`, reading its header only."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f".npy format version {version} is not one numpy writes for our arrays")
    return tuple(int(n) for n in shape), dtype, member.tell()


def check_array_headers(path: str | os.PathLike[str]) -> None:
    """Refuse `path` from its array headers alone, before any array is read: object arrays
    (they would need unpickling), arrays of the wrong kind or rank, sizes the zip directory
    contradicts, and anything above the caps (MAX_ARRAY_BYTES and the per-name limits)."""
    path = Path(path)
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                key = info.filename.removesuffix(".npy")
                if key not in _ARRAY_KINDS or not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    shape, dtype, header_bytes = _read_header(member)
                kinds, ndim = _ARRAY_KINDS[key]
                _check(
                    not dtype.hasobject,
                    f"{path} is not a predictions file: its {key} array holds Python objects, "
                    f"which are never loaded (they could run code)",
                )
                _check(
                    dtype.kind in kinds and len(shape) == ndim,
                    f"{path} is not a predictions file: its {key} array is {dtype} of shape "
                    f"{shape}; {key} must be {_KIND_WORDS[kinds]} in {ndim} dimension(s)",
                )
                nbytes = math.prod(shape) * dtype.itemsize
                _check(
                    info.file_size == header_bytes + nbytes,
                    f"{path} is damaged: its {key} array claims shape {shape} ({nbytes:,} "
                    f"bytes) but the archive stores {info.file_size:,} bytes for it",
                )
                _check_caps(path, key, shape, dtype)
                total += nbytes
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, SyntaxError) as error:
        if isinstance(error, PredictionsFormatError):
            raise
        raise _not_readable(path) from None
    _check(
        total <= MAX_ARRAY_BYTES,
        f"{path} is not a predictions file this program reads: its arrays unpack to "
        f"{total / 2**30:.1f} GiB, more than the {MAX_ARRAY_BYTES / 2**30:.0f} GiB a "
        f"predictions file may hold",
    )


def _check_caps(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The per-array limits; `shape` already has the rank `_ARRAY_KINDS` requires."""
    chars = dtype.itemsize // 4 if dtype.kind == "U" else 0
    limits: list[tuple[int, int, str]] = []
    if key == "scores":
        limits.append((shape[1], MAX_CLASSES, "classes"))
    elif key == "class_names":
        limits.append((shape[0], MAX_CLASSES, "classes"))
        limits.append((chars, MAX_CLASS_NAME_CHARS, "characters in a class name"))
    elif key == "files":
        limits.append((chars, MAX_FILE_NAME_CHARS, "characters in a file name"))
    elif key == "provenance":
        limits.append((chars, MAX_PROVENANCE_CHARS, "characters of provenance"))
    for value, limit, what in limits:
        _check(
            value <= limit,
            f"{path} is not a predictions file this program reads: {value:,} {what}, more "
            f"than the {limit:,} allowed",
        )


def load_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read and validate a predictions file; every problem is a PredictionsFormatError.

    The array headers are checked first (`check_array_headers`): a crafted archive is
    refused before it can allocate memory.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsFormatError(
            f"Predictions file not found: {path}. Train first (python main_train.py) or pass "
            f"the path of an existing {PREDICTIONS_FILENAME}."
        )
    check_array_headers(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _REQUIRED_ARRAYS[2] if key not in archive.files]
            _check(not missing, f"{path} is not a predictions file: it lacks {', '.join(missing)}")
            arrays = {key: archive[key] for key in _ARRAYS if key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        if isinstance(error, PredictionsFormatError):
            raise
        raise _not_readable(path) from None
    try:
        provenance = parse_json_text(str(arrays["provenance"]), "a JSON object")
    except JsonFileError as error:
        raise PredictionsFormatError(
            f"{path} is not a predictions file: its provenance is {error}"
        ) from None
    _check(isinstance(provenance, dict), f"{path}: provenance must be a JSON object")
    try:
        check_provenance(provenance)
    except ProvenanceError as error:
        raise PredictionsFormatError(f"{path}: {error}") from None
    version = provenance.get("format_version")
    _check(
        version in READABLE_VERSIONS,
        f"{path} has format version {version!r}; this program reads versions "
        f"{', '.join(map(str, READABLE_VERSIONS))}",
    )
    missing = [key for key in _REQUIRED_ARRAYS[version] if key not in arrays]
    _check(not missing, f"{path} (format version {version}) lacks {', '.join(missing)}")
    try:
        return Predictions(
            scores=arrays["scores"],
            labels=arrays.get("labels"),
            files=tuple(arrays["files"].tolist()),
            class_names=tuple(arrays["class_names"].tolist()),
            provenance=provenance,
        )
    except PredictionsFormatError as error:
        raise PredictionsFormatError(f"{path}: {error}") from None

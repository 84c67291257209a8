"""Which dataset root the images of a predictions file are read from, and who chose it.

A stand-in with the shape of `predictions.runs.image_root_of` (being added to the predictions
package): when that lands, `gui/launch.py` imports it from there and this module goes.

A root named by the predictions file itself (its provenance's `voc_root`) was not chosen by
the person at the screen, so the window says where the images come from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from predictions import Predictions
from vocdata.paths import resolve_project_path
from vocdata.splits import resolve_voc_root

SOURCE_OPTION = "option"  # --voc-root
SOURCE_FILE = "file"  # the predictions file's provenance
SOURCE_SETTING = "setting"  # $VOC_ROOT or the default


@dataclass(frozen=True)
class ImageRoot:
    path: Path
    source: str  # SOURCE_OPTION, SOURCE_FILE or SOURCE_SETTING
    note: str  # one line for the window, e.g. "images from /x, named by the file"

    @property
    def named_by_file(self) -> bool:
        return self.source == SOURCE_FILE


def image_root_of(
    predictions: Predictions, voc_root: str | os.PathLike[str] | None = None
) -> ImageRoot:
    """`voc_root` if given; else the root the file names, if it exists here; else the one
    dataset-root setting."""
    if voc_root:
        path = resolve_project_path(voc_root)
        return ImageRoot(path, SOURCE_OPTION, f"images from {path} (--voc-root)")
    stored = predictions.provenance.get("voc_root")
    if isinstance(stored, str) and stored and resolve_project_path(stored).is_dir():
        path = resolve_project_path(stored)
        return ImageRoot(path, SOURCE_FILE, f"images from {path}, named by the file")
    path = resolve_voc_root()
    return ImageRoot(path, SOURCE_SETTING, f"images from {path} (the dataset-root setting)")

"""Pascal VOC 2012 classification data: one sample per image, a 20-dim multi-hot target.

Importing the package itself stays light (no torch): `evaluation/` and `gui/` use the class
names and path helpers without paying for torch. The torch Dataset lives in `vocdata.dataset`.
"""

from vocdata.atomic import atomic_write
from vocdata.classes import NUM_CLASSES, VOC_CLASSES
from vocdata.errors import ImageReadError, VocDataError, VocRootNotFoundError
from vocdata.paths import PROJECT_ROOT, project_relative, resolve_project_path
from vocdata.splits import DifficultMode, VocSplit, read_split, resolve_voc_root

__all__ = [
    "NUM_CLASSES",
    "PROJECT_ROOT",
    "VOC_CLASSES",
    "DifficultMode",
    "ImageReadError",
    "VocDataError",
    "VocRootNotFoundError",
    "VocSplit",
    "atomic_write",
    "project_relative",
    "read_split",
    "resolve_project_path",
    "resolve_voc_root",
]

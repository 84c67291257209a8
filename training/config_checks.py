"""Value checks for every `TrainConfig` option, run when a config is made.

A bad value is found before any data is touched or any folder is created, and the message
names the option as it is typed on the command line, the value and what would work. Each
check is a small function registered for one field with `@field_check("name")`: a new option
gets its check by adding one function here (tests/test_config_checks.py asserts that every
field has one).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from predictions.runs import RESERVED_NAMES
from training.backbones import BACKBONES
from training.engine import ENGINE_CHOICES
from training.heads import HEAD_KINDS
from training.loop import TTA_MODES
from training.runtime import AMP_MODES
from vocdata.paths import resolve_project_path
from vocdata.splits import DifficultMode
from vocdata.views import CELL, parse_views

MIN_IMAGE_SIZE = 32  # below this the backbones' downsampling leaves nothing to classify
CHOICES = {
    "difficult": tuple(mode.value for mode in DifficultMode),
    "arch": tuple(BACKBONES),
    "optimizer": ("adamw", "sgd"),
    "amp": AMP_MODES,
    "head": ("auto", *HEAD_KINDS),
    "tta": TTA_MODES,
    "engine": ENGINE_CHOICES,
    "label_fix_mode": ("ignore", "flip"),  # training/labelfixes.py says what each does
}

FieldCheck = Callable[[Any], "str | None"]
FIELD_CHECKS: dict[str, FieldCheck] = {}


class ConfigError(ValueError):
    """An option value that cannot work; the message names the option and the fix."""


def option_name(field_name: str) -> str:
    """The command-line spelling of a config field: `lr_head` -> `--lr-head`."""
    return "--" + field_name.replace("_", "-")


def field_check(name: str) -> Callable[[FieldCheck], FieldCheck]:
    """Register `function(value) -> problem or None` as the check of field `name`."""

    def register(function: FieldCheck) -> FieldCheck:
        FIELD_CHECKS[name] = function
        return function

    return register


def problems(values: dict[str, Any]) -> list[str]:
    """One line per bad value in `values` (field name -> value), in field order."""
    found = []
    for name, value in values.items():
        check = FIELD_CHECKS.get(name)
        problem = check(value) if check is not None else None
        if problem:
            found.append(f"{option_name(name)} {value!r}: {problem}")
    return found


# -- building blocks -----------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(minimum: int, hint: str = "") -> FieldCheck:
    def check(value: Any) -> str | None:
        if not _is_int(value) or value < minimum:
            return f"must be a whole number >= {minimum}{hint}"
        return None

    return check


def _rate(example: str) -> FieldCheck:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number (e.g. {example})"
        if not math.isfinite(value) or value < 0:
            return f"must be a finite number >= 0 (e.g. {example})"
        return None

    return check


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _one_of(name: str) -> FieldCheck:
    def check(value: Any) -> str | None:
        if value not in CHOICES[name]:
            return f"choose one of {', '.join(CHOICES[name])}"
        return None

    return check


def _folder_or_creatable(value: Any, what: str) -> str | None:
    """A folder we will write into: fine if it is one or can be made (no file in the way)."""
    if not isinstance(value, str) or not value:
        return f"must be a folder path ({what})"
    path = resolve_project_path(value)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                return (
                    f"{existing} is a file, not a folder, so {what} cannot go there: "
                    f"choose another folder"
                )
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"{existing} is not writable, so {what} cannot go there: choose another"
            return None
    return None


# -- the checks, one per field -------------------------------------------------------------------

for _name in CHOICES:
    field_check(_name)(_one_of(_name))
for _name in (
    "download",
    "skip_bad_images",
    "channels_last",
    "compile",
    "cudnn_benchmark",
    "deterministic",
    "progress",
    "freeze_backbone",
    "lp_ft",
    "spatial_max",
):
    field_check(_name)(_boolean)

field_check("image_size")(_int_at_least(MIN_IMAGE_SIZE, " pixels (224 is the default)"))
field_check("epochs")(_int_at_least(0, " (0: no training, only validation)"))
field_check("batch_size")(_int_at_least(1, " (32 is the default)"))
field_check("workers")(_int_at_least(-1, " (-1: one per core; 0: load in the main process)"))
field_check("folds")(_int_at_least(1, " (1: the official train/val split)"))
field_check("lr_head")(_rate("1e-3"))
field_check("lr_backbone")(_rate("1e-4"))
field_check("weight_decay")(_rate("1e-4"))
field_check("warmup_epochs")(_rate("1"))
field_check("residual_shrink")(_rate("20"))


@field_check("seed")
def _seed(value: Any) -> str | None:
    if not _is_int(value) or not 0 <= value < 2**32:
        return "must be a whole number from 0 to 2**32 - 1"
    return None


@field_check("stop_after")
def _stop_after(value: Any) -> str | None:
    if value is not None and (not _is_int(value) or value < 1):
        return "must be a whole number >= 1 (epochs to run in this session), or left out"
    return None


@field_check("voc_root")
def _voc_root(value: Any) -> str | None:
    # Existence is checked (with the download offer) when the data is loaded.
    if value is not None and (not isinstance(value, str) or not value):
        return "must be a folder path"
    return None


@field_check("weights")
def _weights(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be 'imagenet', 'none' or the path of a state dict file"
    if value in ("imagenet", "none"):
        return None
    path = resolve_project_path(value)
    if not path.exists():
        return (
            f"no such file ({path}); pass the path of an ImageNet state dict (.pth), "
            f"'imagenet' or 'none'"
        )
    if not path.is_file():
        return f"{path} is a folder, not a state dict file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable (check its permissions)"
    return None


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:(\d+))$")


@field_check("device")
def _device(value: Any) -> str | None:
    match = _DEVICE.match(value) if isinstance(value, str) else None
    if match is None:
        return "choose 'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'"
    if not value.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU on this machine; use --device cpu (or auto)"
    count = torch.cuda.device_count()
    if match.group(2) is not None and int(match.group(2)) >= count:
        return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None


@field_check("runs_dir")
def _runs_dir(value: Any) -> str | None:
    return _folder_or_creatable(value, "run folders")


@field_check("cache_dir")
def _cache_dir(value: Any) -> str | None:
    return None if value is None else _folder_or_creatable(value, "the image cache")


@field_check("run_name")
def _run_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or Path(value).name != value:
        return "must be a plain folder name (no '/'), or left out for <date>-<time>-<arch>"
    if value in (".", "..", *RESERVED_NAMES):
        return f"{value!r} is reserved; choose another folder name"
    return None


@field_check("resume")
def _resume(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        return "must be a run folder, its name or 'latest'"
    return None


@field_check("view")
def _view(value: Any) -> str | None:
    try:
        parse_views(value, 224)
    except (ValueError, TypeError):
        return "choose crop, whole or crop+whole"
    return None


@field_check("whole_size")
def _whole_size(value: Any) -> str | None:
    if value is not None and (not _is_int(value) or value < CELL):
        return f"must be a whole number >= {CELL} pixels, or left out (--image-size x 10/7)"
    return None


@field_check("label_fixes")
def _label_fixes(value: Any) -> str | None:
    # Whether the file exists is checked when a new run reads it: a resumed run uses the copy
    # in its run folder and may outlive the file.
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        return "must be a marks file, an exported CSV or a run's label_fixes.json"
    if resolve_project_path(value).is_dir():
        return "is a folder: give the marks file in it (e.g. train_oof_predictions.marks.json)"
    return None

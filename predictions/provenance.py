"""The provenance of a predictions file (and of a saved model): every key, defined once.

A predictions file says where its scores came from in a JSON object. Four writers fill it
(the trainer's best model, a fold model, a k-fold run's ensemble, `python -m predictions`)
and several readers use it (the report, the GUI, the scorer). This table is the one place
that says which keys exist, what type each holds, what it means and what a reader assumes
when an older file lacks it. Writers may only use keys listed here (a typo fails at once);
readers get a missing key's default through `provenance_value`, never a guess of their own.
Files are checked against the types on load; keys unknown to this version are kept as they
are (a newer writer may add some).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NoneType = type(None)
NUMBER = (int, float)


@dataclass(frozen=True)
class Key:
    """One provenance key: the JSON types it may hold, the reader's default, its meaning."""

    types: tuple[type, ...]
    default: Any
    meaning: str


def _key(types: type | tuple[type, ...], meaning: str, default: Any = None) -> Key:
    types = types if isinstance(types, tuple) else (types,)
    return Key(types, default, meaning)


_OPT_NUMBER = (*NUMBER, NoneType)
_OPT_INT = (int, NoneType)
_OPT_STR = (str, NoneType)
_PER_MODEL_STR = (str, list, NoneType)  # one value, or one per ensemble member
_PER_MODEL_INT = (int, list, NoneType)

KEYS: dict[str, Key] = {
    # -- every file ---------------------------------------------------------------------------
    "format_version": _key(int, "version of the predictions file format"),
    "arch": _key(str, "backbone of the model(s); an ensemble of several joins them with '+'"),
    "weights": _key(_PER_MODEL_STR, "starting weights: imagenet, none or a file"),
    "epoch": _key(_PER_MODEL_INT, "epoch of the kept model (None: several models)"),
    "val_map": _key(_OPT_NUMBER, "mAP on the val split (None when not measured on val)"),
    "seed": _key(_PER_MODEL_INT, "--seed of the training run(s)"),
    "difficult": _key(str, "difficult-label mode the labels are read with", "ignore"),
    "created": _key(str, "when the file was written (UTC, ISO 8601)"),
    # -- what the scores are of --------------------------------------------------------------
    "split": _key(str, "which images: val, train, a fold's held-out part, a folder", "val"),
    "voc_root": _key(_OPT_STR, "dataset root the image names are relative to (project-relative)"),
    "run": _key(_OPT_STR, "run folder the file belongs to (project-relative)"),
    "val_map_classes": _key(_OPT_INT, "classes with a val positive, the mean covers"),
    "train_images": _key(_OPT_INT, "training images of the model"),
    "val_images": _key(_OPT_INT, "images of the val split"),
    "train_positives": _key((dict, NoneType), "positive training images per class"),
    # -- the model ---------------------------------------------------------------------------
    "model_variant": _key(str, "'plain', or a structural change made before training", "plain"),
    "image_size": _key(_PER_MODEL_INT, "side of the square input the model was trained at"),
    "head": _key(_OPT_STR, "the head in words, with its trained parameters"),
    "head_kind": _key(_OPT_STR, "random, init or prior"),
    "residual_shrink": _key(
        _OPT_NUMBER,
        "prior head: its residual damped by n / (n + this), n a class's train images (None: "
        "another head; files written before the option existed used 20)",
    ),
    "tta": _key(str, "test-time augmentation of the scores: none or hflip", "none"),
    "view": _key(_PER_MODEL_STR, "how images were seen: crop, whole or crop+whole", "crop"),
    "whole_size": _key(_PER_MODEL_INT, "shorter side of the whole view"),
    "spatial_max": _key((bool, list, NoneType), "the prior head's spatial maximum", False),
    "engine": _key(_OPT_STR, "what ran the forward passes (engine, versions, precision)"),
    "freeze_backbone": _key((bool, NoneType), "only the head was trained (frozen features)"),
    "lp_ft": _key((bool, NoneType), "linear probe, then fine-tuning"),
    "models": _key(
        (list, NoneType),
        "the model files that produced the scores: objects with 'path' (project-relative "
        "model_best.pt) and what the scorer recorded about each",
    ),
    "row_models": _key(
        (list, NoneType),
        "one index into 'models' per row, when rows were scored by different models (the "
        "out-of-fold file of a k-fold run)",
    ),
    # -- k-fold runs -------------------------------------------------------------------------
    "fold": _key(_OPT_INT, "this fold model's number (1-based)"),
    "folds": _key(_OPT_INT, "K of a --folds K run", 1),
    "heldout_map": _key(_OPT_NUMBER, "a fold model's mAP on its own held-out fold"),
    "heldout_map_classes": _key(_OPT_INT, "classes the held-out mAP covers"),
    "selected_on": _key(_OPT_STR, "what the epoch was chosen on"),
    "averaging_rule": _key(_OPT_STR, "how the fold models' scores were combined"),
    "fold_models": _key((list, NoneType), "each fold model's file, relative to the run folder"),
    "fold_epochs": _key((list, NoneType), "the epoch chosen for each fold model"),
    "fold_heldout_map": _key((list, NoneType), "each fold model's held-out mAP"),
    "fold_heldout_map_classes": _key((list, NoneType), "classes each held-out mAP covers"),
    "fold_val_map_alone": _key((list, NoneType), "each fold model alone on val (reported only)"),
    "cv_map_mean": _key(_OPT_NUMBER, "cross-validated estimate: mean held-out mAP"),
    "cv_map_std": _key(_OPT_NUMBER, "spread of the held-out mAPs between folds (ddof 1)"),
    "ensemble_val_map": _key(_OPT_NUMBER, "val mAP of the fold models' ensemble"),
    "ensemble_val_map_classes": _key(_OPT_INT, "classes the ensemble's val mAP covers"),
    "out_of_fold": _key(bool, "each row scored by the fold model that never saw it", False),
    # -- --label-fixes ------------------------------------------------------------------------
    "label_fixes": _key(
        (dict, NoneType),
        "train labels changed by --label-fixes: count, per_class, mode (ignore|flip), flipped, "
        "ignored, source (project-relative file), sha256 (of its bytes), copy (the parsed "
        "fixes in the run folder), model_marks_ignored; absent: trained on the labels as read",
    ),
    # -- python -m predictions ----------------------------------------------------------------
    "scored_by": _key(_OPT_STR, "the program that scored the images"),
    "ensemble_rule": _key(_OPT_STR, "how several models' scores were combined"),
    "source": _key(_OPT_STR, "voc-split or image-folder"),
    "dataset": _key(_OPT_STR, "name of the dataset root or folder"),
    "images": _key(_OPT_INT, "images scored"),
    "labelled": _key((bool, NoneType), "whether the file holds labels"),
    "skipped_count": _key(_OPT_INT, "images left out (missing or undecodable)"),
    "skipped": _key((list, NoneType), "the images left out: objects with file and reason"),
    "device": _key(_OPT_STR, "where the network ran"),
}

# What every file must carry (the rest may be missing in older or unlabelled files).
REQUIRED = ("format_version", "arch", "weights", "epoch", "val_map", "seed", "difficult", "created")


class ProvenanceError(ValueError):
    """Provenance that breaks the table above; the message names the key."""


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is NoneType else t.__name__ for t in types)


def provenance_problems(provenance: Mapping[str, Any], *, writing: bool = False) -> list[str]:
    """One line per key of a known name whose value has the wrong type; when `writing`, also
    per unknown key (our own writers use only the keys above) and per missing required key."""
    problems = []
    for name, value in provenance.items():
        key = KEYS.get(name)
        if key is None:
            if writing:
                problems.append(f"unknown provenance key {name!r} (add it to KEYS first)")
            continue
        accepted = key.types
        if isinstance(value, bool) and bool not in accepted:  # JSON true is no number
            accepted = ()
        if not isinstance(value, accepted):
            problems.append(
                f"provenance {name!r} must be {_type_names(key.types)}, not {type(value).__name__}"
            )
    if writing:
        problems += [f"provenance lacks {name!r}" for name in REQUIRED if name not in provenance]
    return problems


def check_provenance(provenance: Mapping[str, Any], *, writing: bool = False) -> None:
    """Raise ProvenanceError listing every problem `provenance_problems` finds."""
    problems = provenance_problems(provenance, writing=writing)
    if problems:
        raise ProvenanceError("; ".join(problems))


def provenance_value(provenance: Mapping[str, Any], name: str) -> Any:
    """The value of key `name`, or the table's default when the file does not have it."""
    if name not in KEYS:
        raise KeyError(f"unknown provenance key {name!r}")
    value = provenance.get(name)
    return KEYS[name].default if value is None else value

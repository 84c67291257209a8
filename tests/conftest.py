"""Shared fixtures and helpers: a tiny generated VOC tree, the real data under ../shared/data,
a typical predictions provenance, and the check that a run's stored scores are what its
saved model predicts."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.voc_fixture import TinyVoc, tiny_run_args, write_tiny_voc
from vocdata.paths import PROJECT_ROOT

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
REAL_VOC_ROOT = SHARED_DATA / "voc2012-subset" / "VOCdevkit" / "VOC2012"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet-samples"

# Virtual environments people keep in the project folder: never project code.
VENV_FOLDERS = {"venv", ".venv", "env", ".env", "virtualenv"}


def tracked_python_files() -> list[str]:
    """The project's own .py files, relative to the project root: tracked by git only (never a
    venv, runs or scratch files a user keeps in the folder)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "-z", "--", "*.py"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        name
        for name in listed.stdout.split("\0")
        if name and name.split("/")[0] not in VENV_FOLDERS and (PROJECT_ROOT / name).is_file()
    ]


# The provenance a predictions file typically carries (tests copy it before changing it).
PROVENANCE: dict[str, Any] = {
    "arch": "resnet18",
    "weights": "none",
    "epoch": 3,
    "val_map": 0.5,
    "seed": 0,
    "difficult": "ignore",
    "created": "2026-11-22T12:00:00+00:00",
}


def snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file under `folder` (relative name -> sha256), to prove nothing changed."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def errors_of(caplog) -> str:
    """The ERROR lines a command logged, as one string (what a user reads on stderr)."""
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def save_zero_row_predictions(path: Path) -> None:
    """A valid predictions file that holds no image (what a run with an empty val split would
    leave): programs must refuse it with a message, not compute 'mAP nan'."""
    from predictions import Predictions, save_predictions
    from vocdata.classes import VOC_CLASSES

    empty = Predictions(
        np.zeros((0, len(VOC_CLASSES)), np.float32),
        np.zeros((0, len(VOC_CLASSES)), np.int8),
        (),
        VOC_CLASSES,
        PROVENANCE,
    )
    save_predictions(path, empty)


# What the trainer records about the software of a run (training/provenance.py).
RUN_PROVENANCE: dict[str, Any] = {
    "loss_code": "terms = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')",
    "loss_module": "training.loss",
    "python": "3.11.7",
    "packages": {"torch": "2.14.1", "numpy": "2.4.6"},
    "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "uncommitted_changes": False},
}

# Tests never touch the network and never depend on the user's environment.
os.environ.pop("VOC_ROOT", None)


@pytest.fixture(scope="session")
def _tiny_voc_template(tmp_path_factory) -> TinyVoc:
    return write_tiny_voc(tmp_path_factory.mktemp("template") / "VOCdevkit" / "VOC2012")


@pytest.fixture
def tiny_voc(_tiny_voc_template: TinyVoc, tmp_path: Path) -> TinyVoc:
    """A fresh copy per test, so a test may break it (delete or corrupt files)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    shutil.copytree(_tiny_voc_template.root, root)
    return TinyVoc(root=root, ids=_tiny_voc_template.ids, labels=_tiny_voc_template.labels)


@pytest.fixture(scope="session")
def tiny_model_run(tmp_path_factory) -> tuple[TinyVoc, Path, Path]:
    """A tiny VOC tree and a one-epoch run on it, (voc, runs folder, run folder): a real
    saved model for the tests that score images as a user does. Tests must not change it."""
    import main_train

    base = tmp_path_factory.mktemp("tiny-model")
    voc = write_tiny_voc(base / "VOCdevkit" / "VOC2012")
    runs = base / "runs"
    args = tiny_run_args(voc.root, runs, "--epochs", "1", "--run-name", "m")
    assert main_train.main(args) == 0
    return voc, runs, runs / "m"


@pytest.fixture(scope="session")
def real_voc_root() -> Path:
    if not (REAL_VOC_ROOT / "ImageSets" / "Main").is_dir():
        pytest.skip(f"real VOC subset not found at {REAL_VOC_ROOT} (see ../shared/data/README.md)")
    return REAL_VOC_ROOT


@pytest.fixture(scope="session")
def imagenet_samples() -> Path:
    if not (IMAGENET_SAMPLES / "labels.csv").is_file():
        pytest.skip(f"ImageNet samples not found at {IMAGENET_SAMPLES}")
    return IMAGENET_SAMPLES


def saved_model_scores(model_path: Path, voc_root: Path, split: str, tta: str) -> np.ndarray:
    """A saved model's scores of every image of `split`, in order, the crop view; for `tta`
    'hflip' the mirror image's logits averaged in. Written out here, not through training's
    TTA or scoring code, so a test compares the trainer with an independent reading."""
    import torch
    from torch.utils.data import DataLoader

    from training.checkpoint import load_model
    from vocdata import read_split
    from vocdata.dataset import VocClassification
    from vocdata.transforms import eval_transform

    model, saved = load_model(model_path)
    images_of = read_split(voc_root, split)
    dataset = VocClassification(voc_root, images_of, "ignore", eval_transform(saved["image_size"]))

    def logits(images: torch.Tensor) -> torch.Tensor:
        return model(images) if tta == "none" else (model(images) + model(images.flip(-1))) / 2

    with torch.no_grad():
        return torch.cat(
            [torch.sigmoid(logits(images)) for images, *_ in DataLoader(dataset, batch_size=8)]
        ).numpy()


def assert_run_scores_match_saved_model(
    run_dir: Path, voc_root: Path, atol: float = 1e-6
) -> tuple[dict[str, Any], np.ndarray]:
    """Reload `run_dir`'s best model, predict the val split in order, and compare with the
    run's predictions file; returns the saved checkpoint's metadata and the fresh scores."""
    from predictions import load_predictions
    from training.checkpoint import load_model

    predictions = load_predictions(run_dir / "val_predictions.npz")
    _, saved = load_model(run_dir / "model_best.pt")
    tta = predictions.provenance.get("tta", "none")
    scores = saved_model_scores(run_dir / "model_best.pt", voc_root, "val", tta)
    np.testing.assert_allclose(predictions.scores, scores, atol=atol)
    return saved, scores

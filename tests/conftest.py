"""Shared fixtures: a tiny generated VOC tree, and the real data under ../shared/data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.voc_fixture import TinyVoc, write_tiny_voc
from vocdata.paths import PROJECT_ROOT

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
REAL_VOC_ROOT = SHARED_DATA / "voc2012-subset" / "VOCdevkit" / "VOC2012"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet-samples"

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
def real_voc_root() -> Path:
    if not (REAL_VOC_ROOT / "ImageSets" / "Main").is_dir():
        pytest.skip(f"real VOC subset not found at {REAL_VOC_ROOT} (see ../shared/data/README.md)")
    return REAL_VOC_ROOT


@pytest.fixture(scope="session")
def imagenet_samples() -> Path:
    if not (IMAGENET_SAMPLES / "labels.csv").is_file():
        pytest.skip(f"ImageNet samples not found at {IMAGENET_SAMPLES}")
    return IMAGENET_SAMPLES

"""vocdata.cache: hit, miss, invalidation, exact validation pixels, same predictions."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

import main_train
from tests.conftest import assert_run_scores_match_saved_model
from tests.voc_fixture import tiny_run_args
from vocdata import read_split
from vocdata.cache import open_or_build_cache
from vocdata.dataset import VocClassification
from vocdata.images import open_rgb
from vocdata.transforms import eval_transform


def test_miss_then_hit_with_the_resized_pixels(tiny_voc, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    split = read_split(tiny_voc.root, "val")
    cache = open_or_build_cache(
        tmp_path, "val", tiny_voc.root, split.relative_paths, 37, progress=False
    )
    assert "cache miss" in caplog.text
    caplog.clear()
    again = open_or_build_cache(
        tmp_path, "val", tiny_voc.root, split.relative_paths, 37, progress=False
    )
    assert "cache hit" in caplog.text and again.prefix == cache.prefix
    for i, relative in enumerate(split.relative_paths):
        expected = np.asarray(v2.Resize(37, antialias=True)(open_rgb(tiny_voc.root / relative)))
        np.testing.assert_array_equal(again.array(i), expected)
        assert min(expected.shape[:2]) == 37
    assert len(pickle.dumps(again)) < 10_000  # workers get the path, not the pixels


def test_invalidation_when_files_scale_or_contents_change(tiny_voc, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    split = read_split(tiny_voc.root, "val")
    paths = split.relative_paths
    first = open_or_build_cache(tmp_path, "val", tiny_voc.root, paths, 37, progress=False)
    first.close()  # an open cache is never removed under its reader
    fewer = open_or_build_cache(tmp_path, "val", tiny_voc.root, paths[:-1], 37, progress=False)
    assert fewer.prefix != first.prefix and len(fewer) == len(paths) - 1
    assert not first.prefix.with_suffix(".json").exists()  # the outdated cache is removed
    other_scale = open_or_build_cache(
        tmp_path, "val", tiny_voc.root, paths[:-1], 48, progress=False
    )
    assert other_scale.prefix.with_suffix(".json").exists()
    assert fewer.prefix.with_suffix(".json").exists()  # another scale is another cache
    changed = tiny_voc.root / paths[0]
    Image.new("RGB", (60, 45), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # even with an old time stamp: the size changed
    caplog.clear()
    rebuilt = open_or_build_cache(tmp_path, "val", tiny_voc.root, paths[:-1], 37, progress=False)
    assert "cache miss" in caplog.text and rebuilt.prefix != fewer.prefix
    assert rebuilt.array(0)[..., 0].min() > 230 and rebuilt.array(0)[..., 1:].max() < 30  # red


def test_incomplete_cache_is_never_used(tiny_voc, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    split = read_split(tiny_voc.root, "val")
    cache = open_or_build_cache(
        tmp_path, "val", tiny_voc.root, split.relative_paths, 37, progress=False
    )
    cache.prefix.with_suffix(".json").unlink()  # as if the build had been interrupted
    caplog.clear()
    open_or_build_cache(tmp_path, "val", tiny_voc.root, split.relative_paths, 37, progress=False)
    assert "cache miss" in caplog.text


def test_validation_pixels_are_identical_with_and_without_cache(real_voc_root, tmp_path):
    split = read_split(real_voc_root, "val")
    split = split.subset(np.arange(len(split)) < 64)
    cache = open_or_build_cache(
        tmp_path, "val", real_voc_root, split.relative_paths, 256, progress=False
    )
    plain = VocClassification(real_voc_root, split, "ignore", eval_transform(224))
    cached = VocClassification(real_voc_root, split, "ignore", eval_transform(224), cache)
    for i in range(len(split)):
        assert torch.equal(plain[i][0], cached[i][0]), split.relative_paths[i]


def test_cached_run_gives_the_predictions_of_the_uncached_path(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    assert main_train.main(tiny_run_args(tiny_voc.root, runs, "--epochs", "1")) == 0
    run_dir = runs / (runs / "latest").read_text().strip()
    assert list((tmp_path / "cache").glob("*.json"))
    assert_run_scores_match_saved_model(run_dir, tiny_voc.root)

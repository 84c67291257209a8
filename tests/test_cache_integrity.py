"""The image cache is verified before it is trusted: a damaged cache is rebuilt with a warning,
caches of different datasets and of other processes are never removed, a killed builder's
temporaries are cleaned up, and errors name the cache."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from torchvision.transforms import v2

import main_train
from tests.conftest import assert_run_scores_match_saved_model
from tests.voc_fixture import TinyVoc, tiny_run_args, write_tiny_voc
from vocdata import read_split
from vocdata.atomic import remove_abandoned
from vocdata.cache import open_or_build_cache
from vocdata.errors import CacheError
from vocdata.images import open_rgb
from vocdata.paths import PROJECT_ROOT

SIDE = 37


def _open(voc: TinyVoc, cache_dir: Path, paths: list[str] | None = None):
    paths = list(paths or read_split(voc.root, "val").relative_paths)
    return open_or_build_cache(cache_dir, "val", voc.root, paths, SIDE, workers=1, progress=False)


def _assert_pixels_are_the_images(cache, voc: TinyVoc) -> None:
    for i, relative in enumerate(cache.relative_paths):
        expected = np.asarray(v2.Resize(SIDE, antialias=True)(open_rgb(voc.root / relative)))
        np.testing.assert_array_equal(cache.array(i), expected, err_msg=relative)


def _with_suffix(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


@contextlib.contextmanager
def _warnings_of(logger_name: str) -> Iterator[list[str]]:
    """The warnings one logger emits inside the block, whatever level the root logger is at."""
    warnings: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield warnings
    finally:
        logger.removeHandler(handler)


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _short_index(path: Path) -> None:
    np.save(path, np.load(path)[:-1])


def _shorter_file_list(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["files"] = meta["files"][:-1]
    path.write_text(json.dumps(meta))


def _deeply_nested(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


DAMAGE: list[tuple[str, str, Callable[[Path], None]]] = [
    ("pixels overwritten with zeros (same size)", ".u8", _zero),
    ("pixels cut short", ".u8", _truncate),
    ("empty pixel file", ".u8", _empty),
    ("garbage index", ".index.npy", _garbage),
    ("index one row short", ".index.npy", _short_index),
    ("empty index", ".index.npy", _empty),
    ("shortened file list", ".json", _shorter_file_list),
    ("empty .json", ".json", _empty),
    ("deeply nested .json", ".json", _deeply_nested),
]


@pytest.mark.parametrize(("damage", "suffix", "apply"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_cache_is_rebuilt_with_a_warning(
    tiny_voc, tmp_path, caplog, damage, suffix, apply
):
    first = _open(tiny_voc, tmp_path)
    first.close()
    apply(_with_suffix(first.prefix, suffix))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vocdata"):
        rebuilt = _open(tiny_voc, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("is damaged" in m and str(first.prefix) in m for m in warnings), warnings
    assert rebuilt.prefix == first.prefix
    _assert_pixels_are_the_images(rebuilt, tiny_voc)
    rebuilt.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vocdata"):
        _open(tiny_voc, tmp_path).close()
    assert "image cache hit" in caplog.text and "damaged" not in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_run_on_a_zeroed_cache_rebuilds_it_and_predicts_from_the_true_pixels(tiny_voc, tmp_path):
    """As a user meets it: the second run of main_train.py finds the val cache zeroed."""
    runs, cache_dir = tmp_path / "runs", tmp_path / "cache"
    assert main_train.main(tiny_run_args(tiny_voc.root, runs, "--epochs", "1")) == 0
    damaged = []
    for pixels in cache_dir.glob("val-*.u8"):
        _zero(pixels)
        damaged.append(pixels)
    assert damaged
    with _warnings_of("vocdata.cache") as warnings:
        args = tiny_run_args(tiny_voc.root, runs, "--epochs", "1", "--run-name", "again")
        assert main_train.main(args) == 0
    assert any("is damaged" in warning for warning in warnings)
    # The stored predictions are what the saved model gives on the real images.
    assert_run_scores_match_saved_model(runs / "again", tiny_voc.root)


def test_runs_on_different_datasets_keep_each_others_cache(tiny_voc, tmp_path, caplog):
    other = write_tiny_voc(tmp_path / "other" / "VOC2012", seed=1)
    cache_dir = tmp_path / "cache"
    first = _open(tiny_voc, cache_dir)
    first.close()
    _open(other, cache_dir).close()  # the same split name and scale, another dataset
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vocdata"):
        again = _open(tiny_voc, cache_dir)
    assert "image cache hit" in caplog.text and again.prefix == first.prefix
    assert len(list(cache_dir.glob("val-*.json"))) == 2


def _hold_in_use(prefix: Path) -> subprocess.Popen:
    """Another process using the cache at `prefix` until its stdin is closed."""
    script = (
        "import sys; from vocdata.cachefiles import entry_in_use\n"
        "lock = entry_in_use(sys.argv[1]); lock.acquire(shared=True)\n"
        "print('holding', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(prefix)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "holding"
    return child


def test_an_outdated_cache_in_use_by_another_process_is_kept_until_it_is_done(tiny_voc, tmp_path):
    paths = list(read_split(tiny_voc.root, "val").relative_paths)
    old = _open(tiny_voc, tmp_path, paths)
    old.close()
    reader = _hold_in_use(old.prefix)
    try:
        newer = _open(tiny_voc, tmp_path, paths[:-1])  # the file list changed: a new key
        newer.close()
        assert _with_suffix(old.prefix, ".json").is_file()  # still there for its reader
        assert _with_suffix(old.prefix, ".u8").is_file()
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)
    _open(tiny_voc, tmp_path, paths[:-1]).close()
    assert not list(tmp_path.glob(f"{old.prefix.name}*"))  # now removed, locks too


SLOW_BUILDER = """
import sys, time
from pathlib import Path
import vocdata.cache as cache
from vocdata import read_split

original = cache._resized

def slow(path, resize):
    time.sleep(0.5)
    return original(path, resize)

cache._resized = slow
root = Path(sys.argv[2])
paths = list(read_split(root, "val").relative_paths)
cache.open_or_build_cache(sys.argv[1], "val", root, paths, int(sys.argv[3]), workers=1,
                          progress=False)
"""


def _wait_for(condition: Callable[[], bool], what: str, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


def test_a_killed_builder_leaves_no_temporary_behind_and_its_build_is_never_removed_while_alive(
    tiny_voc, tmp_path
):
    cache_dir = tmp_path / "cache"
    builder = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILDER, str(cache_dir), str(tiny_voc.root), str(SIDE)],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: any(cache_dir.glob(".*.u8.*.tmp")), "the builder's temporary file")
        temporary = next(cache_dir.glob(".*.u8.*.tmp"))
        # While it builds: no clean-up touches its temporary or its cache.
        assert remove_abandoned(cache_dir, min_age_s=0) == []
        paths = list(read_split(tiny_voc.root, "val").relative_paths)
        _open(tiny_voc, cache_dir, paths[:-1]).close()  # another key of the same family
        assert temporary.exists() and builder.poll() is None
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=60)
    assert temporary.exists()  # what kill -9 leaves
    an_hour_ago = time.time() - 3600
    os.utime(temporary, (an_hour_ago, an_hour_ago))  # older than any live write
    cache = _open(tiny_voc, cache_dir)  # the next run on this cache folder
    assert not list(cache_dir.glob(".*.tmp"))
    _assert_pixels_are_the_images(cache, tiny_voc)


def test_cache_errors_name_the_cache(tiny_voc, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(CacheError, match=str(blocked)):
        _open(tiny_voc, blocked / "cache")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vocdata.cache._build", disk_full)
    cache_dir = tmp_path / "cache"
    with pytest.raises(CacheError) as info:
        _open(tiny_voc, cache_dir)
    message = str(info.value)
    assert str(cache_dir) in message and ".u8" in message
    assert "No space left on device" in message and "needs about" in message
    assert "MB are free" in message


@pytest.mark.parametrize(
    "damage", [_zero, lambda path: path.write_bytes(b"")], ids=["zeroed", "empty"]
)
def test_a_run_on_a_damaged_feature_cache_rebuilds_it_and_trains_as_before(
    tiny_voc, tmp_path, damage
):
    """As a user meets it: the frozen recipe's second run finds its cached features damaged.
    It says so, recomputes them, and trains exactly the run a clean cache gives."""
    runs = tmp_path / "runs"
    args = tiny_run_args(tiny_voc.root, runs, "--epochs", "1", "--tta", "none")
    args[args.index("--weights") + 1] = "imagenet"  # a frozen backbone needs pretrained weights
    args[args.index("--image-size") + 1] = "64"
    args += ["--arch", "efficientnet_lite0", "--freeze-backbone", "--view", "crop"]
    assert main_train.main([*args, "--run-name", "clean"]) == 0
    feature_files = sorted((tmp_path / "cache" / "features").glob("*.pt"))
    assert len(feature_files) == 2  # train and val
    for path in feature_files:
        damage(path)
    with _warnings_of("vocdata.cachefiles") as warnings:
        assert main_train.main([*args, "--run-name", "again"]) == 0
    assert len([w for w in warnings if "the feature cache" in w and "is damaged" in w]) == 2
    clean = np.load(runs / "clean" / "val_predictions.npz", allow_pickle=False)
    again = np.load(runs / "again" / "val_predictions.npz", allow_pickle=False)
    np.testing.assert_array_equal(again["scores"], clean["scores"])

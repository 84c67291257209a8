"""A real window under Xvfb: drive the browser and check what it displays, in which order.

Screenshots of each state are saved to artifacts/gui/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PySimpleGUI as sg
import pytest
from PIL import Image

from evaluation.ranking import format_score
from gui.launch import has_display, launch
from gui.options import build_parser
from predictions import Predictions, save_predictions
from vocdata import VOC_CLASSES, read_split
from vocdata.paths import PROJECT_ROOT, project_relative

pytestmark = pytest.mark.gui
ARTIFACTS = PROJECT_ROOT / "artifacts" / "gui"


@pytest.fixture(scope="module")
def display():
    if not has_display():
        pytest.skip("no X display: run the tests under `xvfb-run -a` (see README)")


def write_run(run_dir: Path, voc_root: Path, seed: int = 0) -> Predictions:
    val = read_split(voc_root, "val")
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, val.labels.shape) + 3.0 * (val.labels >= 0) - 2.0
    scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    predictions = Predictions(
        scores,
        val.labels,
        tuple(val.relative_paths),
        VOC_CLASSES,
        {
            "arch": "resnet18",
            "weights": "imagenet",
            "epoch": 1,
            "val_map": 0.5,
            "seed": seed,
            "difficult": "ignore",
            "created": "2026-11-22T12:00:00+00:00",
            "voc_root": project_relative(voc_root),
        },
    )
    save_predictions(run_dir / "val_predictions.npz", predictions)
    return predictions


def open_app(predictions_file: Path, *extra: str):
    args = build_parser().parse_args(["--predictions", str(predictions_file), *extra])
    app = launch(args, started=time.perf_counter())
    app.pump()
    return app


def expected_files(predictions: Predictions, class_name: str, ranks: list[int]) -> list[str]:
    column = predictions.scores[:, VOC_CLASSES.index(class_name)]
    by_score = sorted(range(len(column)), key=lambda i: (-column[i], i))
    return [predictions.files[by_score[r - 1]] for r in ranks]


def wait_until_cached(cache, files: list[str], timeout: float = 30) -> None:
    """Block until every one of `files` is in the thumbnail cache (queued ones included)."""
    all_cached = threading.Event()

    def check(_name: str | None = None) -> None:
        if all(cache.get(name) is not None for name in files):
            all_cached.set()

    cache.prefetch(files, check)  # joins a prefetch already under way; `check` runs after each
    check()
    assert all_cached.wait(timeout), "prefetch did not finish"


def shown(app) -> list[str]:
    return [item.file for item in app.displayed]


def caption(app, slot: int) -> str:
    return app.window[("-CAPTION-", slot)].get()


def screenshot(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    subprocess.run(["import", "-window", "root", str(path)], check=True, timeout=30)
    return path


def test_browse_real_images(display, real_voc_root, tmp_path):
    predictions = write_run(tmp_path / "run", real_voc_root)
    app = open_app(tmp_path / "run" / "val_predictions.npz")
    try:
        # aeroplane has no validation positive here: start on the first class that has one
        assert app.model.class_name == "bicycle"
        assert app.window["-CLASS-"].get().startswith("bicycle")
        assert shown(app) == expected_files(predictions, "bicycle", list(range(1, 21)))
        assert caption(app, 0).startswith("#1  ")
        assert (
            app.window["-STATUS-"].get() == "class: bicycle — ranks 1–20 of 1,729 (highest first)"
        )
        assert screenshot("01-start-bicycle.png").stat().st_size > 10_000

        label = app.model.class_labels()[VOC_CLASSES.index("dog")]
        app.window["-CLASS-"].update(value=label)
        app.send("-CLASS-", label)
        assert shown(app) == expected_files(predictions, "dog", list(range(1, 21)))
        dog = VOC_CLASSES.index("dog")
        first = predictions.files.index(shown(app)[0])
        assert (
            caption(app, 0)
            == f"#1  {format_score(predictions.scores[first, dog])}\n"
            + {1: "contains", 0: "difficult", -1: "absent"}[int(predictions.labels[first, dog])]
        )
        screenshot("02-dog-top.png")

        app.send("-NEXT-")
        assert shown(app) == expected_files(predictions, "dog", list(range(21, 41)))
        assert app.window["-STATUS-"].get() == "class: dog — ranks 21–40 of 1,729 (highest first)"
        assert app.window["-PRECISION-"].get().startswith("precision of the top 40: ")

        # A real key press: Right pages on. That page was prefetched when this one was drawn;
        # wait for that prefetch to finish (an event, not luck) so the page comes from cache.
        wait_until_cached(app.cache, expected_files(predictions, "dog", list(range(41, 61))))
        subprocess.run(
            [
                "xdotool",
                "search",
                "--name",
                "VOC ranking browser",
                "windowfocus",
                "--sync",
                "key",
                "Right",
            ],
            check=True,
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while app.model.page != 2 and time.monotonic() < deadline:
            event, values = app.window.read(timeout=30)
            if event != sg.TIMEOUT_EVENT:
                app.handle(event, values)
        app.pump()
        assert shown(app) == expected_files(predictions, "dog", list(range(41, 61)))
        assert app.timings[-1].cached

        app.send("-LOWEST-", True)
        bottom_ranks = list(range(1729, 1709, -1))
        assert shown(app) == expected_files(predictions, "dog", bottom_ranks)
        assert caption(app, 0).startswith("#1,729  ")
        assert (
            app.window["-STATUS-"].get() == "class: dog — ranks 1,729–1,710 of 1,729 (lowest first)"
        )
        screenshot("03-dog-bottom.png")

        app.window["-RANK-"].update("1000")
        app.send("-GO-")
        assert 1000 in [item.rank for item in app.displayed]
        app.send("-LAST-")
        assert [item.rank for item in app.displayed][:3] == [9, 8, 7]  # lowest first, last page

        app.send("-SAVE-")
        saved = tmp_path / "run" / "screens" / f"dog-lowest-page{app.model.page + 1}.png"
        assert saved.is_file() and "saved" in app.window["-MESSAGE-"].get()
        with Image.open(saved) as picture:
            assert picture.width > 5 * 150

        detail = app.detail_window(0)
        try:
            rows = detail["-SCORES-"].Values
            row = predictions.files.index(app.displayed[0].file)
            assert [r[0] for r in rows] == [
                VOC_CLASSES[c] for c in np.argsort(-predictions.scores[row], kind="stable")
            ]
            detail.refresh()
            screenshot("04-detail.png")
        finally:
            detail.close()
        assert any(not t.cached for t in app.timings) and app.startup_seconds is not None
    finally:
        app.close()


def test_missing_image_becomes_a_named_placeholder(display, tiny_voc, tmp_path):
    predictions = write_run(tmp_path / "run", tiny_voc.root)
    top_file = expected_files(predictions, "aeroplane", [1])[0]
    (tiny_voc.root / top_file).unlink()
    app = open_app(
        tmp_path / "run" / "val_predictions.npz",
        "--voc-root",
        str(tiny_voc.root),
        "--class",
        "aeroplane",
    )
    try:
        assert shown(app)[0] == top_file
        assert app.cache.failed == {top_file: "missing"}
        assert caption(app, 0).startswith("#1  ")
        screenshot("05-missing-image.png")
    finally:
        app.close()


def _run_headless(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return subprocess.run(
        [sys.executable, "main_gui.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_predictions_give_a_message_and_exit_code(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive")
    for args, message in (
        (["--predictions", str(tmp_path / "absent.npz")], "Predictions file not found"),
        (["--predictions", str(garbage)], "is not a predictions file"),
        (["--runs-dir", str(tmp_path / "no-runs")], "No finished run yet"),
    ):
        result = _run_headless(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_headless_start_says_how_to_get_a_screen(tiny_voc, tmp_path):
    write_run(tmp_path / "run", tiny_voc.root)
    result = _run_headless("--predictions", str(tmp_path / "run"), "--voc-root", str(tiny_voc.root))
    assert result.returncode == 2 and "xvfb-run" in result.stderr

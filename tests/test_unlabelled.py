"""A predictions file without labels: the GUI model ranks and pages it, and says nothing it
cannot know (no precision, Tailacc or AP); the report picks classes and draws grey tiles."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

import main_gui
from evaluation.grids import class_grids
from evaluation.ranking import TRUTH_COLOURS, TRUTH_WORDS
from evaluation.unlabelled import pick_unlabelled_grid_classes
from gui.launch import has_display, launch
from gui.model import RankingModel
from gui.thumbnails import tile
from predictions import Predictions, load_predictions, save_predictions
from vocdata import VOC_CLASSES
from vocdata.paths import project_relative

PROVENANCE = {
    "arch": "resnet18",
    "weights": "none",
    "epoch": 1,
    "val_map": 0.5,
    "seed": 0,
    "difficult": "ignore",
    "created": "2026-11-23T03:00:00+00:00",
}


def unlabelled(tmp_path) -> Predictions:
    scores = np.array(
        [[0.30, 0.9], [0.80, 0.1], [0.95, 0.5], [0.80, 0.2], [0.10, 0.4]], dtype=np.float32
    )
    files = ("b.png", "day1/x.jpg", "day1/y.jpg", "day2/z.jpg", "w.jpg")
    path = save_predictions(
        tmp_path / "photos.npz", Predictions(scores, None, files, ("cat", "dog"), PROVENANCE)
    )
    return load_predictions(path)


def test_gui_model_ranks_and_pages_an_unlabelled_file(tmp_path):
    model = RankingModel(unlabelled(tmp_path), page_size=2)
    assert not model.has_labels
    assert model.order().tolist() == [2, 1, 3, 0, 4]  # ties keep file order
    assert [(i.rank, i.file, i.label) for i in model.page_items()] == [
        (1, "day1/y.jpg", None),
        (2, "day1/x.jpg", None),
    ]
    model.last_page()
    assert [i.rank for i in model.page_items()] == [5]
    model.set_lowest_first(True)
    assert [i.file for i in model.page_items()] == ["w.jpg", "b.png"]
    model.set_class(1)
    assert model.status_line() == "class: dog — ranks 5–4 of 5 (lowest first)"
    line = model.precision_line()
    assert "no labels" in line and "precision of the top" not in line and "nan" not in line
    assert model.class_labels() == ["cat", "dog"]  # no "AP n/a" for every class
    assert "grey = unknown" in model.border_legend()
    assert [(name, label) for name, _, label in model.detail_rows(0)] == [
        ("dog", None),
        ("cat", None),
    ]
    assert set(model.front_files()) <= set(model.predictions.files)


def test_unknown_truth_is_a_grey_tile_and_the_word_unknown():
    drawn = tile(Image.new("RGB", (40, 20)), None, (50, 40), border=3)
    assert drawn.getpixel((28, 23 - 10 - 2)) == TRUTH_COLOURS[None]
    assert TRUTH_COLOURS[None] not in [TRUTH_COLOURS[label] for label in (1, 0, -1)]
    assert TRUTH_WORDS[None] == "unknown"


def test_report_grids_of_an_unlabelled_file(tmp_path):
    predictions = unlabelled(tmp_path)
    # cat has two scores above 0.5, dog one: cat is the class found most often
    assert pick_unlabelled_grid_classes(predictions, None, 1) == ["cat"]
    assert pick_unlabelled_grid_classes(predictions, ["dog"], 1) == ["dog"]
    grids = class_grids(predictions, "cat", 2)
    assert [(t.rank, t.file, t.label) for t in grids.top] == [
        (1, "day1/y.jpg", None),
        (2, "day1/x.jpg", None),
    ]
    assert [t.rank for t in grids.bottom] == [5, 4]


@pytest.mark.gui
def test_window_on_an_unlabelled_folder_shows_unknown_and_no_precision(tmp_path):
    if not has_display():
        pytest.skip("no X display: run the tests under `xvfb-run -a` (see README)")
    photos = tmp_path / "photos"
    (photos / "day1").mkdir(parents=True)
    files = ("b.png", "day1/x.jpg", "day1/y.jpg", "day2/z.jpg", "w.jpg")
    for index, name in enumerate(files):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60, 40), (40 * index, 90, 160)).save(photos / name)
    scores = np.random.default_rng(0).random((len(files), len(VOC_CLASSES)), dtype=np.float32)
    provenance = PROVENANCE | {"voc_root": project_relative(photos)}
    path = save_predictions(
        tmp_path / "photos.npz", Predictions(scores, None, files, VOC_CLASSES, provenance)
    )
    args = main_gui.build_parser().parse_args(["--predictions", str(path), "--class", "dog"])
    app = launch(args, started=time.perf_counter())
    try:
        app.pump()
        dog = scores[:, VOC_CLASSES.index("dog")]
        assert [item.file for item in app.displayed] == [files[i] for i in np.argsort(-dog)]
        assert app.window[("-CAPTION-", 0)].get().endswith("\nunknown")
        assert app.cache.failed == {}  # every image found under the folder
        assert app.window["-PRECISION-"].get().startswith("no labels")
        app.send("-LOWEST-")
        assert app.displayed[0].file == files[int(np.argmin(dog))]
    finally:
        app.close()


def test_evaluation_of_an_unlabelled_file_needs_no_run(tmp_path):
    """Photos scored elsewhere, no runs here at all: the report goes beside the file; no run
    (and so no 'latest') is looked up, since there are no curves or options to show."""
    from evaluation.__main__ import main as evaluation_main

    unlabelled(tmp_path)
    empty_runs = tmp_path / "no-runs"
    argv = ["--predictions", str(tmp_path / "photos.npz"), "--runs-dir", str(empty_runs)]
    assert evaluation_main([*argv, "--voc-root", str(tmp_path), "--k", "2"]) == 0
    assert (tmp_path / "photos-report" / "report.md").is_file()
    assert not empty_runs.exists()

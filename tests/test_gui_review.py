"""The threshold, the disagreement review, marks and CSV export, without a screen."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.metrics import best_f1_threshold
from gui.model import RankingModel
from gui.review import (
    CSV_COLUMNS,
    MarksFileError,
    MarkStore,
    csv_text,
    disagreement_rows,
    marks_path,
    write_csv,
)
from gui.threshold import (
    TAILACC_UNDEFINED,
    first_rank_below,
    parse_threshold,
    step_threshold,
    summarise,
)
from tests.test_gui_model import hand_made
from vocdata.paths import PROJECT_ROOT

# hand_made(): class 'cat', rows 0..6
#   scores  0.30 0.80 0.95 0.80 0.10 0.60 0.55
#   labels   -1    1    1    0   -1   -1    1      (row 3 difficult: not counted)
#   ranking rows 2, 1, 3, 5, 6, 0, 4


def test_threshold_marker_is_the_first_image_not_above_the_threshold():
    model = hand_made()
    assert model.threshold == 0.5
    assert model.marker_row() == 0  # rank 6 (0.30): ranks 1-5 are above 0.5
    model.set_threshold(0.58)
    assert model.marker_row() == 6  # rank 5 (0.55)
    model.set_threshold(0.6)  # a score equal to t is not above it
    assert model.marker_row() == 5
    model.set_threshold(0.05)
    assert model.marker_row() is None  # every image is above
    assert first_rank_below(np.array([0.9, 0.7, 0.7, 0.2]), 0.7) == 2
    assert first_rank_below(np.array([0.9, 0.7]), 0.95) == 1
    with pytest.raises(ValueError, match="from 0 to 1"):
        model.set_threshold(1.5)


def test_precision_recall_f1_and_tailacc_at_the_threshold():
    model = hand_made()
    # t = 0.5, difficult row 3 left out: above 0.95(+) 0.80(+) 0.60(-) 0.55(+); 3 positives
    summary = model.threshold_summary()
    assert summary.above == 4
    assert summary.precision == pytest.approx(3 / 4)
    assert summary.recall == pytest.approx(1.0)
    assert summary.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))
    assert summary.tailacc == pytest.approx(3 / 4)  # t >= 0.5: the precision above t
    assert model.threshold_line() == (
        "threshold 0.500: 4 above  ·  precision 0.750  ·  recall 1.000  ·  F1 0.857  ·  "
        "Tailacc(0.500) 0.750"
    )
    model.set_threshold(0.7)  # above: 0.95(+) 0.80(+) -> P 1, R 2/3
    summary = model.threshold_summary()
    assert (summary.precision, summary.recall) == (pytest.approx(1.0), pytest.approx(2 / 3))
    assert summary.f1 == pytest.approx(0.8)


def test_tailacc_is_shown_only_where_the_assignment_defines_it():
    scores = np.array([0.9, 0.45, 0.4, 0.35, 0.2])
    positives = np.array([1, 0, 0, 0, 0])
    at_half = summarise(scores, positives, 0.5)
    assert at_half.tailacc == pytest.approx(1.0)
    below = summarise(scores, positives, 0.3)
    # The formula would give 4/4 = 1.0 here (three correct rejections count as right) while
    # the precision of the 4 images above 0.3 is 0.25: it is not shown.
    assert below.tailacc is None and below.precision == pytest.approx(0.25)
    assert TAILACC_UNDEFINED in below.line() and "Tailacc(" not in below.line()
    assert np.isnan(summarise(scores, positives, 0.95).tailacc)  # defined, but empty tail


def _f1(scores, positives, t):
    predicted = scores > t
    tp = np.sum(predicted & positives)
    denominator = 2 * tp + np.sum(predicted & ~positives) + np.sum(~predicted & positives)
    return 2 * tp / denominator


@pytest.mark.parametrize("seed", range(8))
def test_best_f1_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = np.round(rng.random(n), 2)  # ties on purpose
    positives = rng.random(n) < np.clip(scores + rng.normal(0, 0.3, n), 0, 1)
    if not positives.any():
        positives[0] = True
    best = best_f1_threshold(scores, positives)
    candidates = np.concatenate([np.linspace(0, 1, 2001), scores, np.nextafter(scores, -1)])
    brute = max(_f1(scores, positives, t) for t in candidates if t >= 0)
    assert best.f1 == pytest.approx(brute)
    assert _f1(scores, positives, best.threshold) == pytest.approx(best.f1)
    above = scores > best.threshold
    assert best.precision == pytest.approx(np.sum(above & positives) / np.sum(above))
    assert best.recall == pytest.approx(np.sum(above & positives) / positives.sum())


def test_best_f1_threshold_edge_cases_and_the_model_button():
    assert best_f1_threshold(np.array([0.2, 0.9]), np.array([0, 0])) is None
    # A clean split at 0.6 / 0.4: the cut lies halfway
    best = best_f1_threshold(np.array([0.9, 0.6, 0.4, 0.1]), np.array([1, 1, 0, 0]))
    assert best.threshold == pytest.approx(0.5) and best.f1 == pytest.approx(1.0)
    model = hand_made()
    # cat, counted rows: 0.95+ 0.80+ 0.60- 0.55+ 0.30- 0.10-: the best cut keeps the top 4
    # (F1 6/7) at t = (0.55 + 0.30) / 2
    assert model.set_best_threshold() == pytest.approx(0.425)
    assert model.threshold == pytest.approx(0.425)


def test_disagreement_ordering_on_a_hand_made_case():
    scores = np.array([0.9, 0.7, 0.2, 0.65, 0.1, 0.3, 0.8, 0.7, 0.5])
    targets = np.array([0, 0, 1, 0, 1, 1, 1, 0, 1])
    counted = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1], dtype=bool)  # row 3 is difficult
    # absent above 0.5 highest first (tie 0.7: file order), then present at or below 0.5
    # lowest first (0.5 itself is not above)
    assert disagreement_rows(scores, targets, counted, 0.5).tolist() == [0, 1, 7, 4, 2, 5, 8]
    assert disagreement_rows(scores, targets, counted, 0.95).tolist() == [4, 2, 5, 8, 6]


def test_disagreement_view_in_the_ranking_model():
    model = hand_made(page_size=2)
    model.set_threshold(0.58)  # absent above: row 5 (0.60); present below: row 6 (0.55)
    model.set_disagreements_only(True)
    assert model.view_rows().tolist() == [5, 6]
    assert [(i.rank, i.row, i.label) for i in model.page_items()] == [(4, 5, -1), (5, 6, 1)]
    assert model.marker_row() == 6 and model.num_pages == 1
    assert model.status_line() == (
        "class: cat — disagreements 1–2 of 2 at t = 0.580 (1 absent above, 1 present below)"
    )
    model.go_to_rank(5)
    with pytest.raises(ValueError, match="not among the disagreements"):
        model.go_to_rank(1)
    model.set_threshold(0.5)  # only row 5 disagrees now
    assert [i.row for i in model.page_items()] == [5]
    assert model.marker_row() is None
    model.set_disagreements_only(False)
    assert model.num_pages == 4 and [i.rank for i in model.page_items()] == [1, 2]


def test_threshold_text_and_steps():
    assert parse_threshold(" 0.25 ") == 0.25
    for bad in ("abc", "1.2", "-0.1"):
        with pytest.raises(ValueError, match="threshold must be"):
            parse_threshold(bad)
    assert step_threshold(0.5, 1) == pytest.approx(0.55)
    assert step_threshold(0.52, 1) == pytest.approx(0.55)
    assert step_threshold(0.52, -1) == pytest.approx(0.5)
    assert step_threshold(0.5, -1) == pytest.approx(0.45)
    assert step_threshold(1.0, 1) == 1.0 and step_threshold(0.0, -1) == 0.0


def test_marks_round_trip_toggle_and_a_broken_file(tmp_path):
    predictions_file = tmp_path / "run" / "val_predictions.npz"
    path = marks_path(predictions_file)
    assert path == tmp_path / "run" / "val_predictions.marks.json"
    path.parent.mkdir()
    store = MarkStore(path)
    assert store.count() == 0 and not path.exists()  # nothing written until a mark is made
    assert store.toggle("sofa", "JPEGImages/a.jpg", "label") == "label"
    assert store.toggle("sofa", "JPEGImages/b.jpg", "model") == "model"
    assert store.toggle("cat", "JPEGImages/a.jpg", "model") == "model"
    reopened = MarkStore(path)  # a restart
    assert reopened.get("sofa", "JPEGImages/a.jpg") == "label"
    assert reopened.words("sofa", "JPEGImages/b.jpg") == "model wrong"
    assert reopened.get("cat", "JPEGImages/a.jpg") == "model"
    assert reopened.get("cat", "JPEGImages/b.jpg") is None and reopened.count() == 3
    assert reopened.toggle("sofa", "JPEGImages/a.jpg", "label") is None  # again: unmark
    assert reopened.toggle("sofa", "JPEGImages/b.jpg", "label") == "label"  # replace
    data = json.loads(path.read_text())
    assert data["marks"] == {
        "cat": {"JPEGImages/a.jpg": "model"},
        "sofa": {"JPEGImages/b.jpg": "label"},
    }
    assert list(path.parent.iterdir()) == [path]  # atomic: no temporary file left behind
    with pytest.raises(ValueError, match="mark must be"):
        reopened.toggle("sofa", "x", "maybe")
    path.write_text("{not json")
    with pytest.raises(MarksFileError, match=r"val_predictions\.marks\.json"):
        MarkStore(path)
    path.write_text("[" * 100_000 + "]" * 100_000)  # crafted: deeper than the JSON parser goes
    with pytest.raises(MarksFileError, match="nested too deeply"):
        MarkStore(path)
    path.write_text(json.dumps({"format": "voc-gui-marks/1", "marks": {"sofa": {"a": "??"}}}))
    with pytest.raises(MarksFileError, match="not a marks file"):
        MarkStore(path)


def test_csv_of_the_current_view(tmp_path):
    model = hand_made()
    store = MarkStore(tmp_path / "marks.json")
    store.toggle("cat", "JPEGImages/img5.jpg", "label")
    model.set_threshold(0.58)
    model.set_disagreements_only(True)
    path = write_csv(tmp_path / "out" / "cat.csv", model.export_rows(store.words))
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        list(CSV_COLUMNS),
        ["cat", "4", "JPEGImages/img5.jpg", "0.6", "absent", "label looks wrong"],
        ["cat", "5", "JPEGImages/img6.jpg", "0.55", "contains", ""],
    ]
    model.set_disagreements_only(False)
    model.set_lowest_first(True)
    whole = list(csv.reader(io.StringIO(csv_text(model.export_rows(store.words)))))
    assert [r[1] for r in whole[1:]] == ["7", "6", "5", "4", "3", "2", "1"]  # all, view order
    assert whole[5] == ["cat", "3", "JPEGImages/img3.jpg", "0.8", "difficult", ""]


def test_no_labels_means_no_disagreements():
    model = hand_made()
    object.__setattr__(model.predictions, "labels", None)  # an unlabelled predictions file
    assert not model.has_labels and model.threshold_summary() is None
    assert model.threshold_line() == "threshold 0.500: 5 above (no labels)"
    assert model.set_best_threshold() is None
    with pytest.raises(ValueError, match="no labels"):
        model.set_disagreements_only(True)


def test_model_item_lookup_matches_the_page():
    model = RankingModel(hand_made().predictions, page_size=3)
    assert model.page_items() == [model.item(r) for r in (2, 1, 3)]
    assert [model.rank_of(r) for r in range(7)] == [6, 2, 1, 3, 7, 4, 5]


def test_the_browser_starts_without_torch():
    """Activation maps load torch and the model on first use only: start-up stays fast."""
    code = (
        "import sys, main_gui, gui.launch, gui.app, gui.cam, gui.detail; "
        "print(sorted(m for m in ('torch', 'cv2', 'pytorch_grad_cam') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_activation_maps_for_both_backbones_without_a_screen(tmp_path):
    """The registry's layer and offset work for each backbone (random weights: only the
    contract is checked here; where the map lies is checked in the window test)."""
    pytest.importorskip("pytorch_grad_cam")
    from gui.cam import CamProvider, GradCamMapper, align, overlay
    from gui.camsource import CamSource
    from training.model import build_classifier

    (tmp_path / "JPEGImages").mkdir()
    Image.new("RGB", (80, 64), (200, 30, 30)).save(tmp_path / "JPEGImages" / "a.jpg")
    for arch in ("resnet18", "efficientnet_lite0"):
        mapper = GradCamMapper(build_classifier(arch, 20, weights="none"), arch, 64)
        provider = CamProvider(
            CamSource((Path("unused.pt"),)), tmp_path, mapper_factory=lambda _p, m=mapper: m
        )
        heatmap = provider.compute("JPEGImages/a.jpg", 3)
        assert heatmap.shape == (64, 80) and heatmap.dtype == np.float32
        assert heatmap.min() >= 0 and heatmap.max() <= 1
        assert provider.get("JPEGImages/a.jpg", 3) is heatmap  # cached per image and class
        assert provider.get("JPEGImages/a.jpg", 4) is None
        picture = Image.new("RGB", (40, 32))
        assert overlay(picture, heatmap).size == (40, 32)
    ramp = np.tile(np.arange(10, dtype=np.float32), (3, 1))
    assert align(ramp, -2.0)[1].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 9, 9]  # moved left
    assert align(ramp, 1.0)[1].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # moved right


def test_no_model_file_means_no_activation_maps(tmp_path):
    from gui.cam import CamProvider
    from gui.camsource import cam_source_for
    from tests.test_camsource import fake_model_file

    predictions = hand_made().predictions
    source = cam_source_for(predictions, tmp_path / "val_predictions.npz")
    assert not source.available and "model_best.pt" in source.reason
    provider = CamProvider(source, tmp_path)
    assert not provider.available and provider.reason == source.reason
    with pytest.raises(RuntimeError, match=r"model_best\.pt"):
        provider.compute("JPEGImages/a.jpg", 0)
    provider.shutdown()
    (tmp_path / "model_best.pt").write_bytes(b"")  # an empty file is no model
    assert not cam_source_for(predictions, tmp_path / "val_predictions.npz").available
    fake_model_file(tmp_path / "model_best.pt")
    source = cam_source_for(predictions, tmp_path / "val_predictions.npz")
    assert source.models == (tmp_path / "model_best.pt",)


def test_a_mark_that_cannot_be_saved_is_not_kept_and_says_why(tmp_path):
    """A file where the marks file should go makes the save fail (even as root): the error
    names the file, and the marks in memory stay what is on disk."""
    path = tmp_path / "run" / "val_predictions.marks.json"
    path.parent.mkdir()
    store = MarkStore(path)
    assert store.toggle("sofa", "JPEGImages/a.jpg", "label") == "label"
    path.unlink()
    path.mkdir()  # a folder where the file goes: the rename onto it fails
    with pytest.raises(MarksFileError, match=r"Cannot save the mark to .*marks\.json"):
        store.toggle("sofa", "JPEGImages/b.jpg", "model")
    assert store.get("sofa", "JPEGImages/b.jpg") is None
    assert store.get("sofa", "JPEGImages/a.jpg") == "label" and store.count() == 1


def test_a_marks_file_with_a_non_word_mark_is_refused_not_a_crash(tmp_path):
    path = tmp_path / "val_predictions.marks.json"
    path.write_text(json.dumps({"format": "voc-gui-marks/1", "marks": {"sofa": {"a": ["x"]}}}))
    with pytest.raises(MarksFileError, match="not a marks file"):
        MarkStore(path)

"""gui.model and gui.thumbnails: ranking, paging, precision numbers, tiles — no screen needed."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from evaluation.ranking import TRUTH_COLOURS
from gui.model import RankingModel
from gui.thumbnails import ThumbnailCache, decode_thumbnail, page_image, tile
from predictions import Predictions
from tests.conftest import PROVENANCE


def hand_made(page_size=3) -> RankingModel:
    # class 0 scores with a tie (rows 1 and 3): ranks by score, ties in file order
    scores = np.array(
        [[0.30, 0.9], [0.80, 0.1], [0.95, 0.5], [0.80, 0.2], [0.10, 0.4], [0.60, 0.3], [0.55, 0.6]],
        dtype=np.float32,
    )
    labels = np.array([[-1, 1], [1, -1], [1, 1], [0, -1], [-1, -1], [-1, 1], [1, 1]], dtype=np.int8)
    files = tuple(f"JPEGImages/img{i}.jpg" for i in range(7))
    predictions = Predictions(scores, labels, files, ("cat", "dog"), PROVENANCE)
    return RankingModel(predictions, page_size=page_size)


def test_order_ties_and_pages_highest_first():
    model = hand_made()
    assert model.order().tolist() == [2, 1, 3, 5, 6, 0, 4]
    assert [(i.rank, i.row) for i in model.page_items()] == [(1, 2), (2, 1), (3, 3)]
    assert model.num_pages == 3
    model.next_page()
    assert [i.rank for i in model.page_items()] == [4, 5, 6]
    model.next_page()
    assert [(i.rank, i.file, i.label) for i in model.page_items()] == [
        (7, "JPEGImages/img4.jpg", -1)
    ]
    model.next_page()  # stays on the last page
    assert model.page == 2
    model.first_page()
    model.previous_page()  # stays on the first
    assert model.page == 0
    assert model.status_line() == "class: cat — ranks 1–3 of 7 (highest first)"


def test_lowest_first_view_and_jump_to_rank():
    model = hand_made()
    model.set_lowest_first(True)
    assert [i.rank for i in model.page_items()] == [7, 6, 5]
    assert [i.row for i in model.page_items()] == [4, 0, 6]
    assert model.status_line() == "class: cat — ranks 7–5 of 7 (lowest first)"
    model.go_to_rank(2)
    assert model.page == 1 and model.ranks_on_page() == [4, 3, 2]
    model.set_lowest_first(False)
    model.go_to_rank(7)
    assert model.ranks_on_page() == [7]
    with pytest.raises(ValueError, match="between 1 and 7"):
        model.go_to_rank(8)
    model.last_page()
    model.set_class(1)
    assert model.page == 0 and model.class_name == "dog"
    assert [i.row for i in model.page_items()] == [0, 6, 2]
    with pytest.raises(ValueError):
        RankingModel(model.predictions, page_size=0)


def test_precision_and_tailacc_against_hand_computation():
    model = hand_made()
    # cat ranking rows 2,1,3,5,6,0,4 with labels 1,1,0(difficult),-1,1,-1,-1
    assert model.precision_at(3) == pytest.approx(1.0)  # the difficult one is not counted
    assert model.precision_at(4) == pytest.approx(2 / 3)
    assert model.precision_at(5) == pytest.approx(3 / 4)
    # Tailacc at 0.56: images above it, difficult left out: 0.95(+) 0.80(+) 0.60(-) -> 2/3
    assert model.tailacc_at(0.56) == pytest.approx(2 / 3)
    # Ranks 1-3: the last one shown is rank 3 (score 0.80); above it only 0.95 (+).
    assert "Tailacc at score 0.800: 1.000" in model.precision_line()
    model.next_page()  # ranks 4-6: the last one shown is rank 6 (row 0, score 0.30)
    line = model.precision_line()
    assert "precision of the top 6: 0.600" in line  # 3 positives of 5 counted
    # Tailacc(0.30) would count the correctly rejected images between 0.3 and 0.5 as right
    # (0.750 here): below 0.5 it is not the assignment's measure, so it is not shown.
    assert "Tailacc at score" not in line and "Tailacc: n/a below 0.5" in line
    model.set_lowest_first(True)
    assert model.precision_line().startswith("lowest 3 so far: 1 contain 'cat'")


def test_class_labels_show_ap_and_detail_rows_are_sorted():
    model = hand_made()
    labels = model.class_labels()
    assert labels[0].startswith("cat  (AP ") and len(labels) == 2
    assert model.detail_rows(0) == [("dog", pytest.approx(0.9), 1), ("cat", pytest.approx(0.3), -1)]


def test_no_positive_class_has_no_ap_label():
    model = hand_made()
    predictions = model.predictions
    labels = predictions.labels.copy()
    labels[:, 1] = -1
    empty = RankingModel(
        Predictions(
            predictions.scores, labels, predictions.files, predictions.class_names, PROVENANCE
        )
    )
    assert empty.class_labels()[1] == "dog  (AP n/a)"
    empty.set_class(1)
    assert "AP of 'dog' over all 7: n/a" in empty.precision_line()


# -- thumbnails ------------------------------------------------------------------------------


def write_jpeg(path, size=(80, 60), colour=(10, 200, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_decode_missing_and_corrupt_images_give_named_placeholders(tmp_path):
    write_jpeg(tmp_path / "a.jpg", (400, 300))
    thumb, reason = decode_thumbnail(tmp_path / "a.jpg", (100, 75))
    assert reason is None and thumb.size == (100, 75)
    thumb, reason = decode_thumbnail(tmp_path / "absent.jpg", (100, 75))
    assert reason == "missing" and thumb.size == (100, 75)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    thumb, reason = decode_thumbnail(tmp_path / "bad.jpg", (100, 75))
    assert reason.startswith("unreadable") and thumb.size == (100, 75)


def test_cache_prefetches_in_the_background_and_evicts_least_recent(tmp_path, monkeypatch):
    for i in range(4):
        write_jpeg(tmp_path / f"{i}.jpg")
    # Decoding waits for `decoding_allowed`, so the test, not the scheduler, decides whether a
    # prefetch is still running when the next call looks at it.
    decoding_allowed = threading.Event()

    def gated_decode(path, size):
        assert decoding_allowed.wait(10), "test gate never opened"
        return decode_thumbnail(path, size)

    monkeypatch.setattr("gui.thumbnails.decode_thumbnail", gated_decode)
    cache = ThumbnailCache(tmp_path, size=(40, 30), capacity=3, workers=2)
    ready, done = [], threading.Event()

    def on_ready(name):
        ready.append((name, threading.current_thread().name))
        if len(ready) == 2:
            done.set()

    # Still decoding when prefetch returns, so on_ready must run in a worker thread.
    assert cache.prefetch(["0.jpg", "1.jpg"], on_ready) == ["0.jpg", "1.jpg"]
    decoding_allowed.set()
    assert done.wait(10)
    assert sorted(n for n, _ in ready) == ["0.jpg", "1.jpg"]
    assert all(t.startswith("thumbnails") for _, t in ready)  # not the caller's thread
    assert cache.prefetch(["0.jpg"], on_ready) == []  # cached: nothing to do
    cache.load("2.jpg")
    cache.get("0.jpg")  # touch 0, so 1 is now the least recently used
    cache.load("3.jpg")
    assert cache.get("1.jpg") is None and cache.get("0.jpg") is not None
    cache.load("missing.jpg")
    assert cache.failed == {"missing.jpg": "missing"}
    # Queued speculatively and not decoded yet, then needed now: the caller still hears
    # when it is ready.
    decoding_allowed.clear()
    speculative_done = threading.Event()
    cache.prefetch(["1.jpg"], background=True)
    assert cache.prefetch(["1.jpg"], lambda name: speculative_done.set()) == ["1.jpg"]
    decoding_allowed.set()
    assert speculative_done.wait(10) and cache.get("1.jpg") is not None
    cache.shutdown()


def test_tiles_have_a_fixed_size_and_a_truth_coloured_border():
    thumb = Image.new("RGB", (40, 20), (0, 0, 255))
    for label, colour in TRUTH_COLOURS.items():
        drawn = tile(thumb, label, (50, 40), border=3)
        assert drawn.size == (56, 46)
        assert drawn.getpixel((28, 23)) == (0, 0, 255)  # the picture in the middle
        assert drawn.getpixel((28, 23 - 10 - 2)) == colour  # just above it: the border
    assert tile(None, None, (50, 40), border=3).size == (56, 46)
    sheet = page_image([(tile(thumb, 1, (50, 40)), "#1")] * 7, columns=3, title="t")
    assert sheet.width == 3 * (60 + 6) + 6

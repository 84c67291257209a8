"""The likely-label-errors view of the ranking model, and what export writes (formula-safe,
UTF-8-safe cells; names that stay in their folder), without a screen."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from evaluation.label_quality import rank_class
from evaluation.ranking import format_score
from gui.model import RankingModel, View
from gui.review import (
    ExportRow,
    MarkStore,
    csv_text,
    escape_formula,
    is_undecodable,
    output_file,
    printable,
    unescape_formula,
    write_csv,
)
from predictions import Predictions
from tests.conftest import PROVENANCE
from vocdata.paths import UnsafePathError, child_path

#   row      0     1     2     3     4     5     6     7     8     9
#   score  0.95  0.9   0.85  0.8   0.3   0.2   0.1   0.05  0.9   0.15
#   label    1     1     1    -1    -1    -1    -1    -1     0     1
# t_present = (0.95 + 0.9 + 0.85 + 0.15) / 4 = 0.7125; the absent rows' mean score 0.29.
# Row 9 (present, 0.15) and row 3 (absent, 0.8) pass; row 4 (absent, 0.3) is next but is not
# confident of either label; row 8 is difficult: not ranked.
SOFA_SCORES = [0.95, 0.9, 0.85, 0.8, 0.3, 0.2, 0.1, 0.05, 0.9, 0.15]
SOFA_LABELS = [1, 1, 1, -1, -1, -1, -1, -1, 0, 1]
SOFA_ORDER = [9, 3, 4, 5, 2, 1, 6, 0, 7]


def sofa_model(page_size: int = 3, **provenance) -> RankingModel:
    scores = np.stack([SOFA_SCORES, np.linspace(0, 1, 10)], axis=1).astype(np.float32)
    labels = np.stack([SOFA_LABELS, [1] * 5 + [-1] * 5], axis=1).astype(np.int8)
    files = tuple(f"JPEGImages/{i:02d}.jpg" for i in range(10))
    predictions = Predictions(scores, labels, files, ("sofa", "cat"), {**PROVENANCE, **provenance})
    return RankingModel(predictions, page_size=page_size)


def test_the_view_walks_the_labels_most_likely_wrong_first():
    model = sofa_model()
    model.next_page()
    model.set_view(View.LABEL_ERRORS)
    assert model.page == 0 and model.label_errors_only and not model.disagreements_only
    assert model.view_rows().tolist() == SOFA_ORDER
    quality = rank_class(
        np.array(SOFA_SCORES, np.float32), np.array(SOFA_LABELS) == 1, np.array(SOFA_LABELS) != 0
    )
    assert model.view_rows().tolist() == quality.rows.tolist()  # flagged already come first
    # each image keeps its rank in the class's score ranking (0.95 is rank 1; 0.15 rank 8)
    assert [(i.row, i.rank, i.label) for i in model.page_items()] == [
        (9, 8, 1),
        (3, 5, -1),
        (4, 6, -1),
    ]
    assert model.marker_row() == 4  # the first label not past the threshold
    assert model.status_line() == (
        "class: sofa — likely label errors 1–3 of 9 labels (2 past the confident-learning "
        "threshold)"
    )
    line = model.precision_line()
    assert f"labelled absent but scored ≥ {format_score(quality.threshold_present)}" in line
    assert f"present but scored ≤ {format_score(1 - quality.threshold_absent)}" in line
    assert "trained on these images" not in line
    model.last_page()
    assert model.page == 2 and [i.row for i in model.page_items()] == SOFA_ORDER[6:]
    assert model.status_line().startswith("class: sofa — likely label errors 7–9 of 9")


def test_labels_past_the_threshold_come_first_and_the_bar_ends_them():
    # present 0.2 is more likely wrong than absent 0.78 but only the latter passes (see
    # test_label_quality.test_flagged_first_keeps_the_threshold_a_clean_cut)
    scores = np.array([0.9, 0.9, 0.9, 0.2, 0.78, 0.05, 0.05, 0.05, 0.05], np.float32)
    labels = np.array([1, 1, 1, 1, -1, -1, -1, -1, -1], np.int8)
    files = tuple(f"JPEGImages/{i}.jpg" for i in range(9))
    model = RankingModel(
        Predictions(scores[:, None], labels[:, None], files, ("boat",), PROVENANCE)
    )
    model.set_view(View.LABEL_ERRORS)
    assert model.view_rows()[:2].tolist() == [4, 3]
    assert model.marker_row() == 3  # right after the one flagged label
    assert "(1 past the confident-learning threshold)" in model.status_line()


def test_going_to_a_rank_and_the_difficult_label():
    model = sofa_model()
    model.set_view(View.LABEL_ERRORS)
    model.go_to_rank(9)  # rank 9 is row 6 (0.1), 7th of the view: page 3
    assert model.page == 2
    model.go_to_rank(5)  # row 3, 2nd of the view
    assert model.page == 0
    with pytest.raises(ValueError, match="not among the ranked labels"):
        model.go_to_rank(3)  # rank 3 is row 8 (0.9 tied with row 1, difficult)


def test_the_view_keys_toggle_and_the_class_switch_keeps_the_view():
    model = sofa_model()
    model.toggle_view(View.LABEL_ERRORS)
    assert model.view is View.LABEL_ERRORS
    model.toggle_view(View.DISAGREEMENTS)
    assert model.view is View.DISAGREEMENTS
    model.toggle_view(View.DISAGREEMENTS)
    assert model.view is View.RANKING
    model.set_view("label-errors")
    model.set_class(1)
    assert model.view is View.LABEL_ERRORS and model.class_name == "cat"
    cat = model.predictions
    expected = rank_class(cat.scores[:, 1], cat.labels[:, 1] == 1).rows
    assert model.view_rows().tolist() == expected.tolist()
    assert expected[:2].tolist() == [0, 9]  # 0 labelled present, 1.0 labelled absent: a tie
    files = model.front_files()  # what the prefetch decodes: it leaves the view alone
    assert model.view is View.LABEL_ERRORS and model.class_name == "cat"
    assert len(files) == 2 * 3 * 3  # per class: both ends of the ranking and the review's top
    model.set_view(View.LABEL_ERRORS)
    sofa_review = sofa_model().label_quality().rows[:3]
    assert files[6:9] == [f"JPEGImages/{r:02d}.jpg" for r in sofa_review]


def test_unlabelled_files_have_no_label_error_view():
    model = sofa_model()
    object.__setattr__(model.predictions, "labels", None)
    with pytest.raises(ValueError, match="no labels"):
        model.set_view(View.LABEL_ERRORS)


def test_scores_of_images_the_model_trained_on_are_called_out():
    trained_on = sofa_model(split="train")
    trained_on.set_view(View.LABEL_ERRORS)
    assert not trained_on.scores_held_out
    assert "trained on these images" in trained_on.precision_line()
    out_of_fold = sofa_model(split="train", out_of_fold=True)
    out_of_fold.set_view(View.LABEL_ERRORS)
    assert out_of_fold.scores_held_out
    assert "trained on these images" not in out_of_fold.precision_line()


def test_export_of_the_view_adds_the_error_score_and_the_threshold(tmp_path):
    model = sofa_model()
    store = MarkStore(tmp_path / "marks.json")
    store.toggle("sofa", "JPEGImages/03.jpg", "label")
    model.set_view(View.LABEL_ERRORS)
    path = write_csv(tmp_path / "x.csv", model.export_rows(store.words), model.export_columns())
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == [f"JPEGImages/{r:02d}.jpg" for r in SOFA_ORDER]
    assert rows[0]["label_error_score"] == "0.85" and rows[0]["confident_learning"]
    assert rows[1]["mark"] == "label looks wrong" and rows[1]["label"] == "absent"
    assert [bool(r["confident_learning"]) for r in rows] == [True, True] + [False] * 7
    model.set_view(View.RANKING)  # the other views keep the six columns
    assert model.export_columns() == ()
    assert len(next(csv.reader(io.StringIO(csv_text(model.export_rows(store.words)))))) == 6


DANGEROUS = ["=1+1.jpg", "+cmd.jpg", "-2+3.jpg", "@SUM(A1).jpg", "\tx.jpg", "\rx.jpg"]


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(tmp_path):
    rows = [ExportRow("=sofa", 1, name, 0.5, -1, "") for name in [*DANGEROUS, "safe=.jpg"]]
    path = write_csv(tmp_path / "x.csv", rows)
    with path.open(newline="", encoding="utf-8") as handle:
        read = list(csv.reader(handle))
    assert [r[2] for r in read[1:]] == [f"'{name}" for name in DANGEROUS] + ["safe=.jpg"]
    assert all(r[0] == "'=sofa" for r in read[1:])
    assert [unescape_formula(r[2]) for r in read[1:]] == [*DANGEROUS, "safe=.jpg"]
    assert escape_formula("'=x") == "'=x" and unescape_formula("'plain") == "'plain"


def test_a_file_name_that_is_not_utf8_is_written_with_escapes(tmp_path):
    name = "JPEGImages/" + b"caf\xe9\xff.jpg".decode("utf-8", "surrogateescape")
    assert is_undecodable(name) and not is_undecodable("JPEGImages/café.jpg")
    assert printable(name) == "JPEGImages/caf\\xe9\\xff.jpg"
    path = write_csv(tmp_path / "x.csv", [ExportRow("sofa", 1, name, 0.5, 1, "")])
    text = path.read_bytes().decode("utf-8")  # valid UTF-8
    assert "JPEGImages/caf\\xe9\\xff.jpg" in text


@pytest.mark.parametrize("hostile", ["../../x", "/tmp/x", "..", ".", "", "a/../../b", "c:\\x"])
def test_output_names_from_hostile_class_names_stay_in_their_folder(tmp_path, hostile):
    folder = tmp_path / "run" / "exports"
    path = output_file(folder, hostile, "highest-first", suffix=".csv")
    assert path.parent == folder and path.name.endswith("-highest-first.csv")
    assert "/" not in path.name and "\\" not in path.name and path.name not in (".", "..")
    with pytest.raises(UnsafePathError):
        child_path(folder, f"{hostile}-x.csv" if "/" in hostile or "\\" in hostile else "..")

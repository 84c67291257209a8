"""--label-fixes: the browser's "label looks wrong" marks change exactly those train labels
(what the loss sees), never a val label; the run records them and is reproducible from its
copy; files that do not fit the data are refused before anything is created."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main_train
from evaluation.__main__ import main as evaluation_main
from evaluation.metrics import per_class_average_precision
from gui import review
from predictions import load_predictions
from tests.conftest import errors_of, snapshot
from tests.voc_fixture import TinyVoc, tiny_run_args
from training import labelfixes
from training.checkpoint import load_trusted
from training.config import config_from_argv
from training.data import build_run_data
from training.distributed import DistContext
from training.labelfixes import LabelFixesError, labels_for_ap, read_marks_file, resolve_fixes
from vocdata import read_split
from vocdata.classes import VOC_CLASSES
from vocdata.paths import PROJECT_ROOT, resolve_project_path
from vocdata.splits import VocSplit


def _file(image_id: str) -> str:
    return f"JPEGImages/{image_id}.jpg"


def _write_marks(path: Path, marks: dict[str, dict[str, str]]) -> Path:
    """A marks file as the browser saves it (gui.review.MarkStore)."""
    store = review.MarkStore(path)
    for class_name, by_file in marks.items():
        for file, mark in by_file.items():
            store.toggle(class_name, file, mark)
    return path


def _pick_marks(tiny_voc: TinyVoc) -> tuple[dict[str, dict[str, str]], list[tuple[int, int]]]:
    """'label looks wrong' on a present, an absent and a difficult train label, one 'model
    wrong' mark; returns the marks and the (row, column) of the three label marks."""
    labels, ids = tiny_voc.labels["train"], tiny_voc.ids["train"]
    picked = []
    for wanted in (1, -1, 0):
        row, column = map(int, np.argwhere(labels == wanted)[len(picked)])
        picked.append((row, column))
    marks: dict[str, dict[str, str]] = {}
    for row, column in picked:
        marks.setdefault(VOC_CLASSES[column], {})[_file(ids[row])] = "label"
    other = next((r, c) for r, c in np.argwhere(labels == 1) if (int(r), int(c)) not in picked)
    marks.setdefault(VOC_CLASSES[int(other[1])], {})[_file(ids[int(other[0])])] = "model"
    return marks, picked


# -- reading the file --------------------------------------------------------------------------


def test_the_browsers_file_formats_are_the_ones_read():
    """training may not import gui: the constants it repeats must be the browser's own."""
    assert labelfixes.MARKS_FORMAT == review.MARKS_FORMAT
    assert labelfixes.MARK_WORDS == review.MARK_WORDS
    assert labelfixes.FORMULA_STARTS == review.FORMULA_STARTS
    assert set(labelfixes.CSV_REQUIRED_COLUMNS) <= set(review.CSV_COLUMNS)
    for cell in ("=1+1", "-2", "+x", "@a", "\tb", "\rc", "plain", "'quoted", ""):
        assert labelfixes._unescape_formula(review.escape_formula(cell)) == cell
        assert labelfixes._unescape_formula(cell) == review.unescape_formula(cell)


def _split() -> VocSplit:
    labels = np.full((4, len(VOC_CLASSES)), -1, dtype=np.int8)
    labels[0, 11] = 1  # dog
    labels[1, 7] = 0  # cat, difficult
    return VocSplit("train", ("a1", "a2", "a3", "a4"), labels)


def test_marks_json_and_exported_csv_give_the_same_fixes(tmp_path):
    """Only 'label looks wrong' counts; 'model wrong' marks are counted and ignored. The CSV
    the browser exports (CRLF, formula-safe cells), the same CSV saved with LF line ends and a
    byte-order mark by an editor, and the marks file itself give the same fixes."""
    marks = {
        "dog": {_file("a1"): "label", _file("a2"): "model"},
        "cat": {_file("a2"): "label"},
        "sofa": {_file("a3"): "model"},
    }
    marks_path = _write_marks(tmp_path / "train_oof_predictions.marks.json", marks)
    rows = [
        review.ExportRow(c, n, f, 0.5, -1, review.MARK_WORDS[m])
        for n, (c, f, m) in enumerate(
            [(c, f, m) for c, by_file in marks.items() for f, m in by_file.items()], 1
        )
    ]
    rows.append(review.ExportRow("dog", 9, _file("a4"), 0.1, -1, ""))  # unmarked: no fix
    crlf = review.write_csv(tmp_path / "dog.csv", rows)
    assert b"\r\n" in crlf.read_bytes()
    lf = tmp_path / "edited.csv"
    lf.write_bytes(b"\xef\xbb\xbf" + crlf.read_bytes().replace(b"\r\n", b"\n"))

    split = _split()
    results = []
    for path in (marks_path, crlf, lf):
        parsed = read_marks_file(path)
        assert parsed.model_marks == 2
        assert parsed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        fixes = resolve_fixes(parsed, "flip", split, val_ids=())
        results.append([(f.row, f.column, f.label, f.action) for f in fixes.fixes])
    # dog on a1: present -> flipped; cat on a2: difficult, no opposite -> ignored
    assert results[0] == [(0, 11, 1, "flip"), (1, 7, 0, "ignore")]
    assert results[1] == results[0] and results[2] == results[0]


def test_an_edited_csv_with_a_formula_quote_and_an_unknown_word(tmp_path):
    text = (
        "class,rank,file,score,label,mark\r\n"
        "dog,1,JPEGImages/a1.jpg,0.9,contains,label looks wrong\r\n"
        "cat,2,'-a5,0.8,absent,Label Looks Wrong\r\n"  # a bare id, quoted as a formula
    )
    (tmp_path / "ok.csv").write_text(text, newline="")
    base = _split()
    labels = np.concatenate([base.labels, base.labels[:1]])
    split = VocSplit("train", (*base.image_ids, "-a5"), labels)
    fixes = resolve_fixes(read_marks_file(tmp_path / "ok.csv"), "ignore", split, ())
    assert [(f.row, f.column) for f in fixes.fixes] == [(0, 11), (4, 7)]
    (tmp_path / "bad.csv").write_text(text + "sofa,3,JPEGImages/a3.jpg,0.7,absent,wrong?\n")
    with pytest.raises(LabelFixesError, match=r"line 4: mark 'wrong\?'"):
        read_marks_file(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text(text + "dog,5,JPEGImages/a1.jpg,0.9,contains,model wrong\n")
    with pytest.raises(LabelFixesError, match=r"line 4 marks 'JPEGImages/a1\.jpg'.*line 2"):
        read_marks_file(tmp_path / "twice.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LabelFixesError, match="no column class, file, mark"):
        read_marks_file(tmp_path / "other.csv")


def test_unknown_classes_unknown_images_and_val_images_are_named(tmp_path):
    split = _split()
    cases = {
        "classes": ({"sofaa": {_file("a1"): "label"}}, "name classes that are not VOC.*'sofaa'"),
        "val": ({"dog": {_file("v1"): "label"}}, "name val images.*'JPEGImages/v1.jpg'"),
        "images": (
            {"dog": {_file(f"x{i}"): "label" for i in range(5)}},
            "5 mark.*neither the train nor the val.*'JPEGImages/x0.jpg'.* and 2 more",
        ),
    }
    for name, (marks, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"format": review.MARKS_FORMAT, "marks": marks}))
        with pytest.raises(LabelFixesError, match=message):
            resolve_fixes(read_marks_file(path), "ignore", split, val_ids=("v1",))
    (tmp_path / "model-only-val.json").write_text(
        json.dumps({"format": review.MARKS_FORMAT, "marks": {"dog": {_file("v1"): "model"}}})
    )
    parsed = read_marks_file(tmp_path / "model-only-val.json")  # ignored marks are no fixes
    assert resolve_fixes(parsed, "ignore", split, ("v1",)).fixes == ()


# -- what the loss sees ------------------------------------------------------------------------


def _targets_and_mask(data) -> tuple[np.ndarray, np.ndarray]:
    dataset = data.train_loader.dataset
    return dataset.targets.numpy(), dataset.mask.numpy()


@pytest.mark.parametrize(
    ("mode", "difficult"), [("ignore", "ignore"), ("ignore", "positive"), ("flip", "negative")]
)
def test_fixes_change_exactly_the_listed_train_labels(tiny_voc, tmp_path, mode, difficult):
    marks, picked = _pick_marks(tiny_voc)
    marks_path = _write_marks(tmp_path / "marks.json", marks)
    runs = tmp_path / "runs"
    base = tiny_run_args(tiny_voc.root, runs, "--difficult", difficult)
    plain = build_run_data(config_from_argv(base), tiny_voc.root, DistContext(), False)
    fixed_args = [*base, "--label-fixes", str(marks_path), "--label-fix-mode", mode]
    fixed = build_run_data(config_from_argv(fixed_args), tiny_voc.root, DistContext(), False)

    targets, mask = _targets_and_mask(plain)
    new_targets, new_mask = _targets_and_mask(fixed)
    changed = {
        (int(r), int(c)) for r, c in np.argwhere((targets != new_targets) | (mask != new_mask))
    }
    labels = tiny_voc.labels["train"]
    expected = set()
    for row, column in picked:
        counted = labels[row, column] != 0 or difficult != "ignore"
        if mode == "flip" and labels[row, column] != 0:
            assert new_mask[row, column] == 1
            assert new_targets[row, column] == 1 - targets[row, column]
            expected.add((row, column))
        else:  # left out, in every difficult mode (a difficult one was out already under ignore)
            assert new_mask[row, column] == 0
            if counted:
                expected.add((row, column))
    assert changed == expected
    # the frozen recipe's targets (training/frozen.py) are the same as the loader's
    frozen_targets, frozen_mask = fixed.train_split.targets_and_mask(difficult)
    np.testing.assert_array_equal(frozen_mask, new_mask)
    np.testing.assert_array_equal(frozen_targets * frozen_mask, new_targets * new_mask)
    # no val label changes
    for name in ("targets", "mask"):
        np.testing.assert_array_equal(
            getattr(plain.val_loader.dataset, name), getattr(fixed.val_loader.dataset, name)
        )
    np.testing.assert_array_equal(plain.val_split.labels, fixed.val_split.labels)
    assert not (runs.exists() and any(runs.iterdir()))  # building the data creates no run


def test_held_out_ap_leaves_ignored_pairs_out_in_every_difficult_mode():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((40, len(VOC_CLASSES))) < 0.4, 1, -1).astype(np.int8)
    labels[::7, 3] = 0
    split = VocSplit("train", tuple(f"i{n}" for n in range(40)), labels)
    boat_marks = tuple(labelfixes.Mark("boat", f"i{n}") for n in range(0, 40, 3))
    marks = labelfixes.MarksFile(Path("m.json"), "0" * 64, "marks", boat_marks, 0)
    fixed = resolve_fixes(marks, "ignore", split, ()).apply(split)
    scores = rng.random((40, len(VOC_CLASSES)))
    for difficult in ("ignore", "positive", "negative"):
        _, mask = fixed.targets_and_mask(difficult)
        fixed_labels, mode = labels_for_ap(fixed, difficult)
        ap = per_class_average_precision(scores, fixed_labels, difficult=mode)
        counted = mask[:, 3] > 0
        assert not counted[::3].any()
        original_ap = per_class_average_precision(
            scores[counted], split.labels[counted], difficult=difficult
        )
        assert ap[3] == pytest.approx(original_ap[3])
        assert ap[5] == pytest.approx(
            per_class_average_precision(scores, labels, difficult=difficult)[5]
        )


# -- whole runs --------------------------------------------------------------------------------


def _train(tiny_voc: TinyVoc, runs: Path, *extra: str) -> int:
    return main_train.main(tiny_run_args(tiny_voc.root, runs, "--epochs", "2", *extra))


def test_a_run_records_its_fixes_and_is_reproducible_from_its_copy(tiny_voc, tmp_path):
    marks, picked = _pick_marks(tiny_voc)
    marks_path = _write_marks(tmp_path / "marks.json", marks)
    runs = tmp_path / "runs"
    fix = ["--label-fixes", str(marks_path), "--label-fix-mode", "flip"]
    assert _train(tiny_voc, runs, *fix, "--run-name", "fixed") == 0
    assert _train(tiny_voc, runs, "--run-name", "plain") == 0
    run = runs / "fixed"
    copy = run / "label_fixes.json"
    assert (
        _train(
            tiny_voc,
            runs,
            "--label-fixes",
            str(copy),
            "--label-fix-mode",
            "flip",
            "--run-name",
            "again",
        )
        == 0
    )

    first, again = (load_predictions(runs / n / "val_predictions.npz") for n in ("fixed", "again"))
    np.testing.assert_array_equal(first.scores, again.scores)  # bit-identical
    np.testing.assert_array_equal(first.labels, read_split(tiny_voc.root, "val").labels)
    plain = load_predictions(runs / "plain" / "val_predictions.npz")
    assert not np.array_equal(plain.scores, first.scores)  # the fixes did change training

    digest = hashlib.sha256(marks_path.read_bytes()).hexdigest()
    config = json.loads((run / "config.json").read_text())
    assert config["label_fix_mode"] == "flip"
    assert not Path(config["label_fixes"]).is_absolute()  # project-relative
    assert resolve_project_path(config["label_fixes"]) == marks_path.resolve()
    per_class: dict[str, int] = {}
    for _, column in picked:
        per_class[VOC_CLASSES[column]] = per_class.get(VOC_CLASSES[column], 0) + 1
    for provenance in (first.provenance, load_trusted(run / "model_best.pt")["provenance"]):
        recorded = provenance["label_fixes"]
        assert recorded["sha256"] == digest and recorded["mode"] == "flip"
        assert recorded["count"] == 3 and recorded["per_class"] == per_class
        assert recorded["flipped"] == 2 and recorded["ignored"] == 1  # the difficult one
        assert recorded["model_marks_ignored"] == 1
    saved = json.loads(copy.read_text())
    assert saved["sha256"] == digest and len(saved["fixes"]) == 3
    again_fixes = again.provenance["label_fixes"]
    assert again_fixes["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()

    assert evaluation_main(["--run", str(run), "--k", "2"]) == 0
    report = (run / "report" / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("trained with"))
    assert line.startswith("trained with 3 label fixes (") and f"sha256 {digest[:16]}" in line
    assert "mode flip" in line


def test_resume_uses_the_copy_even_when_the_file_changed(tiny_voc, tmp_path, caplog):
    marks, _ = _pick_marks(tiny_voc)
    marks_path = _write_marks(tmp_path / "marks.json", marks)
    runs = tmp_path / "runs"
    fix = ["--label-fixes", str(marks_path), "--label-fix-mode", "flip"]
    assert _train(tiny_voc, runs, *fix, "--run-name", "whole") == 0
    assert _train(tiny_voc, runs, *fix, "--run-name", "halves", "--stop-after", "1") == 0
    marks_path.write_text(json.dumps({"format": review.MARKS_FORMAT, "marks": {}}))
    resume = ["--resume", "halves", "--runs-dir", str(runs)]
    caplog.clear()
    assert main_train.main(resume) == 0
    assert "changed since the run started" in caplog.text
    np.testing.assert_array_equal(
        load_predictions(runs / "whole" / "val_predictions.npz").scores,
        load_predictions(runs / "halves" / "val_predictions.npz").scores,
    )
    # another file, or fixes added to a run that trained without them: refused
    assert _train(tiny_voc, runs, "--run-name", "bare", "--stop-after", "1") == 0
    other = _write_marks(tmp_path / "other.json", {"dog": {}})
    for run, extra in (("whole", ["--label-fixes", str(other)]), ("bare", fix)):
        caplog.clear()
        before = snapshot(runs / run)
        assert (
            main_train.main(["--resume", run, "--runs-dir", str(runs), "--epochs", "3", *extra])
            == 2
        )
        message = errors_of(caplog)
        assert "--label-fixes" in message and "can only be resumed as it was started" in message
        assert snapshot(runs / run) == before


def test_bad_fixes_files_exit_2_with_one_line_and_no_run_folder(tiny_voc, tmp_path, caplog):
    runs = tmp_path / "runs"
    val_image = _file(tiny_voc.ids["val"][0])
    bad = {
        "classes": {"sofaa": {_file(tiny_voc.ids["train"][0]): "label"}},
        "images": {"dog": {"JPEGImages/2099_000001.jpg": "label"}},
    }
    for name, marks in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"format": review.MARKS_FORMAT, "marks": marks}))
        for folds in ("1", "2"):
            caplog.clear()
            assert _train(tiny_voc, runs, "--label-fixes", str(path), "--folds", folds) == 2
            assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1
            assert ("sofaa" if name == "classes" else "2099_000001") in errors_of(caplog)
    assert not (runs.exists() and any(runs.iterdir()))

    # as a user meets it: the real command, one line on stderr
    path = tmp_path / "val.json"
    path.write_text(
        json.dumps({"format": review.MARKS_FORMAT, "marks": {"dog": {val_image: "label"}}})
    )
    argv = tiny_run_args(tiny_voc.root, runs, "--label-fixes", str(path))
    result = subprocess.run(
        [sys.executable, "main_train.py", *argv],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("ERROR")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "val image" in lines[0] and val_image in lines[0]
    assert "measured against" in lines[0]
    assert not (runs.exists() and any(runs.iterdir()))


def test_the_run_copy_is_read_back_checked_against_the_labels_it_was_made_on(tmp_path):
    split = _split()
    marks = {"dog": {_file("a1"): "label"}, "cat": {_file("a2"): "label"}}
    parsed = read_marks_file(_write_marks(tmp_path / "marks.json", marks))
    fixes = resolve_fixes(parsed, "flip", split, ())
    labelfixes.write_run_copy(tmp_path, fixes)
    copy = tmp_path / "label_fixes.json"
    again = labelfixes.read_run_copy(copy, split, ())
    assert again.fixes == fixes.fixes and again.summary() == fixes.summary()
    fixed = again.apply(split)
    assert fixed.labels[0, 11] == -1 and fixed.labels[1, 7] == 0  # flipped; difficult left out

    relabelled = VocSplit(split.name, split.image_ids, split.labels.copy())
    relabelled.labels[0, 11] = -1  # the dataset's dog label of a1 changed since
    with pytest.raises(LabelFixesError, match=r"recorded against dog label 1 .* now says -1"):
        labelfixes.read_run_copy(copy, relabelled, ())
    for damaged in ("{not json", json.dumps({"format": "voc-label-fixes/9", "fixes": []})):
        copy.write_text(damaged)
        with pytest.raises(LabelFixesError, match=r"label_fixes\.json"):
            labelfixes.read_run_copy(copy, split, ())

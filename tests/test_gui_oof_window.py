"""The training split reviewed in a real window under Xvfb: a run's out-of-fold predictions
opened from its val predictions and back, the likely-label-errors view stepped through,
marked and exported (marks kept apart per file), activation maps from the fold model that
scored each image; and the hostile inputs: class names that would lead out of the run folder,
a file name that is not UTF-8, images outside the dataset root.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PySimpleGUI as sg
import pytest
from PIL import Image

from gui.launch import LaunchError, has_display, launch, switched_args
from gui.model import View
from gui.options import build_parser
from gui.review import marks_path
from predictions import Predictions, save_predictions
from tests.conftest import PROVENANCE
from tests.test_camsource import fake_model_file
from tests.test_gui_review_window import press_key
from tests.test_gui_window import screenshot, shown, write_run
from vocdata import VOC_CLASSES, read_split
from vocdata.paths import PROJECT_ROOT, project_relative
from vocdata.splits import targets_and_mask

pytestmark = pytest.mark.gui
OOF_NAME = "train_oof_predictions.npz"


@pytest.fixture(scope="module")
def display():
    if not has_display():
        pytest.skip("no X display: run the tests under `xvfb-run -a` (see README)")


def write_oof(run_dir: Path, voc_root: Path, models: list[Path], seed: int = 1) -> Predictions:
    """An out-of-fold predictions file shaped like a --folds K run's: every train image, the
    fold model that scored each row named in the provenance. Scores follow the labels, with a
    few confident contradictions planted (the likely label errors)."""
    train = read_split(voc_root, "train")
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, train.labels.shape) + 4.0 * (train.labels >= 0) - 2.0
    flipped = rng.random(train.labels.shape) < 0.05
    logits[flipped] = -logits[flipped]
    row_models = [row % len(models) for row in range(len(train))]
    predictions = Predictions(
        (1 / (1 + np.exp(-logits))).astype(np.float32),
        train.labels,
        tuple(train.relative_paths),
        VOC_CLASSES,
        {
            "arch": "resnet18",
            "weights": "none",
            "epoch": None,
            "val_map": None,
            "seed": seed,
            "difficult": "ignore",
            "created": "2026-11-24T12:00:00+00:00",
            "voc_root": project_relative(voc_root),
            "split": "train",
            "out_of_fold": True,
            "folds": len(models),
            "models": [{"path": project_relative(p), "arch": "resnet18"} for p in models],
            "row_models": row_models,
        },
    )
    save_predictions(run_dir / OOF_NAME, predictions)
    return predictions


def open_with(*argv: str):
    args = build_parser().parse_args(list(argv))
    app = launch(args, started=time.perf_counter())
    app.pump()
    return app, args


def click_switch(app, args):
    """Click the split button; the window closes and the other file opens, as main_gui does."""
    app.window["-SWITCH-SPLIT-"].click()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        event, values = app.window.read(timeout=30)
        if event == sg.TIMEOUT_EVENT:
            continue
        if not app.handle(event, values):
            break
    else:
        raise AssertionError("the switch did not close the window")
    target = app.switch_to
    app.close()
    assert target is not None
    new_args = switched_args(args, app)
    new = launch(new_args, started=time.perf_counter())
    new.pump()
    return new, new_args


def label_error_rows(predictions: Predictions, column: int) -> list[int]:
    from evaluation.label_quality import rank_class

    targets, mask = targets_and_mask(predictions.labels, "ignore")
    return rank_class(
        predictions.scores[:, column], targets[:, column] > 0, mask[:, column] > 0
    ).flagged_first()


def test_review_the_training_split_and_come_back(display, tiny_voc, tmp_path):
    run = tmp_path / "run"
    write_run(run, tiny_voc.root)
    folds = [fake_model_file(run / "folds" / str(k) / "model_best.pt") for k in (1, 2)]
    oof = write_oof(run, tiny_voc.root, folds)
    app, args = open_with("--predictions", str(run), "--voc-root", str(tiny_voc.root))
    try:
        assert "val split" in app.window["-SOURCE-"].get()
        button = app.window["-SWITCH-SPLIT-"]
        assert not button.Disabled and OOF_NAME in button.Tooltip
        # the class with the most labels past the threshold, so stepping and marking matter
        column = max(
            range(len(VOC_CLASSES)), key=lambda c: label_error_rows(oof, c).num_past_threshold
        )
        name = VOC_CLASSES[column]
        label = app.model.class_labels()[column]
        app.window["-CLASS-"].update(value=label)
        app.send("-CLASS-", label)
        app, args = click_switch(app, args)
    except BaseException:
        app.close()
        raise
    try:
        # the out-of-fold file opens on the same class, in the likely-label-errors view
        assert app.model.predictions.provenance["out_of_fold"] is True
        assert app.model.class_name == name and app.model.view is View.LABEL_ERRORS
        assert app.window["-LABEL-ERRORS-"].get() is True
        assert "train split, out-of-fold scores" in app.window["-SOURCE-"].get()
        assert app.window["-SWITCH-SPLIT-"].get_text() == "Back to the val split"
        quality = label_error_rows(oof, column)
        expected = [oof.files[r] for r in quality.rows]
        assert shown(app) == expected[: app.model.page_size]
        assert (
            app.window["-STATUS-"]
            .get()
            .startswith(
                f"class: {name} — likely label errors 1–{min(20, quality.num_ranked)} of "
                f"{quality.num_ranked} labels ({quality.num_past_threshold} past"
            )
        )
        cut = quality.num_past_threshold  # the first label below the threshold: ▼CL
        if cut < len(app.displayed):
            assert "▼CL" in app.window[("-CAPTION-", cut)].get()
        assert "labelled absent but scored ≥" in app.window["-PRECISION-"].get()
        assert app.window["-HIGHEST-"].Disabled  # the direction belongs to the ranking

        press_key(app, "ctrl+l")  # a real key press: back to the whole ranking
        assert app.model.view is View.RANKING and app.window["-VIEW-RANKING-"].get() is True
        press_key(app, "ctrl+l")
        assert app.model.view is View.LABEL_ERRORS

        view = app.detail_view(0)
        try:
            assert "likely label errors 1 of" in view.window["-TITLE-"].get()
            assert "past the confident-learning threshold" in view.window["-TITLE-"].get()
            view.send("-MARK-LABEL-")  # L
            view.send("-D-NEXT-")  # →
            assert view.item.file == expected[1]
            view.send("-MARK-MODEL-")  # M
            tip = view.window["-CAM-"].Tooltip
            assert not view.window["-CAM-"].Disabled and "model that scored each image" in tip
        finally:
            view.close()
        for index, item in enumerate(app.displayed):
            app._draw_slot(index, item)
        assert "⚑ label?" in app.window[("-CAPTION-", 0)].get()

        app.send("-EXPORT-")  # Ctrl+E
        exported = run / "exports" / f"{name}-likely-label-errors.csv"
        assert exported.is_file() and "exported" in app.window["-MESSAGE-"].get()
        with exported.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["file"] for r in rows] == expected
        assert rows[0]["mark"] == "label looks wrong" and rows[1]["mark"] == "model wrong"
        assert sum(bool(r["confident_learning"]) for r in rows) == quality.num_past_threshold
        # the marks of the training split live beside its own file, not with val's
        oof_marks = json.loads(marks_path(run / OOF_NAME).read_text())["marks"]
        assert oof_marks == {name: {expected[0]: "label", expected[1]: "model"}}
        assert not marks_path(run / "val_predictions.npz").exists()

        app, args = click_switch(app, args)
    finally:
        app.close()
    try:  # back on val: the same class, its own (empty) marks
        assert app.model.predictions.provenance.get("split") is None
        assert app.model.class_name == name and app.model.view is View.LABEL_ERRORS
        assert app.marks.count() == 0
        view = app.detail_view(0)
        try:
            view.send("-MARK-LABEL-")
        finally:
            view.close()
        val_marks = json.loads(marks_path(run / "val_predictions.npz").read_text())["marks"]
        assert val_marks == {name: {app.displayed[0].file: "label"}}
        assert json.loads(marks_path(run / OOF_NAME).read_text())["marks"] == oof_marks
    finally:
        app.close()


def test_the_switch_is_disabled_without_an_out_of_fold_file(display, tiny_voc, tmp_path):
    write_run(tmp_path / "run", tiny_voc.root)
    app, _ = open_with("--predictions", str(tmp_path / "run"), "--voc-root", str(tiny_voc.root))
    try:
        button = app.window["-SWITCH-SPLIT-"]
        assert button.Disabled and "--folds" in button.Tooltip and OOF_NAME in button.Tooltip
        button.click()  # a disabled button does nothing
        app.pump()
        assert app.switch_to is None
    finally:
        app.close()


def test_split_train_without_an_out_of_fold_file_is_a_message(tiny_voc, tmp_path):
    write_run(tmp_path / "run", tiny_voc.root)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run(
        [sys.executable, "main_gui.py", "--predictions", str(tmp_path / "run"), "--split", "train"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert OOF_NAME in result.stderr and "--folds" in result.stderr
    assert "Traceback" not in result.stderr


def test_activation_map_of_an_out_of_fold_row_comes_from_its_fold_model(
    display, tiny_voc, tmp_path
):
    """Two real (untrained) fold models: the map of a row is computed by the model the file
    names for that row, and the window says which."""
    import torch

    from training.checkpoint import save_best_model
    from training.model import build_classifier

    run = tmp_path / "run"
    folds = []
    for k in (1, 2):
        torch.manual_seed(k)
        path = run / "folds" / str(k) / "model_best.pt"
        save_best_model(
            path,
            build_classifier("resnet18", len(VOC_CLASSES), weights="none"),
            arch="resnet18",
            class_names=VOC_CLASSES,
            image_size=32,
            provenance={"note": "untrained fold model of the test"},
        )
        folds.append(path)
    oof = write_oof(run, tiny_voc.root, folds)
    app, _ = open_with("--predictions", str(run / OOF_NAME), "--voc-root", str(tiny_voc.root))
    try:
        row = app.displayed[0].row
        fold = oof.provenance["row_models"][row]
        view = app.detail_view(0)
        try:
            view.send("-CAM-KEY-")  # C
            view.pump_until(lambda: view.heatmap is not None, timeout=120)
            assert set(app.cam.mappers) == {fold}  # only the row's own model was loaded
            status = view.window["-CAM-STATUS-"].get()
            assert f"folds/{fold + 1}/model_best.pt" in status and "scored this image" in status
        finally:
            view.close()
    finally:
        app.close()


def write_crafted(path: Path, class_names: tuple[str, ...], files: list[str], root: Path):
    """A predictions archive written with numpy directly, as a crafted file would be (the
    project's writer may refuse such names)."""
    n, c = len(files), len(class_names)
    rng = np.random.default_rng(0)
    provenance = {
        "format_version": 2,
        "arch": "resnet18",
        "weights": "none",
        "epoch": 1,
        "val_map": 0.5,
        "seed": 0,
        "difficult": "ignore",
        "created": "2026-11-24T12:00:00+00:00",
        "voc_root": project_relative(root),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        scores=rng.random((n, c)).astype(np.float32),
        labels=rng.choice(np.array([-1, 1], np.int8), size=(n, c)),
        files=np.array(files, dtype=np.str_),
        class_names=np.array(class_names, dtype=np.str_),
        provenance=np.array(json.dumps(provenance)),
    )


def test_class_names_that_lead_out_of_the_run_write_nothing_outside(display, tiny_voc, tmp_path):
    run = tmp_path / "deep" / "run"
    val = read_split(tiny_voc.root, "val")
    hostile = ("../../x", "/tmp/x", *VOC_CLASSES[2:])
    write_crafted(run / "val_predictions.npz", hostile, val.relative_paths, tiny_voc.root)
    outside_before = {p for p in Path("/tmp").glob("x-*")}
    try:
        app, _ = open_with("--predictions", str(run / "val_predictions.npz"), "--class", "/tmp/x")
    except LaunchError as error:  # refused when loaded: the names are checked there
        assert "class" in str(error).lower() and "Traceback" not in str(error)
        assert {p for p in Path("/tmp").glob("x-*")} == outside_before
        return
    try:
        for class_name in hostile[:2]:
            label = app.model.class_labels()[hostile.index(class_name)]
            app.window["-CLASS-"].update(value=label)
            app.send("-CLASS-", label)
            for action in (app.export_view, app.save_page):
                written = action()
                assert written is not None and written.parent in (
                    run / "exports",
                    run / "screens",
                ), written
        assert not list((tmp_path / "deep").glob("x*")) and not list(tmp_path.glob("x*"))
        assert {p for p in Path("/tmp").glob("x-*")} == outside_before
        assert sorted(p.name for p in (run / "exports").iterdir()) == [
            ".._.._x-highest-first.csv",
            "_tmp_x-highest-first.csv",
        ]
    finally:
        app.close()


def test_the_export_and_save_guards_themselves(display, tiny_voc, tmp_path):
    """Names forced past the loader's checks: the window's own guard keeps every output in
    its folder."""
    write_run(tmp_path / "run", tiny_voc.root)
    app, _ = open_with(
        "--predictions", str(tmp_path / "run" / "val_predictions.npz"),
        "--voc-root", str(tiny_voc.root),
    )  # fmt: skip
    try:
        names = list(app.model.predictions.class_names)
        names[app.model.class_index] = "../../../escaped"
        object.__setattr__(app.model.predictions, "class_names", tuple(names))
        exported, saved = app.export_view(), app.save_page()
        assert exported == tmp_path / "run" / "exports" / ".._.._.._escaped-highest-first.csv"
        assert saved.parent == tmp_path / "run" / "screens"
        written = [p for p in tmp_path.parent.rglob("*escaped*") if p.is_file()]
        assert {p.parent for p in written} == {tmp_path / "run" / "exports", saved.parent}
    finally:
        app.close()


def _run_with_images_first(voc, run: Path, names: list[str]) -> Path:
    """A run folder whose predictions rank the images `names` (labelled present in every
    class) first, then the val split."""
    val = read_split(voc.root, "val")
    files = (*names, *val.relative_paths)
    scores = np.linspace(0.99, 0.01, len(files))[:, None].repeat(len(VOC_CLASSES), 1)
    labels = np.concatenate([np.ones((len(names), len(VOC_CLASSES)), np.int8), val.labels])
    predictions = Predictions(scores.astype(np.float32), labels, files, VOC_CLASSES, PROVENANCE)
    save_predictions(run / "val_predictions.npz", predictions)
    return run


def test_a_file_name_that_is_not_utf8_keeps_the_gui_running(display, tiny_voc, tmp_path):
    raw = b"\xff\xfenot-utf8.jpg"
    Image.new("RGB", (48, 40), (20, 120, 200)).save(tiny_voc.root / "JPEGImages" / os.fsdecode(raw))
    name = "JPEGImages/" + os.fsdecode(raw)
    run = _run_with_images_first(tiny_voc, tmp_path / "run", [name])
    app, _ = open_with(
        "--predictions", str(run), "--voc-root", str(tiny_voc.root), "--rows", "1"
    )  # fmt: skip
    try:
        assert shown(app)[0] == name and name not in app.cache.failed  # the image is shown
        path = app.export_view()
        assert path is not None and path.is_file()
        message = app.window["-MESSAGE-"].get()
        assert "exported" in message and "not UTF-8" in message
        text = path.read_bytes().decode("utf-8")  # the file is valid UTF-8
        assert "JPEGImages/\\xff\\xfenot-utf8.jpg" in text
        view = app.detail_view(0)
        try:
            assert "\\xff\\xfenot-utf8.jpg" in view.window["-TITLE-"].get()
            view.send("-MARK-LABEL-")
            assert "label looks wrong" in view.window["-MARK-STATUS-"].get()
        finally:
            view.close()
        app.send("-NEXT-")  # the session goes on
        assert app.model.page == 1
    finally:
        app.close()
    marks = json.loads(marks_path(run / "val_predictions.npz").read_text(encoding="utf-8"))
    assert list(marks["marks"]["aeroplane"]) == [name]  # the name round-trips


def test_images_come_only_from_inside_the_root_and_the_window_names_it(display, tiny_voc, tmp_path):
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (48, 40), (255, 0, 0)).save(secret)
    val = read_split(tiny_voc.root, "val")
    victim = tiny_voc.root / val.relative_paths[0]
    victim.unlink()
    victim.symlink_to(secret)  # inside the root by name, outside by target
    predictions = write_run(tmp_path / "run", tiny_voc.root)  # stores the root it used
    app, _ = open_with("--predictions", str(tmp_path / "run"))  # no --voc-root: the file's
    try:
        source = app.window["-SOURCE-"].get()
        assert f"images from {tiny_voc.root.resolve()}, named by the file" in source
        victim_name = val.relative_paths[0]
        app.model.go_to_rank(app.model.rank_of(predictions.files.index(victim_name)))
        app.show_page("test")
        app.pump()
        assert app.cache.failed[victim_name].startswith("outside the dataset root")
        slot = shown(app).index(victim_name)
        view = app.detail_view(slot)
        try:
            assert "outside the dataset root" in view.window["-TITLE-"].get()
        finally:
            view.close()
        app.window.refresh()
        screenshot("09-outside-the-root.png")
    finally:
        app.close()


def test_an_exported_view_never_hands_a_spreadsheet_a_formula(display, tiny_voc, tmp_path):
    """As a user meets it: photos scored from a folder keep their own names, and a name that
    starts like a formula (= + - @) is written to the CSV as text, never as a formula."""
    hostile = ["=HYPERLINK(1).jpg", "@SUM(1).jpg", "+1.jpg", "-1.jpg"]
    for name in hostile:
        Image.new("RGB", (48, 40), (20, 120, 200)).save(tiny_voc.root / name)
    run = _run_with_images_first(tiny_voc, tmp_path / "run", hostile)
    app, _ = open_with("--predictions", str(run), "--voc-root", str(tiny_voc.root))
    try:
        assert shown(app)[: len(hostile)] == hostile  # shown under their own names
        path = app.export_view()
    finally:
        app.close()
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    cells = [row["file"] for row in rows[: len(hostile)]]
    assert cells == ["'" + name for name in hostile]  # text to a spreadsheet, the name kept
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())

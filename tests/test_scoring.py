"""python -m predictions: re-scoring, image folders, ensembles and bad input, on tiny runs."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main_train
from predictions import load_predictions, voc_root_of
from predictions.__main__ import main as predict_main
from predictions.ensemble import MEAN_LOGIT, combine_scores
from tests.conftest import errors_of
from tests.voc_fixture import TinyVoc, tiny_run_args, write_tiny_voc
from vocdata.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> tuple[TinyVoc, Path, Path, Path]:
    """A tiny VOC tree and two one-epoch runs on it (different seeds): (voc, runs, a, b)."""
    base = tmp_path_factory.mktemp("scoring")
    voc = write_tiny_voc(base / "VOCdevkit" / "VOC2012")
    runs = base / "runs"
    for name, seed in (("a", "0"), ("b", "1")):
        args = tiny_run_args(voc.root, runs, "--epochs", "1", "--run-name", name, "--seed", seed)
        assert main_train.main(args) == 0
    return voc, runs, runs / "a", runs / "b"


def _score(runs: Path, *args: str) -> int:
    return predict_main(["--runs-dir", str(runs), "--workers", "0", "--no-progress", *args])


def test_rescoring_the_val_split_reproduces_the_runs_predictions_file(tiny_runs, tmp_path):
    voc, runs, run_a, _ = tiny_runs
    command = [sys.executable, "-m", "predictions", "--runs-dir", str(runs), "--model", "a"]
    command += ["--workers", "0", "--no-progress", "--batch-size", "5"]  # other batches too
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stderr
    written = run_a / "predictions" / "VOC2012-val.npz"
    assert "predictions/VOC2012-val.npz" in result.stdout

    original = load_predictions(run_a / "val_predictions.npz")
    rescored = load_predictions(written)
    assert rescored.files == original.files and rescored.class_names == original.class_names
    np.testing.assert_array_equal(rescored.labels, original.labels)
    np.testing.assert_allclose(rescored.scores, original.scores, rtol=0, atol=1e-5)
    prov = rescored.provenance
    assert prov["format_version"] == 2 and prov["split"] == "val"
    assert prov["tta"] == original.provenance["tta"] == "hflip"  # the run's own TTA, by default
    assert prov["source"] == "voc-split" and prov["skipped_count"] == 0
    assert [m["path"] for m in prov["models"]] == [
        Path(p).as_posix() for p in [prov["run"] + "/model_best.pt"]
    ]
    assert voc_root_of(rescored) == voc.root.resolve()

    # Never overwritten silently: a second run refuses, names the way out, and leaves it alone.
    assert _score(runs, "--model", "a") == 2
    assert load_predictions(written).provenance["created"] == prov["created"]
    assert _score(runs, "--model", "a", "--overwrite") == 0


def test_image_folder_rows_are_sorted_and_bad_files_listed_and_skipped(tiny_runs, tmp_path):
    voc, runs, run_a, _ = tiny_runs
    val_ids = voc.ids["val"]
    photos = tmp_path / "holiday"
    (photos / "day2" / "beach").mkdir(parents=True)
    (photos / "day1").mkdir()
    shutil.copy(voc.image_path(val_ids[0]), photos / "day2" / "beach" / "a.jpg")
    shutil.copy(voc.image_path(val_ids[1]), photos / "day1" / "Z.JPG")
    Image.open(voc.image_path(val_ids[2])).save(photos / "b.png")  # lossless: same pixels
    (photos / "day1" / "broken.jpg").write_bytes(voc.image_path(val_ids[3]).read_bytes()[:120])
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "holiday.npz"

    assert _score(runs, "--model", str(run_a), "--images", str(photos), "--out", str(out)) == 0
    scored = load_predictions(out)
    assert scored.files == ("b.png", "day1/Z.JPG", "day2/beach/a.jpg")
    assert scored.labels is None
    prov = scored.provenance
    assert prov["skipped_count"] == 2 and prov["source"] == "image-folder"
    assert {s["file"] for s in prov["skipped"]} == {"day1/broken.jpg", "notes.txt"}
    assert voc_root_of(scored) == photos.resolve()

    # The same pixels score the same as in the VOC split: one preprocessing for both inputs.
    val = load_predictions(run_a / "val_predictions.npz")
    rows = [val.files.index(f"JPEGImages/{val_ids[i]}.jpg") for i in (2, 1, 0)]
    np.testing.assert_allclose(scored.scores, val.scores[rows], rtol=0, atol=1e-5)


def test_a_voc_split_without_labels_is_scored_without_labels(tiny_runs, tmp_path):
    voc, runs, run_a, _ = tiny_runs
    root = tmp_path / "VOC2012"  # a copy: the module's tree stays as the other tests expect
    shutil.copytree(voc.root, root)
    held_out = voc.ids["val"][5:1:-1]
    main = root / "ImageSets" / "Main"
    (main / "holdout.txt").write_text("".join(f"{i}\n" for i in held_out))
    (main / "dog_holdout.txt").write_text("".join(f"{i}\n" for i in held_out))  # ids only
    out = tmp_path / "holdout.npz"
    args = ("--model", "a", "--voc-root", str(root), "--split", "holdout", "--out", str(out))
    assert _score(runs, *args) == 0
    scored = load_predictions(out)
    assert scored.labels is None and scored.provenance["split"] == "holdout"
    assert scored.files == tuple(f"JPEGImages/{i}.jpg" for i in sorted(held_out))
    val = load_predictions(run_a / "val_predictions.npz")
    rows = [val.files.index(name) for name in scored.files]
    np.testing.assert_allclose(scored.scores, val.scores[rows], rtol=0, atol=1e-5)


def test_an_ensemble_equals_combine_scores_of_its_single_models(tiny_runs, tmp_path):
    _, runs, run_a, run_b = tiny_runs
    singles = []
    for run in (run_a, run_b):
        assert _score(runs, "--model", str(run), "--out", str(tmp_path / f"{run.name}.npz")) == 0
        singles.append(load_predictions(tmp_path / f"{run.name}.npz").scores)
    assert not np.allclose(singles[0], singles[1])  # two different models

    assert _score(runs, "--model", "a", "b", "--out", str(tmp_path / "mean.npz")) == 0
    mean = load_predictions(tmp_path / "mean.npz")
    np.testing.assert_allclose(mean.scores, combine_scores(singles), rtol=0, atol=1e-6)
    assert mean.provenance["ensemble_rule"] == "mean-probability"
    assert len(mean.provenance["models"]) == 2 and mean.provenance["val_map"] is None

    out = tmp_path / "logit.npz"
    assert _score(runs, "--model", "a", "b", "--average", MEAN_LOGIT, "--out", str(out)) == 0
    by_logit = load_predictions(out)
    np.testing.assert_allclose(
        by_logit.scores, combine_scores(singles, MEAN_LOGIT), rtol=0, atol=1e-6
    )
    assert by_logit.provenance["ensemble_rule"] == MEAN_LOGIT


def test_bad_input_is_one_clear_error_with_exit_code_2(tiny_runs, tmp_path, caplog):
    _, runs, run_a, _ = tiny_runs

    def error_of(*args: str) -> str:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="predictions"):
            assert _score(runs, "--out", str(tmp_path / "never.npz"), *args) == 2
        assert not (tmp_path / "never.npz").exists()
        return errors_of(caplog)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photos here")
    message = error_of("--model", "a", "--images", str(empty))
    assert "Nothing to score" in message and "readme.txt" not in message

    message = error_of("--model", str(tmp_path / "absent-run"))
    assert "absent-run" in message and "--model" in message
    message = error_of("--model", str(tmp_path / "absent.pt"))
    assert "Model file not found" in message and "absent.pt" in message

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    message = error_of("--model", str(foreign))
    assert "not a model saved by main_train.py" in message
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    assert "not a model saved by main_train.py" in error_of("--model", str(garbage))

    other_classes = tmp_path / "other" / "model_best.pt"
    other_classes.parent.mkdir()
    saved = torch.load(run_a / "model_best.pt", weights_only=True)
    saved["class_names"] = [*saved["class_names"][:-1], "unicorn"]
    torch.save(saved, other_classes)
    message = error_of("--model", "a", str(other_classes))
    assert "different classes" in message and "unicorn" not in message.split("Ensemble")[-1]

    existing = tmp_path / "exists.npz"
    existing.write_bytes(b"someone's file")
    message = error_of("--model", "a", "--out", str(existing))  # the last --out wins
    assert "exists already" in message and "--overwrite" in message
    assert existing.read_bytes() == b"someone's file"
    assert "--images" in error_of("--model", "a", "--images", str(empty), "--split", "val")
    assert "No split 'test'" in error_of("--model", "a", "--split", "test")


def test_unlabelled_file_gets_an_evaluation_report_without_ap(tiny_runs, tmp_path):
    voc, runs, run_a, _ = tiny_runs
    photos = tmp_path / "photos"
    photos.mkdir()
    for image_id in voc.ids["val"][:4]:
        shutil.copy(voc.image_path(image_id), photos / f"{image_id}.jpg")
    out = run_a / "predictions" / "photos-images.npz"
    assert _score(runs, "--model", "a", "--images", str(photos)) == 0
    assert out.is_file()  # the default place, inside the model's run folder

    from evaluation.__main__ import main as evaluate_main

    assert evaluate_main(["--runs-dir", str(runs), "--predictions", str(out), "--k", "2"]) == 0
    report = out.parent / "photos-images-report"
    written = {p.name for p in report.iterdir()}
    assert {"score_histograms.png", "report.md", "report.pdf", "summary.json"} <= written
    assert sum(name.startswith("grid_") and name.endswith(".png") for name in written) == 3
    markdown = (report / "report.md").read_text()
    assert "no labels" in markdown and "need the true labels" in markdown
    assert "nan" not in markdown.lower() and "mAP 0" not in markdown
    summary = json.loads((report / "summary.json").read_text())
    assert summary["labelled"] is False and summary["images"] == 4
    grids = json.loads((report / "grids.json").read_text())
    tiles = [t for g in grids.values() for t in g["top"]]
    assert len(tiles) == 3 * 2 and {t["label"] for t in tiles} == {None}
    assert not (run_a / "report").exists()  # the run's own report is not overwritten

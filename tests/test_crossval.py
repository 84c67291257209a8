"""--folds K: stratified folds of the train split, fold models chosen on their own held-out
fold only, the val split scored by their average, and exact resumption across folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import main_train
from evaluation.__main__ import main as evaluation_main
from predictions import load_predictions
from predictions.__main__ import main as predictions_main
from predictions.ensemble import combine_scores
from tests.conftest import saved_model_scores
from tests.voc_fixture import TinyVoc, tiny_run_args
from training.checkpoint import load_model, load_trusted
from training.crossval import cv_estimate
from training.folds import FoldsError, assign_folds, load_folds, make_folds, save_folds
from vocdata import read_split
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import VocClassification
from vocdata.splits import VocSplit
from vocdata.transforms import eval_transform

TIMING_KEYS = {"seconds", "train_seconds", "train_images_per_second", "peak_gpu_memory_mb"}


def _spread_per_class(targets: np.ndarray, assignment: np.ndarray, count: int) -> np.ndarray:
    per_fold = np.stack([targets[assignment == k].sum(0) for k in range(1, count + 1)])
    return per_fold.max(0) - per_fold.min(0)


# -- the folds ---------------------------------------------------------------------------------


def test_folds_are_a_partition_fixed_by_the_seed(tmp_path):
    targets = np.random.default_rng(0).random((50, 6)) < 0.3
    assignment = assign_folds(targets, 4, seed=7)
    assert set(assignment.tolist()) == {1, 2, 3, 4}
    np.testing.assert_array_equal(assign_folds(targets, 4, seed=7), assignment)
    assert not np.array_equal(assign_folds(targets, 4, seed=8), assignment)
    folds = make_folds(assignment, tmp_path)
    held_out = np.concatenate([f.held_out_rows for f in folds])
    assert sorted(held_out.tolist()) == list(range(50))  # each row held out exactly once
    for fold in folds:
        assert not set(fold.train_rows) & set(fold.held_out_rows)
        assert len(fold.train_rows) + len(fold.held_out_rows) == 50
        assert fold.run_dir == tmp_path / "folds" / str(fold.number)


def test_each_class_is_spread_evenly_where_the_library_guarantees_it():
    rng = np.random.default_rng(1)
    # One class per image: every class is placed on its own, so within one per fold.
    single = np.eye(5, dtype=bool)[rng.integers(0, 5, 83)]
    assert _spread_per_class(single, assign_folds(single, 4, seed=0), 4).max() <= 1
    # Several classes per image: the rarest class is placed first, so within one per fold.
    multi = rng.random((90, 6)) < [0.05, 0.3, 0.3, 0.4, 0.5, 0.2]
    rarest = int(np.argmin(multi.sum(0)))
    assert np.sum(multi.sum(0) == multi.sum(0)[rarest]) == 1
    for seed in range(3):
        assert _spread_per_class(multi, assign_folds(multi, 3, seed), 3)[rarest] <= 1


def test_real_subset_every_class_within_one_per_fold(real_voc_root):
    targets = read_split(real_voc_root, "train").labels == 1
    for count in (2, 5):
        assert _spread_per_class(targets, assign_folds(targets, count, seed=0), count).max() <= 1


def test_saved_folds_are_read_back_and_checked(tmp_path):
    split = VocSplit(
        "train",
        tuple(f"2008_{i:06d}" for i in range(6)),
        np.where(np.random.default_rng(2).random((6, 20)) < 0.3, 1, -1).astype(np.int8),
    )
    assignment = assign_folds(split.labels == 1, 3, seed=0)
    save_folds(tmp_path / "folds.json", split, assignment, seed=0, difficult="ignore")
    np.testing.assert_array_equal(load_folds(tmp_path / "folds.json", split, 3), assignment)
    with pytest.raises(FoldsError, match="--folds 3"):
        load_folds(tmp_path / "folds.json", split, 2)
    with pytest.raises(FoldsError, match="differ"):
        load_folds(tmp_path / "folds.json", split.subset(np.arange(6) > 0), 3)
    with pytest.raises(FoldsError, match="at least 7 training images"):
        assign_folds(split.labels == 1, 7, seed=0)


def test_impossible_fold_counts_are_refused_before_any_run_folder(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    assert _train(tiny_voc, runs, "--batch-size", "16") == 2  # 12 images per fold model
    assert main_train.main(tiny_run_args(tiny_voc.root, runs, "--folds", "30")) == 2
    assert not runs.exists() or not any(runs.iterdir())


def test_cv_estimate_is_mean_and_spread_between_folds():
    mean, std = cv_estimate([0.5, 0.7, None])
    assert mean == pytest.approx(0.6) and std == pytest.approx(np.std([0.5, 0.7], ddof=1))


# -- whole fold runs -------------------------------------------------------------------------------


def _train(tiny_voc: TinyVoc, runs: Path, *extra: str) -> int:
    return main_train.main(tiny_run_args(tiny_voc.root, runs, "--folds", "2", *extra))


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


@pytest.mark.slow
def test_fold_run_scores_val_with_the_average_of_its_fold_models(tiny_voc, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert _train(tiny_voc, runs, "--epochs", "2", "--run-name", "cv") == 0
    summary_line = capsys.readouterr().out
    assert "held-out mAP" in summary_line and "ensemble of 2 on val" in summary_line
    assert "wall time" in summary_line
    run_dir = runs / "cv"
    assert (runs / "latest").read_text().strip() == "cv"

    train = read_split(tiny_voc.root, "train")
    fold_of = json.loads((run_dir / "folds.json").read_text())["fold_of_image"]
    assert sorted(fold_of) == sorted(train.relative_paths)
    history = json.loads((run_dir / "history.json").read_text())
    assert [(h["fold"], h["epoch"]) for h in history] == [(1, 1), (1, 2), (2, 1), (2, 2)]

    fold_scores = []
    for fold in (1, 2):
        fold_dir = run_dir / "folds" / str(fold)
        held_out = load_predictions(fold_dir / "heldout_predictions.npz")
        assert sorted(held_out.files) == sorted(p for p, k in fold_of.items() if k == fold)
        curve = [h for h in history if h["fold"] == fold]
        best = max(curve, key=lambda h: h["val_map"])  # held-out mAP per epoch
        provenance = load_trusted(fold_dir / "model_best.pt")["provenance"]
        assert provenance["epoch"] == best["epoch"]
        assert provenance["heldout_map"] == pytest.approx(best["val_map"])
        assert provenance["val_map"] is None and provenance["fold"] == fold
        own = load_predictions(fold_dir / "val_predictions.npz")
        np.testing.assert_allclose(
            own.scores,
            saved_model_scores(
                fold_dir / "model_best.pt", tiny_voc.root, "val", own.provenance["tta"]
            ),
            atol=1e-6,
        )
        fold_scores.append(own.scores)

    ensemble = load_predictions(run_dir / "val_predictions.npz")
    np.testing.assert_array_equal(ensemble.scores, combine_scores(fold_scores))
    assert list(ensemble.files) == read_split(tiny_voc.root, "val").relative_paths
    prov = ensemble.provenance
    assert prov["folds"] == 2 and prov["averaging_rule"] == "mean-probability"
    assert prov["fold_models"] == ["folds/1/model_best.pt", "folds/2/model_best.pt"]
    assert prov["cv_map_mean"] == pytest.approx(np.mean(prov["fold_heldout_map"]))
    assert prov["cv_map_std"] == pytest.approx(np.std(prov["fold_heldout_map"], ddof=1))
    assert len(prov["fold_epochs"]) == 2 and prov["epoch"] is None

    # The k-fold run folder is a model input of `python -m predictions`: its fold models, an
    # ensemble averaged the same way, reproduce the run's own val predictions.
    rescored = run_dir / "predictions" / "val-again.npz"
    argv = ["--model", str(run_dir), "--voc-root", str(tiny_voc.root), "--out", str(rescored)]
    assert predictions_main([*argv, "--workers", "0", "--no-progress"]) == 0
    again = load_predictions(rescored)
    assert again.files == ensemble.files
    np.testing.assert_allclose(again.scores, ensemble.scores, atol=1e-6)
    assert len(again.provenance["models"]) == 2

    # The report shows each fold's chosen epoch and held-out mAP, the CV estimate, and the
    # ensemble's val mAP (recomputed from the scores: the same as training wrote).
    assert evaluation_main(["--run", str(run_dir), "--k", "2"]) == 0
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["map_sklearn"] == pytest.approx(prov["val_map"])
    assert summary["cross_validation"]["cv_map_mean"] == pytest.approx(prov["cv_map_mean"])
    report = (run_dir / "report" / "report.md").read_text()
    for fold, (epoch, heldout) in enumerate(
        zip(prov["fold_epochs"], prov["fold_heldout_map"], strict=True), 1
    ):
        assert f"| {fold} | {epoch} | {heldout:.4f} |" in report


def _corrupt_val_labels(root: Path) -> None:
    """Give every val image random labels: if val took part in any choice, it would show."""
    rng = np.random.default_rng(123)
    for name in VOC_CLASSES:
        path = root / "ImageSets" / "Main" / f"{name}_val.txt"
        lines = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(f"{i} {rng.choice([1, -1]):2d}\n" for i in lines))


@pytest.mark.slow
def test_val_labels_take_no_part_in_any_choice(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    assert _train(tiny_voc, runs, "--epochs", "3", "--run-name", "honest") == 0
    _corrupt_val_labels(tiny_voc.root)
    assert _train(tiny_voc, runs, "--epochs", "3", "--run-name", "corrupted") == 0

    honest, corrupted = runs / "honest", runs / "corrupted"
    for fold in ("1", "2"):
        a, b = honest / "folds" / fold, corrupted / "folds" / fold
        assert _strip(json.loads((a / "history.json").read_text())) == _strip(
            json.loads((b / "history.json").read_text())
        )
        best_a, best_b = load_trusted(a / "model_best.pt"), load_trusted(b / "model_best.pt")
        assert best_a["provenance"]["epoch"] == best_b["provenance"]["epoch"]
        for name, tensor in best_a["state_dict"].items():
            assert torch.equal(tensor, best_b["state_dict"][name]), name
    before = load_predictions(honest / "val_predictions.npz")
    after = load_predictions(corrupted / "val_predictions.npz")
    assert before.provenance["fold_epochs"] == after.provenance["fold_epochs"]
    np.testing.assert_array_equal(before.scores, after.scores)
    assert before.provenance["val_map"] != after.provenance["val_map"]  # the labels did change


@pytest.mark.slow
def test_run_stopped_in_fold_2_resumes_to_the_uninterrupted_result(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    assert _train(tiny_voc, runs, "--epochs", "2", "--run-name", "whole") == 0
    assert _train(tiny_voc, runs, "--epochs", "2", "--run-name", "halves", "--stop-after", "3") == 0
    halves = runs / "halves"
    assert load_trusted(halves / "folds" / "2" / "checkpoint_last.pt")["state"]["epoch"] == 1
    assert not (halves / "val_predictions.npz").exists()
    for wrong in ("3", "1"):
        resume = ["--resume", "latest", "--runs-dir", str(runs), "--folds", wrong]
        assert main_train.main(resume) == 2
    assert main_train.main(["--resume", "latest", "--runs-dir", str(runs)]) == 0

    whole = runs / "whole"
    for fold in ("1", "2"):
        a = load_trusted(whole / "folds" / fold / "checkpoint_last.pt")
        b = load_trusted(halves / "folds" / fold / "checkpoint_last.pt")
        assert b["state"]["epoch"] == 2
        for name, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][name]), name
    assert _strip(json.loads((whole / "history.json").read_text())) == _strip(
        json.loads((halves / "history.json").read_text())
    )
    np.testing.assert_array_equal(
        load_predictions(whole / "val_predictions.npz").scores,
        load_predictions(halves / "val_predictions.npz").scores,
    )


def test_frozen_fold_models_train_on_the_features_of_their_own_rows(tiny_voc, tmp_path):
    """--freeze-backbone in a fold run: each fold model's held-out scores come from cached
    features of its held-out rows; the saved model run on those very images gives the same
    scores (features of other rows, e.g. the whole train split, would not)."""
    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--folds", "2", "--epochs", "2")
    args[args.index("--weights") + 1] = "imagenet"  # a frozen backbone needs pretrained weights
    args[args.index("--image-size") + 1] = "64"
    args += ["--arch", "efficientnet_lite0", "--freeze-backbone", "--tta", "none"]
    args += ["--view", "crop", "--no-spatial-max"]  # the crop view, as written out below
    assert main_train.main([*args, "--run-name", "cvf"]) == 0
    train = read_split(tiny_voc.root, "train")
    dataset = VocClassification(tiny_voc.root, train, "ignore", eval_transform(64))
    for fold in (1, 2):
        fold_dir = tmp_path / "runs" / "cvf" / "folds" / str(fold)
        held_out = load_predictions(fold_dir / "heldout_predictions.npz")
        model, saved = load_model(fold_dir / "model_best.pt")
        assert saved["provenance"]["freeze_backbone"] is True
        with torch.no_grad():
            every = torch.cat(
                [torch.sigmoid(model(images)) for images, *_ in DataLoader(dataset, batch_size=8)]
            ).numpy()
        rows = [train.relative_paths.index(name) for name in held_out.files]
        np.testing.assert_allclose(held_out.scores, every[rows], atol=1e-5)

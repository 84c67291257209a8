"""A run's val and train out-of-fold predictions (gui.runsplit): which file --split opens,
how the window describes it, and when the switch button is offered. No screen needed."""

from __future__ import annotations

import pytest

from gui.runsplit import describe_split, split_file, split_switch_for
from predictions import RunNotFoundError
from tests.test_camsource import predictions_with

VAL, OOF = "val_predictions.npz", "train_oof_predictions.npz"


def test_split_picks_the_file_of_the_run_named_or_holding_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / VAL).write_bytes(b"")
    with pytest.raises(RunNotFoundError, match=r"holds no train_oof_predictions\.npz.*--folds"):
        split_file(str(run), str(tmp_path), "train")
    (run / OOF).write_bytes(b"")
    assert split_file(str(run), str(tmp_path), "train") == run / OOF
    assert split_file(str(run / VAL), str(tmp_path), "train") == run / OOF  # its sibling
    assert split_file(str(run / OOF), str(tmp_path), "val") == run / VAL
    assert split_file("run", str(tmp_path), "val") == run / VAL  # a run name in --runs-dir


def test_the_window_says_which_images_and_how_they_were_scored(tmp_path):
    assert describe_split(predictions_with(), tmp_path / VAL) == "val split"
    oof = predictions_with(split="train", out_of_fold=True)
    assert describe_split(oof, tmp_path / OOF).startswith("train split, out-of-fold scores")
    trained_on = predictions_with(split="train")
    assert "scored by models trained on it" in describe_split(trained_on, tmp_path / "x.npz")
    assert describe_split(predictions_with(split="test"), tmp_path / "x.npz") == "test split"
    assert describe_split(predictions_with(), tmp_path / "holiday.npz") == "images of the file"


def test_the_switch_is_offered_only_between_a_runs_two_files(tmp_path):
    (tmp_path / VAL).write_bytes(b"")
    alone = split_switch_for(tmp_path / VAL)
    assert alone.target is None and "--folds" in alone.tooltip
    (tmp_path / OOF).write_bytes(b"")
    to_train = split_switch_for(tmp_path / VAL)
    assert to_train.target == tmp_path / OOF and to_train.label.startswith("Review train")
    back = split_switch_for(tmp_path / OOF)
    assert back.target == tmp_path / VAL and back.label == "Back to the val split"
    other = split_switch_for(tmp_path / "predictions" / "VOC2007-test.npz")
    assert other.target is None and "neither" in other.tooltip

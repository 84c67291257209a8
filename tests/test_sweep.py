"""`python -m training.sweep` on the tiny tree: a trial's CV estimate is the number
`main_train.py --folds K` reports, a sweep resumes without repeating a finished trial, the val
labels play no part before the final run, and the report names every trial."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import main_train
import training.sweep as sweep_module
from predictions import load_predictions
from tests.conftest import errors_of, snapshot
from tests.voc_fixture import tiny_run_args
from training.crossval import cv_estimate
from vocdata.classes import VOC_CLASSES
from vocdata.paths import resolve_project_path

# Small settings: EfficientNet-Lite0 (its ImageNet weights ship with a pip package, so the
# default frozen recipe with the prior head runs offline) at 32 px, 2 folds of 12 images.
LITE0 = ("--arch", "efficientnet_lite0", "--weights", "imagenet")
QUICK_SEARCH = ("--search", "lr_head", "weight_decay", "residual_shrink", "tta")


def _base(voc_root: Path, runs: Path, *extra: str) -> list[str]:
    return ["--", *tiny_run_args(voc_root, runs, *LITE0, *extra)]


def _sweep(*argv: str) -> int:
    return sweep_module.main(list(argv))


def _report(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def _finished(report: dict) -> dict[int, dict]:
    """Finished trials by number: their options and CV estimate (what a resume must keep)."""
    return {
        t["number"]: {k: t[k] for k in ("params", "cv_map_mean", "cv_map_std", "fold_epochs")}
        for t in report["trials"]
        if t["state"] == "complete"
    }


class CountingCV:
    """`cross_validate` that counts its calls and, when asked, is interrupted (as by Ctrl-C)
    at call number `interrupt_at`."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls, self.interrupt_at = 0, interrupt_at
        self.real = sweep_module.cross_validate

    def __call__(self, shared, config):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real(shared, config)


def test_a_trials_cv_estimate_is_what_main_train_folds_reports(tiny_voc, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "sweep"
    argv = ("--trials", "1", "--folds", "2", "--no-final", "--out", str(out))
    assert _sweep(*argv, *_base(tiny_voc.root, runs)) == 0
    report = _report(out)
    assert report["final"] is None and not list(runs.glob("*sweep*"))
    (trial,) = report["trials"]
    searched = {"lr_head", "weight_decay", "epochs", "warmup_epochs", "residual_shrink", "tta"}
    assert set(trial["params"]) == searched and trial["params"]["epochs"] != 12
    # The trial's options typed on main_train.py's command line (repr keeps every bit).
    options = [f"--{name.replace('_', '-')}={value}" for name, value in trial["params"].items()]
    args = tiny_run_args(tiny_voc.root, runs, *LITE0, "--folds", "2", "--run-name", "cv")
    assert main_train.main([*args, *options]) == 0
    crossval = json.loads((runs / "cv" / "crossval.json").read_text())
    # Each fold model at the epoch it chose on its held-out fold: what --folds reports.
    assert trial["cv_best_epoch_mean"] == crossval["cv_map_mean"]  # bit for bit
    assert trial["cv_best_epoch_std"] == crossval["cv_map_std"]
    assert trial["fold_heldout_map"] == crossval["fold_heldout_map"]
    assert trial["fold_epochs"] == crossval["fold_epochs"]
    # The objective: each fold model at its last epoch, as its history.json records it.
    last = [
        json.loads((runs / "cv" / "folds" / str(k) / "history.json").read_text())[-1]["val_map"]
        for k in (1, 2)
    ]
    assert trial["fold_last_map"] == last
    assert (trial["cv_map_mean"], trial["cv_map_std"]) == cv_estimate(last)
    assert trial["cv_map_mean"] <= trial["cv_best_epoch_mean"]  # a best is never below the last


def test_a_sweep_resumes_without_repeating_a_finished_trial(tiny_voc, tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "sweep"
    base = _base(tiny_voc.root, runs, "--epochs", "3")
    counting = CountingCV()
    monkeypatch.setattr(sweep_module, "cross_validate", counting)
    assert (
        _sweep(
            "--trials", "2", "--folds", "2", "--no-final", *QUICK_SEARCH, "--out", str(out), *base
        )
        == 0
    )
    first = _finished(_report(out))
    assert sorted(first) == [0, 1] and counting.calls == 2

    counting.calls = 0
    assert _sweep("--resume", str(out), "--trials", "3", "--no-final") == 0
    report = _report(out)
    assert counting.calls == 1  # only the new trial was computed
    again = _finished(report)
    assert sorted(again) == [0, 1, 2]
    assert {n: again[n] for n in first} == first
    # The resumed sampler drew a new point, not the first session's first one again.
    assert again[2]["params"] not in (first[0]["params"], first[1]["params"])
    assert report["folds"] == 2 and report["search"].keys() == set(QUICK_SEARCH[1:])


def test_a_trial_interrupted_by_ctrl_c_is_not_kept_and_resume_goes_on(
    tiny_voc, tmp_path, monkeypatch, caplog
):
    runs, out = tmp_path / "runs", tmp_path / "sweep"
    base = _base(tiny_voc.root, runs, "--epochs", "3")
    monkeypatch.setattr(sweep_module, "cross_validate", CountingCV(interrupt_at=2))
    with caplog.at_level(logging.ERROR):
        assert (
            _sweep("--trials", "3", "--folds", "2", *QUICK_SEARCH, "--out", str(out), *base) == 130
        )
    assert f"--resume {out}" in errors_of(caplog) and "1 finished trial" in errors_of(caplog)
    report = _report(out)
    assert [(t["number"], t["state"]) for t in report["trials"]] == [(0, "complete"), (1, "fail")]
    assert report["trials"][1]["error"] == "interrupted" and report["final"] is None
    assert not runs.exists() or not list(runs.glob("*sweep*"))  # no final run was started
    first = _finished(report)

    counting = CountingCV()
    monkeypatch.setattr(sweep_module, "cross_validate", counting)
    assert _sweep("--resume", str(out), "--trials", "3", "--no-final") == 0
    report = _report(out)
    assert counting.calls == 2
    assert sorted(_finished(report)) == [0, 2, 3]
    assert _finished(report)[0] == first[0]
    assert "trial 1 (interrupted)" in (out / "sweep.md").read_text()


def _rotate_val_class_files(voc_root: Path) -> None:
    """Corrupt the val labels: each class's val file now holds the next class's labels."""
    main = voc_root / "ImageSets" / "Main"
    texts = [(main / f"{name}_val.txt").read_text() for name in VOC_CLASSES]
    for name, text in zip(VOC_CLASSES, texts[1:] + texts[:1], strict=True):
        (main / f"{name}_val.txt").write_text(text)


def test_val_labels_play_no_part_before_the_final_run(tiny_voc, tmp_path):
    """Two sweeps, one with its val labels scrambled: the same trials, values and choice;
    only the final run's val score differs (it is the one place that reads val)."""
    reports = {}
    for tree in ("clean", "scrambled"):
        copy = tmp_path / tree / "VOC2012"
        copy.parent.mkdir()
        shutil.copytree(tiny_voc.root, copy)
        if tree == "scrambled":
            _rotate_val_class_files(copy)
        runs, out = tmp_path / tree / "runs", tmp_path / tree / "sweep"
        argv = ("--trials", "3", "--folds", "2", *QUICK_SEARCH, "--out", str(out))
        assert _sweep(*argv, *_base(copy, runs, "--epochs", "3")) == 0
        reports[tree] = _report(out)
    clean, scrambled = reports["clean"], reports["scrambled"]
    assert _finished(clean) == _finished(scrambled) and len(_finished(clean)) == 3
    assert clean["chosen_trial"] == scrambled["chosen_trial"]
    assert clean["chosen_params"] == scrambled["chosen_params"]
    assert clean["final"]["val_map"] != scrambled["final"]["val_map"]

    # The report: every trial in the grid and the JSON, the chosen one marked, the final run.
    out = tmp_path / "clean" / "sweep"
    text = (out / "sweep.md").read_text()
    for trial in clean["trials"]:
        assert f"| trial {trial['number']}" in text
    assert f"trial {clean['chosen_trial']} (chosen)" in text
    assert (out / "sweep.png").stat().st_size > 0
    final_dir = resolve_project_path(clean["final"]["run"])
    assert final_dir.parent == tmp_path / "clean" / "runs"
    predictions = load_predictions(final_dir / "val_predictions.npz")
    assert predictions.provenance["val_map"] == clean["final"]["val_map"]
    config = json.loads((final_dir / "config.json").read_text())
    assert {k: config[k] for k in clean["chosen_params"]} == clean["chosen_params"]
    assert config["folds"] == 1
    assert np.isfinite(clean["final"]["last_epoch_val_map"])


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("--", "--no-freeze-backbone"), "pass --fine-tune"),
        (("--", "--folds", "3"), "the sweep's own --folds"),
        (("--folds", "1"), "at least 2 folds"),
        (("--trials", "0"), "--trials 0"),
        (("--search", "lr_backbone"), "the backbone is frozen"),
    ],
)
def test_a_sweep_that_cannot_work_is_refused_before_anything_is_written(
    tmp_path, caplog, argv, words
):
    runs = tmp_path / "runs"
    args = list(argv)
    if "--" not in args:
        args.append("--")
    args += ["--runs-dir", str(runs), "--voc-root", str(tmp_path / "no-voc"), "--no-download"]
    with caplog.at_level(logging.ERROR):
        assert _sweep(*args) == 2
    assert words in errors_of(caplog)
    assert snapshot(runs) == {}


def test_resume_refuses_options_that_would_change_the_sweep(tmp_path, caplog):
    folder = tmp_path / "not-a-sweep"
    folder.mkdir()
    with caplog.at_level(logging.ERROR):
        assert _sweep("--resume", str(folder), "--folds", "3") == 2
        assert "--folds cannot change a resumed sweep" in errors_of(caplog)
        caplog.clear()
        assert _sweep("--resume", str(folder)) == 2
        assert "has no study.db" in errors_of(caplog)


def test_a_fine_tuning_sweep_when_asked_runs_real_k_fold_trials(tiny_voc, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "sweep"
    base = ["--", *tiny_run_args(tiny_voc.root, runs, "--epochs", "1")]  # --weights none
    argv = ("--fine-tune", "--trials", "1", "--folds", "2", "--no-final", "--out", str(out))
    assert _sweep(*argv, "--search", "lr_backbone", "tta", *base) == 0
    (trial,) = _report(out)["trials"]
    crossval = json.loads((out / "trials" / "trial-0" / "crossval.json").read_text())
    assert trial["cv_best_epoch_mean"] == crossval["cv_map_mean"]
    assert trial["cv_map_mean"] == crossval["cv_map_mean"]  # one epoch: the last is the best
    config = json.loads((out / "trials" / "trial-0" / "config.json").read_text())
    assert config["lr_backbone"] == trial["params"]["lr_backbone"] and config["folds"] == 2

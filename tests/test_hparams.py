"""TensorBoard's HParams rows: every run and every fold model writes its options and final
metrics into its own tensorboard/ folder (beside its scalars), read back here with
TensorBoard's own event reader, as the dashboard reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

import main_train
from tests.voc_fixture import tiny_run_args
from training.hparams import HPARAMS_SUFFIX, METRICS


def _read(tensorboard_dir: Path) -> tuple[dict, dict, EventAccumulator]:
    """(hparams, {metric: (step, value)}, the accumulator) of one TensorBoard run folder."""
    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == list(METRICS)
    hparams = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[name] = getattr(value, kind)
    metrics = {
        tag: (events.Scalars(tag)[-1].step, events.Scalars(tag)[-1].value)
        for tag in events.Tags()["scalars"]
        if tag in METRICS
    }
    return hparams, metrics, events


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def test_a_run_logs_its_hparams_beside_its_scalars_and_a_resume_replaces_them(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    options = tiny_run_args(tiny_voc.root, runs, "--lr-head", "0.003", "--run-name", "r")
    assert main_train.main([*options, "--epochs", "1"]) == 0
    run_dir = runs / "r"
    hparams, metrics, events = _read(run_dir / "tensorboard")
    assert hparams["model"] == "one model"
    assert hparams["lr_head"] == pytest.approx(0.003) and hparams["epochs"] == 1
    assert hparams["arch"] == "resnet18" and hparams["tta"] == "hflip"
    assert hparams["freeze_backbone"] == "false"  # text: a number would read 0
    assert hparams["residual_shrink"] == 20 and hparams["folds"] == 1
    # Paths, names, reporting and machine options are not hyper-parameters.
    assert not {"runs_dir", "run_name", "voc_root", "device", "workers", "progress"} & set(hparams)
    # The row is in the same TensorBoard run as the curves: no sub-folder.
    assert "mAP/val" in events.Tags()["scalars"]
    assert not [p for p in (run_dir / "tensorboard").iterdir() if p.is_dir()]
    (first,) = _history(run_dir)
    assert metrics["hparams/val_map"] == (1, pytest.approx(first["val_map"], abs=1e-6))
    assert metrics["hparams/best_epoch"] == (1, 1.0)

    assert main_train.main([*options, "--resume", str(run_dir), "--epochs", "3"]) == 0
    hparams, metrics, _ = _read(run_dir / "tensorboard")
    assert hparams["epochs"] == 3  # the first session's row is gone, not shown beside
    assert len(list((run_dir / "tensorboard").glob(f"*{HPARAMS_SUFFIX}"))) == 1
    history = _history(run_dir)
    best = max(history, key=lambda r: r["val_map"])
    assert metrics["hparams/val_map"] == (3, pytest.approx(best["val_map"], abs=1e-6))
    assert metrics["hparams/best_epoch"] == (3, float(best["epoch"]))


def test_a_k_fold_run_logs_its_estimate_and_every_fold_model(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    options = tiny_run_args(tiny_voc.root, runs, "--epochs", "2", "--folds", "2")
    assert main_train.main([*options, "--run-name", "cv"]) == 0
    run_dir = runs / "cv"
    summary = json.loads((run_dir / "crossval.json").read_text())
    hparams, metrics, _ = _read(run_dir / "tensorboard")
    assert hparams["model"] == "ensemble of 2 fold models" and hparams["folds"] == 2
    assert metrics["hparams/cv_map_mean"][1] == pytest.approx(summary["cv_map_mean"], abs=1e-6)
    assert metrics["hparams/cv_map_std"][1] == pytest.approx(summary["cv_map_std"], abs=1e-6)
    assert metrics["hparams/val_map"][1] == pytest.approx(summary["ensemble_val_map"], abs=1e-6)
    for number in (1, 2):
        fold_dir = run_dir / "folds" / str(number)
        fold = json.loads((fold_dir / "fold.json").read_text())
        hparams, metrics, _ = _read(fold_dir / "tensorboard")
        assert hparams["model"] == f"fold {number} of 2"
        assert "hparams/val_map" not in metrics  # a fold model never chose on val
        assert metrics["hparams/heldout_map"][1] == pytest.approx(fold["heldout_map"], abs=1e-6)
        assert metrics["hparams/best_epoch"][1] == fold["chosen_epoch"]

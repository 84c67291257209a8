"""Faults during training: a run stopped in its first epoch (Ctrl-C, or kill -9, which leaves
the same files: no checkpoint yet) is continued by `--resume latest`, finishes identical to an
uninterrupted run, and never touches the previous, finished run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

import main_train
import training.trainer as trainer_module
from tests.conftest import errors_of, snapshot
from tests.voc_fixture import tiny_run_args
from training.checkpoint import load_trusted
from vocdata.paths import display_path

TIMING_KEYS = {"seconds", "train_seconds", "train_images_per_second", "peak_gpu_memory_mb"}


def _ctrl_c_after_one_batch(real_train_one_epoch):
    """train_one_epoch that trains one batch, then is interrupted as Ctrl-C would."""

    def interrupted(model, loader, *args, **kwargs):
        def batches():
            for step, batch in enumerate(loader):
                if step == 1:
                    raise KeyboardInterrupt
                yield batch

        return real_train_one_epoch(model, batches(), *args, **kwargs)

    return interrupted


def _history(run_dir: Path) -> list[dict]:
    records = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_interrupt_in_epoch_1_then_resume_latest_equals_uninterrupted(
    tiny_voc, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    runs = tmp_path / "runs"
    bad = tiny_voc.ids["train"][3]  # skipped in every run; the skip must reach train.log
    tiny_voc.image_path(bad).write_bytes(b"not a jpeg")
    options = tiny_run_args(tiny_voc.root, runs, "--epochs", "2", "--skip-bad-images")

    assert main_train.main([*options, "--run-name", "whole"]) == 0
    finished = snapshot(runs / "whole")

    monkeypatch.setattr(
        trainer_module, "train_one_epoch", _ctrl_c_after_one_batch(trainer_module.train_one_epoch)
    )
    caplog.clear()
    assert main_train.main([*options, "--run-name", "cut"]) == 130
    monkeypatch.undo()
    message = errors_of(caplog)
    folder = display_path(runs / "cut")
    assert f"run folder {folder}" in message
    assert f"`python main_train.py --resume {folder}`" in message
    assert not (runs / "cut" / "checkpoint_last.pt").exists()
    assert (runs / "latest").read_text().strip() == "whole"  # the GUI's latest has predictions

    caplog.clear()
    assert main_train.main(["--resume", "latest", "--runs-dir", str(runs)]) == 0
    assert snapshot(runs / "whole") == finished, "the finished run was touched"

    whole = load_trusted(runs / "whole" / "checkpoint_last.pt")
    cut = load_trusted(runs / "cut" / "checkpoint_last.pt")
    assert cut["state"]["epoch"] == 2
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name
    assert _history(runs / "cut") == _history(runs / "whole")
    assert (runs / "latest").read_text().strip() == "cut"

    log = (runs / "cut" / "train.log").read_text()
    assert "restarting it in place from epoch 1" in log
    assert f"skipping train image JPEGImages/{bad}.jpg" in log
    saved = json.loads((runs / "cut" / "config.json").read_text())
    assert not Path(saved["voc_root"]).is_absolute() and saved["run_name"] == "cut"

    # A finished run is not "resumed" again: refused, and left as it was.
    caplog.clear()
    assert main_train.main(["--resume", "whole", "--runs-dir", str(runs)]) == 2
    assert "already finished its 2 epoch(s)" in errors_of(caplog)
    assert snapshot(runs / "whole") == finished


def test_ctrl_c_in_a_fold_run_names_the_k_fold_run_to_resume(
    tiny_voc, tmp_path, monkeypatch, caplog
):
    """Ctrl-C inside fold 1 of a --folds run: the message names the k-fold run folder (what
    --resume takes), not the fold's own folder, and --resume latest then finishes it."""
    runs = tmp_path / "runs"
    options = tiny_run_args(tiny_voc.root, runs, "--epochs", "1", "--folds", "2")

    def ctrl_c(*args, **kwargs):  # a fold's share of the tiny train split is one batch
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "train_one_epoch", ctrl_c)
    assert main_train.main([*options, "--run-name", "cv"]) == 130
    monkeypatch.undo()
    message = errors_of(caplog)
    folder = display_path(runs / "cv")
    assert f"`python main_train.py --resume {folder}`" in message, message
    assert "folds/1" not in message
    assert main_train.main(["--resume", "latest", "--runs-dir", str(runs)]) == 0
    assert (runs / "cv" / "val_predictions.npz").is_file()

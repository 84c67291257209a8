"""training: loss, optimizer, sampler, weights, and whole runs of main_train.py on the fixture."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import main_train
from predictions import load_predictions
from tests.conftest import assert_run_scores_match_saved_model
from tests.voc_fixture import tiny_run_args
from training.backbones import (
    WeightsUnavailableError,
    create_imagenet_network,
    load_matching_state_dict,
)
from training.checkpoint import load_trusted
from training.config import TrainConfig
from training.loss import masked_bce_with_logits
from training.model import build_classifier
from training.optim import build_optimizer, warmup_cosine
from training.sampling import EpochSampler
from vocdata import read_split
from vocdata.paths import PROJECT_ROOT

TIMING_KEYS = {"seconds", "train_seconds", "train_images_per_second", "peak_gpu_memory_mb"}


# -- loss and optimisation ---------------------------------------------------------------------


def test_loss_is_the_masked_mean_of_independent_binary_cross_entropies():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss = masked_bce_with_logits(logits, targets, mask)
    p = torch.sigmoid(logits.detach())
    terms = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))
    expected = (terms * mask).sum() / 5
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad[0, 2] == 0  # a masked (difficult) entry teaches nothing
    assert (logits.grad[mask.bool()] != 0).all()


def test_head_learns_faster_and_norms_and_biases_are_not_decayed():
    model = build_classifier("resnet18", 20, weights="none")
    optimizer = build_optimizer(model, TrainConfig(lr_head=1e-3, lr_backbone=1e-4))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["head"]["lr"] == 1e-3 and groups["backbone"]["lr"] == 1e-4
    assert all(p.ndim <= 1 for g in groups.values() if g["weight_decay"] == 0 for p in g["params"])
    head_ids = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups["head"]["params"] + groups["head_no_decay"]["params"]} == head_ids
    count = sum(len(g["params"]) for g in optimizer.param_groups)
    assert count == len(list(model.parameters()))


def test_warmup_then_cosine_schedule():
    values = [warmup_cosine(step, 10, 110) for step in range(110)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_sampler_is_a_function_of_seed_and_epoch_and_shards_cover_everything():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    assert sorted(i for i, _ in first) == list(range(10))
    shards = [list(EpochSampler(10, 3, rank=r, world_size=3, with_seeds=False)) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set().union(*shards) == set(range(10))
    assert list(EpochSampler(5, 3, shuffle=False, with_seeds=False)) == [0, 1, 2, 3, 4]


# -- weights -------------------------------------------------------------------------------------


def test_offline_resnet18_weights_error_says_what_to_do(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the file is missing
    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        create_imagenet_network("resnet18", "imagenet")
    message = str(info.value)
    assert "offline" in message and "--weights" in message and "--weights none" in message
    assert "efficientnet_lite0" in message and "resnet18-f37072fd.pth" in message
    assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()


def test_foreign_names_load_by_position_only_when_every_shape_fits(tmp_path):
    reference = create_imagenet_network("resnet18", "none")
    renamed = {
        (k if k.endswith("num_batches_tracked") else f"t{i}"): t
        for i, (k, t) in enumerate(reference.state_dict().items())
    }
    target = create_imagenet_network("resnet18", "none")
    load_matching_state_dict(target, renamed, "renamed")
    for a, b in zip(reference.state_dict().values(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    assert torch.equal(
        create_imagenet_network("resnet18", str(tmp_path / "resnet18.pth")).conv1.weight,
        reference.conv1.weight,
    )
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        load_matching_state_dict(
            create_imagenet_network("efficientnet_lite0", "none"),
            reference.state_dict(),
            "resnet file",
        )
    with pytest.raises(WeightsUnavailableError, match="not found"):
        create_imagenet_network("resnet18", str(tmp_path / "absent.pth"))


# -- whole runs ----------------------------------------------------------------------------------


def test_main_train_end_to_end_writes_a_consistent_run(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "main_train.py", *tiny_run_args(tiny_voc.root, runs, "--epochs", "2")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    run_dir = runs / (runs / "latest").read_text().strip()
    expected = {
        "config.json",
        "history.json",
        "checkpoint_last.pt",
        "model_best.pt",
        "val_predictions.npz",
        "train.log",
        "tensorboard",
        "provenance.json",
    }
    assert expected <= {p.name for p in run_dir.iterdir()}
    assert not list(run_dir.rglob("*.tmp"))

    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for record in history:
        assert {
            "train_loss",
            "val_loss",
            "val_map",
            "val_ap",
            "lr_backbone",
            "lr_head",
            "seconds",
        } <= set(record)
        assert set(record["val_ap"]) == set(
            load_predictions(run_dir / "val_predictions.npz").class_names
        )

    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["arch"] == "resnet18"

    preds = load_predictions(run_dir / "val_predictions.npz")
    val = read_split(tiny_voc.root, "val")
    assert list(preds.files) == val.relative_paths  # split order, relative names
    np.testing.assert_array_equal(preds.labels, val.labels)
    best = max(history, key=lambda h: h["val_map"])
    assert preds.provenance["epoch"] == best["epoch"]
    assert preds.provenance["val_map"] == pytest.approx(best["val_map"])
    assert not Path(preds.provenance["voc_root"]).is_absolute()

    # The stored scores are exactly what the saved model predicts, row by row.
    assert_run_scores_match_saved_model(run_dir, tiny_voc.root)

    # What produced the run is recorded in the run, for the report.
    produced_by = json.loads((run_dir / "provenance.json").read_text())
    assert "binary_cross_entropy_with_logits" in produced_by["loss_code"]
    assert '"""' not in produced_by["loss_code"]  # the code, without its docstrings
    assert produced_by["packages"]["torch"] == torch.__version__.split("+")[0]


def test_resumed_run_equals_uninterrupted_run(tiny_voc, tmp_path, caplog):
    caplog.set_level("INFO")  # as main_train.py's own logging set-up does outside pytest
    runs = tmp_path / "runs"
    assert (
        main_train.main(tiny_run_args(tiny_voc.root, runs, "--epochs", "2", "--run-name", "whole"))
        == 0
    )
    assert (
        main_train.main(
            tiny_run_args(
                tiny_voc.root, runs, "--epochs", "2", "--run-name", "halves", "--stop-after", "1"
            )
        )
        == 0
    )
    stopped = load_trusted(runs / "halves" / "checkpoint_last.pt")
    assert stopped["state"]["epoch"] == 1
    # Resume with two loader workers: augmentation must not depend on them.
    assert main_train.main(["--resume", "halves", "--runs-dir", str(runs), "--workers", "2"]) == 0

    whole = load_trusted(runs / "whole" / "checkpoint_last.pt")
    halves = load_trusted(runs / "halves" / "checkpoint_last.pt")
    assert halves["state"]["epoch"] == 2
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, halves["model"][name]), name

    def strip(history):
        return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]

    whole_history = json.loads((runs / "whole" / "history.json").read_text())
    assert strip(whole_history) == strip(json.loads((runs / "halves" / "history.json").read_text()))
    assert json.loads((runs / "halves" / "config.json").read_text())["workers"] == 2
    assert "resumed" in (runs / "halves" / "train.log").read_text()  # not only on the screen


def _run_failing(args: list[str], tmp_path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "main_train.py", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "no run folder for bad input"
    return result.stderr


@pytest.mark.slow
def test_cli_errors_on_bad_input_are_clear(tiny_voc, tmp_path):
    missing_root = tmp_path / "absent" / "VOCdevkit" / "VOC2012"
    stderr = _run_failing(tiny_run_args(missing_root, tmp_path / "runs"), tmp_path)
    assert str(missing_root) in stderr and "--voc-root" in stderr

    missing_id, corrupt_id = tiny_voc.ids["val"][0], tiny_voc.ids["train"][5]
    tiny_voc.image_path(missing_id).unlink()
    tiny_voc.image_path(corrupt_id).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    stderr = _run_failing(tiny_run_args(tiny_voc.root, tmp_path / "runs"), tmp_path)
    assert f"JPEGImages/{corrupt_id}.jpg: cannot decode" in stderr
    stderr = _run_failing(
        tiny_run_args(tiny_voc.root, tmp_path / "runs", "--skip-bad-images", "--batch-size", "64"),
        tmp_path,
    )
    assert "fewer than one batch" in stderr  # skipping happened, then the next check spoke

    (tiny_voc.root / "ImageSets" / "Main" / "unicorn_train.txt").write_text("x 1\n")
    stderr = _run_failing(tiny_run_args(tiny_voc.root, tmp_path / "runs"), tmp_path)
    assert "unicorn_train.txt" in stderr and "not one of the 20 VOC classes" in stderr

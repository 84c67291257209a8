"""Option values are checked when a TrainConfig is made, each by its own small check."""

from __future__ import annotations

import os
import stat
from dataclasses import fields

import pytest

from training.config import TrainConfig, check_resume_overrides, config_from_argv
from training.config_checks import FIELD_CHECKS, ConfigError
from vocdata.atomic import atomic_write


def test_every_option_has_a_check():
    unchecked = [f.name for f in fields(TrainConfig) if f.name not in FIELD_CHECKS]
    assert not unchecked, f"add a @field_check to training/config_checks.py for {unchecked}"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"lr_head": float("inf")}, "--lr-head inf"),
        ({"difficult": "maybe"}, "choose one of ignore, positive, negative"),
        ({"arch": "vgg"}, "choose one of resnet18, efficientnet_lite0"),
        ({"optimizer": "adam"}, "choose one of adamw, sgd"),
        ({"amp": "yes"}, "choose one of auto, bf16, fp16, off"),
        ({"epochs": 2.5}, "--epochs 2.5: must be a whole number"),
        ({"progress": "no"}, "--progress 'no': must be true or false"),
        ({"device": "cuda:x"}, "--device 'cuda:x'"),
    ],
)
def test_bad_values_are_named_with_their_option(options, words):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**options)
    assert words in str(info.value)


def test_all_problems_are_reported_together_and_good_values_pass():
    with pytest.raises(ConfigError) as info:
        TrainConfig(batch_size=0, image_size=8)
    assert "--batch-size 0" in str(info.value) and "--image-size 8" in str(info.value)
    config = TrainConfig(epochs=0, workers=-1, stop_after=1, device="cpu", lr_backbone=0)
    assert config.workers >= 0 and config.epochs == 0


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_respects_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_write(tmp_path / "report.md") as tmp:
            tmp.write_text("shared\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o666 & ~umask


def test_the_backbone_is_frozen_by_default_only_where_there_is_something_to_keep():
    """Pretrained weights: frozen (keeps what ImageNet knows). Random weights or LP-FT:
    fine-tuned. An explicit contradiction is refused, naming both options."""
    assert TrainConfig().freeze_backbone is True
    assert config_from_argv(["--weights", "none"]).freeze_backbone is False
    assert config_from_argv(["--lp-ft"]).freeze_backbone is False
    assert config_from_argv(["--no-freeze-backbone"]).freeze_backbone is False
    with pytest.raises(ConfigError, match="--freeze-backbone with --weights none"):
        config_from_argv(["--weights", "none", "--freeze-backbone"])
    with pytest.raises(ConfigError, match="--freeze-backbone with --lp-ft"):
        TrainConfig(lp_ft=True, freeze_backbone=True)


def test_under_torchrun_the_automatic_default_fine_tunes(monkeypatch):
    """Frozen features are computed in one process: several torchrun processes fine-tune by
    default rather than fail."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert TrainConfig().freeze_backbone is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert TrainConfig().freeze_backbone is True


def test_resume_refuses_a_different_head_or_backbone_recipe(tmp_path):
    """The checkpoint holds one head and one optimizer over the trained tensors: changing
    --head, --freeze-backbone or --lp-ft on resume is refused, naming the option."""
    for key, given in (("head", "init"), ("freeze_backbone", False), ("lp_ft", True)):
        saved = {"head": "prior", "freeze_backbone": True, "lp_ft": False}
        with pytest.raises(ConfigError, match=f"--{key.replace('_', '-')}"):
            check_resume_overrides(saved, {**saved, key: given}, tmp_path)

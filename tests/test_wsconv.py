"""wsconv: the folding maths, checked on randomised networks (so the tests can fail), on real
ImageNet weights and images, and the training-mode behaviour that breaks mode B."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from tests.voc_fixture import tiny_run_args
from training.backbones import create_imagenet_network
from vocdata.paths import PROJECT_ROOT
from wsconv import (
    ConversionError,
    WSConv2d,
    channel_stds,
    conv_bn_pairs,
    convert,
    set_module_by_name,
)
from wsconv.imagenet_check import check_backbone, read_imagenet_samples

ARCHS = ("resnet18", "efficientnet_lite0")


def randomised(arch: str, seed: int = 0, dtype=torch.float32) -> nn.Module:
    """Random weights AND random BatchNorm statistics/affine parameters: with the defaults
    (mean 0, var 1, α 1, β 0) a wrong folding formula could still pass."""
    torch.manual_seed(seed)
    model = create_imagenet_network(arch, "none")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return model.to(dtype).eval()


def batch(dtype=torch.float32, n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_channel_stds_use_the_biased_variance_plus_eps():
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    flat = weight.numpy().reshape(6, -1)
    expected = np.sqrt(flat.var(axis=1, ddof=0) + 1e-12)
    np.testing.assert_allclose(channel_stds(weight).numpy(), expected, rtol=1e-12)
    assert torch.equal(channel_stds(torch.zeros(2, 1, 3, 3)), torch.full((2,), 1e-6))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["A", "B"])
def test_eval_mode_predictions_do_not_change(arch, mode):
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        original = randomised(arch, dtype=dtype)
        converted = convert(original, mode).eval()
        assert sum(isinstance(m, WSConv2d) for m in converted.modules()) == sum(
            isinstance(m, nn.Conv2d) for m in original.modules()
        )
        assert not any(type(m) is nn.Conv2d for m in converted.modules())
        with torch.no_grad():
            x = batch(dtype)
            assert relative_error(converted(x), original(x)) < tolerance, dtype


def test_mode_b_changes_the_affine_parameters_and_mode_a_the_statistics():
    original = randomised("resnet18", dtype=torch.float64)
    a, b = convert(original, "A"), convert(original, "B")
    weight_stds = channel_stds(original.conv1.weight)
    bn, bn_a, bn_b = original.bn1, a.bn1, b.bn1
    torch.testing.assert_close(bn_a.running_mean, bn.running_mean / weight_stds)
    torch.testing.assert_close(
        bn_a.running_var, (bn.running_var + bn.eps) / weight_stds**2 - bn.eps
    )
    torch.testing.assert_close(bn_a.weight, bn.weight)
    torch.testing.assert_close(bn_b.weight, bn.weight * weight_stds)
    std = torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(
        bn_b.bias, bn.bias + bn.weight * bn.running_mean * (weight_stds - 1) / std
    )
    torch.testing.assert_close(bn_b.running_mean, bn.running_mean)


def test_conv_bias_is_handled():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU()
    ).double()
    with torch.no_grad():
        model[0].bias.uniform_(-2, 2)
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x = batch(torch.float64, size=12)
    for mode in ("A", "B"):
        converted = convert(model, mode).eval()
        torch.testing.assert_close(converted(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_train_mode_keeps_mode_a_and_breaks_mode_b(arch):
    """Batch statistics cancel the 1/n_c: the untouched affine of mode A stays right, the
    rescaled affine of mode B is then wrong by a factor n_c per channel."""
    original = randomised(arch, dtype=torch.float64)
    for module in original.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-12  # with ε → 0 the mode-A identity is exact, not just close
    mode_a, mode_b = convert(original, "A"), convert(original, "B")
    x = batch(torch.float64)
    outputs = {}
    for name, model in (("original", original), ("A", mode_a), ("B", mode_b)):
        model.train()
        torch.manual_seed(5)  # the same dropout masks for all three
        outputs[name] = model(x).detach()
    assert relative_error(outputs["A"], outputs["original"]) < 1e-6
    assert relative_error(outputs["B"], outputs["original"]) > 0.1


def test_train_mode_with_the_real_eps_is_close_for_a_and_far_for_b():
    original = randomised("resnet18", dtype=torch.float64)  # BatchNorm eps 1e-5
    x = batch(torch.float64)
    errors = {}
    reference = original.train()(x).detach()
    for mode in ("A", "B"):
        errors[mode] = relative_error(convert(original, mode).train()(x).detach(), reference)
    assert errors["A"] < 1e-3 and errors["B"] > 100 * errors["A"]


def test_gradients_reach_the_standardised_weights():
    model = convert(randomised("resnet18"), "A").train()
    model(batch()).square().mean().backward()
    convs = [m for m in model.modules() if isinstance(m, WSConv2d)]
    assert len(convs) == 20
    for conv in convs:
        assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
        assert conv.weight.grad.abs().sum() > 0


def test_converted_model_saves_and_reloads(tmp_path):
    original = randomised("efficientnet_lite0")
    converted = convert(original, "B")
    assert list(converted.state_dict()) == list(original.state_dict())  # Conv2d-compatible
    torch.save(converted.state_dict(), tmp_path / "ws.pt")
    fresh = convert(randomised("efficientnet_lite0", seed=9), "B")
    fresh.load_state_dict(torch.load(tmp_path / "ws.pt", weights_only=True))
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), converted.eval()(x))


def test_inplace_false_leaves_the_original_untouched():
    original = randomised("resnet18")
    before = {k: v.clone() for k, v in original.state_dict().items()}
    converted = convert(original, "A")
    assert converted is not original
    assert type(original.conv1) is nn.Conv2d and isinstance(converted.conv1, WSConv2d)
    for key, value in original.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert convert(original, "B", inplace=True) is original
    assert isinstance(original.layer1[0].conv1, WSConv2d)


def test_pairs_follow_the_data_flow():
    model = randomised("resnet18")
    pairs = dict(conv_bn_pairs(model))
    assert pairs["conv1"] == "bn1"
    assert pairs["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert len(pairs) == 20


def test_disconnected_batchnorm_and_lonely_conv_are_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ConversionError) as info:
        convert(model, "A")
    message = str(info.value)
    assert "not fed directly by a conv: 2" in message
    assert "reaches no BatchNorm directly: 0" in message
    head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    with pytest.raises(ConversionError, match="reaches no BatchNorm directly: 2"):
        convert(head, "B")
    with pytest.raises(ValueError, match="mode"):
        convert(head, "C")


def test_set_module_by_name_with_dotted_paths():
    model = create_imagenet_network("resnet18", "none")
    marker = nn.Identity()
    set_module_by_name(model, "layer1.0.conv1", marker)
    set_module_by_name(model, "layer2.0.downsample.0", nn.Identity())
    assert model.layer1[0].conv1 is marker
    assert isinstance(model.layer2[0].downsample[0], nn.Identity)
    with pytest.raises(AttributeError, match="no submodule 'conv9'"):
        set_module_by_name(model, "layer1.0.conv9", marker)
    with pytest.raises(AttributeError, match="no submodule 'downsample'"):  # None, not a module
        set_module_by_name(model, "layer1.0.downsample", marker)


@pytest.mark.slow
def test_real_lite0_weights_on_imagenet_images(imagenet_samples):
    images, labels = read_imagenet_samples(imagenet_samples)
    assert len(images) == 1000
    rows = check_backbone("efficientnet_lite0", "imagenet", images, labels, torch.device("cpu"))
    assert [r.mode for r in rows] == ["A", "B"]
    for row in rows:
        assert row.top1_agreement == 1.0
        assert abs(row.top1_converted - row.top1_original) <= 0.001
        assert row.top1_original > 0.8  # genuine pretrained weights
        assert row.mean_abs_diff < 1e-4 and row.max_abs_diff < 1e-3


@pytest.mark.slow
def test_python_m_wsconv_writes_both_checks(imagenet_samples, tiny_voc, tmp_path):
    small = tmp_path / "imagenet"
    (small / "images").mkdir(parents=True)
    with open(imagenet_samples / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:12]
    with open(small / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        shutil.copy(imagenet_samples / "images" / row["file"], small / "images" / row["file"])
    out = tmp_path / "out"
    common = [
        *("--imagenet", str(small), "--backbones", "efficientnet_lite0", "--out", str(out)),
        *("--arch", "resnet18", "--weights", "none"),
        *tiny_run_args(tiny_voc.root, tmp_path / "runs"),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "wsconv", *common, "--train", "A", "B", "--epochs", "3"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [r["mode"] for r in summary["prediction_check"]] == ["A", "B"]
    assert all(r["top1_agreement"] == 1.0 for r in summary["prediction_check"])
    maps = summary["training_check"]["val_map_per_epoch"]
    assert set(maps) == {"A", "B"} and all(len(v) == 3 for v in maps.values())
    assert (out / "runs" / "A" / "model_best.pt").is_file()
    assert "mode B breaks" in (out / "summary.md").read_text()

    too_short = subprocess.run(
        [sys.executable, "-m", "wsconv", *common, "--epochs", "2"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert too_short.returncode == 2 and "at least 3" in too_short.stderr

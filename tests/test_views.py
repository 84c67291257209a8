"""Views (vocdata/views.py) and the prior head's spatial maximum (training/heads.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from predictions import load_predictions
from tests.voc_fixture import tiny_run_args
from training.backbones import Backbone
from training.heads import PriorHead
from training.model import MultiLabelClassifier
from training.synsets import class_synset_indices
from vocdata.classes import VOC_CLASSES
from vocdata.paths import PROJECT_ROOT
from vocdata.views import CELL, View, parse_views, shape_batches

RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)


def _wide_image(width: int = 300, height: int = 100) -> Image.Image:
    """Grey, with a red band at the left edge and a blue band at the right edge."""
    pixels = np.full((height, width, 3), GREY, dtype=np.uint8)
    pixels[:, :6] = RED
    pixels[:, -6:] = BLUE
    return Image.fromarray(pixels)


def test_the_whole_view_keeps_every_column_and_the_aspect_the_crop_cuts_the_edges():
    image = _wide_image()
    whole = View("whole", 64).transform()(image).numpy()  # (3, H, W)
    assert whole.shape[1] == 64
    assert whole.shape[2] % CELL == 0
    # The aspect is kept to within half a cell of the longer side (300/100 * 64 = 192).
    assert abs(whole.shape[2] - 300 / 100 * 64) <= CELL / 2
    assert whole[:, :, 0].mean(axis=1).tolist() == pytest.approx(RED, abs=40)
    assert whole[:, :, -1].mean(axis=1).tolist() == pytest.approx(BLUE, abs=40)
    crop = View("crop", 64).transform()(image).numpy()
    assert crop.shape == (3, 64, 64)
    for column in (crop[:, :, 0], crop[:, :, -1]):  # both edge bands are cut away
        assert column.mean(axis=1).tolist() == pytest.approx(GREY, abs=2)


def test_view_sizes_and_parsing():
    assert View("whole", 320).output_size(500, 375) == (320, 416)  # 426.7 -> 416
    assert View("whole", 320).output_size(375, 500) == (416, 320)
    assert View("crop", 224).output_size(500, 375) == (224, 224)
    assert parse_views("crop+whole", 224) == (View("crop", 224), View("whole", 320))
    assert parse_views("whole", 64, 96) == (View("whole", 96),)
    for bad in ("squash", "crop+crop", "", "crop+"):
        with pytest.raises(ValueError):
            parse_views(bad, 224)


def test_shape_batches_group_by_shape_in_row_order():
    shapes = [(64, 96), (96, 64), (64, 96), (64, 96), (96, 64)]
    assert shape_batches(shapes, 2) == [[0, 2], [3], [1, 4]]
    assert shape_batches([(64, 64)] * 5, 2) == [[0, 1], [2, 3], [4]]


def _prior_head(spatial_max: bool, in_features: int = 4) -> PriorHead:
    return PriorHead(in_features, 1000, class_synset_indices(VOC_CLASSES), spatial_max)


def test_the_spatial_max_at_weight_zero_reproduces_the_head_without_it_exactly():
    torch.manual_seed(0)
    plain, spatial = _prior_head(False, 16), _prior_head(True, 16)
    values = {
        "imagenet_weight": torch.randn(1000, 16),
        "imagenet_bias": torch.randn(1000),
        "residual.weight": torch.randn(20, 16) * 0.1,
        "residual.bias": torch.randn(20),
        "scale": torch.rand(20) + 0.5,
        "offset": torch.randn(20),
        "residual_gain": torch.rand(20),
    }
    for head in (plain, spatial):
        head.load_state_dict({**head.state_dict(), **values})
    pooled = torch.randn(8, 16)
    maxima = spatial.from_feature_map(torch.randn(8, 16, 3, 5))
    assert spatial.max_weight.abs().sum() == 0  # starts at zero
    torch.testing.assert_close(
        spatial(torch.cat([pooled, maxima], dim=1)), plain(pooled), rtol=0, atol=0
    )


def _brightness_map(network: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """A made-up backbone: per 8 x 8 cell, the mean brightness (channel 0; 3 empty channels)."""
    brightness = nn.functional.avg_pool2d(pixels.mean(dim=1, keepdim=True), 8)
    return torch.cat([brightness, torch.zeros_like(brightness).repeat(1, 3, 1, 1)], dim=1)


def _mean_pool(network: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.mean(dim=(2, 3))


def _bottle_detector() -> MultiLabelClassifier:
    """A model made by hand: its 'ImageNet layer' scores the bottle synsets by brightness
    (logit 30 x brightness - 10 in a cell, brightness in 0..1), every other synset 0; the
    prior head reads that layer with its pooled prior scaled down to 0.2."""
    spec = Backbone(
        "toy",
        nn.Module,
        dict,
        "fc",
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        "",
        0.0,
        _brightness_map,
        _mean_pool,
    )
    network = nn.Module()
    network.fc = _prior_head(True)
    bottle = VOC_CLASSES.index("bottle")
    synsets = list(class_synset_indices(VOC_CLASSES)[bottle])
    with torch.no_grad():
        network.fc.imagenet_weight[synsets, 0] = 30.0  # normalised brightness, 0..1
        network.fc.imagenet_bias[synsets] = -10.0
        network.fc.scale[bottle] = 0.2
    return MultiLabelClassifier(network, spec).eval()


def test_a_small_object_in_a_corner_is_found_by_the_max_branch_and_missed_by_the_crop():
    pixels = np.zeros((120, 200, 3), dtype=np.uint8)
    pixels[4:20, 4:20] = 255  # a small bright object near the top-left corner
    image = Image.fromarray(pixels)
    model = _bottle_detector()
    bottle = VOC_CLASSES.index("bottle")

    def bottle_score(view: View, max_weight: float = 1.0) -> float:
        with torch.no_grad():
            model.head.max_weight[bottle] = max_weight
            batch = view.transform()(image).unsqueeze(0)
            return float(torch.sigmoid(model(batch))[0, bottle])

    whole, crop = View("whole", 96), View("crop", 96)
    assert bottle_score(whole) > 0.9  # one bright cell: the maximum finds it
    assert bottle_score(crop) < 0.1  # the centre crop cut it away
    assert bottle_score(whole, max_weight=0.0) < 0.1  # average pooling alone dilutes it


@pytest.mark.slow
def test_a_view_trained_run_is_rescored_bit_identically(tiny_voc, tmp_path):
    """Frozen Lite0 with the whole view and the spatial maximum, then `python -m predictions`
    on its val split: the same bits as the run's own predictions file."""
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    args = tiny_run_args(tiny_voc.root, runs, "--epochs", "2", "--run-name", "viewed")
    args[args.index("--weights") + 1] = "imagenet"
    args[args.index("--image-size") + 1] = "64"
    args += ["--arch", "efficientnet_lite0", "--view", "crop+whole", "--spatial-max"]
    args += ["--cache-dir", str(cache)]
    subprocess.run([sys.executable, "main_train.py", *args], cwd=PROJECT_ROOT, check=True)
    out = tmp_path / "rescored.npz"
    subprocess.run(
        [
            *(sys.executable, "-m", "predictions", "--model", str(runs / "viewed")),
            *("--cache-dir", str(cache), "--out", str(out), "--workers", "0"),
            *("--batch-size", "16", "--no-progress"),
        ],
        cwd=PROJECT_ROOT,
        check=True,
    )
    original = load_predictions(runs / "viewed" / "val_predictions.npz")
    rescored = load_predictions(out)
    assert original.provenance["view"] == "crop+whole" and original.provenance["spatial_max"]
    assert rescored.provenance["view"] == "crop+whole"
    assert rescored.files == original.files
    np.testing.assert_array_equal(rescored.scores, original.scores)

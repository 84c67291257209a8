"""A trained run exported to ONNX and scored without this project reproduces the run's own
val_predictions.npz: a single model with flip TTA, and a k-fold run's ensemble."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import main_train
from predictions import load_predictions
from tests.voc_fixture import TinyVoc, tiny_run_args, write_tiny_voc
from training.export import ExportError, default_check_images, export_onnx
from training.scoring import ScoringError, load_saved_model, resolve_model_paths


def score_with_onnxruntime_only(onnx_file: Path, image_files: list[Path]) -> np.ndarray:
    """What a user without this project writes: onnxruntime, numpy and PIL only, the resize
    and crop done as the file's metadata describes (torchvision's Resize + CenterCrop)."""
    import onnxruntime
    from PIL import Image

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    crop, side = int(meta["image_size"]), int(meta["resize_shorter_side"])
    batch = []
    for image_file in image_files:
        with Image.open(image_file) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        if width <= height:
            size = (side, int(side * height / width))
        else:
            size = (int(side * width / height), side)
        image = image.resize(size, Image.BILINEAR)
        top, left = round((size[1] - crop) / 2), round((size[0] - crop) / 2)
        image = image.crop((left, top, left + crop, top + crop))
        batch.append(np.asarray(image).transpose(2, 0, 1))
    return session.run(["scores"], {"images": np.stack(batch)})[0]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> tuple[TinyVoc, Path]:
    """On the tiny VOC tree, all with flip TTA (the default): a one-epoch fine-tuned run, a
    2-fold run, and the default recipe (Lite0's real weights, frozen: its val scores come
    from cached features through the head, not from the whole network)."""
    base = tmp_path_factory.mktemp("export")
    voc = write_tiny_voc(base / "VOCdevkit" / "VOC2012")
    runs = base / "runs"
    assert main_train.main(tiny_run_args(voc.root, runs, "--epochs", "1", "--run-name", "one")) == 0
    assert not (runs / "one" / "folds").exists()
    fold_args = ("--epochs", "1", "--folds", "2", "--run-name", "cv")
    assert main_train.main(tiny_run_args(voc.root, runs, *fold_args)) == 0
    frozen = tiny_run_args(voc.root, runs, "--epochs", "2", "--run-name", "lite0")
    frozen[frozen.index("--weights") + 1] = "imagenet"
    frozen[frozen.index("--image-size") + 1] = "64"
    frozen += ["--arch", "efficientnet_lite0", "--freeze-backbone"]
    frozen += ["--view", "crop", "--no-spatial-max"]  # what the crop scorer above writes out
    assert main_train.main(frozen) == 0
    return voc, runs


@pytest.mark.parametrize(
    ("run", "models", "arch", "side"),
    [("one", 1, "resnet18", 37), ("cv", 2, "resnet18", 37), ("lite0", 1, "efficientnet_lite0", 73)],
)
def test_the_exported_file_reproduces_the_runs_val_predictions(
    tiny_runs, run, models, arch, side, tmp_path, caplog
):
    voc, runs = tiny_runs
    paths = resolve_model_paths(run, runs)
    assert len(paths) == models
    check_images = default_check_images(load_saved_model(paths[0]).provenance)
    assert check_images is not None and len(check_images) == 8  # the run's own val images
    out = tmp_path / "exported" / f"{run}.onnx"
    with caplog.at_level(logging.INFO, logger="training.export"):
        result = export_onnx(paths, out, check_images=check_images)
    assert "checked on 9 real images: max |score - torch|" in caplog.text  # 8 + 1 other size
    assert result.max_score_difference <= 1e-4 and result.real_images
    assert result.path == out and out.stat().st_size == result.bytes
    assert result.models == models and result.tta == "hflip"

    expected = load_predictions(runs / run / "val_predictions.npz")
    scores = score_with_onnxruntime_only(out, [voc.root / name for name in expected.files])
    assert scores.shape == expected.scores.shape
    np.testing.assert_allclose(scores, expected.scores, rtol=0, atol=1e-4)

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert tuple(json.loads(meta["class_names"])) == expected.class_names
    provenance = json.loads(meta["provenance"])
    assert len(provenance["models"]) == models and provenance["tta"] == "hflip"
    assert provenance["run"] == run and [m["path"] for m in provenance["models"]] == [
        "model_best.pt" if models == 1 else f"folds/{fold}/model_best.pt"
        for fold in range(1, models + 1)
    ]
    assert provenance["ensemble_rule"] == (None if models == 1 else "mean-probability")
    assert provenance["models"][0]["provenance"]["arch"] == arch
    assert provenance["models"][0]["provenance"]["freeze_backbone"] is (run == "lite0")
    assert "Resize" in meta["preprocessing"] and f"{side} px" in meta["preprocessing"]


def test_refusals_leave_nothing_behind(tiny_runs, tmp_path, monkeypatch):
    _, runs = tiny_runs
    out = tmp_path / "never.onnx"
    garbage = tmp_path / "model_best.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ScoringError, match=r"not a model saved by main_train\.py"):
        export_onnx([garbage], out, check_images=None)
    with pytest.raises(ExportError, match="unknown averaging rule"):
        export_onnx(resolve_model_paths("one", runs), out, check_images=None, rule="median")

    # A graph that does not reproduce torch is an error, and no file is written.
    import onnxruntime

    real_session = onnxruntime.InferenceSession

    class Shifted:
        def __init__(self, *args, **kwargs) -> None:
            self.session = real_session(*args, **kwargs)

        def run(self, names, feeds):
            return [scores + 1e-3 for scores in self.session.run(names, feeds)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Shifted)
    with pytest.raises(ExportError, match=r"differ from torch's by up to 0.001 .* not written"):
        export_onnx(resolve_model_paths("one", runs), out, check_images=None)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def score_views_with_onnxruntime_only(onnx_file: Path, image_files: list[Path]) -> np.ndarray:
    """The same for a model that looks at the centre crop and the whole image: one input per
    view, each image on its own (whole images differ in shape), written out with PIL."""
    import onnxruntime
    from PIL import Image

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    crop, side = int(meta["image_size"]), int(meta["resize_shorter_side"])
    (whole_name,) = [name for name in json.loads(meta["views"]) if name.startswith("whole")]
    whole = int(meta[f"{whole_name}_size"])
    rows = []
    for image_file in image_files:
        with Image.open(image_file) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        long_out = max(32, round(whole * long / short / 32) * 32)
        size = (whole, long_out) if height <= width else (long_out, whole)  # (height, width)
        whole_pixels = np.asarray(image.resize((size[1], size[0]), Image.BILINEAR))
        if width <= height:
            resized = image.resize((side, int(side * height / width)), Image.BILINEAR)
        else:
            resized = image.resize((int(side * width / height), side), Image.BILINEAR)
        top, left = round((resized.height - crop) / 2), round((resized.width - crop) / 2)
        crop_pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)))
        feed = {
            f"images_crop{crop}": crop_pixels.transpose(2, 0, 1)[None],
            f"images_{whole_name}": whole_pixels.transpose(2, 0, 1)[None],
        }
        rows.append(session.run(["scores"], feed)[0][0])
    return np.stack(rows)


@pytest.mark.slow
def test_a_model_with_views_and_the_spatial_maximum_exports_and_reproduces_its_run(tmp_path):
    """Frozen Lite0 that sees the crop and the whole image, with the spatial maximum, exported
    through `python -m predictions --export-onnx` and scored without this project."""
    voc = write_tiny_voc(tmp_path / "VOCdevkit" / "VOC2012")
    runs = tmp_path / "runs"
    args = tiny_run_args(voc.root, runs, "--epochs", "2", "--run-name", "views")
    args[args.index("--weights") + 1] = "imagenet"
    args[args.index("--image-size") + 1] = "64"
    args += ["--arch", "efficientnet_lite0", "--view", "crop+whole", "--spatial-max"]
    assert main_train.main(args) == 0
    out = tmp_path / "views.onnx"
    from predictions.__main__ import main as predictions_main

    assert predictions_main(["--export-onnx", str(runs / "views"), "--out", str(out)]) == 0
    expected = load_predictions(runs / "views" / "val_predictions.npz")
    scores = score_views_with_onnxruntime_only(out, [voc.root / f for f in expected.files])
    np.testing.assert_allclose(scores, expected.scores, rtol=0, atol=1e-4)

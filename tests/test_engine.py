"""The inference engines: same numbers as torch at any batch and size, a verified cache, and
fallbacks that say what happened in one line."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training import engine as engines
from training.engine import EngineError, build_engine
from training.model import HeadInputs, MultiLabelClassifier, build_classifier
from vocdata.paths import PROJECT_ROOT

CPU = torch.device("cpu")


def _model(arch: str = "resnet18", seed: int = 0) -> MultiLabelClassifier:
    torch.manual_seed(seed)
    return build_classifier(arch, 20, weights="none").eval()


def _images(*shape: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def _reference(module: nn.Module, images: torch.Tensor):
    with torch.inference_mode():
        return module(images)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def count_exports(monkeypatch) -> list[Path]:
    """Every ONNX export made from now on, by path."""
    exported: list[Path] = []
    real_export = engines.export_onnx_graph

    def counting(module, example, path, names, *args):
        exported.append(Path(path))
        return real_export(module, example, path, names, *args)

    monkeypatch.setattr(engines, "export_onnx_graph", counting)
    return exported


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_each_engine_matches_torch_at_other_batches_and_sizes(arch, name, tmp_path):
    model = _model(arch)
    built = build_engine(
        model, name, example=_images(2, 3, 64, 64), cache_dir=tmp_path, key="k", device=CPU
    )
    assert built.name == name and name in built.describe()
    first_images = _images(5, 3, 64, 64, seed=2)  # another batch size
    first = built(first_images)
    # An odd size changes EfficientNet's "SAME" padding: a graph frozen at 64 px would differ.
    for shape in [(3, 3, 57, 71), (1, 3, 80, 48)]:
        images = _images(*shape, seed=3)
        scores = built(images)
        assert scores.dtype == torch.float32 and scores.shape == (shape[0], 20)
        assert (scores - _reference(model, images)).abs().max() <= 1e-4
    # The first result is still its own (not a buffer the next call overwrote).
    assert (first - _reference(model, first_images)).abs().max() <= 1e-4


class _LogitsAndFeatures(nn.Module):
    def __init__(self, model: MultiLabelClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.head_inputs(images)
        return self.model.head(features), features


def test_tuple_outputs_and_the_head_inputs_module(tmp_path):
    model = _model()
    images = _images(4, 3, 48, 40)
    logits, features = _reference(_LogitsAndFeatures(model), images)
    assert torch.equal(_reference(HeadInputs(model), images), features)  # the head's input
    assert torch.equal(_reference(model, images), logits)

    both = build_engine(
        _LogitsAndFeatures(model),
        "onnxruntime",
        example=_images(2, 3, 64, 64),
        cache_dir=tmp_path,
        key="k",
        device=CPU,
    )
    got_logits, got_features = both(images)
    assert (got_logits - logits).abs().max() <= 1e-4
    assert (got_features - features).abs().max() <= 1e-4 * max(1.0, float(features.abs().max()))


def test_the_exported_graph_is_cached_verified_and_rebuilt(tmp_path, count_exports, caplog):
    model, example = _model(), _images(2, 3, 64, 64)
    images = _images(3, 3, 50, 60, seed=5)
    reference = _reference(model, images)

    def build(key: str = "weights-a"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="training.engine"):
            built = build_engine(
                model, "onnxruntime", example=example, cache_dir=tmp_path, key=key, device=CPU
            )
        assert built.name == "onnxruntime"
        assert (built(images) - reference).abs().max() <= 1e-4
        return built

    build()
    assert len(count_exports) == 1 and "exported the network to ONNX in" in caplog.text
    graphs = list((tmp_path / "engines").glob("*.onnx"))
    assert len(graphs) == 1 and graphs[0].with_suffix(".json").is_file()
    assert not list((tmp_path / "engines").glob("*.tmp"))

    build()  # reused: no second export
    assert len(count_exports) == 1 and "engine cache hit" in caplog.text
    assert not _warnings(caplog)

    # Damaged: bytes changed in the middle (same length) -> one warning, exported again.
    data = bytearray(graphs[0].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    graphs[0].write_bytes(bytes(data))
    build()
    assert len(count_exports) == 2
    (warning,) = _warnings(caplog)
    assert "checksum" in warning and graphs[0].name in warning

    graphs[0].with_suffix(".json").write_text('{"key": ')  # a manifest cut short
    build()
    assert len(count_exports) == 3 and "not valid JSON" in _warnings(caplog)[0]

    # Stale: other weights -> another file, exported once; the first stays usable.
    build("weights-b")
    assert len(count_exports) == 4 and count_exports[-1].parent == tmp_path / "engines"
    assert len(list((tmp_path / "engines").glob("*.onnx"))) == 2
    build()
    assert len(count_exports) == 4


def test_without_a_cache_folder_nothing_is_left_behind(tmp_path, count_exports, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    model = _model()
    built = build_engine(
        model, "onnxruntime", example=_images(2, 3, 40, 40), cache_dir=None, key="k", device=CPU
    )
    images = _images(2, 3, 40, 40, seed=7)
    assert (built(images) - _reference(model, images)).abs().max() <= 1e-4
    assert len(count_exports) == 1 and count_exports[0].is_relative_to(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _hide(monkeypatch, *packages: str) -> None:
    """Make `import package` fail as it does when the package is not installed."""
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)


def test_auto_without_engines_runs_torch_with_one_warning(tmp_path, monkeypatch, caplog):
    _hide(monkeypatch, "openvino", "onnxruntime")
    model = _model()
    with caplog.at_level(logging.INFO, logger="training.engine"):
        built = build_engine(
            model, "auto", example=_images(2, 3, 40, 40), cache_dir=tmp_path, key="k", device=CPU
        )
    assert built.name == "torch"
    (warning,) = _warnings(caplog)
    assert "pip install openvino or onnxruntime" in warning and "running torch" in warning
    images = _images(2, 3, 40, 40, seed=3)
    assert torch.allclose(built(images), _reference(model, images), atol=1e-5)


def test_auto_without_the_onnx_package_runs_torch_with_one_warning(tmp_path, monkeypatch, caplog):
    _hide(monkeypatch, "onnx")  # the engines are there, torch's exporter cannot write
    with caplog.at_level(logging.INFO, logger="training.engine"):
        built = build_engine(
            _model(), "auto", example=_images(2, 3, 40, 40), cache_dir=tmp_path, key="k", device=CPU
        )
    assert built.name == "torch"
    (warning,) = _warnings(caplog)
    assert "the pip package onnx (torch's ONNX exporter) is not installed" in warning


def test_auto_takes_the_next_engine_when_the_first_is_missing_or_broken(
    tmp_path, monkeypatch, caplog
):
    model, example = _model(), _images(2, 3, 40, 40)

    def build() -> engines.ForwardEngine:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="training.engine"):
            return build_engine(
                model, "auto", example=example, cache_dir=tmp_path, key="k", device=CPU
            )

    assert build().name == "openvino" and not _warnings(caplog)  # the measured order

    with monkeypatch.context() as patch:
        _hide(patch, "openvino")  # not installed: no warning, the next engine
        assert build().name == "onnxruntime" and not _warnings(caplog)

    def broken(*args, **kwargs):
        raise RuntimeError("Cannot compile the model\nwith more detail on line two")

    monkeypatch.setattr(engines.OpenVinoEngine, "__init__", broken)
    assert build().name == "onnxruntime"
    (warning,) = _warnings(caplog)
    assert "openvino not used (RuntimeError: Cannot compile the model)" in warning
    assert "line two" not in warning and "running onnxruntime instead" in warning

    monkeypatch.setattr(engines.OnnxRuntimeEngine, "__init__", broken)
    assert build().name == "torch"
    (warning,) = _warnings(caplog)
    assert "openvino not used" in warning and "onnxruntime not used" in warning
    assert "running torch instead" in warning


def test_an_engine_that_disagrees_with_torch_is_not_used(tmp_path, monkeypatch, caplog):
    real_open = engines._open_engine

    class Off(engines.ForwardEngine):
        """What reduced precision looks like: outputs off by 1e-2."""

        name = "onnxruntime"

        def __init__(self, *args) -> None:
            self.inner = real_open(*args)

        def __call__(self, images):
            return self.inner(images) + 1e-2

    monkeypatch.setattr(engines, "_open_engine", Off)
    model = _model()
    with caplog.at_level(logging.INFO, logger="training.engine"):
        built = build_engine(
            model,
            "onnxruntime",
            example=_images(2, 3, 40, 40),
            cache_dir=tmp_path,
            key="k",
            device=CPU,
        )
    assert built.name == "torch"
    (warning,) = _warnings(caplog)
    assert "max |output - torch| 0.01 > 0.0001" in warning and "running torch" in warning


def test_an_explicit_engine_that_is_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    def build(name: str, device: torch.device = CPU):
        example = _images(1, 3, 32, 32)
        return build_engine(
            _model(), name, example=example, cache_dir=tmp_path, key="k", device=device
        )

    _hide(monkeypatch, "openvino")
    with pytest.raises(EngineError, match=r"--engine openvino needs the pip package openvino"):
        build("openvino")
    _hide(monkeypatch, "onnx")
    with pytest.raises(EngineError, match=r"needs the pip package onnx \(torch's ONNX exporter"):
        build("onnxruntime")
    with pytest.raises(EngineError, match="runs on the CPU, but the device is cuda"):
        build("onnxruntime", torch.device("cuda"))
    assert not (tmp_path / "engines").exists()


def test_the_torch_engine_runs_channels_last_with_the_same_numbers():
    model = _model("efficientnet_lite0")
    images = _images(3, 3, 45, 52)
    reference = _reference(model, images)
    built = build_engine(
        model, "torch", example=images, cache_dir=None, key="k", device=CPU, threads=1
    )
    assert built.name == "torch" and "channels-last" in built.describe()
    assert model.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert (built(images) - reference).abs().max() <= 1e-4


def test_an_engine_stands_in_for_the_model_in_the_prediction_pass(tmp_path):
    from training.loop import Runtime, predict

    model = _model("efficientnet_lite0")
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            _images(size, 3, 48, 56, seed=size),
            (torch.rand(size, 20, generator=generator) > 0.8).float(),
            torch.ones(size, 20),
            torch.arange(start, start + size),
        )
        for start, size in ((0, 4), (4, 3))
    ]
    runtime = Runtime(CPU)
    expected = predict(model, batches, runtime, progress=False, tta="hflip")
    built = build_engine(
        model, "auto", example=batches[0][0], cache_dir=tmp_path, key="k", device=CPU
    )
    assert built.name in engines.AUTO_ORDER  # not torch
    got = predict(built, batches, runtime, progress=False, tta="hflip")
    assert (got.indices == expected.indices).all()
    assert abs(got.logits - expected.logits).max() <= 1e-4
    assert abs(got.loss_sum - expected.loss_sum) <= 1e-4 * expected.mask_sum


SIGNAL_AFTER_DROP = """
import gc, os, signal, sys, threading, time
import torch
from training.engine import build_engine
from training.model import HeadInputs, build_classifier

signal.signal(signal.SIGCHLD, lambda *args: None)  # a Python handler, as the DataLoader sets
model = build_classifier("resnet18", 20, weights="none").eval()
example = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
engines = [
    build_engine(
        HeadInputs(model), "openvino", example=example, cache_dir=None, key="k",
        device=torch.device("cpu"),
    )
]
engines[0](example)
dropper = threading.Thread(target=lambda: (engines.clear(), gc.collect()))
dropper.start()
dropper.join()
for _ in range(3):  # a loader worker ends: SIGCHLD reaches the main thread
    if os.fork() == 0:
        os._exit(0)
    time.sleep(0.2)
print("survived")
"""


def test_an_openvino_engine_dropped_on_another_thread_leaves_signals_safe():
    """OpenVINO gives the thread that infers an alternate signal stack and frees it when the
    model is dropped; dropped on another thread, the first thread's next signal used to crash
    the process (a segmentation fault at the next DataLoader worker's exit)."""
    pytest.importorskip("openvino")
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_AFTER_DROP],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "survived" in result.stdout


@pytest.mark.slow
def test_a_frozen_run_scores_the_same_with_every_engine(tiny_voc, tmp_path):
    """The default recipe (frozen Lite0, the whole view, the spatial maximum, flip TTA) trained
    with each engine computing its features: the same val scores (to 1e-4), the same
    per-class AP and val mAP to 4 decimals as with PyTorch itself."""
    import main_train
    from evaluation.metrics import UndefinedAPWarning, per_class_average_precision
    from predictions import load_predictions
    from tests.voc_fixture import tiny_run_args

    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--epochs", "2")
    args[args.index("--weights") + 1] = "imagenet"  # a frozen backbone needs pretrained weights
    args[args.index("--image-size") + 1] = "64"
    args += ["--arch", "efficientnet_lite0", "--freeze-backbone", "--cache-dir", "none"]
    results = {}
    for name in ("torch", "onnxruntime", "openvino"):
        assert main_train.main([*args, "--engine", name, "--run-name", name]) == 0
        preds = load_predictions(tmp_path / "runs" / name / "val_predictions.npz")
        assert preds.provenance["view"] == "whole" and preds.provenance["tta"] == "hflip"
        results[name] = preds
    reference = results["torch"]
    warnings.simplefilter("ignore", UndefinedAPWarning)  # the tiny val lacks some classes
    reference_ap = per_class_average_precision(reference.scores, reference.labels)
    for name in ("onnxruntime", "openvino"):
        got = results[name]
        assert abs(got.scores - reference.scores).max() <= 1e-4, name
        got_ap = per_class_average_precision(got.scores, got.labels)
        np.testing.assert_array_equal(np.round(got_ap, 4), np.round(reference_ap, 4))
        assert round(np.nanmean(got_ap), 4) == round(np.nanmean(reference_ap), 4)

"""A trained run as one standalone ONNX file: uint8 images in, the classes' sigmoid scores out.

The graph holds everything between decoded pixels and scores: each model's normalisation,
the test-time augmentation the run was validated with (`hflip`: the mean of the logits of
the image and its mirror image, as `training.loop.tta_logits`), the sigmoid, and for a
k-fold run the mean of its fold models' probabilities (`predictions.ensemble`'s default
rule). What a user must still do, decoding, resizing and cropping, is written in words in the
file's metadata (`preprocessing`) beside the class names and the models' provenance, so the
file can be used without this project (README: ten lines of onnxruntime).

Before the file is written, the graph is run by ONNX Runtime on real images and compared
with the same models in torch: a difference above `SCORE_TOLERANCE` is an error.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from predictions.ensemble import (
    AVERAGING_RULES,
    DEFAULT_AVERAGING_RULE,
    LOGIT_EPS,
    MEAN_PROBABILITY,
)
from training.engine import INPUT_NAME, ONNX_OPSET, export_onnx_graph
from training.loop import tta_logits
from training.scoring import (
    SavedModel,
    check_same_classes,
    ensemble_home,
    load_saved_model,
    resolve_tta,
)
from vocdata.atomic import atomic_write
from vocdata.images import open_rgb
from vocdata.paths import resolve_project_path
from vocdata.splits import read_split
from vocdata.transforms import eval_resize_size, eval_transform
from vocdata.views import CELL, View

log = logging.getLogger(__name__)

OUTPUT_NAME = "scores"
SCORE_TOLERANCE = 1e-4  # scores are probabilities in [0, 1]: an absolute bound
CHECK_IMAGES = 8


class ExportError(ValueError):
    """The run cannot be exported as asked, or its export does not reproduce torch."""


@dataclass
class ExportResult:
    path: Path
    models: int
    tta: str
    ensemble_rule: str | None  # None for a single model
    image_size: int
    views: tuple[str, ...]
    class_names: tuple[str, ...]
    checked_images: int
    real_images: bool  # False: no real image could be found, generated ones were used
    max_score_difference: float  # max |ONNX Runtime - torch| over the check images
    seconds: float
    bytes: int


class ScoringGraph(nn.Module):
    """The scores a run's prediction pass computes, as one module: per model the (TTA)
    logits, averaged over its views (one input per view), and their sigmoid, then the
    ensemble's combination of the probabilities."""

    def __init__(self, networks: list[nn.Module], tta: str, rule: str) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.tta, self.rule = tta, rule

    def _logits(self, network: nn.Module, views: tuple[torch.Tensor, ...]) -> torch.Tensor:
        per_view = [tta_logits(network, images, self.tta) for images in views]
        return per_view[0] if len(per_view) == 1 else torch.stack(per_view).mean(dim=0)

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack(
            [torch.sigmoid(self._logits(network, views)) for network in self.networks]
        )
        if len(self.networks) == 1:
            return probabilities[0]
        if self.rule == MEAN_PROBABILITY:
            return probabilities.mean(dim=0)
        clipped = probabilities.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
        return torch.sigmoid(torch.log(clipped / (1.0 - clipped)).mean(dim=0))


def _finite(value: Any) -> Any:
    """`value` with non-finite floats as None: the metadata must be standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def preprocessing_words(view: View) -> str:
    """How to make the input of `view` from an image file, in words a user can follow."""
    if view.kind == "crop":
        size, side = view.size, eval_resize_size(view.size)
        return (
            f"Decode the image to RGB. Resize it so that its shorter side is {side} px, the "
            f"longer side floor({side} * longer / shorter), bilinear with antialiasing (PIL's "
            f"Image.resize(..., Image.BILINEAR); torchvision v2.Resize({side}, antialias=True)). "
            f"Centre-crop {size} x {size}: top = round((height - {size}) / 2), left = "
            f"round((width - {size}) / 2) (Python's round, as torchvision's CenterCrop). Feed "
            f"uint8 pixels 0-255, shape (N, 3, {size}, {size}), RGB, channels first, not "
            f"normalised: the graph normalises."
        )
    size = view.size
    return (
        f"Decode the image to RGB, turned upright by its EXIF orientation. Resize the whole "
        f"image (nothing cropped) to exactly: shorter side {size} px, longer side "
        f"max({CELL}, round({size} * longer / shorter / {CELL}) * {CELL}) (Python's round), "
        f"bilinear with antialiasing (PIL's Image.resize((width, height), Image.BILINEAR)). "
        f"Feed uint8 pixels 0-255, shape (1, 3, height, width) (images of one shape may share "
        f"a batch), RGB, channels first, not normalised: the graph normalises."
    )


def input_names(views: tuple[View, ...]) -> list[str]:
    """`images` for a model with one view; `images_<view>` per view (e.g. images_whole320)."""
    return [INPUT_NAME] if len(views) == 1 else [f"{INPUT_NAME}_{v.name}" for v in views]


def _inside(path: Path, folder: Path) -> str:
    """`path` relative to the run `folder` (the file travels without the machine's paths)."""
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path.name


def _metadata(
    models: list[SavedModel], tta: str, rule: str | None, exported: dict[str, Any]
) -> dict[str, str]:
    image_size = models[0].image_size
    views = models[0].views
    count = len(models)
    home = ensemble_home([m.path for m in models])
    names = input_names(views)
    return {
        "class_names": json.dumps(list(models[0].class_names)),
        "input": "; ".join(
            f"{name}: uint8 (N, 3, H, W), RGB 0-255, not normalised, the {view.name} view (see "
            f"preprocessing{'' if len(views) == 1 else '_' + view.name})"
            for name, view in zip(names, views, strict=True)
        ),
        "views": json.dumps([view.name for view in views]),
        "output": (
            f"{OUTPUT_NAME}: float32 (N, {len(models[0].class_names)}), one independent sigmoid "
            f"probability per class, in the order of class_names"
        ),
        **(
            {"preprocessing": preprocessing_words(views[0])}
            if len(views) == 1
            else {f"preprocessing_{view.name}": preprocessing_words(view) for view in views}
        ),
        "view_rule": "the mean of the logits over the views, then the sigmoid",
        "image_size": str(image_size),
        **(
            {"resize_shorter_side": str(eval_resize_size(image_size))}
            if any(view.kind == "crop" for view in views)
            else {}
        ),
        **{f"{view.name}_size": str(view.size) for view in views if view.kind == "whole"},
        "tta": tta,
        "tta_rule": (
            "mean of the logits of the image and of its horizontal mirror image, then sigmoid"
            if tta == "hflip"
            else "none: one forward pass per image"
        ),
        "ensemble": (
            "one model"
            if count == 1
            else f"{count} models combined by {rule}: "
            + (
                "the mean of their sigmoid scores"
                if rule == MEAN_PROBABILITY
                else "the sigmoid of the mean of their logits"
            )
        ),
        "provenance": json.dumps(
            _finite(
                {
                    "run": home.name,
                    "models": [
                        {
                            "path": _inside(m.path, home),
                            "arch": m.arch,
                            "image_size": m.image_size,
                            "provenance": m.provenance,
                        }
                        for m in models
                    ],
                    "tta": tta,
                    "ensemble_rule": rule,
                    "export": exported,
                }
            )
        ),
    }


RUN_VAL_IMAGES = "run-val-images"  # check on the first images of the run's own val split


def _load_models(model_paths: list[Path]) -> list[SavedModel]:
    if not model_paths:
        raise ExportError("nothing to export: no model file given")
    models = [load_saved_model(Path(path)) for path in model_paths]
    check_same_classes(models)
    sizes = sorted({m.image_size for m in models})
    views = {m.views for m in models}
    if len(sizes) > 1 or len(views) > 1:
        raise ExportError(
            f"the models were trained at different image sizes or views "
            f"({', '.join(map(str, sizes))} px; {len(views)} view settings); one ONNX file "
            f"takes one preprocessing: export them one by one"
        )
    return models


def default_check_images(
    provenance: Mapping[str, Any], count: int = CHECK_IMAGES
) -> list[Path] | None:
    """The first `count` images of the val split a model was trained with (its provenance
    names the dataset), when that dataset is still there; else None."""
    try:
        voc_root = resolve_project_path(str(provenance["voc_root"]))
        files = read_split(voc_root, "val").relative_paths[:count]
    except Exception:  # a moved dataset only means generated check images; say so, go on
        return None
    paths = [voc_root / name for name in files]
    return paths if paths and all(path.is_file() for path in paths) else None


def _check_batches(
    check_images: list[Path] | None, views: tuple[View, ...]
) -> list[tuple[torch.Tensor, ...]]:
    """The check images as the prediction pass sees them (per view, one tensor each): for a
    crop-only model one batch, and the first image only resized (another height and width);
    with a whole view, one image at a time (their shapes differ). Generated images when
    none are given."""
    if check_images:
        pictures = [open_rgb(path) for path in check_images]
        if all(view.kind == "crop" for view in views):
            batch = tuple(torch.stack([v.transform()(p) for p in pictures]) for v in views)
            transform = eval_transform(views[0].size)
            resize, to_tensor = transform.transforms[0], transform.transforms[-1]
            resized = to_tensor(resize(pictures[0])).unsqueeze(0)
            return [batch, tuple(resized for _ in views)]
        return [tuple(v.transform()(p).unsqueeze(0) for v in views) for p in pictures]
    generator = torch.Generator().manual_seed(0)
    size = views[0].size
    shapes = [(4, 3, size, size), (1, 3, size + 13, size + 30)]
    return [
        tuple(torch.randint(0, 256, s, dtype=torch.uint8, generator=generator) for _ in views)
        for s in shapes
    ]


def export_onnx(
    model_paths: list[Path],
    out: Path,
    *,
    check_images: list[Path] | str | None = RUN_VAL_IMAGES,
    rule: str = DEFAULT_AVERAGING_RULE,
    tta: str = "auto",
) -> ExportResult:
    """Write the models of `model_paths` (one run's model, or a k-fold run's fold models) as
    one ONNX file at `out`, after checking it against torch on `check_images` (real images;
    RUN_VAL_IMAGES: `default_check_images` of the first model; None: generated pixels,
    logged). `tta` 'auto': the one the models were validated with. Raises ExportError
    (nothing written) when the ONNX scores differ from torch's by more than SCORE_TOLERANCE;
    a model file that is not ours raises training.scoring's ScoringError."""
    import onnx
    import onnxruntime

    if rule not in AVERAGING_RULES:
        raise ExportError(f"unknown averaging rule {rule!r}; choose one of {AVERAGING_RULES}")
    started = time.perf_counter()
    models = _load_models(model_paths)
    if check_images == RUN_VAL_IMAGES:
        check_images = default_check_images(models[0].provenance)
    tta = resolve_tta(models, tta)
    ensemble_rule = rule if len(models) > 1 else None
    graph = ScoringGraph([m.network for m in models], tta, rule).eval()
    views = models[0].views
    names = input_names(views)
    batches = _check_batches(check_images, views)
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        path = Path(scratch) / "model.onnx"
        export_onnx_graph(graph, batches[0], path, [OUTPUT_NAME], names)
        proto = onnx.load(str(path))
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    difference = 0.0
    with torch.inference_mode():
        for inputs in batches:
            expected = graph(*inputs).numpy()
            feed = {name: images.numpy() for name, images in zip(names, inputs, strict=True)}
            (got,) = session.run([OUTPUT_NAME], feed)
            difference = max(difference, float(np.abs(got - expected).max()))
    checked = sum(len(inputs[0]) for inputs in batches)
    log.info(
        "ONNX export checked on %d %s images: max |score - torch| %.2g",
        checked,
        "real" if check_images else "generated",
        difference,
    )
    if not difference <= SCORE_TOLERANCE:
        raise ExportError(
            f"the exported graph's scores differ from torch's by up to {difference:.2g} "
            f"(allowed {SCORE_TOLERANCE:g}); {out} was not written"
        )
    exported = {
        "by": "training.export",
        "torch": torch.__version__,
        "onnx_opset": ONNX_OPSET,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "checked_images": checked,
        "checked_on": "real images" if check_images else "generated images",
        "max_abs_score_difference_vs_torch": difference,
    }
    for key, value in _metadata(models, tta, ensemble_rule, exported).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "voc-multilabel-classifier"
    proto.doc_string = (
        f"Pascal VOC multi-label classifier ({'+'.join(sorted({m.arch for m in models}))}, "
        f"{len(models)} model(s)); see metadata_props: preprocessing, class_names, provenance"
    )
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    with atomic_write(out) as tmp:
        tmp.write_bytes(data)
    return ExportResult(
        path=Path(out),
        models=len(models),
        tta=tta,
        ensemble_rule=ensemble_rule,
        image_size=models[0].image_size,
        views=tuple(view.name for view in views),
        class_names=models[0].class_names,
        checked_images=checked,
        real_images=bool(check_images),
        max_score_difference=difference,
        seconds=time.perf_counter() - started,
        bytes=len(data),
    )

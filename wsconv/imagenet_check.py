"""Check at prediction time: does the converted network predict what the original did?

On real ImageNet images: mean and max absolute logit difference, top-1 agreement, and the
top-1 accuracy of both networks, for each backbone with real weights and each mode.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation.tables import markdown_table
from training.backbones import (
    WeightsRefusedError,
    WeightsUnavailableError,
    create_imagenet_network,
    get_backbone,
)
from training.model import MultiLabelClassifier
from vocdata.images import open_rgb
from vocdata.transforms import eval_transform
from wsconv.convert import MODES, convert

log = logging.getLogger(__name__)

DEFAULT_IMAGENET_SAMPLES = "../shared/data/imagenet-samples"


@dataclass(frozen=True)
class CheckRow:
    backbone: str
    mode: str
    dtype: str
    images: int
    mean_abs_diff: float
    max_abs_diff: float
    top1_agreement: float
    top1_original: float
    top1_converted: float


def read_imagenet_samples(
    folder: Path, image_size: int = 224, limit: int | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 images (N, 3, S, S), resized and centre-cropped as everywhere else, and labels."""
    labels_file = folder / "labels.csv"
    if not labels_file.is_file():
        raise FileNotFoundError(
            f"{labels_file} not found: pass --imagenet with a folder holding labels.csv "
            f"(file, wnid, class_index, name) and images/"
        )
    with open(labels_file, newline="") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    transform = eval_transform(image_size)
    images = []
    for row in rows:
        images.append(transform(open_rgb(folder / "images" / row["file"])))
    return torch.stack(images), np.array([int(row["class_index"]) for row in rows])


def imagenet_classifier(arch: str, weights: str) -> MultiLabelClassifier:
    """The 1000-class network with its own input normalisation (takes uint8 images)."""
    spec = get_backbone(arch)
    return MultiLabelClassifier(create_imagenet_network(arch, weights), spec).eval()


@torch.inference_mode()
def _logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
) -> torch.Tensor:
    model = model.to(device=device, dtype=dtype).eval()
    outputs = [
        model(images[i : i + batch_size].to(device).to(dtype)).double().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs)


def check_backbone(
    arch: str,
    weights: str,
    images: torch.Tensor,
    labels: np.ndarray,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
) -> list[CheckRow]:
    """Compare the original with both converted versions on the same images."""
    batch_size = batch_size or (100 if device.type == "cuda" else 10)  # CPU: small is faster
    original = imagenet_classifier(arch, weights)
    reference = _logits(original, images, device, dtype, batch_size)
    truth = torch.from_numpy(labels)
    original_top1 = reference.argmax(1)
    rows = []
    for mode in MODES:
        converted = convert(original.double() if dtype == torch.float64 else original.float(), mode)
        logits = _logits(converted, images, device, dtype, batch_size)
        difference = (logits - reference).abs()
        top1 = logits.argmax(1)
        rows.append(
            CheckRow(
                backbone=arch,
                mode=mode,
                dtype=str(dtype).replace("torch.", ""),
                images=len(images),
                mean_abs_diff=float(difference.mean()),
                max_abs_diff=float(difference.max()),
                top1_agreement=float((top1 == original_top1).double().mean()),
                top1_original=float((original_top1 == truth).double().mean()),
                top1_converted=float((top1 == truth).double().mean()),
            )
        )
    return rows


def prediction_check(
    backbones: dict[str, str],
    folder: Path,
    device: torch.device,
    limit: int | None = None,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
) -> tuple[list[CheckRow], dict[str, str]]:
    """Rows for every backbone whose weights are available; the others with the reason."""
    images, labels = read_imagenet_samples(folder, limit=limit)
    rows, skipped = [], {}
    for arch, weights in backbones.items():
        try:
            for dtype in dtypes:
                rows += check_backbone(arch, weights, images, labels, device, dtype)
        except WeightsRefusedError:  # there but untrusted (a bad hash, pickled code): an error
            raise
        except WeightsUnavailableError as error:
            log.warning("prediction check of %s skipped: %s", arch, error)
            skipped[arch] = str(error)
    return rows, skipped


def format_check_table(rows: list[CheckRow]) -> str:
    header = [
        "backbone",
        "mode",
        "dtype",
        "images",
        "mean abs diff",
        "max abs diff",
        "top-1 agreement",
        "top-1 original",
        "top-1 converted",
    ]
    return markdown_table(
        header,
        [
            [
                r.backbone,
                r.mode,
                r.dtype,
                r.images,
                f"{r.mean_abs_diff:.2e}",
                f"{r.max_abs_diff:.2e}",
                f"{100 * r.top1_agreement:.1f}%",
                f"{100 * r.top1_original:.1f}%",
                f"{100 * r.top1_converted:.1f}%",
            ]
            for r in rows
        ],
    )

"""Image transforms. They end in uint8 CHW tensors: normalisation happens inside the model.

Keeping the loader's output uint8 moves 4x fewer bytes through worker queues, pinned memory
and the host-to-device copy; each backbone's mean/std is applied by the model itself, so a
saved model cannot be fed with the wrong normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

EVAL_CROP_FRACTION = 0.875  # resize to size / 0.875 (256 for 224), then centre-crop: standard
TRAIN_SCALE = (0.25, 1.0)  # RandomResizedCrop area range: keep most of each (multi-object) scene

Transform = Callable[[Image.Image | torch.Tensor], torch.Tensor]


def eval_resize_size(image_size: int) -> int:
    """Shorter side before the centre crop at evaluation."""
    return round(image_size / EVAL_CROP_FRACTION)


def train_transform(image_size: int) -> Transform:
    """Random resized crop and horizontal flip: the usual transfer-learning augmentation."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=TRAIN_SCALE, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ]
    )


def eval_transform(image_size: int) -> Transform:
    """Deterministic resize + centre crop, the same for validation, prediction and the GUI."""
    return v2.Compose(
        [
            v2.Resize(eval_resize_size(image_size), antialias=True),
            v2.CenterCrop(image_size),
            v2.PILToTensor(),
        ]
    )

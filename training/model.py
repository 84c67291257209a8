"""The multi-label classifier: an ImageNet backbone whose classifier becomes 20 outputs.

The model takes uint8 images (N, 3, H, W) in [0, 255] and applies its backbone's own
normalisation first, so every caller (training, evaluation, GUI, a user's script) feeds it
the same thing and no one can pair a backbone with the wrong mean and std.

Its forward is two steps with a seam between them: `head_inputs` (normalise, the backbone's
feature map, its pooling, and what the head derives from the map without trained numbers,
e.g. the prior head's spatial maximum) and the head itself. With a frozen backbone the first
step is computed once per image and cached (`training/features.py`), possibly by an
inference engine; the second is all that trains.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from training.backbones import Backbone, create_imagenet_network, get_backbone
from training.heads import build_head
from vocdata.classes import VOC_CLASSES


class MultiLabelClassifier(nn.Module):
    """Backbone + normalisation; `forward` returns one logit per class (independent sigmoids)."""

    def __init__(self, backbone: nn.Module, spec: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_name = spec.head_name
        self._feature_map = spec.feature_map
        self._pool = spec.pool
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)

    @property
    def head(self) -> nn.Module:
        return getattr(self.backbone, self.head_name)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(N, F, h, w): the backbone's last feature map of uint8 images."""
        pixels = images.to(self.pixel_mean.dtype)
        return self._feature_map(self.backbone, (pixels - self.pixel_mean) / self.pixel_std)

    def head_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D): what the head receives, the pooled features (and, for a head that looks
        at every position, what it derives from the feature map: `head.from_feature_map`)."""
        feature_map = self.feature_map(images)
        pooled = self._pool(self.backbone, feature_map)
        if not getattr(self.head, "uses_feature_map", False):
            return pooled
        return torch.cat([pooled, self.head.from_feature_map(feature_map)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_inputs(images))

    @property
    def head_input_width(self) -> int:
        """D of `head_inputs`: the pooled features, plus one number per class when the head
        reads the feature map."""
        head = self.head
        extra = head.out_features if getattr(head, "uses_feature_map", False) else 0
        return head.in_features + extra

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        head_ids = {id(p) for p in self.head_parameters()}
        return (p for p in self.backbone.parameters() if id(p) not in head_ids)


class HeadInputs(nn.Module):
    """`model.head_inputs` as a module of its own: what an inference engine exports and the
    feature cache stores (uint8 images in, (N, D) float32 out)."""

    def __init__(self, model: MultiLabelClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.head_inputs(images).float()


def build_classifier(
    arch: str,
    num_classes: int,
    weights: str = "imagenet",
    head: str = "random",
    class_names: Sequence[str] | None = None,
    spatial_max: bool = False,
) -> MultiLabelClassifier:
    """ImageNet-pretrained `arch` whose 1000-class layer becomes a `num_classes`-output head of
    kind `head` (training/heads.py; `random` is a freshly initialised linear layer);
    `spatial_max` gives the prior head its per-class maximum over positions.

    With `weights="none"` an ImageNet-derived head gets only its structure: that is how
    `load_model` rebuilds a saved model before loading its weights.
    """
    spec = get_backbone(arch)
    network = create_imagenet_network(arch, weights)
    names = tuple(class_names) if class_names is not None else VOC_CLASSES[:num_classes]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} outputs")
    imagenet_layer = getattr(network, spec.head_name)
    new_head = build_head(
        head, imagenet_layer, names, pretrained=weights != "none", spatial_max=spatial_max
    )
    setattr(network, spec.head_name, new_head)
    return MultiLabelClassifier(network, spec)

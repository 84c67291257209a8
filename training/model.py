"""The multi-label classifier: an ImageNet backbone whose classifier becomes 20 outputs.

The model takes uint8 images (N, 3, H, W) in [0, 255] and applies its backbone's own
normalisation first, so every caller (training, evaluation, GUI, a user's script) feeds it
the same thing and no one can pair a backbone with the wrong mean and std.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from training.backbones import create_imagenet_network, get_backbone


class MultiLabelClassifier(nn.Module):
    """Backbone + normalisation; `forward` returns one logit per class (independent sigmoids)."""

    def __init__(
        self, backbone: nn.Module, head_name: str, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_name = head_name
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.to(self.pixel_mean.dtype)
        return self.backbone((pixels - self.pixel_mean) / self.pixel_std)

    @property
    def head(self) -> nn.Linear:
        return getattr(self.backbone, self.head_name)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        head_ids = {id(p) for p in self.head_parameters()}
        return (p for p in self.backbone.parameters() if id(p) not in head_ids)


def build_classifier(
    arch: str, num_classes: int, weights: str = "imagenet"
) -> MultiLabelClassifier:
    """ImageNet-pretrained `arch` with a freshly initialised `num_classes`-output linear layer."""
    spec = get_backbone(arch)
    network = create_imagenet_network(arch, weights)
    old_head = getattr(network, spec.head_name)
    setattr(network, spec.head_name, nn.Linear(old_head.in_features, num_classes))
    return MultiLabelClassifier(network, spec.head_name, spec.mean, spec.std)

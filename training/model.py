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
from training.heads import build_head
from vocdata.classes import VOC_CLASSES


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
    def head(self) -> nn.Module:
        return getattr(self.backbone, self.head_name)

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the pooled features the head received): one pass, for the feature cache."""
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            logits = self(images)
        finally:
            hook.remove()
        return logits, captured[0]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        head_ids = {id(p) for p in self.head_parameters()}
        return (p for p in self.backbone.parameters() if id(p) not in head_ids)


def build_classifier(
    arch: str,
    num_classes: int,
    weights: str = "imagenet",
    head: str = "random",
    class_names: Sequence[str] | None = None,
) -> MultiLabelClassifier:
    """ImageNet-pretrained `arch` whose 1000-class layer becomes a `num_classes`-output head of
    kind `head` (training/heads.py; `random` is a freshly initialised linear layer).

    With `weights="none"` an ImageNet-derived head gets only its structure: that is how
    `load_model` rebuilds a saved model before loading its weights.
    """
    spec = get_backbone(arch)
    network = create_imagenet_network(arch, weights)
    names = tuple(class_names) if class_names is not None else VOC_CLASSES[:num_classes]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} outputs")
    imagenet_layer = getattr(network, spec.head_name)
    new_head = build_head(head, imagenet_layer, names, pretrained=weights != "none")
    setattr(network, spec.head_name, new_head)
    return MultiLabelClassifier(network, spec.head_name, spec.mean, spec.std)

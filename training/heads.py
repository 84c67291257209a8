"""The 20-output heads: a fresh layer, or one that starts from what the ImageNet layer knows.

The pretrained network's 1000-class ImageNet layer already recognises dogs, cats, boats,
trains, ...; throwing it away and learning each VOC class from its few VOC examples loses
that (issue 11: the untrained ImageNet layer alone scores dev mAP 0.48, a randomly started
head trained for 12 epochs 0.40). Three kinds, chosen with `--head`:

- `random`: today's `nn.Linear(features, 20)`, freshly initialised.
- `init`: the same layer, each VOC row started as the mean of its synsets' ImageNet rows
  (`training/synsets.py`); classes without synsets start as `random`.
- `prior`: the frozen ImageNet layer gives each class a prior logit, the log-odds of the
  ImageNet softmax mass on the class's synsets, log(p / (1 - p)) with p = sum of the softmax
  over the synsets. Read through a sigmoid it is p itself: the untrained model already gives
  calibrated-looking zero-shot scores. On top come a learned per-class scale and offset
  (start 1 and 0) and a linear residual from the features, started at zero, so training
  starts from the prior and only moves away from it as far as the VOC examples pull. The
  residual of a class with few training images is damped (`--residual-shrink`), so what
  ImageNet knew about it is not over-written by a handful of examples. A class without
  synsets has prior 0 and is learned by its offset and residual alone.

Every head maps the backbone's pooled features (N, F) to (N, 20) logits, so the model's
forward, the saved model and the GUI do not depend on the kind. `model_best.pt` stores the
kind; `build_head(..., pretrained=False)` rebuilds the structure for `load_model`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.backbones import WeightsUnavailableError
from training.synsets import class_synset_indices

HEAD_KINDS = ("random", "init", "prior")
IMAGENET_HEADS = ("init", "prior")  # need the genuine ImageNet layer
DEFAULT_HEAD = "prior"  # what `--head auto` means with pretrained weights (README: why)
# `init` rows are averages of ImageNet rows, whose logits feed a softmax and only mean
# something relative to each other; shifting the bias down starts every sigmoid score low
# (most images do not contain a given class), so the first BCE steps do not fight the start.
INIT_BIAS_SHIFT = -4.0
# The prior head's residual for class c is multiplied by n_c / (n_c + RESIDUAL_SHRINK), n_c its
# training images: a class with few examples stays near its prior, one with hundreds learns
# freely (shrinkage, as in empirical Bayes). Measured on the dev subset, frozen Lite0 features,
# 12 epochs: without it the residual over-fits bicycle and boat (10-ish train images each)
# below their zero-shot AP; with 20: mAP 0.516 -> 0.543, no class below zero-shot.
# The default of `--residual-shrink` (`python -m training.sweep` can tune it).
RESIDUAL_SHRINK = 20.0


def resolve_head(kind: str, weights: str) -> str:
    """`auto` -> `prior` with pretrained weights, `random` with `--weights none` (documented
    fall-back); an ImageNet head asked for explicitly with `--weights none` is an error."""
    if kind not in ("auto", *HEAD_KINDS):
        raise ValueError(f"unknown head {kind!r}; choose auto, {', '.join(HEAD_KINDS)}")
    if kind == "auto":
        return "random" if weights == "none" else DEFAULT_HEAD
    if kind in IMAGENET_HEADS and weights == "none":
        raise WeightsUnavailableError(
            f"--head {kind} starts from the ImageNet classifier, but --weights none gives a "
            f"random network whose ImageNet layer knows nothing. Use pretrained weights "
            f"(--weights imagenet or a file), or --head random (or auto) to train from scratch."
        )
    return kind


class PriorHead(nn.Module):
    """logit_c = scale_c * prior_c(features) + offset_c + residual_c(features)
    [+ max_weight_c * max over positions of prior_c(features at that position)].

    The last term (`spatial_max`) is CSRA's class-wise spatial maximum (Zhu & Wu, 2021) on
    the prior: the ImageNet layer is linear before its softmax, so it scores every cell of
    the feature map, and the best cell says "somewhere in the image" for a small object that
    average pooling dilutes. Its weight starts at 0: training starts exactly from the head
    without it. The maximum uses only the frozen ImageNet layer, so it is computed with the
    features (`from_feature_map`) and cached with them; the head receives it appended to the
    pooled features.
    """

    def __init__(
        self,
        in_features: int,
        num_imagenet: int,
        class_synsets: Sequence[Sequence[int]],
        spatial_max: bool = False,
    ) -> None:
        super().__init__()
        num_classes = len(class_synsets)
        self.in_features, self.out_features = in_features, num_classes
        self.uses_feature_map = spatial_max
        members = torch.zeros(num_classes, num_imagenet, dtype=torch.bool)
        for c, indices in enumerate(class_synsets):
            members[c, list(indices)] = True
        # Frozen: buffers, so no optimizer or weight decay ever touches the ImageNet layer.
        self.register_buffer("imagenet_weight", torch.zeros(num_imagenet, in_features))
        self.register_buffer("imagenet_bias", torch.zeros(num_imagenet))
        self.register_buffer("members", members)
        self.scale = nn.Parameter(torch.ones(num_classes))
        self.offset = nn.Parameter(torch.zeros(num_classes))
        self.residual = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.register_buffer("residual_gain", torch.ones(num_classes))
        if spatial_max:
            self.max_weight = nn.Parameter(torch.zeros(num_classes))

    def set_train_positives(
        self, positives: Sequence[int] | torch.Tensor, shrink: float = RESIDUAL_SHRINK
    ) -> None:
        """Damp each class's residual by n / (n + shrink), n its positive training images."""
        counts = torch.as_tensor(positives, dtype=torch.float32, device=self.residual_gain.device)
        self.residual_gain.copy_(counts / (counts + shrink))

    def prior_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) log-odds of the ImageNet softmax mass on each class's synsets (0: none)."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = nn.functional.linear(features.float(), self.imagenet_weight, self.imagenet_bias)
            z = z.unsqueeze(1)  # (N, 1, 1000) against members (C, 1000)
            minus_inf = torch.tensor(-torch.inf, device=z.device)
            inside = torch.logsumexp(torch.where(self.members, z, minus_inf), dim=-1)
            outside = torch.logsumexp(torch.where(self.members, minus_inf, z), dim=-1)
            has_synsets = self.members.any(dim=1)
            return torch.where(has_synsets, inside - outside, torch.zeros_like(inside))

    def from_feature_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(N, C): the highest prior log-odds of each class over the cells of `feature_map`
        (N, F, h, w), each cell scored by the frozen ImageNet layer like pooled features."""
        with torch.autocast(device_type=feature_map.device.type, enabled=False):
            cells = feature_map.float().flatten(2).transpose(1, 2)  # (N, h*w, F)
            z = nn.functional.linear(cells, self.imagenet_weight, self.imagenet_bias)
            # log-odds = log sum_{in} e^z - log sum_{out} e^z; the common max cancels
            e = torch.exp(z - z.amax(dim=-1, keepdim=True))
            members = self.members.to(e.dtype)
            tiny = torch.finfo(e.dtype).tiny
            inside = (e @ members.T).clamp_min(tiny).log()
            outside = (e @ (1.0 - members).T).clamp_min(tiny).log()
            log_odds = torch.where(self.members.any(dim=1), inside - outside, 0.0)
            return log_odds.amax(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` (N, F), or (N, F + C) with the spatial maxima appended."""
        pooled = features[:, : self.in_features] if self.uses_feature_map else features
        prior = self.prior_logits(pooled)
        residual = self.residual(pooled).float() * self.residual_gain
        logits = self.scale * prior + self.offset + residual
        if self.uses_feature_map:
            logits = logits + self.max_weight * features[:, self.in_features :].float()
        return logits


def build_head(
    kind: str,
    imagenet_layer: nn.Linear,
    class_names: Sequence[str],
    pretrained: bool = True,
    spatial_max: bool = False,
) -> nn.Module:
    """The 20-output head of `kind` from the network's ImageNet layer (`spatial_max`: the
    prior head's class-wise maximum over positions).

    With `pretrained=False` only the structure is built (its values come from a saved
    state dict), so `load_model` needs no ImageNet weights.
    """
    in_features, num_classes = imagenet_layer.in_features, len(class_names)
    synsets = class_synset_indices(tuple(class_names))
    if spatial_max and kind != "prior":
        raise ValueError(f"the spatial maximum belongs to the prior head, not to {kind!r}")
    if kind == "random":
        return nn.Linear(in_features, num_classes)
    if kind == "init":
        head = nn.Linear(in_features, num_classes)
        if pretrained:
            with torch.no_grad():
                for c, indices in enumerate(synsets):
                    if indices:
                        rows = list(indices)
                        head.weight[c] = imagenet_layer.weight[rows].mean(0)
                        head.bias[c] = imagenet_layer.bias[rows].mean() + INIT_BIAS_SHIFT
        return head
    if kind == "prior":
        head = PriorHead(in_features, imagenet_layer.out_features, synsets, spatial_max)
        if pretrained:
            with torch.no_grad():
                head.imagenet_weight.copy_(imagenet_layer.weight)
                head.imagenet_bias.copy_(imagenet_layer.bias)
        return head
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEAD_KINDS)}")


def describe_head(head: nn.Module, kind: str, residual_shrink: float = RESIDUAL_SHRINK) -> str:
    """One line for the provenance and the report: which head, and how many trained numbers
    (`residual_shrink`: the damping the prior head was trained with, `--residual-shrink`)."""
    trained = sum(p.numel() for p in head.parameters() if p.requires_grad)
    if isinstance(head, PriorHead):
        spatial = (
            ",\n  + a zero-started weight x the class's best cell of the feature map"
            if head.uses_feature_map
            else ""
        )
        return (
            f"prior: frozen ImageNet layer -> log-odds of its softmax mass on each class's "
            f"synsets,\n  x learned scale + offset, + a zero-started Linear({head.in_features} "
            f"-> {head.out_features}) residual damped by n/(n+{residual_shrink:g}) for n train "
            f"images{spatial}: {trained:,} trained parameters"
        )
    origin = "rows started from ImageNet synsets" if kind == "init" else "freshly initialised"
    return (
        f"{kind}: Linear({head.in_features} -> {head.out_features}), {origin}: {trained:,} "
        f"parameters (weight {head.out_features}x{head.in_features} + bias {head.out_features})"
    )

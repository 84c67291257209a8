"""Swap every Conv2d for a WSConv2d and fold the 1/n_c it introduces into the next BatchNorm.

The BatchNorm after a conv computes, in eval mode, y = α (z − μ) / sqrt(σ² + ε₂) + β with its
running mean μ and variance σ². The WSConv2d outputs ẑ = z / n_c instead of z. Two ways to
keep ŷ = y (derived, and checked in tests/test_wsconv.py):

- Mode A, running statistics:  μ̂ = μ / n_c,   σ̂² = (σ² + ε₂) / n_c² − ε₂
  then (ẑ − μ̂) / sqrt(σ̂² + ε₂) = ((z − μ)/n_c) / (sqrt(σ² + ε₂)/n_c): identical.
- Mode B, affine parameters:   α̂ = α n_c,   β̂ = β + α μ (n_c − 1) / sqrt(σ² + ε₂)
  then α̂ (z/n_c − μ)/s + β̂ = α (z − n_c μ)/s + β + α μ (n_c − 1)/s = α (z − μ)/s + β.

Which BatchNorm consumes which conv is found by running the network once with hooks, so
the converter follows the real data flow rather than guessing from module names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from wsconv.layers import WS_EPS, WSConv2d, channel_stds

MODES = ("A", "B")


class ConversionError(ValueError):
    """The network does not have the conv → BatchNorm structure the folding needs."""


def set_module_by_name(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` (e.g. 'layer1.0.downsample.0')."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child not in parent._modules:  # registered children, including ones set to None
        raise AttributeError(f"'{parent_name or type(model).__name__}' has no submodule '{child}'")
    setattr(parent, child, module)  # also right for Sequential: its children are named '0', '1'


def _example_input(model: nn.Module) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ConversionError("the model has no Conv2d to convert")
    return torch.zeros(
        1, first.in_channels, 64, 64, dtype=first.weight.dtype, device=first.weight.device
    )


def conv_bn_pairs(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) for every Conv2d, following one real forward pass.

    Raises ConversionError naming the modules if a BatchNorm2d is not fed directly by a
    conv, or a conv's output reaches no BatchNorm2d directly.
    """
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    batchnorms = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}
    unfed: list[str] = []
    handles = []

    def after_conv(name):
        def hook(_module, _inputs, output):
            produced[id(output)] = (name, output)  # keep the tensor alive: ids stay unique

        return hook

    def before_batchnorm(name):
        def hook(_module, inputs):
            source = produced.get(id(inputs[0]))
            if source is None:
                unfed.append(name)
            else:
                pairs[source[0]] = name

        return hook

    for name, module in convs.items():
        handles.append(module.register_forward_hook(after_conv(name)))
    for name, module in batchnorms.items():
        handles.append(module.register_forward_pre_hook(before_batchnorm(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input if example_input is not None else _example_input(model))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    lonely = [name for name in convs if name not in pairs]
    problems = []
    if unfed:
        problems.append(f"BatchNorm layer(s) not fed directly by a conv: {', '.join(unfed)}")
    if lonely:
        problems.append(
            f"conv layer(s) whose output reaches no BatchNorm directly: {', '.join(lonely)}"
        )
    if problems:
        raise ConversionError("cannot fold the standardisation: " + "; ".join(problems))
    return list(pairs.items())


@torch.no_grad()
def fold_into_batchnorm(batchnorm: nn.BatchNorm2d, weight_stds: torch.Tensor, mode: str) -> None:
    """Adjust `batchnorm` so that feeding it z / n_c gives what z gave before (eval mode).

    Computed in float64 from copies, and written only once every new value is known
    (`.double()` of a float64 tensor is the tensor itself, not a copy).
    """
    n = weight_stds.to(torch.float64)  # n_c: the std of each output channel's conv weights
    eps = batchnorm.eps
    mean = batchnorm.running_mean.to(torch.float64, copy=True)
    var = batchnorm.running_var.to(torch.float64, copy=True)
    if mode == "A":
        updates = [
            (batchnorm.running_mean, mean / n),
            (batchnorm.running_var, (var + eps) / n**2 - eps),
        ]
    elif mode == "B":
        if batchnorm.weight is None or batchnorm.bias is None:
            raise ConversionError("mode B needs BatchNorm layers with affine parameters")
        alpha = batchnorm.weight.to(torch.float64, copy=True)
        beta = batchnorm.bias.to(torch.float64, copy=True)
        batchnorm_std = torch.sqrt(var + eps)
        updates = [
            (batchnorm.weight, alpha * n),
            (batchnorm.bias, beta + alpha * mean * (n - 1) / batchnorm_std),
        ]
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for tensor, value in updates:
        tensor.copy_(value.to(tensor.dtype))


def convert(
    model: nn.Module,
    mode: str = "A",
    inplace: bool = False,
    example_input: torch.Tensor | None = None,
    eps: float = WS_EPS,
) -> nn.Module:
    """Every Conv2d becomes a WSConv2d, each following BatchNorm adjusted by `mode`.

    In eval mode the converted network computes the same function (up to float round-off).
    With `inplace=False` (default) the given model is left untouched.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    target = model if inplace else copy.deepcopy(model)
    for conv_name, batchnorm_name in conv_bn_pairs(target, example_input):
        conv = target.get_submodule(conv_name)
        weight_stds = channel_stds(conv.weight.detach().double(), eps)
        fold_into_batchnorm(target.get_submodule(batchnorm_name), weight_stds, mode)
        set_module_by_name(target, conv_name, WSConv2d.from_conv(conv, eps))
    return target


def variant_name(mode: str) -> str:
    """The `model_variant` a network converted with `mode` is trained and saved as."""
    return f"wsconv-{mode}"


def model_hooks() -> dict[str, Callable[[nn.Module], nn.Module]]:
    """How to rebuild each converted variant before its saved weights are loaded (a plain
    network converted in place): the hooks `training.checkpoint.load_model` takes, given to
    it by the programs above training/ that may load wsconv models."""
    return {variant_name(mode): partial(convert, mode=mode, inplace=True) for mode in MODES}

"""WSConv2d: a convolution that divides each output channel's weights by their std.

    n_c = sqrt(var(W[c, :, :, :]) + eps),   Ŵ[c] = W[c] / n_c,   ẑ = Ŵ ⋆ x = (W ⋆ x) / n_c

Only the division part of weight standardisation: the weights are not centred. The variance
is the biased one (divide by in/groups · kh · kw, like `torch.var(unbiased=False)`), and
eps = 1e-12 is added to the variance: far below any real weight variance in float32, it only
keeps an all-zero channel finite. The standardisation runs in every forward pass, so the raw
`weight` stays the trainable parameter and the state dict has the same keys as a Conv2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WS_EPS = 1e-12


def channel_stds(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """n_c for each output channel c of a conv weight (out, in/groups, kh, kw): shape (out,)."""
    variance = weight.flatten(1).var(dim=1, unbiased=False)
    return torch.sqrt(variance + eps)


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is divided by its per-output-channel std at every forward pass.

    `same_padding` reproduces TensorFlow's dynamic "SAME" padding (timm's Conv2dSame, used by
    the TF-ported EfficientNet-Lite0), so converting such a layer keeps its geometry.
    """

    def __init__(self, *args, ws_eps: float = WS_EPS, same_padding: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps
        self.same_padding = same_padding

    def standardized_weight(self) -> torch.Tensor:
        weight_stds = channel_stds(self.weight, self.ws_eps)
        return self.weight / weight_stds.view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.standardized_weight()
        if self.same_padding:
            from timm.layers.padding import pad_same

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return self._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        extra = f", ws_eps={self.ws_eps}"
        return super().extra_repr() + extra + (", same_padding=True" if self.same_padding else "")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, eps: float = WS_EPS) -> WSConv2d:
        """A WSConv2d computing exactly conv(x) / n_c: same hyperparameters and weight; a bias
        b becomes b / n_c so that the whole output, bias included, is divided by n_c."""
        same_padding = _is_tf_same_conv(conv)
        if type(conv) is not nn.Conv2d and not same_padding:
            raise TypeError(
                f"cannot standardise a {type(conv).__name__}: only nn.Conv2d and timm's "
                f"Conv2dSame are supported (their forward is known)"
            )
        ws = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=0 if same_padding else conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            ws_eps=eps,
            same_padding=same_padding,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            ws.weight.copy_(conv.weight)
            if conv.bias is not None:
                weight_stds = channel_stds(conv.weight.double(), eps)
                ws.bias.copy_((conv.bias.double() / weight_stds).to(conv.bias.dtype))
        ws.train(conv.training)
        return ws


def _is_tf_same_conv(conv: nn.Module) -> bool:
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a requirement
        return False
    return isinstance(conv, Conv2dSame)

"""Weight-standardised convolutions (the division part only) folded into BatchNorm.

`convert(model, mode)` swaps every Conv2d for a `WSConv2d` and adjusts the BatchNorm that
consumes it so the network predicts exactly as before: mode "A" through the running
statistics, mode "B" through the affine parameters. `python -m wsconv` checks this on real
ImageNet images, then trains on VOC to show which mode survives training, and why.
"""

from wsconv.convert import (
    ConversionError,
    conv_bn_pairs,
    convert,
    model_hooks,
    set_module_by_name,
    variant_name,
)
from wsconv.layers import WS_EPS, WSConv2d, channel_stds

__all__ = [
    "WS_EPS",
    "ConversionError",
    "WSConv2d",
    "channel_stds",
    "conv_bn_pairs",
    "convert",
    "model_hooks",
    "set_module_by_name",
    "variant_name",
]

"""The loss: 20 independent binary classifiers (binary cross-entropy on each logit).

    L = 1 / (sum_ic m_ic) * sum_i sum_c m_ic * [ -y_ic log s(z_ic) - (1 - y_ic) log(1 - s(z_ic)) ]

with z the logits, s the sigmoid, y the multi-hot targets and m the difficult mask (0 where
a label is ignored). Classes do not compete as in a softmax: an image may contain several.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce_terms(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-(image, class) BCE terms, zero where `mask` is 0. Computed in float32 under AMP."""
    terms = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return terms * mask


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean BCE over the (image, class) pairs that count (mask 1); the formula above."""
    return masked_bce_terms(logits, targets, mask).sum() / mask.sum().clamp_min(1.0)

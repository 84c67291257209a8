"""How the scores of several models of one ensemble become one score (pure numpy).

Used wherever an ensemble is scored: the k fold models of a cross-validated run and
`python -m predictions --model A B C`. One function, so both always average the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MEAN_PROBABILITY = "mean-probability"
MEAN_LOGIT = "mean-logit"
AVERAGING_RULES = (MEAN_PROBABILITY, MEAN_LOGIT)
DEFAULT_AVERAGING_RULE = MEAN_PROBABILITY

# Probabilities are clipped this far from 0 and 1 before the logit, so a saturated float32
# sigmoid (exactly 0.0 or 1.0) stays finite.
LOGIT_EPS = 1e-7


def combine_scores(scores: Sequence[np.ndarray], rule: str = DEFAULT_AVERAGING_RULE) -> np.ndarray:
    """One (N, C) array of probabilities from the (N, C) probabilities of several models.

    `mean-probability` averages the sigmoid outputs; `mean-logit` averages their logits and
    applies the sigmoid again (the geometric mean of the odds), which lets one confident
    model outvote several unsure ones.
    """
    if rule not in AVERAGING_RULES:
        raise ValueError(f"unknown averaging rule {rule!r}; choose one of {AVERAGING_RULES}")
    if not scores:
        raise ValueError("an ensemble needs at least one model's scores")
    arrays = [np.asarray(s, dtype=np.float64) for s in scores]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(arrays[0].shape) != 2:
        raise ValueError(f"every model must give the same (N, C) scores; got shapes {shapes}")
    stacked = np.stack(arrays)
    if rule == MEAN_PROBABILITY:
        combined = stacked.mean(axis=0)
    else:
        clipped = np.clip(stacked, LOGIT_EPS, 1.0 - LOGIT_EPS)
        mean_logit = np.log(clipped / (1.0 - clipped)).mean(axis=0)
        combined = 1.0 / (1.0 + np.exp(-mean_logit))
    return combined.astype(np.float32)

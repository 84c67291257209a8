"""The ranking of images by one class's score, shared by the report grids and the GUI."""

from __future__ import annotations

import numpy as np

# How a VOC label (1 present, 0 difficult, -1 absent) is shown beside a ranked image: one
# word and one border colour (RGB), the same in the GUI and in the report's grids.
TRUTH_WORDS = {1: "contains", 0: "difficult", -1: "absent", None: "unknown"}  # None: no labels
TRUTH_COLOURS = {1: (46, 160, 67), 0: (245, 140, 0), -1: (214, 39, 40), None: (170, 170, 170)}


def ranking_order(class_scores: np.ndarray) -> np.ndarray:
    """Row indices from highest to lowest score; ties keep file order (deterministic)."""
    class_scores = np.asarray(class_scores)
    if class_scores.ndim != 1:
        raise ValueError(f"class_scores must be 1-D, got shape {class_scores.shape}")
    return np.argsort(-class_scores, kind="stable")


def top_and_bottom(class_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest-scored rows (best first) and the k lowest-scored (lowest first)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    order = ranking_order(class_scores)
    return order[:k], order[::-1][:k]


def format_score(score: float) -> str:
    """A sigmoid score in at most 7 characters that keeps confident scores apart.

    Three decimals turn 0.99991 and 0.99979 both into "1.000"; near the ends the distance to 0
    or 1 is what matters, so it is shown instead: "1-9e-5", "3e-5".
    """
    if score >= 0.9995:
        return f"1-{1 - score:.0e}".replace("e-0", "e-") if score < 1 else "1"
    if score < 0.0005:
        return f"{score:.0e}".replace("e-0", "e-") if score > 0 else "0"
    return f"{score:.3f}"

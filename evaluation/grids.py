"""Top- and bottom-ranked validation images of a class, as annotated grids."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from evaluation.ranking import TRUTH_COLOURS, TRUTH_WORDS, format_score, top_and_bottom
from predictions import Predictions
from vocdata.images import placeholder, thumbnail_or_placeholder
from vocdata.paths import resolve_inside

log = logging.getLogger(__name__)

TILE = 160


@dataclass(frozen=True)
class GridTile:
    rank: int  # 1 = highest score
    file: str
    score: float
    label: int | None  # 1 / 0 difficult / -1; None when the file has no labels


@dataclass(frozen=True)
class ClassGrids:
    class_name: str
    top: list[GridTile]
    bottom: list[GridTile]


def class_grids(predictions: Predictions, class_name: str, k: int) -> ClassGrids:
    """Which images the grids of `class_name` show, in display order (pure: no image I/O)."""
    column = predictions.class_index(class_name)
    scores = predictions.scores[:, column]
    top, bottom = top_and_bottom(scores, k)
    n, labels = predictions.num_images, predictions.labels

    def tiles(rows: np.ndarray, ranks: list[int]) -> list[GridTile]:
        return [
            GridTile(
                rank,
                predictions.files[r],
                float(scores[r]),
                None if labels is None else int(labels[r, column]),
            )
            for r, rank in zip(rows, ranks, strict=True)
        ]

    return ClassGrids(
        class_name,
        tiles(top, list(range(1, len(top) + 1))),
        tiles(bottom, list(range(n, n - len(bottom), -1))),
    )


def load_tile(voc_root: Path, relative: str) -> np.ndarray:
    """The image as an RGB thumbnail array; a grey placeholder (logged) if it cannot be read
    or lies outside `voc_root` once links are resolved (a crafted predictions file may name
    `../../etc/passwd` through a link: it is never opened)."""
    path = resolve_inside(voc_root, relative)
    if path is None:
        log.warning(
            "grid image %s is outside the dataset root %s: drawn as a placeholder tile",
            relative,
            voc_root,
        )
        return np.asarray(placeholder((TILE, TILE), Path(relative).name, "outside the root"))
    tile, reason = thumbnail_or_placeholder(path, (TILE, TILE))
    if reason is not None:
        log.warning("grid image %s unreadable (%s): drawn as a placeholder tile", relative, reason)
    return np.asarray(tile)


def _matplotlib_colour(label: int) -> tuple[float, float, float]:
    return tuple(channel / 255 for channel in TRUTH_COLOURS[label])


def grid_figure(grids: ClassGrids, voc_root: Path, columns: int = 5) -> Figure:
    """Two annotated grids on one page: the k highest-scored and the k lowest-scored images."""
    rows_each = -(-max(len(grids.top), 1) // columns)
    figure = Figure(figsize=(8.27, 4.0 * rows_each + 0.8), layout="constrained")
    top_fig, bottom_fig = figure.subfigures(2, 1)
    for subfigure, tiles, title in (
        (top_fig, grids.top, f"'{grids.class_name}': the {len(grids.top)} highest-scored images"),
        (
            bottom_fig,
            grids.bottom,
            f"'{grids.class_name}': the {len(grids.bottom)} lowest-scored images",
        ),
    ):
        subfigure.suptitle(title, fontsize=11)
        axes = np.atleast_1d(subfigure.subplots(rows_each, columns)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, tile in zip(axes, tiles, strict=False):
            ax.imshow(load_tile(voc_root, tile.file))
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(_matplotlib_colour(tile.label))
                spine.set_linewidth(4)
            ax.set_title(
                f"#{tile.rank}  {format_score(tile.score)}\n{TRUTH_WORDS[tile.label]}",
                fontsize=8,
                color=_matplotlib_colour(tile.label),
            )
    return figure

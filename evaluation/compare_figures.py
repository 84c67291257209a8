"""The figures of a run comparison: a table page, per-class AP as grouped bars, validation
mAP per epoch overlaid, Tailacc overlaid. One colour per run, the same in every figure.

Built on matplotlib's object API (no pyplot state, no display needed).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from evaluation.compare_table import MarkedTable
from evaluation.figures import WIDE, tailacc_axes

LANDSCAPE = (11.69, 8.27)  # A4, inches
BEST_CELL_COLOUR = "#d9f2d9"
CELL_CHARACTERS = 40  # longer option values are cut in the PDF (the markdown has them whole)


def plain(text: str, limit: int | None = None) -> str:
    """`text` drawn as written: run names and option values come from files, and a `$` pair
    would start matplotlib's math mode (or fail to parse); long values are cut."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def run_colours(count: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours for `count` runs: tab10 up to 10 runs, tab20 up to 20, then repeats."""
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def table_page(table: MarkedTable, title: str, lines: Sequence[str] = ()) -> Figure:
    """A landscape page: the table (best cells bold on green), then notes and `lines` below."""
    figure = Figure(figsize=LANDSCAPE)
    figure.text(0.04, 0.96, title, fontsize=14, weight="bold", va="top")
    columns = len(table.header)
    font = 8.0 if columns <= 10 else max(5.0, 8.0 - 0.25 * (columns - 10))
    rows = len(table.cells) + 1
    row_height = min(0.045, 0.55 / rows)
    height = row_height * rows
    ax = figure.add_axes((0.03, 0.9 - height, 0.94, height))
    ax.axis("off")
    drawn = ax.table(
        cellText=[[plain(cell, CELL_CHARACTERS) for cell in row] for row in table.cells],
        colLabels=[plain(title, CELL_CHARACTERS) for title in table.header],
        cellLoc="center",
        loc="upper center",
        bbox=(0, 0, 1, 1),
    )
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(font)
    drawn.auto_set_column_width(list(range(columns)))
    for (row, column), cell in drawn.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#eeeeee")
            continue
        if (row - 1, column) in table.best:
            cell.set_text_props(weight="bold")
            cell.set_facecolor(BEST_CELL_COLOUR)
    text = [plain(textwrap.fill(note, 150)) for note in [*table.notes, "", *lines]]
    figure.text(0.04, 0.88 - height, "\n".join(text), fontsize=7.5, va="top", family="monospace")
    return figure


@dataclass(frozen=True)
class MapCurve:
    """One run's mAP per epoch. `held_out` says what the values measure when not val (a
    k-fold run's mean held-out mAP over its folds, a fold model's held-out fold), drawn
    dashed; `ensemble_val_map`: a k-fold run's ensemble on val; `marked`: the saved epoch."""

    name: str
    epochs: list[int]
    values: list[float]
    held_out: str | None = None
    marked: int | None = None
    ensemble_val_map: float | None = None


def map_curves_figure(curves: Sequence[MapCurve]) -> Figure:
    """mAP per epoch of every run on one axis; the kept epoch starred."""
    figure = Figure(figsize=WIDE, layout="constrained")
    ax = figure.subplots()
    for curve, colour in zip(curves, run_colours(len(curves)), strict=True):
        style = "s--" if curve.held_out else "o-"
        label = plain(curve.name) + (f" ({curve.held_out})" if curve.held_out else "")
        ax.plot(curve.epochs, curve.values, style, color=colour, label=label)
        if curve.marked is not None and curve.marked in curve.epochs:
            value = curve.values[curve.epochs.index(curve.marked)]
            ax.plot([curve.marked], [value], "*", markersize=16, color=colour, markeredgecolor="k")
        if curve.ensemble_val_map is not None and curve.epochs:
            ax.plot(
                [curve.epochs[-1]],
                [curve.ensemble_val_map],
                "D",
                markersize=9,
                color=colour,
                markeredgecolor="k",
                label=f"{plain(curve.name)}: ensemble of the fold models on val",
            )
    held_out = any(c.held_out is not None for c in curves)
    ax.set(
        xlabel="epoch",
        ylabel="mAP",
        title="Validation mAP per epoch (* the saved epoch)"
        + (
            "; dashed: measured on a held-out part of train, ◆ a k-fold ensemble on val"
            if held_out
            else ""
        ),
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figure


def grouped_ap_figure(
    ap_by_run: Sequence[np.ndarray], names: Sequence[str], class_names: Sequence[str]
) -> Figure:
    """Per-class AP, one bar per run in each class's group; a class without a positive in
    val (AP undefined for every run, as they share the labels) says so."""
    figure = Figure(figsize=(WIDE[0], 6.0), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(class_names))
    width = 0.8 / len(ap_by_run)
    for i, (ap, name, colour) in enumerate(
        zip(ap_by_run, names, run_colours(len(names)), strict=True)
    ):
        offset = (i - (len(ap_by_run) - 1) / 2) * width
        mean = np.nanmean(ap) if not np.isnan(ap).all() else float("nan")
        ax.bar(
            x + offset,
            np.nan_to_num(ap, nan=0.0),
            width,
            color=colour,
            label=f"{plain(name)} (mAP {mean:.4f})",
        )
    undefined = np.isnan(np.vstack(ap_by_run)).all(axis=0)
    for position in np.flatnonzero(undefined):
        ax.text(
            position, 0.02, "n/a: no positive", rotation=90, ha="center", va="bottom", fontsize=8
        )
    ax.set_xticks(x, [plain(name) for name in class_names], rotation=60, ha="right")
    ax.set(ylim=(0, 1.0), ylabel="AP", title="Average precision per class (validation)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=min(3, len(names)))
    return figure


def tailacc_overlay_figure(
    kept_share: np.ndarray,
    means: Sequence[np.ndarray],
    classes: Sequence[int],
    names: Sequence[str],
) -> Figure:
    """The mean Tailacc curve (over classes) of every run, against the share of each class's
    above-0.5 images kept (the threshold rises to the right)."""
    figure = Figure(figsize=WIDE, layout="constrained")
    ax = figure.subplots()
    share = np.asarray(kept_share) * 100
    for mean, count, name, colour in zip(
        means, classes, names, run_colours(len(names)), strict=True
    ):
        ax.plot(share, mean, "o-", color=colour, label=f"{plain(name)} ({count} classes)")
    tailacc_axes(ax, "Tailacc(t), mean over classes")
    ax.legend(fontsize=8, loc="lower left")
    return figure

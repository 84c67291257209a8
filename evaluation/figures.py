"""Report figures, built on matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from evaluation.tailacc import TailaccCurves

PAGE = (8.27, 11.69)  # A4 portrait, inches
WIDE = (11.0, 5.5)


def training_curves_figure(history: Sequence[dict[str, Any]], best_epoch: int | None) -> Figure:
    """Train/val loss per epoch (left) and validation mAP per epoch with the saved epoch marked."""
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=WIDE, layout="constrained")
    loss_ax, map_ax = figure.subplots(1, 2)
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="masked BCE loss", title="Loss per epoch")
    loss_ax.legend()
    maps = [np.nan if h["val_map"] is None else h["val_map"] for h in history]
    map_ax.plot(epochs, maps, "o-", color="tab:green")
    if best_epoch is not None and best_epoch in epochs:
        best = maps[epochs.index(best_epoch)]
        map_ax.plot(
            [best_epoch],
            [best],
            "*",
            markersize=18,
            color="tab:red",
            label=f"saved: epoch {best_epoch}, mAP {best:.4f}",
        )
        map_ax.legend(loc="lower right")
    classes = history[-1].get("val_map_classes") if history else None
    map_ax.set(
        xlabel="epoch",
        ylabel="validation mAP",
        title=f"Validation mAP per epoch ({classes} classes)"
        if classes
        else "Validation mAP per epoch",
    )
    for ax in (loss_ax, map_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return figure


def per_class_ap_figure(
    ap: np.ndarray,
    class_names: Sequence[str],
    mean_ap: float,
    title: str = "Average precision per class (validation)",
) -> Figure:
    """Bar per class with the mAP as a line; classes without a defined AP say so."""
    figure = Figure(figsize=WIDE, layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(class_names))
    heights = np.nan_to_num(ap, nan=0.0)
    bars = ax.bar(x, heights, color="tab:blue")
    for position, value, bar in zip(x, ap, bars, strict=True):
        if np.isnan(value):
            bar.set_color("lightgray")
            ax.text(
                position,
                0.02,
                "n/a: no positive",
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=8,
            )
        else:
            ax.text(position, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(mean_ap, color="tab:red", linestyle="--", label=f"mAP = {mean_ap:.4f}")
    ax.set_xticks(x, class_names, rotation=60, ha="right")
    ax.set(ylim=(0, 1.08), ylabel="AP", title=title)
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return figure


def tailacc_figure(curves: TailaccCurves, class_names: Sequence[str]) -> Figure:
    """Tailacc per class (thin) and averaged over classes (thick), against the share kept."""
    figure = Figure(figsize=WIDE, layout="constrained")
    ax = figure.subplots()
    share = curves.kept_share * 100
    palette = colormaps["tab20"]  # 20 distinct colours for the 20 classes
    colours = [palette(i % palette.N) for i in range(len(class_names))]
    for row, name, colour in zip(curves.tailacc, class_names, colours, strict=True):
        if not np.isnan(row).all():
            ax.plot(share, row, "-", linewidth=0.8, alpha=0.6, color=colour, label=name)
    ax.plot(
        share,
        curves.mean,
        "o-",
        linewidth=3,
        color="black",
        label=f"mean over classes ({int(curves.classes_in_mean.max(initial=0))})",
    )
    if np.isnan(curves.mean).all():
        ax.text(
            0.5,
            0.5,
            "Tailacc is undefined: no image is scored above 0.5 for any class",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=11,
        )
    tailacc_axes(ax, "Tailacc(t)")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return figure


def tailacc_axes(ax: Axes, ylabel: str) -> None:
    """The axes every Tailacc figure shares (one run's, the comparison's): the share of a
    class's above-0.5 images kept on x, decreasing, so the threshold rises to the right."""
    ax.invert_xaxis()
    ax.set(
        xlabel="share of the class's images scored above 0.5 that are kept (%)  "
        "(threshold t rises to the right)",
        ylabel=ylabel,
        title="Tailacc: accuracy on the most confident images",
        ylim=(-0.02, 1.02),
    )
    ax.grid(alpha=0.3)


def table_figure(
    header: Sequence[str], rows: Sequence[Sequence[str]], title: str, note: str = ""
) -> Figure:
    """A table rendered as a page (for the PDF)."""
    figure = Figure(figsize=PAGE, layout="constrained")
    ax = figure.subplots()
    ax.axis("off")
    ax.set_title(title, fontsize=13, loc="left")
    table = ax.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    table.scale(1.0, 1.25)
    if note:
        figure.text(0.05, 0.03, textwrap.fill(note, 110), fontsize=8, va="bottom")
    return figure


def text_page(title: str, blocks: Sequence[tuple[str, str]]) -> Figure:
    """A page of text: (heading, body) blocks; bodies are shown in a monospace font."""
    figure = Figure(figsize=PAGE)
    y = 0.96
    figure.text(0.06, y, title, fontsize=15, weight="bold", va="top")
    y -= 0.045
    for heading, body in blocks:
        figure.text(0.06, y, heading, fontsize=10.5, weight="bold", va="top")
        y -= 0.022
        lines = body.splitlines() or [""]
        figure.text(0.07, y, "\n".join(lines), fontsize=7.2, family="monospace", va="top")
        y -= 0.0125 * len(lines) + 0.02
    return figure

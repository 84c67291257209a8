"""The report's view of a cross-validated run (`main_train.py --folds K`).

Such a run's predictions file holds the ensemble's val scores; its provenance lists each fold
model's chosen epoch and held-out mAP, and `history.json` holds every fold's epochs (records
marked with "fold", their `val_*` measured on that fold's held-out part of train). This
module turns those into the fold-curves figure and the cross-validation text, reading only
what the run wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from evaluation.figures import WIDE
from evaluation.tables import markdown_table


def is_cross_validated(provenance: dict[str, Any]) -> bool:
    """True for the ensemble predictions of a `--folds K` run (K >= 2)."""
    return int(provenance.get("folds") or 1) > 1


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.4f}"


def cross_validation_summary(provenance: dict[str, Any]) -> dict[str, Any]:
    """The cross-validation numbers of the provenance (for summary.json)."""
    keys = (
        "folds",
        "averaging_rule",
        "fold_epochs",
        "fold_heldout_map",
        "fold_val_map_alone",
        "cv_map_mean",
        "cv_map_std",
        "ensemble_val_map",
        "fold_models",
    )
    return {key: provenance.get(key) for key in keys}


def estimate_line(provenance: dict[str, Any]) -> str:
    """One line: the cross-validated estimate and the ensemble's val mAP."""
    return (
        f"CV estimate (held-out mAP, mean ± std over {provenance['folds']} folds) "
        f"{_fmt(provenance.get('cv_map_mean'))} ± {_fmt(provenance.get('cv_map_std'))}; "
        f"ensemble of the {provenance['folds']} fold models on val: mAP "
        f"{_fmt(provenance.get('ensemble_val_map'))}"
    )


def run_lines(provenance: dict[str, Any]) -> str:
    """What the report's "Run" block says about the saved models of a fold run."""
    count = provenance["folds"]
    return (
        f"saved models folds/<k>/model_best.pt, k = 1..{count}, averaged by "
        f"{provenance.get('averaging_rule')};\n"
        f"             each one's epoch chosen on its own held-out fold, never on val\n"
        f"CV estimate  held-out mAP {_fmt(provenance.get('cv_map_mean'))} ± "
        f"{_fmt(provenance.get('cv_map_std'))} (mean ± std over the {count} folds)\n"
        f"ensemble     val mAP {_fmt(provenance.get('ensemble_val_map'))} (the {count} fold "
        f"models averaged; val was used for no choice)"
    )


def fold_rows(provenance: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per fold: chosen epoch, held-out mAP, and the fold model alone on val (never used)."""
    header = ["fold", "chosen epoch", "held-out mAP", "alone on val"]
    alone = provenance.get("fold_val_map_alone") or [None] * provenance["folds"]
    rows = [
        [str(k), str(epoch), _fmt(heldout), _fmt(val)]
        for k, (epoch, heldout, val) in enumerate(
            zip(provenance["fold_epochs"], provenance["fold_heldout_map"], alone, strict=True), 1
        )
    ]
    return header, rows


def markdown_section(provenance: dict[str, Any]) -> str:
    """The report.md section of a fold run."""
    header, rows = fold_rows(provenance)
    return (
        "## Cross-validation\n\n"
        + markdown_table(header, rows)
        + f"\n\n{estimate_line(provenance)}. The val split was used for no choice: its mAP is "
        "an honest test score; the CV estimate is the one computed inside the train split.\n"
    )


def fold_curves_figure(history: Sequence[dict[str, Any]], provenance: dict[str, Any]) -> Figure:
    """Loss (left) and held-out mAP (right) per epoch, one colour per fold, chosen epochs
    starred; the title gives the CV estimate and the ensemble's val mAP."""
    figure = Figure(figsize=WIDE, layout="constrained")
    loss_ax, map_ax = figure.subplots(1, 2)
    palette = colormaps["tab10"]
    folds = sorted({int(h["fold"]) for h in history})
    chosen = dict(zip(range(1, len(folds) + 1), provenance.get("fold_epochs") or [], strict=False))
    for fold in folds:
        colour = palette((fold - 1) % palette.N)
        curve = [h for h in history if h["fold"] == fold]
        epochs = [h["epoch"] for h in curve]
        loss_ax.plot(epochs, [h["train_loss"] for h in curve], "--", color=colour, alpha=0.6)
        loss_ax.plot(epochs, [h["val_loss"] for h in curve], "o-", color=colour, label=f"{fold}")
        maps = [np.nan if h["val_map"] is None else h["val_map"] for h in curve]
        map_ax.plot(epochs, maps, "o-", color=colour)
        if chosen.get(fold) in epochs:
            best = maps[epochs.index(chosen[fold])]
            map_ax.plot(
                [chosen[fold]],
                [best],
                "*",
                markersize=16,
                color=colour,
                markeredgecolor="black",
                label=f"fold {fold}: epoch {chosen[fold]}, {best:.4f}",
            )
    loss_ax.set(
        xlabel="epoch",
        ylabel="masked BCE loss",
        title="Loss per epoch: held-out fold (solid), train (dashed)",
    )
    loss_ax.legend(title="fold", fontsize=8)
    map_ax.set(xlabel="epoch", ylabel="held-out mAP", title="Held-out mAP per fold (* chosen)")
    map_ax.legend(loc="lower right", fontsize=8)
    for ax in (loss_ax, map_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(estimate_line(provenance), fontsize=9)
    return figure

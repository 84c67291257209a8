"""The report of a predictions file without labels (photos scored by `python -m predictions
--images`): how the scores are distributed and which images rank top and bottom per class.

AP, mAP, accuracy and Tailacc compare scores with the truth; without labels there is none, so
they are not computed (no NaN tables) and the report says so in its first lines.
"""

from __future__ import annotations

import json
import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from evaluation.figures import PAGE, text_page
from evaluation.grids import class_grids, grid_figure
from predictions import Predictions, voc_root_of
from vocdata.atomic import atomic_write
from vocdata.paths import project_relative

log = logging.getLogger(__name__)

HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)


def no_labels_statement(predictions: Predictions) -> str:
    """The sentence a reader sees first: what this report can and cannot say."""
    return (
        f"These {predictions.num_images:,} images have no labels. Average precision, mAP, "
        f"accuracy and Tailacc need the true labels, so they are not computed here. The "
        f"figures show how the scores are distributed per class and which images the model "
        f"ranks highest and lowest; to measure the model, score a labelled VOC-layout split "
        f"(python -m predictions --voc-root ROOT --split SPLIT)."
    )


@dataclass
class UnlabelledSummary:
    """The headline facts of an unlabelled report, also written to summary.json."""

    labelled: bool
    images: int
    statement: str
    above_half: dict[str, int]  # per class: images scored above 0.5
    grid_classes: list[str]
    files: list[str] = field(default_factory=list)


def pick_unlabelled_grid_classes(
    predictions: Predictions, requested: list[str] | None, count: int
) -> list[str]:
    """The requested classes, else the `count` classes the model finds in the most images
    (scores above 0.5; ties in class order): the rankings most worth a look."""
    if requested:
        for name in requested:
            predictions.class_index(name)  # raises with the known names
        return list(requested)
    found = (predictions.scores > 0.5).sum(axis=0)
    order = np.argsort(-found, kind="stable")[:count]
    return [predictions.class_names[c] for c in sorted(order)]


def score_histograms_figure(predictions: Predictions) -> Figure:
    """One small histogram of the scores per class (log counts, so the few high scores show)."""
    columns = 4
    rows = -(-predictions.num_classes // columns)
    figure = Figure(figsize=PAGE, layout="constrained")
    figure.suptitle(
        f"Score distribution per class ({predictions.num_images:,} unlabelled images)",
        fontsize=12,
    )
    axes = np.atleast_1d(figure.subplots(rows, columns, sharex=True, sharey=True)).ravel()
    for ax in axes[predictions.num_classes :]:
        ax.axis("off")
    for c, (ax, name) in enumerate(zip(axes, predictions.class_names, strict=False)):
        scores = predictions.scores[:, c]
        ax.hist(scores, bins=HISTOGRAM_BINS, color="tab:blue", log=True)
        ax.axvline(0.5, color="tab:red", linewidth=0.8)
        ax.set_title(f"{name}: {int((scores > 0.5).sum())} > 0.5", fontsize=8)
        ax.tick_params(labelsize=7)
    return figure


def write_unlabelled_report(
    predictions: Predictions,
    out_dir: Path,
    *,
    source: Path,
    voc_root: str | None = None,
    classes: list[str] | None = None,
    k: int = 10,
) -> UnlabelledSummary:
    """Score histograms and top/bottom grids as PNG + PDF, report.md, report.pdf, grids.json
    and summary.json in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    statement = no_labels_statement(predictions)
    log.warning("%s", statement)
    grid_classes = pick_unlabelled_grid_classes(predictions, classes, 3)
    grids = [class_grids(predictions, name, k) for name in grid_classes]
    root = voc_root_of(predictions, voc_root)
    figures = [("score_histograms", score_histograms_figure(predictions))]
    figures += [(f"grid_{g.class_name}", grid_figure(g, root)) for g in grids]
    written: list[str] = []
    for stem, figure in figures:
        for suffix in (".png", ".pdf"):
            with atomic_write(out_dir / f"{stem}{suffix}") as tmp:
                figure.savefig(tmp, format=suffix[1:], dpi=130)
            written.append(f"{stem}{suffix}")

    grids_data = {
        g.class_name: {"top": [t.__dict__ for t in g.top], "bottom": [t.__dict__ for t in g.bottom]}
        for g in grids
    }
    _write_text(out_dir / "grids.json", json.dumps(grids_data, indent=2) + "\n", written)
    prov = predictions.provenance
    models = prov.get("models") or [{"path": prov.get("run"), "arch": prov.get("arch")}]
    about = (
        f"predictions  {project_relative(source)}\n"
        f"images       {predictions.num_images:,} under {project_relative(root)}"
        f" ({prov.get('skipped_count', 0)} file(s) skipped when scoring)\n"
        f"models       {', '.join(str(m.get('path')) for m in models)}\n"
        f"averaging    {prov.get('ensemble_rule') or 'single model'}; TTA {prov.get('tta', 'none')}"
        f"\ncreated      {prov.get('created')}"
    )
    blocks = [("No labels", textwrap.fill(statement, 100)), ("What was scored", about)]
    markdown = [f"# Report: {source.stem} (unlabelled)\n", f"**{statement}**\n"]
    markdown.append(f"```\n{about}\n```\n")
    markdown.append("## Score distribution\n\n![score histograms](score_histograms.png)\n")
    for stem, _ in figures[1:]:
        markdown.append(f"## Ranked images: {stem[5:]}\n\n![{stem}]({stem}.png)\n")
    _write_text(out_dir / "report.md", "\n".join(markdown), written)
    with atomic_write(out_dir / "report.pdf") as tmp, PdfPages(tmp) as pdf:
        pdf.savefig(text_page("Report (unlabelled images)", blocks))
        for _, figure in figures:
            pdf.savefig(figure)
    written.append("report.pdf")

    summary = UnlabelledSummary(
        labelled=False,
        images=predictions.num_images,
        statement=statement,
        above_half={
            name: int((predictions.scores[:, c] > 0.5).sum())
            for c, name in enumerate(predictions.class_names)
        },
        grid_classes=grid_classes,
        files=[*written, "summary.json"],
    )
    _write_text(out_dir / "summary.json", json.dumps(summary.__dict__, indent=2) + "\n", [])
    return summary


def _write_text(path: Path, text: str, written: list[str]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    written.append(path.name)

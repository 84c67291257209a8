"""The report of a predictions file without labels (photos scored by `python -m predictions
--images`): how the scores are distributed and which images rank top and bottom per class.

AP, mAP, accuracy and Tailacc compare scores with the truth; without labels there is none, so
they are not computed (no NaN tables) and the report says so in its first lines.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from evaluation.figures import PAGE, text_page
from evaluation.grids import class_grids, grid_figure
from evaluation.report import save_figure, write_grids_json
from predictions import Predictions, image_root_of
from vocdata.atomic import atomic_write
from vocdata.jsonio import write_json
from vocdata.paths import child_path, project_relative

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


def nothing_found_statement(predictions: Predictions) -> str | None:
    """What to say when no image is scored above 0.5 for any class; None otherwise."""
    if (predictions.scores > 0.5).any():
        return None
    return (
        "No image is scored above 0.5 for any class: the model finds none of its classes in "
        "these images (or they are unlike what it was trained on). The rankings below still "
        "order the images by score, but even the top ones are below the decision threshold."
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
    image_root = image_root_of(predictions, voc_root)
    if image_root.named_by_file:
        log.warning("grid %s: pass --voc-root to read them from elsewhere", image_root.note)
    figures = [("score_histograms", score_histograms_figure(predictions))]
    figures += [(f"grid_{g.class_name}", grid_figure(g, image_root.path)) for g in grids]
    written: list[str] = []
    for stem, figure in figures:
        save_figure(figure, out_dir, stem, written)

    write_grids_json(child_path(out_dir, "grids.json"), grids, written)
    prov = predictions.provenance
    models = prov.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        models = [{"path": prov.get("run"), "arch": prov.get("arch")}]
    nothing_found = nothing_found_statement(predictions)
    about = (
        f"predictions  {project_relative(source)}\n"
        f"images       {predictions.num_images:,}: {image_root.note}"
        f" ({prov.get('skipped_count', 0)} file(s) skipped when scoring)\n"
        f"models       {', '.join(str(m.get('path')) for m in models)}\n"
        f"averaging    {prov.get('ensemble_rule') or 'single model'}; TTA {prov.get('tta', 'none')}"
        f"\ncreated      {prov.get('created')}"
    )
    blocks = [("No labels", textwrap.fill(statement, 100)), ("What was scored", about)]
    markdown = [f"# Report: {source.stem} (unlabelled)\n", f"**{statement}**\n"]
    markdown.append(f"```\n{about}\n```\n")
    if nothing_found:
        log.warning("%s", nothing_found)
        blocks.append(("Nothing above 0.5", textwrap.fill(nothing_found, 100)))
        markdown.append(f"{nothing_found}\n")
    markdown.append("## Score distribution\n\n![score histograms](score_histograms.png)\n")
    for stem, _ in figures[1:]:
        markdown.append(f"## Ranked images: {stem[5:]}\n\n![{stem}]({stem}.png)\n")
    _write_text(child_path(out_dir, "report.md"), "\n".join(markdown), written)
    with atomic_write(child_path(out_dir, "report.pdf")) as tmp, PdfPages(tmp) as pdf:
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
    write_json(child_path(out_dir, "summary.json"), summary.__dict__)
    return summary


def _write_text(path: Path, text: str, written: list[str]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    written.append(path.name)

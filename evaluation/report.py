"""The evaluation report of one run: numbers, figures (PNG + PDF), report.md and report.pdf.

Reads only the run folder (predictions file, history.json, config.json) and the images of
the grids; everything it needs to know about training was written there by the trainer.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from evaluation.figures import (
    per_class_ap_figure,
    table_figure,
    tailacc_figure,
    text_page,
    training_curves_figure,
)
from evaluation.grids import ClassGrids, class_grids, grid_figure
from evaluation.metrics import (
    UndefinedAPWarning,
    mean_average_precision,
    per_class_average_precision,
    threshold_metrics,
)
from evaluation.tailacc import tailacc_curves
from predictions import PREDICTIONS_FILENAME, Predictions, images_root, load_predictions
from vocdata.files import PROJECT_ROOT, atomic_write, project_relative

log = logging.getLogger(__name__)

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_map")


class ReportInputError(ValueError):
    """The run folder lacks something the report needs; the message names it."""


@dataclass
class ReportInputs:
    run_dir: Path
    predictions: Predictions
    history: list[dict[str, Any]]
    config: dict[str, Any] | None


def load_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.json"
    if not path.is_file():
        raise ReportInputError(
            f"{path} not found: the loss and mAP curves need the training history that "
            f"main_train.py writes after every epoch. Is {run_dir} a run folder?"
        )
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportInputError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(history, list) or not history:
        raise ReportInputError(f"{path} holds no epochs")
    for record in history:
        missing = [key for key in HISTORY_KEYS if key not in record]
        if missing:
            raise ReportInputError(f"{path}: an epoch record lacks {', '.join(missing)}")
    return history


def load_inputs(run_dir: Path, predictions_path: Path | None = None) -> ReportInputs:
    predictions = load_predictions(predictions_path or run_dir / PREDICTIONS_FILENAME)
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    if config is None:
        log.warning("%s not found: the report will not list the hyperparameters", config_path)
    return ReportInputs(run_dir, predictions, load_history(run_dir), config)


@dataclass
class ReportSummary:
    """The headline numbers, also written to summary.json."""

    map_sklearn: float
    map_voc: float
    classes_in_map: int
    undefined_classes: list[str]
    tailacc_mean_first: float  # at t = 0.5 (all images scored above 0.5)
    tailacc_mean_last: float  # at the highest threshold (the most confident share)
    tailacc_classes: int
    grid_classes: list[str]
    files: list[str] = field(default_factory=list)


def pick_grid_classes(
    predictions: Predictions, requested: list[str] | None, count: int, seed: int
) -> list[str]:
    """The requested classes, else `count` classes with a positive, drawn with a fixed seed."""
    if requested:
        for name in requested:
            predictions.class_index(name)  # raises with the known names
        return list(requested)
    candidates = [
        name
        for c, name in enumerate(predictions.class_names)
        if (predictions.labels[:, c] == 1).any()
    ]
    chosen = np.random.default_rng(seed).choice(
        len(candidates), size=min(count, len(candidates)), replace=False
    )
    return [candidates[i] for i in sorted(chosen)]


def _loss_code_lines() -> str:
    """The lines of training/loss.py that compute the loss, quoted verbatim (read as text)."""
    path = PROJECT_ROOT / "training" / "loss.py"
    if not path.is_file():
        return "(training/loss.py not found)"
    wanted = ("binary_cross_entropy_with_logits(", "return terms * mask", "clamp_min(")
    return "\n".join(
        line.strip()
        for line in path.read_text().splitlines()
        if any(w in line for w in wanted) and "import" not in line
    )


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _metrics_table(
    predictions: Predictions, ap: np.ndarray, ap_voc: np.ndarray, difficult: str
) -> tuple[list[str], list[list[str]]]:
    at_half = threshold_metrics(predictions.scores, predictions.labels, 0.5, difficult)
    header = [
        "class",
        "pos",
        "AP",
        "AP (VOC)",
        "diff",
        "acc@0.5",
        "all-neg acc",
        "prec",
        "recall",
        "F1",
    ]
    rows = []
    for c, name in enumerate(predictions.class_names):
        rows.append(
            [
                name,
                str(int(at_half.positives[c])),
                _fmt(ap[c]),
                _fmt(ap_voc[c]),
                _fmt(ap_voc[c] - ap[c]),
                _fmt(at_half.accuracy[c], 3),
                _fmt(at_half.all_negative_accuracy[c], 3),
                _fmt(at_half.precision[c], 3),
                _fmt(at_half.recall[c], 3),
                _fmt(at_half.f1[c], 3),
            ]
        )
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _save_figure(figure: Figure, out_dir: Path, stem: str, written: list[str]) -> None:
    for suffix in (".png", ".pdf"):
        with atomic_write(out_dir / f"{stem}{suffix}") as tmp:
            figure.savefig(tmp, format=suffix[1:], dpi=130)
        written.append(f"{stem}{suffix}")


def write_report(
    inputs: ReportInputs,
    out_dir: Path,
    *,
    voc_root: str | None = None,
    classes: list[str] | None = None,
    k: int = 10,
    num_thresholds: int = 15,
    seed: int = 0,
    difficult: str | None = None,
) -> ReportSummary:
    """Compute everything and write figures, grids.json, summary.json, report.md, report.pdf."""
    preds, history = inputs.predictions, inputs.history
    difficult = difficult or preds.provenance.get("difficult", "ignore")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedAPWarning)
        ap = per_class_average_precision(preds.scores, preds.labels, preds.class_names, difficult)
    for warning in caught:
        log.warning("%s", warning.message)
    with warnings.catch_warnings():  # the same classes were just named for the first variant
        warnings.simplefilter("ignore", UndefinedAPWarning)
        ap_voc = per_class_average_precision(
            preds.scores, preds.labels, preds.class_names, difficult, variant="voc"
        )
    map_sklearn, map_voc = mean_average_precision(ap), mean_average_precision(ap_voc)
    curves = tailacc_curves(
        preds.scores, preds.labels, preds.class_names, num_thresholds, difficult
    )
    grid_classes = pick_grid_classes(preds, classes, 3, seed)
    grids = [class_grids(preds, name, k) for name in grid_classes]
    grid_images_root = images_root(preds, voc_root)
    best_epoch = preds.provenance.get("epoch")

    figures: list[tuple[str, Figure]] = [
        ("curves", training_curves_figure(history, best_epoch)),
        ("per_class_ap", per_class_ap_figure(ap, preds.class_names, map_sklearn.value)),
    ]
    header, rows = _metrics_table(preds, ap, ap_voc, difficult)
    figures.append(
        (
            "accuracy_vs_ap",
            table_figure(
                header,
                rows,
                "Accuracy at 0.5 versus average precision (validation)",
                note=f"mAP {map_sklearn.value:.4f} (scikit-learn, non-interpolated) vs "
                f"{map_voc.value:.4f} (VOC2012 devkit, interpolated) over "
                f"{map_sklearn.num_classes} classes. 'all-neg acc' is the accuracy of answering "
                f"'absent' for every image: accuracy is high for every class and says little.",
            ),
        )
    )
    figures.append(("tailacc", tailacc_figure(curves, preds.class_names)))
    figures += [(f"grid_{g.class_name}", grid_figure(g, grid_images_root)) for g in grids]
    for stem, figure in figures:
        _save_figure(figure, out_dir, stem, written)

    summary = ReportSummary(
        map_sklearn=map_sklearn.value,
        map_voc=map_voc.value,
        classes_in_map=map_sklearn.num_classes,
        undefined_classes=[n for n, v in zip(preds.class_names, ap, strict=True) if np.isnan(v)],
        tailacc_mean_first=float(curves.mean[0]),
        tailacc_mean_last=float(curves.mean[-1]),
        tailacc_classes=int(curves.classes_in_mean[0]),
        grid_classes=grid_classes,
    )
    _write_grids_json(out_dir / "grids.json", grids, written)
    text_blocks = _text_blocks(inputs, summary, difficult, grid_images_root, k, num_thresholds)
    _write_markdown(
        out_dir / "report.md", inputs, summary, text_blocks, header, rows, figures, written
    )
    _write_pdf(out_dir / "report.pdf", text_blocks, figures, written)
    summary.files = [*written, "summary.json"]
    with atomic_write(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary.__dict__, indent=2) + "\n")
    return summary


def _write_grids_json(path: Path, grids: list[ClassGrids], written: list[str]) -> None:
    data = {
        g.class_name: {"top": [t.__dict__ for t in g.top], "bottom": [t.__dict__ for t in g.bottom]}
        for g in grids
    }
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    written.append(path.name)


def _tailacc_sentences(summary: ReportSummary, num_thresholds: int) -> str:
    return (
        f"Averaged over the {summary.tailacc_classes} classes that have images scored above "
        f"0.5, Tailacc is {summary.tailacc_mean_first:.3f} at t = 0.5 and "
        f"{summary.tailacc_mean_last:.3f} at the highest threshold, where only the most "
        f"confident 1/{num_thresholds} of those images remain. The higher the score, the more "
        f"often the classifier is right: the top of each ranking is far more reliable than the "
        f"average precision over the whole ranking suggests."
    )


def _text_blocks(
    inputs: ReportInputs,
    summary: ReportSummary,
    difficult: str,
    grid_images_root: Path,
    k: int,
    num_thresholds: int,
) -> list[tuple[str, str]]:
    preds, config = inputs.predictions, inputs.config or {}
    prov = preds.provenance
    positives = (preds.labels == 1).sum(axis=0)
    difficult_counts = (preds.labels == 0).sum(axis=0)
    train_positives = prov.get("train_positives", {})
    counts = "\n".join(
        f"{name:<12} {train_positives.get(name, '?'):>5} / {int(p):>4} positive  "
        f"{int(d):>4} difficult (val)"
        for name, p, d in zip(preds.class_names, positives, difficult_counts, strict=True)
    )
    train_count = prov.get("train_images", "see train.log")
    head = prov.get("head", "see the checkpoint")
    hyper = "\n".join(f"{key:<16} {value}" for key, value in sorted(config.items())) or (
        "(config.json not found)"
    )
    return [
        (
            "Run",
            f"run folder   {project_relative(inputs.run_dir)}\n"
            f"created      {prov.get('created')}\n"
            f"model        {prov.get('arch')} ({prov.get('model_variant', 'plain')}), "
            f"weights {prov.get('weights')}\n"
            f"saved epoch  {prov.get('epoch')} (best validation mAP during training: "
            f"{_fmt(prov.get('val_map'))})",
        ),
        (
            "Data",
            f"Pascal VOC 2012, official split: {train_count} train images, "
            f"{preds.num_images} val images (one sample per image).\n"
            f"dataset root {project_relative(grid_images_root)}; difficult mode '{difficult}'\n"
            f"per class: train / val images that contain it, and val images where it is only "
            f"difficult\n"
            f"{counts}",
        ),
        (
            "Model: the last layer",
            f"{head}; one logit per class, read through a sigmoid.\n"
            f"head {prov.get('head_kind', 'random')}, test-time augmentation "
            f"{prov.get('tta', 'none')}, backbone "
            f"{'frozen' if prov.get('freeze_backbone') else 'fine-tuned'}",
        ),
        (
            "Loss: 20 independent binary classifiers",
            "L = 1/(sum_ic m_ic) * sum_i sum_c m_ic\n"
            "    * [ -y_ic log s(z_ic) - (1 - y_ic) log(1 - s(z_ic)) ]\n"
            "z logits, s sigmoid, y targets, m mask (0 for ignored difficult labels).\n"
            "Code (training/loss.py):\n" + _loss_code_lines(),
        ),
        ("Hyperparameters and seed (config.json)", hyper),
        (
            "Results",
            f"mAP {summary.map_sklearn:.4f} (scikit-learn AP, non-interpolated) and "
            f"{summary.map_voc:.4f} (VOC2012 devkit, interpolated)\nover "
            f"{summary.classes_in_map} classes"
            + (
                f"; undefined (no positive): {', '.join(summary.undefined_classes)}"
                if summary.undefined_classes
                else ""
            ),
        ),
        ("Tailacc", _wrap(_tailacc_sentences(summary, num_thresholds))),
        (
            "Image grids",
            f"top-{k} and bottom-{k} validation images for {', '.join(summary.grid_classes)}",
        ),
        ("Package requirements (requirements.txt)", _requirements()),
    ]


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _requirements() -> str:
    path = PROJECT_ROOT / "requirements.txt"
    return path.read_text().strip() if path.is_file() else "(requirements.txt not found)"


def _write_markdown(
    path: Path,
    inputs: ReportInputs,
    summary: ReportSummary,
    blocks: list[tuple[str, str]],
    header: list[str],
    rows: list[list[str]],
    figures: list[tuple[str, Figure]],
    written: list[str],
) -> None:
    parts = [f"# Evaluation report: {inputs.run_dir.name}\n"]
    for heading, body in blocks[:-1]:
        parts.append(f"## {heading}\n\n```\n{body}\n```\n")
    parts.append("## Curves\n\n![loss and mAP per epoch](curves.png)\n")
    parts.append("## Per-class average precision\n\n![per-class AP](per_class_ap.png)\n")
    parts.append("## Accuracy versus AP\n\n" + _markdown_table(header, rows) + "\n")
    tailacc_text = dict(blocks)["Tailacc"].replace("\n", " ")
    parts.append(f"## Tailacc\n\n![Tailacc](tailacc.png)\n\n{tailacc_text}\n")
    for stem, _ in figures:
        if stem.startswith("grid_"):
            parts.append(f"## Ranked images: {stem[5:]}\n\n![{stem}]({stem}.png)\n")
    heading, body = blocks[-1]
    parts.append(f"## {heading}\n\n```\n{body}\n```\n")
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(parts))
    written.append(path.name)


def _write_pdf(
    path: Path, blocks: list[tuple[str, str]], figures: list[tuple[str, Figure]], written: list[str]
) -> None:
    first, second = blocks[:4], blocks[4:]
    pages = [text_page("Evaluation report", first), text_page("Evaluation report (cont.)", second)]
    pages += [figure for _, figure in figures]
    with atomic_write(path) as tmp, PdfPages(tmp) as pdf:
        for page in pages:
            pdf.savefig(page)
    written.append(path.name)

"""The evaluation report of one run: numbers, figures (PNG + PDF), report.md and report.pdf.

Reads only the run folder (predictions file, history.json, config.json) and the images of
the grids; everything it needs to know about training was written there by the trainer.
Every one of those files may be damaged or crafted: each is checked before it is used (a
JSON file that does not load, a value of the wrong type, a class name that is not a plain
name: one line naming the file), and every file name the report writes is checked to stay
in its folder.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from evaluation import crossval
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
from evaluation.tables import markdown_table
from evaluation.tailacc import tailacc_curves
from predictions import (
    PREDICTIONS_FILENAME,
    ImageRoot,
    Predictions,
    image_root_of,
    load_predictions,
)
from predictions.runs import CONFIG_FILENAME, HISTORY_FILENAME, RUN_PROVENANCE_FILENAME
from vocdata.atomic import atomic_write
from vocdata.jsonio import JsonFileError, read_json, write_json
from vocdata.paths import child_path, project_relative
from vocdata.splits import DifficultMode

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
    produced_by: dict[str, Any] | None = None  # the run's provenance.json (older runs: None)


def _is_number(value: Any, none_ok: bool = True) -> bool:
    if value is None:
        return none_ok
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def load_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / HISTORY_FILENAME
    if not path.is_file():
        raise ReportInputError(
            f"{path} not found: the loss and mAP curves need the training history that "
            f"main_train.py writes after every epoch. Is {run_dir} a run folder?"
        )
    try:
        history = read_json(path, "a run's history.json", list)
    except JsonFileError as error:
        raise ReportInputError(f"{error}: restore it from a backup or train again") from None
    if not history:
        raise ReportInputError(f"{path} holds no epochs")
    for record in history:
        if not isinstance(record, dict):
            raise ReportInputError(f"{path}: an epoch record is not a JSON object")
        missing = [key for key in HISTORY_KEYS if key not in record]
        if missing:
            raise ReportInputError(f"{path}: an epoch record lacks {', '.join(missing)}")
        if not isinstance(record["epoch"], int) or not all(
            _is_number(record[key]) for key in HISTORY_KEYS[1:]
        ):
            raise ReportInputError(
                f"{path}: an epoch record holds something other than numbers "
                f"({', '.join(HISTORY_KEYS)}): restore it from a backup or train again"
            )
    return history


def check_provenance(path: Path, provenance: dict[str, Any]) -> None:
    """The provenance values the report computes with have the types it expects (a crafted
    or damaged file is one line naming it, not a traceback in the middle of a figure)."""

    def refuse(key: str, expected: str) -> ReportInputError:
        value = repr(provenance.get(key))[:60]
        return ReportInputError(
            f"{path}: its provenance holds {key} = {value}, expected {expected}: restore the "
            f"file or score again with python -m predictions"
        )

    for key in ("val_map", "cv_map_mean", "cv_map_std", "ensemble_val_map"):
        if not _is_number(provenance.get(key)):
            raise refuse(key, "a number")
    difficult = provenance.get("difficult", "ignore")
    if difficult not in {mode.value for mode in DifficultMode}:
        raise refuse("difficult", "ignore, positive or negative")
    if not isinstance(provenance.get("train_positives", {}), dict):
        raise refuse("train_positives", "a JSON object")
    _check_label_fixes(path, provenance)
    folds = provenance.get("folds")
    if folds is None:
        return
    if not isinstance(folds, int) or isinstance(folds, bool) or not 1 <= folds <= 100:
        raise refuse("folds", "a whole number from 1 to 100")
    if folds == 1:
        return
    epochs, heldout = provenance.get("fold_epochs"), provenance.get("fold_heldout_map")
    if not isinstance(epochs, list) or len(epochs) != folds:
        raise refuse("fold_epochs", f"a list of {folds} epochs")
    if not all(isinstance(epoch, int) for epoch in epochs):
        raise refuse("fold_epochs", f"a list of {folds} epochs")
    if not isinstance(heldout, list) or len(heldout) != folds or not all(map(_is_number, heldout)):
        raise refuse("fold_heldout_map", f"a list of {folds} numbers")
    alone = provenance.get("fold_val_map_alone")
    if alone is not None and (
        not isinstance(alone, list) or len(alone) != folds or not all(map(_is_number, alone))
    ):
        raise refuse("fold_val_map_alone", f"a list of {folds} numbers")


LABEL_FIX_EFFECTS = {
    "ignore": "each left out of the loss and the held-out AP",
    "flip": "each flipped present <-> absent, difficult ones left out",
}


def _check_label_fixes(path: Path, provenance: dict[str, Any]) -> None:
    fixes = provenance.get("label_fixes")
    if fixes is None:
        return
    per_class = fixes.get("per_class") if isinstance(fixes, dict) else None
    valid = (
        isinstance(fixes, dict)
        and type(fixes.get("count")) is int
        and fixes.get("mode") in LABEL_FIX_EFFECTS
        and isinstance(fixes.get("source"), str)
        and isinstance(fixes.get("sha256"), str)
        and isinstance(per_class, dict)
        and all(type(n) is int for n in per_class.values())
    )
    if not valid:
        raise ReportInputError(
            f"{path}: its provenance's label_fixes is not an object with count, per_class, "
            f"mode, source and sha256: restore the file or train again"
        )


def label_fixes_line(provenance: dict[str, Any]) -> str | None:
    """The report's one line on a run trained with --label-fixes (None: it was not)."""
    fixes = provenance.get("label_fixes")
    if not fixes:
        return None
    per_class = ", ".join(f"{name[:20]}: {n}" for name, n in fixes["per_class"].items())
    return (
        f"trained with {fixes['count']} label fixes ({per_class or 'none'}) from "
        f"{fixes['source'][:120]!s} sha256 {fixes['sha256'][:16]}, mode {fixes['mode']} "
        f"({LABEL_FIX_EFFECTS[fixes['mode']]}); train split only, val labels as read"
    )


def _check_fold_history(path: Path, history: list[dict[str, Any]]) -> None:
    if not all(isinstance(record.get("fold"), int) for record in history):
        raise ReportInputError(
            f"{path}: the run is cross-validated but an epoch record names no fold (a whole "
            f"number): restore the file"
        )


def load_inputs(run_dir: Path, predictions_path: Path | None = None) -> ReportInputs:
    path = predictions_path or run_dir / PREDICTIONS_FILENAME
    predictions = load_predictions(path)
    if predictions.num_images == 0:
        raise ReportInputError(
            f"{path} holds no images (0 rows): there is nothing to evaluate. Pass the "
            f"predictions file of a run that scored at least one image"
        )
    if predictions.labels is None:  # the unlabelled report shows no training curves
        return ReportInputs(run_dir, predictions, [], None)
    check_provenance(path, predictions.provenance)
    config = _optional_json(run_dir / CONFIG_FILENAME, "the hyperparameters")
    produced_by = _optional_json(
        run_dir / RUN_PROVENANCE_FILENAME, "the loss code and package versions of the run"
    )
    history = load_history(run_dir)
    if crossval.is_cross_validated(predictions.provenance):
        _check_fold_history(run_dir / HISTORY_FILENAME, history)
    return ReportInputs(run_dir, predictions, history, config, produced_by)


def _optional_json(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON object the report can do without (older runs lack some): None, and a warning."""
    if not path.is_file():
        log.warning("%s not found: the report says %s were not recorded", path, what)
        return None
    try:
        return read_json(path, f"the file a run writes there ({what})", dict)
    except JsonFileError as error:
        raise ReportInputError(
            f"{error}: restore it, or move it away to get a report that says {what} were not "
            f"recorded"
        ) from None


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
    cross_validation: dict[str, Any] | None = None  # --folds K runs: see evaluation/crossval.py


def pick_grid_classes(
    predictions: Predictions, requested: list[str] | None, count: int, seed: int
) -> list[str]:
    """The requested classes, else `count` classes with a positive, drawn with a fixed seed."""
    if requested:
        for name in requested:
            try:
                predictions.class_index(name)
            except KeyError as error:  # its message names the known classes
                raise ReportInputError(error.args[0]) from None
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


def _loss_code(produced_by: dict[str, Any] | None) -> str:
    """The loss code the run was trained with, as the trainer recorded it."""
    if not produced_by or "loss_code" not in produced_by:
        return f"not recorded (the run folder has no {RUN_PROVENANCE_FILENAME})"
    return str(produced_by["loss_code"])


def _software(produced_by: dict[str, Any] | None) -> str:
    """Python, package versions and git commit of the run, as the trainer recorded them."""
    if not produced_by:
        return f"not recorded (the run folder has no {RUN_PROVENANCE_FILENAME})"
    git = produced_by.get("git")
    commit = "not recorded (no git checkout)"
    if isinstance(git, dict) and git.get("commit"):
        commit = str(git["commit"]) + (
            " with uncommitted changes" if git.get("uncommitted_changes") else ""
        )
    packages = produced_by.get("packages")
    packages = packages if isinstance(packages, dict) else {}
    return "\n".join(
        [
            f"git commit   {commit}",
            f"python       {produced_by.get('python', 'not recorded')}",
            *(f"{name}=={version}" for name, version in packages.items()),
        ]
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


def save_figure(figure: Figure, out_dir: Path, stem: str, written: list[str]) -> None:
    """`<stem>.png` and `<stem>.pdf` in `out_dir`; `stem` may hold a class name, so the names
    are checked to stay in `out_dir` (vocdata.paths.child_path)."""
    for suffix in (".png", ".pdf"):
        with atomic_write(child_path(out_dir, f"{stem}{suffix}")) as tmp:
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

    with warnings.catch_warnings():  # said below in one line, not once per class
        warnings.simplefilter("ignore", UndefinedAPWarning)
        ap = per_class_average_precision(preds.scores, preds.labels, preds.class_names, difficult)
    undefined = [name for name, value in zip(preds.class_names, ap, strict=True) if np.isnan(value)]
    if undefined:
        log.warning(
            "%d class(es) have no positive image in the evaluated set: %s; their AP is "
            "undefined (n/a) and left out of the mean",
            len(undefined),
            ", ".join(undefined),
        )
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
    image_root = image_root_of(preds, voc_root)
    if image_root.named_by_file:
        log.warning("grid %s: pass --voc-root to read them from elsewhere", image_root.note)
    best_epoch = preds.provenance.get("epoch")

    figures: list[tuple[str, Figure]] = [
        (
            "curves",
            crossval.fold_curves_figure(history, preds.provenance)
            if crossval.is_cross_validated(preds.provenance)
            else training_curves_figure(history, best_epoch),
        ),
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
    figures += [(f"grid_{g.class_name}", grid_figure(g, image_root.path)) for g in grids]
    for stem, figure in figures:
        save_figure(figure, out_dir, stem, written)

    summary = ReportSummary(
        map_sklearn=map_sklearn.value,
        map_voc=map_voc.value,
        classes_in_map=map_sklearn.num_classes,
        undefined_classes=[n for n, v in zip(preds.class_names, ap, strict=True) if np.isnan(v)],
        tailacc_mean_first=float(curves.mean[0]),
        tailacc_mean_last=float(curves.mean[-1]),
        tailacc_classes=int(curves.classes_in_mean[0]),
        grid_classes=grid_classes,
        cross_validation=crossval.cross_validation_summary(preds.provenance)
        if crossval.is_cross_validated(preds.provenance)
        else None,
    )
    write_grids_json(child_path(out_dir, "grids.json"), grids, written)
    text_blocks = _text_blocks(inputs, summary, difficult, image_root, k, num_thresholds)
    _write_markdown(
        child_path(out_dir, "report.md"),
        inputs,
        summary,
        text_blocks,
        header,
        rows,
        figures,
        written,
    )
    _write_pdf(child_path(out_dir, "report.pdf"), text_blocks, figures, written)
    summary.files = [*written, "summary.json"]
    write_json(child_path(out_dir, "summary.json"), json_ready(summary.__dict__))
    return summary


def json_ready(value: Any) -> Any:
    """`value` with every NaN (an undefined number) as None: summary.json stays valid JSON."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def write_grids_json(path: Path, grids: list[ClassGrids], written: list[str]) -> None:
    """Which images each grid shows, with rank, score and label (for scripts and tests)."""
    data = {
        g.class_name: {"top": [t.__dict__ for t in g.top], "bottom": [t.__dict__ for t in g.bottom]}
        for g in grids
    }
    write_json(path, data)
    written.append(path.name)


def _tailacc_sentences(summary: ReportSummary, num_thresholds: int) -> str:
    if summary.tailacc_classes == 0 or np.isnan(summary.tailacc_mean_first):
        return (
            "Tailacc is undefined here: no image of the evaluated set is scored above 0.5 for "
            "any class (with the difficult mode, among the images that count), so the "
            "classifier says 'absent' to every class of every image and there is no confident "
            "prediction whose accuracy could be measured. The average precision above still "
            "ranks the images; a model trained longer, or with more positives per class, "
            "usually scores some images above 0.5."
        )
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
    image_root: ImageRoot,
    k: int,
    num_thresholds: int,
) -> list[tuple[str, str]]:
    preds, config = inputs.predictions, inputs.config or {}
    prov = preds.provenance
    positives = (preds.labels == 1).sum(axis=0)
    difficult_counts = (preds.labels == 0).sum(axis=0)
    train_positives = prov.get("train_positives", {})
    counts = "\n".join(
        f"{name:<12} {train_positives.get(name, '?')!s:>5} / {int(p):>4} positive  "
        f"{int(d):>4} difficult (val)"
        for name, p, d in zip(preds.class_names, positives, difficult_counts, strict=True)
    )
    train_count = prov.get("train_images", "see train.log")
    fixes_line = label_fixes_line(prov)
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
            + (
                crossval.run_lines(prov)
                if crossval.is_cross_validated(prov)
                else f"saved epoch  {prov.get('epoch')} (best validation mAP during training: "
                f"{_fmt(prov.get('val_map'))})"
            ),
        ),
        (
            "Data",
            f"Pascal VOC 2012, official split: {train_count} train images, "
            f"{preds.num_images} val images (one sample per image).\n"
            f"{image_root.note}; difficult mode '{difficult}'\n"
            + (f"{fixes_line}\n" if fixes_line else "")
            + "per class: train / val images that contain it, and val images where it is only "
            "difficult\n"
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
            "Code (as recorded by the trainer):\n" + _loss_code(inputs.produced_by),
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
        ("Software that produced the run (provenance.json)", _software(inputs.produced_by)),
    ]


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


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
    if crossval.is_cross_validated(inputs.predictions.provenance):
        parts.append(crossval.markdown_section(inputs.predictions.provenance))
    parts.append("## Per-class average precision\n\n![per-class AP](per_class_ap.png)\n")
    parts.append("## Accuracy versus AP\n\n" + markdown_table(header, rows) + "\n")
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

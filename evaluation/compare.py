"""Several runs side by side: `python -m evaluation --compare RUN [RUN ...]`.

Reads only run folders (config.json, history.json, val_predictions.npz, crossval.json of a
`--folds K` run), never today's training code, so a comparison of old runs shows what
produced *them*. Every number is recomputed from each run's predictions file with the same
metric code, so the runs are measured alike. Runs whose numbers would not be comparable
(another val file list, class list, labels or difficult mode) are refused with a message
naming them and the difference, never silently compared.

Writes into one folder, swapped in whole: comparison.md, comparison.pdf, comparison.json
and the figures as PNG (map_curves, per_class_ap, tailacc).
"""

from __future__ import annotations

import glob
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from evaluation.compare_figures import (
    MapCurve,
    grouped_ap_figure,
    map_curves_figure,
    table_page,
    tailacc_overlay_figure,
)
from evaluation.compare_table import (
    BOOKKEEPING_OPTIONS,
    MACHINE_OPTIONS,
    GridRow,
    MarkedTable,
    best_rows,
    comparison_table,
    differing_columns,
    flatten_options,
    format_metric,
)
from evaluation.metrics import (
    UndefinedAPWarning,
    mean_average_precision,
    per_class_average_precision,
)
from evaluation.tailacc import DEFAULT_NUM_THRESHOLDS, kept_shares, tailacc_curves
from predictions import (
    PREDICTIONS_FILENAME,
    Predictions,
    load_predictions,
    resolve_run_dir,
)
from predictions.runs import CONFIG_FILENAME, CROSSVAL_FILENAME, HISTORY_FILENAME
from vocdata.atomic import atomic_folder, why_not_writable
from vocdata.jsonio import read_json, write_json
from vocdata.paths import DEFAULT_RUNS_DIR, display_path, project_relative, resolve_project_path
from vocdata.splits import DifficultMode

log = logging.getLogger(__name__)

MIN_TRAIN_IMAGES = 20  # "classes with enough examples": at least this many positive train images
COMPARISONS_DIRNAME = "comparisons"  # <runs-dir>/comparisons/<date>-<time>/ by default
MARKDOWN_FILENAME = "comparison.md"
PDF_FILENAME = "comparison.pdf"
SUMMARY_FILENAME = "comparison.json"
GLOB_CHARACTERS = frozenset("*?[")


class ComparisonError(ValueError):
    """Runs that cannot be compared, or a folder that cannot take the comparison; the
    message names the runs (or the folder) and what to do."""


# -- which runs ------------------------------------------------------------------------------


def _is_run_folder(path: Path) -> bool:
    return (path / CONFIG_FILENAME).is_file() or (path / HISTORY_FILENAME).is_file()


def _glob(pattern: str, runs_dir: Path) -> list[Path]:
    """Folders matching `pattern` as a path (from the project root) or as a run name in
    `runs_dir`; only run folders (the comparisons folder, for one, is passed over)."""
    for base in (resolve_project_path(pattern), runs_dir / pattern):
        matches = [Path(p) for p in sorted(glob.glob(str(base))) if Path(p).is_dir()]
        if matches:
            runs = [p for p in matches if _is_run_folder(p)]
            skipped = [p.name for p in matches if not _is_run_folder(p)]
            if skipped:
                log.info("%r also matches %s: not run folders, left out", pattern, skipped)
            return runs
    return []


def resolve_runs(specs: Sequence[str], runs_dir: str = DEFAULT_RUNS_DIR) -> list[Path]:
    """The run folders named by `specs` (folders, names in `runs_dir`, globs, `latest`), in
    the order given, each once."""
    runs_path = resolve_project_path(runs_dir)
    found: list[Path] = []
    for spec in specs:
        if GLOB_CHARACTERS & set(spec):
            matches = _glob(spec, runs_path)
            if not matches:
                raise ComparisonError(
                    f"no run folder matches {spec!r} (as a path from the project root, or as a "
                    f"run name in {display_path(runs_path)}): check the pattern or --runs-dir"
                )
            found += matches
        else:
            found.append(resolve_run_dir(spec, runs_dir))
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    runs = list(unique.values())
    if len(runs) < 2:
        raise ComparisonError(
            f"--compare needs at least two runs; {' '.join(specs)!r} names only "
            f"{', '.join(display_path(p) for p in runs)}"
        )
    return runs


# -- what a run folder holds -------------------------------------------------------------------


@dataclass
class RunFolder:
    """What the comparison reads from one run folder."""

    name: str
    run_dir: Path
    options: dict[str, Any]  # config.json, flattened to dotted keys
    history: list[dict[str, Any]]
    predictions: Predictions
    crossval: dict[str, Any] | None  # crossval.json of a --folds K run

    @property
    def difficult(self) -> str:
        return str(self.predictions.provenance.get("difficult"))

    @property
    def is_fold_model(self) -> bool:
        """One fold model of a k-fold run (`<run>/folds/<k>/`): its history is held-out."""
        return "fold" in self.predictions.provenance

    @property
    def is_cross_validated(self) -> bool:
        """A k-fold run: its predictions are the ensemble of its fold models."""
        folds = self.options.get("folds", self.predictions.provenance.get("folds"))
        return (
            not self.is_fold_model
            and isinstance(folds, int)
            and not isinstance(folds, bool)
            and folds > 1
        )


def read_run(run_dir: Path, name: str) -> RunFolder:
    """Read and check one run folder; any missing or damaged file is a one-line error."""
    where = display_path(run_dir)
    config_path = run_dir / CONFIG_FILENAME
    if not config_path.is_file():
        raise ComparisonError(
            f"{where} is not a run folder: it has no {CONFIG_FILENAME} (main_train.py writes "
            f"it when the run starts); leave it out of --compare"
        )
    options = flatten_options(read_json(config_path, "a run's config.json", dict))
    predictions_path = run_dir / PREDICTIONS_FILENAME
    if not predictions_path.is_file():
        raise ComparisonError(
            f"run {name} ({where}) has no {PREDICTIONS_FILENAME} yet: training writes it after "
            f"the first validated epoch (a --folds run after its last fold); wait for it, or "
            f"leave the run out"
        )
    predictions = load_predictions(predictions_path)
    if predictions.labels is None:
        raise ComparisonError(
            f"run {name}: {display_path(predictions_path)} has no labels, so it has no AP to "
            f"compare; leave it out"
        )
    if predictions.num_images == 0:
        raise ComparisonError(f"run {name}: {display_path(predictions_path)} holds no images")
    if predictions.provenance.get("difficult") not in {mode.value for mode in DifficultMode}:
        raise ComparisonError(
            f"run {name}: {display_path(predictions_path)} records no valid difficult mode "
            f"(got {predictions.provenance.get('difficult')!r})"
        )
    history_path = run_dir / HISTORY_FILENAME
    if not history_path.is_file():
        raise ComparisonError(f"run {name} ({where}) has no {HISTORY_FILENAME}: is it a run?")
    history = read_json(history_path, "a run's history.json (a list of epoch records)", list)
    if not all(isinstance(record, dict) for record in history):
        raise ComparisonError(
            f"{display_path(history_path)} is not a run's history.json: its entries must be "
            f"epoch records (JSON objects); restore it or leave the run out"
        )
    crossval_path = run_dir / CROSSVAL_FILENAME
    crossval = (
        read_json(crossval_path, "a run's crossval.json", dict) if crossval_path.is_file() else None
    )
    return RunFolder(name, run_dir, options, history, predictions, crossval)


def run_names(run_dirs: Sequence[Path], runs_dir: str = DEFAULT_RUNS_DIR) -> list[str]:
    """How the runs are called in the comparison: the path inside `runs_dir` (a fold model:
    `<run>/folds/<k>`), else the folder name; the displayed path where two names collide."""
    base = resolve_project_path(runs_dir).resolve()

    def short(path: Path) -> str:
        resolved = path.resolve()
        return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else path.name

    names = [short(path) for path in run_dirs]
    return [
        display_path(path) if names.count(name) > 1 else name
        for path, name in zip(run_dirs, names, strict=True)
    ]


# -- comparable or not -----------------------------------------------------------------------


def _groups(runs: Sequence[RunFolder], key) -> list[tuple[Any, list[str]]]:
    groups: dict[Any, list[str]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run.name)
    return list(groups.items())


def _named(names: list[str]) -> str:
    return ", ".join(names)


def check_comparable(runs: Sequence[RunFolder]) -> None:
    """Refuse runs whose numbers would not be comparable: scored on other val images, other
    classes, other labels, or under another difficult mode. The message names the runs."""
    classes = _groups(runs, lambda run: run.predictions.class_names)
    if len(classes) > 1:
        described = "; ".join(
            f"{_named(names)}: {len(class_list)} classes ({', '.join(class_list[:4])}"
            f"{', ...' if len(class_list) > 4 else ''})"
            for class_list, names in classes
        )
        raise ComparisonError(
            f"cannot compare runs with different class lists: {described}. Compare runs "
            f"trained on the same classes"
        )
    files = _groups(runs, lambda run: frozenset(run.predictions.files))
    if len(files) > 1:
        (first, first_names), (other, other_names) = files[0], files[1]
        examples = [
            f"{sorted(extra)[0]} only in {names[0]}"
            for extra, names in ((first - other, first_names), (other - first, other_names))
            if extra
        ]
        described = "; ".join(f"{_named(names)}: {len(group):,} images" for group, names in files)
        raise ComparisonError(
            f"cannot compare runs scored on different val sets: {described} (e.g. "
            f"{', '.join(examples)}). Compare runs validated on the same images (the same "
            f"--voc-root and val split)"
        )
    reference = runs[0].predictions
    row_of = {name: i for i, name in enumerate(reference.files)}
    for run in runs[1:]:
        order = [row_of[name] for name in run.predictions.files]
        differ = int((reference.labels[order] != run.predictions.labels).sum())
        if differ:
            raise ComparisonError(
                f"cannot compare {runs[0].name} and {run.name}: the same val images carry "
                f"different labels ({differ} image-class entries differ; annotations from "
                f"another copy of the dataset?). Compare runs validated on the same labels"
            )
    modes = _groups(runs, lambda run: run.difficult)
    if len(modes) > 1:
        described = "; ".join(f"{_named(names)}: {mode}" for mode, names in modes)
        raise ComparisonError(
            f"cannot compare runs with different difficult modes (their AP counts difficult "
            f"images differently): {described}. Compare runs trained with the same --difficult"
        )


# -- the numbers -------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _train_positives(provenance: dict[str, Any], class_names: Sequence[str]) -> np.ndarray | None:
    """Positive train images per class as recorded in the predictions, else None."""
    recorded = provenance.get("train_positives")
    if not isinstance(recorded, dict):
        return None
    counts = [_number(recorded.get(name)) for name in class_names]
    if any(count is None for count in counts):
        return None
    return np.array(counts)


@dataclass
class RunMeasures:
    """A run's numbers, all computed the same way for every run."""

    ap: np.ndarray  # (C,) scikit-learn AP, NaN without a val positive
    train_positives: np.ndarray | None
    tailacc_mean: np.ndarray  # (K,) mean over classes
    tailacc_classes: int
    curve: MapCurve
    metrics: dict[str, Any] = field(default_factory=dict)  # the grid's metric keys


def _map_curve(run: RunFolder, val_map: float) -> MapCurve:
    records = [
        r
        for r in run.history
        if _number(r.get("epoch")) is not None and _number(r.get("val_map")) is not None
    ]
    if run.is_cross_validated:  # each fold's val_* was measured on its held-out fold
        by_epoch: dict[int, list[float]] = {}
        for record in records:
            by_epoch.setdefault(int(record["epoch"]), []).append(float(record["val_map"]))
        epochs = sorted(by_epoch)
        return MapCurve(
            run.name,
            epochs,
            [float(np.mean(by_epoch[e])) for e in epochs],
            held_out="held-out mAP, mean over its folds",
            ensemble_val_map=val_map,
        )
    epoch = run.predictions.provenance.get("epoch")
    return MapCurve(
        run.name,
        [int(r["epoch"]) for r in records],
        [float(r["val_map"]) for r in records],
        held_out="held-out mAP of its fold" if run.is_fold_model else None,
        marked=epoch if isinstance(epoch, int) else None,
    )


def _speed_metrics(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    seconds = [s for r in history if (s := _number(r.get("seconds"))) is not None]
    speeds = [
        s
        for r in history
        if (_number(r.get("epoch")) or 0) >= 1
        and (s := _number(r.get("train_images_per_second"))) is not None
        and s > 0
    ]
    memory = [m for r in history if (m := _number(r.get("peak_gpu_memory_mb"))) is not None]
    return {
        "wall_seconds": sum(seconds) if seconds else None,
        "train_images_per_second": float(np.mean(speeds)) if speeds else None,
        "peak_gpu_memory_mb": max(memory) if memory else None,
    }


def measure(run: RunFolder, num_thresholds: int = DEFAULT_NUM_THRESHOLDS) -> RunMeasures:
    """AP per class, mAP, the mean over classes with >= 20 train images, Tailacc, the mAP
    curve, and the grid's metrics of one run."""
    preds = run.predictions
    with warnings.catch_warnings():  # every run shares the labels: said once in the notes
        warnings.simplefilter("ignore", UndefinedAPWarning)
        ap = per_class_average_precision(
            preds.scores, preds.labels, preds.class_names, run.difficult
        )
    mean_ap = mean_average_precision(ap)
    positives = _train_positives(preds.provenance, preds.class_names)
    curves = tailacc_curves(
        preds.scores, preds.labels, preds.class_names, num_thresholds, run.difficult
    )
    metrics: dict[str, Any] = {"val_map": mean_ap.value, "val_map_classes": mean_ap.num_classes}
    if positives is not None:
        frequent = mean_average_precision(np.where(positives >= MIN_TRAIN_IMAGES, ap, np.nan))
        metrics |= {
            "val_map_frequent": frequent.value,
            "val_map_frequent_classes": frequent.num_classes,
        }
    if run.is_cross_validated:
        source = run.crossval or preds.provenance
        metrics |= {
            "cv_map_mean": source.get("cv_map_mean"),
            "cv_map_std": source.get("cv_map_std"),
            "best_epoch": source.get("fold_epochs"),
        }
    else:
        metrics["best_epoch"] = preds.provenance.get("epoch")
    metrics |= _speed_metrics(run.history)
    return RunMeasures(
        ap=ap,
        train_positives=positives,
        tailacc_mean=curves.mean,
        tailacc_classes=int(curves.classes_in_mean.max(initial=0)),
        curve=_map_curve(run, mean_ap.value),
        metrics=metrics,
    )


def grid_rows(runs: Sequence[RunFolder], measures: Sequence[RunMeasures]) -> list[GridRow]:
    return [
        GridRow(run.name, run.options, m.metrics) for run, m in zip(runs, measures, strict=True)
    ]


def per_class_table(
    runs: Sequence[RunFolder], measures: Sequence[RunMeasures], class_names: Sequence[str]
) -> MarkedTable:
    """Classes as rows, runs as columns, the best AP of each class marked; the last row is
    the mAP. Train positives are shown when every run recorded the same counts."""
    positives = [m.train_positives for m in measures]
    same_positives = positives[0] is not None and all(
        p is not None and np.array_equal(p, positives[0]) for p in positives
    )
    header = ["class", *(["train pos"] if same_positives else []), *(r.name for r in runs)]
    first = 2 if same_positives else 1
    cells, best = [], set()
    rows = [(name, [m.ap[c] for m in measures]) for c, name in enumerate(class_names)]
    rows.append(("mAP", [m.metrics["val_map"] for m in measures]))
    for r, (name, values) in enumerate(rows):
        count = []
        if same_positives:
            count = [str(int(positives[0][r])) if r < len(class_names) else ""]
        cells.append([name, *count, *(format_metric(float(v)) for v in values)])
        best |= {(r, first + i) for i in best_rows([float(v) for v in values], "higher", 4)}
    notes = ["Best per class in bold (highest AP)."]
    if not same_positives:
        notes.append("Train positives: not recorded, or not the same in every run.")
    return MarkedTable(header, cells, frozenset(best), notes)


# -- where it goes -----------------------------------------------------------------------------


def default_out_dir(runs_dir: str = DEFAULT_RUNS_DIR, now: datetime | None = None) -> Path:
    """`<runs-dir>/comparisons/<date>-<time>`: a new folder, never a run's own report."""
    base = resolve_project_path(runs_dir) / COMPARISONS_DIRNAME
    stamp = f"{now or datetime.now():%Y%m%d-%H%M%S}"
    candidate, suffix = base / stamp, 1
    while candidate.exists():
        suffix += 1
        candidate = base / f"{stamp}-{suffix}"
    return candidate


def _holds_a_comparison(folder: Path) -> bool:
    entries = list(folder.iterdir())
    names = {entry.name for entry in entries}
    return {MARKDOWN_FILENAME, SUMMARY_FILENAME} <= names and all(e.is_file() for e in entries)


def check_out_dir(out_dir: Path) -> None:
    """`out_dir` will be replaced whole: only a new or empty folder, or an earlier
    comparison, may be; and its parent must take files. Checked before any work."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ComparisonError(
                f"--out {display_path(out_dir)} is a file: pass a new folder for the comparison"
            )
        if any(out_dir.iterdir()) and not _holds_a_comparison(out_dir):
            raise ComparisonError(
                f"--out {display_path(out_dir)} holds other files (a run folder, a report?) "
                f"and would be replaced whole: pass a new folder, or an earlier comparison's"
            )
    if reason := why_not_writable(out_dir.parent):
        raise ComparisonError(
            f"cannot write the comparison into {display_path(out_dir)} ({reason}): pass --out "
            f"with a writable folder"
        )


# -- writing -----------------------------------------------------------------------------------


@dataclass
class ComparisonResult:
    out_dir: Path
    grid: MarkedTable
    names: list[str]
    files: list[str]


METRIC_MEANINGS = (
    "val mAP: mean AP (scikit-learn, non-interpolated) over the classes with a val positive, "
    "recomputed from each run's val_predictions.npz (a k-fold run: the ensemble of its fold "
    "models, chosen without val).",
    f"mAP ≥20 train: the same mean over the classes with at least {MIN_TRAIN_IMAGES} positive "
    "train images (n/a when the predictions do not record train_positives).",
    "CV mAP ± std: k-fold runs only, the folds' held-out mAP (crossval.json), measured inside "
    "the train split.",
    "best epoch: the epoch whose model was saved (k-fold runs: one per fold model).",
    "wall s: the epochs' seconds in history.json summed (training and validation; not the "
    "start-up or the feature caching).",
    "train img/s: mean over the trained epochs. peak GPU MB: the largest over the epochs "
    "(n/a on a CPU).",
)


def _excluded_note() -> str:
    return (
        "Not hyper-parameters, never columns: "
        + ", ".join(BOOKKEEPING_OPTIONS)
        + " (paths, names, reporting) and "
        + ", ".join(MACHINE_OPTIONS)
        + " (the machine; a difference is noted)."
    )


def _run_lines(runs: Sequence[RunFolder]) -> list[str]:
    return [
        f"{run.name}: {display_path(run.run_dir)} (predictions of "
        f"{run.predictions.provenance.get('created', 'an unknown date')})"
        for run in runs
    ]


def _data_line(runs: Sequence[RunFolder], undefined: list[str]) -> str:
    preds = runs[0].predictions
    line = (
        f"Every run was scored on the same {preds.num_images:,} val images, "
        f"{preds.num_classes} classes, difficult mode '{runs[0].difficult}'."
    )
    if undefined:
        line += f" No val positive (AP undefined, left out of every mean): {', '.join(undefined)}."
    return line


def _save_png(figure: Figure, folder: Path, stem: str, written: list[str]) -> None:
    figure.savefig(folder / f"{stem}.png", dpi=110)
    written.append(f"{stem}.png")


def _markdown(
    runs: Sequence[RunFolder],
    grid: MarkedTable,
    per_class: MarkedTable,
    data_line: str,
    tailacc_text: str,
    created: str,
) -> str:
    parts = [
        f"# Comparison of {len(runs)} runs\n",
        f"Created {created}. {data_line}\n",
        "## Grid\n",
        grid.markdown() + "\n",
        _excluded_note() + "\n",
        "\n".join(f"- {line}" for line in METRIC_MEANINGS) + "\n",
        "## Runs\n",
        "\n".join(f"- {line}" for line in _run_lines(runs)) + "\n",
        "## Validation mAP per epoch\n",
        "![validation mAP per epoch](map_curves.png)\n",
        "## Per-class average precision\n",
        per_class.markdown() + "\n",
        "![per-class AP](per_class_ap.png)\n",
        "## Tailacc\n",
        f"![Tailacc](tailacc.png)\n\n{tailacc_text}\n",
    ]
    return "\n".join(parts)


def _json_value(value: Any) -> Any:
    """`value` as strict JSON: NaN and infinity (which a damaged input file may hold) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating | np.integer):
        return _json_value(value.item())
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def _summary(
    runs: Sequence[RunFolder], measures: Sequence[RunMeasures], grid: MarkedTable
) -> dict[str, Any]:
    differing = differing_columns([run.options for run in runs])
    class_names = runs[0].predictions.class_names
    return {
        "differing_options": differing,
        "val_images": runs[0].predictions.num_images,
        "difficult": runs[0].difficult,
        "grid": {"header": grid.header, "cells": grid.cells},
        "runs": [
            {
                "name": run.name,
                "run": project_relative(run.run_dir),
                "options": {key: _json_value(run.options.get(key)) for key in differing},
                "metrics": {key: _json_value(v) for key, v in m.metrics.items()},
                "ap": {
                    name: _json_value(float(a)) for name, a in zip(class_names, m.ap, strict=True)
                },
                "tailacc_mean": _json_value(m.tailacc_mean.tolist()),
            }
            for run, m in zip(runs, measures, strict=True)
        ],
    }


def write_comparison(
    runs: Sequence[RunFolder], out_dir: Path, num_thresholds: int = DEFAULT_NUM_THRESHOLDS
) -> ComparisonResult:
    """Measure every run and write the comparison folder (built aside, then swapped in)."""
    check_comparable(runs)
    measures = [measure(run, num_thresholds) for run in runs]
    names = [run.name for run in runs]
    class_names = runs[0].predictions.class_names
    grid = comparison_table(grid_rows(runs, measures))
    if any(run.is_cross_validated for run in runs):
        grid.notes.append("val mAP of a k-fold run is its ensemble's (the fold models averaged).")
    fold_models = [run.name for run in runs if run.is_fold_model]
    if fold_models:
        grid.notes.append(
            f"Fold models of a k-fold run: {', '.join(fold_models)}; the val mAP of each is that "
            "model alone, its epoch chosen on its held-out fold."
        )
    per_class = per_class_table(runs, measures, class_names)
    undefined = [n for c, n in enumerate(class_names) if np.isnan(measures[0].ap[c])]
    data_line = _data_line(runs, undefined)
    created = datetime.now().astimezone().isoformat(timespec="seconds")
    kept = runs[0].predictions.num_images
    tailacc_text = (
        f"Mean over classes of Tailacc(t) at {num_thresholds} thresholds per class (quantiles "
        f"of its scores above 0.5, so each point keeps the same share of every class's "
        f"confident images; {kept:,} val images). Higher is better; a curve that rises to the "
        f"right means the most confident predictions are the most reliable."
    )
    figures = {
        "map_curves": map_curves_figure([m.curve for m in measures]),
        "per_class_ap": grouped_ap_figure([m.ap for m in measures], names, class_names),
        "tailacc": tailacc_overlay_figure(
            kept_shares(num_thresholds),
            [m.tailacc_mean for m in measures],
            [m.tailacc_classes for m in measures],
            names,
        ),
    }
    written: list[str] = []
    with atomic_folder(out_dir) as staging:
        for stem, figure in figures.items():
            _save_png(figure, staging, stem, written)
        pages = [
            table_page(
                grid,
                f"Comparison of {len(runs)} runs",
                [
                    data_line,
                    "",
                    *METRIC_MEANINGS,
                    "",
                    _excluded_note(),
                    "",
                    "Runs:",
                    *_run_lines(runs),
                ],
            ),
            figures["map_curves"],
            figures["per_class_ap"],
            table_page(per_class, "Average precision per class (validation)"),
            figures["tailacc"],
        ]
        with PdfPages(staging / PDF_FILENAME) as pdf:
            for page in pages:
                pdf.savefig(page)
        written.append(PDF_FILENAME)
        (staging / MARKDOWN_FILENAME).write_text(
            _markdown(runs, grid, per_class, data_line, tailacc_text, created), encoding="utf-8"
        )
        written.append(MARKDOWN_FILENAME)
        write_json(staging / SUMMARY_FILENAME, _summary(runs, measures, grid))
        written.append(SUMMARY_FILENAME)
    return ComparisonResult(out_dir, grid, names, written)


def compare_runs(
    specs: Sequence[str],
    runs_dir: str = DEFAULT_RUNS_DIR,
    out: str | None = None,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
) -> ComparisonResult:
    """The whole command: resolve, read and check every run, then write the comparison.
    Errors for people: ComparisonError, JsonFileError, PredictionsFormatError,
    RunNotFoundError."""
    run_dirs = resolve_runs(specs, runs_dir)
    names = run_names(run_dirs, runs_dir)
    runs = [read_run(path, name) for path, name in zip(run_dirs, names, strict=True)]
    check_comparable(runs)
    out_dir = resolve_project_path(out) if out else default_out_dir(runs_dir)
    check_out_dir(out_dir)  # before the figures: nothing is created for refused runs
    return write_comparison(runs, out_dir, num_thresholds)

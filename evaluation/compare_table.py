"""The comparison grid: one row per run (or per sweep trial), only the options that differ as
columns, then the metrics, each metric's best value marked.

Pure data in, text out (no numpy, no matplotlib, no files), so every comparison prints the
same grid: `python -m evaluation --compare` fills the rows from run folders, a sweep fills
them from its trial records (options and metrics, no run folder).

    rows = [GridRow("a", {"lr_head": 1e-3}, {"val_map": 0.55}),
            GridRow("b", {"lr_head": 3e-3}, {"val_map": 0.56})]
    print(comparison_table(rows).markdown())

Which options count: every key of a run's `config.json` is a hyper-parameter except the
few listed in BOOKKEEPING_OPTIONS (where files go, what a run is called, how it reports
progress) and MACHINE_OPTIONS (how fast it ran, not what it learned). Nested options (a dict
value) are flattened to dotted keys, so one changed inner value is one column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evaluation.tables import markdown_table

# Not hyper-parameters: paths, names and reporting. They never become grid columns.
BOOKKEEPING_OPTIONS = (
    "voc_root",
    "runs_dir",
    "run_name",
    "resume",
    "cache_dir",
    "download",
    "skip_bad_images",
    "stop_after",
    "progress",
)
# The machine a run used: they change the speed columns (and the numbers only within
# floating-point noise), so a difference is said in a note under the grid, not as a column.
MACHINE_OPTIONS = (
    "device",
    "workers",
    "amp",
    "channels_last",
    "compile",
    "cudnn_benchmark",
    "deterministic",
)
# Columns in this order when they differ (the recipe first); any other option follows, sorted.
OPTION_ORDER = (
    "arch",
    "weights",
    "head",
    "freeze_backbone",
    "lp_ft",
    "image_size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr_head",
    "lr_backbone",
    "weight_decay",
    "warmup_epochs",
    "tta",
    "difficult",
    "folds",
    "seed",
)
NOT_RECORDED = "—"  # an option a run's config does not have (an older run, a nested variant)


@dataclass(frozen=True)
class MetricColumn:
    """One metric of the grid.

    `better`: "higher" or "lower" marks the best value of the column; None marks nothing.
    `spread_key`: a second metric shown as "value ± spread" (the CV estimate's std).
    `count_for`: this column counts the classes behind another column's mean; when every
    row has the same count it goes into that column's title instead ("val mAP (19 classes)").
    """

    key: str
    title: str
    better: str | None = None
    digits: int = 4
    spread_key: str | None = None
    count_for: str | None = None


METRIC_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("val_map", "val mAP", "higher"),
    MetricColumn("val_map_classes", "classes", count_for="val_map"),
    MetricColumn("val_map_frequent", "mAP ≥20 train", "higher"),
    MetricColumn("val_map_frequent_classes", "classes", count_for="val_map_frequent"),
    MetricColumn("cv_map_mean", "CV mAP ± std", "higher", spread_key="cv_map_std"),
    MetricColumn("best_epoch", "best epoch"),
    MetricColumn("wall_seconds", "wall s", "lower", digits=1),
    MetricColumn("train_images_per_second", "train img/s", "higher", digits=0),
    MetricColumn("peak_gpu_memory_mb", "peak GPU MB", "lower", digits=0),
)


@dataclass(frozen=True)
class GridRow:
    """One run or trial: its name, its options (as in config.json; nested dicts allowed) and
    its metrics (keys of the MetricColumns; None, NaN or absent: not measured)."""

    name: str
    options: Mapping[str, Any]
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MarkedTable:
    """A table of text cells with some cells marked as the best of their column (or row)."""

    header: list[str]
    cells: list[list[str]]
    best: frozenset[tuple[int, int]] = frozenset()  # (row, column) of marked cells
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """GitHub markdown, marked cells in bold, the notes below the table."""

        def cell(row: int, column: int, text: str) -> str:
            text = text.replace("|", "\\|")
            return f"**{text}**" if (row, column) in self.best else text

        body = [
            [cell(r, c, text) for c, text in enumerate(row)] for r, row in enumerate(self.cells)
        ]
        table = markdown_table([h.replace("|", "\\|") for h in self.header], body)
        return table + "".join(f"\n\n{note}" for note in self.notes)


def flatten_options(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys ({"head": {"damping": 0.5}} -> {"head.damping": 0.5})."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_options(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_hyperparameter(key: str) -> bool:
    """Whether a (dotted) option key can be a grid column: not bookkeeping, not machine."""
    top = key.split(".")[0]
    return top not in BOOKKEEPING_OPTIONS and top not in MACHINE_OPTIONS


def _differing(option_dicts: Sequence[Mapping[str, Any]], keep) -> list[str]:
    flat = [flatten_options(options) for options in option_dicts]
    keys = {key for options in flat for key in options if keep(key)}
    missing = object()
    differing = [
        key for key in keys if len({_canonical(options.get(key, missing)) for options in flat}) > 1
    ]
    order = {name: i for i, name in enumerate(OPTION_ORDER)}
    return sorted(differing, key=lambda k: (order.get(k.split(".")[0], len(order)), k))


def _canonical(value: Any) -> str:
    """A value in a form where equal options compare equal (1 and 1.0; lists; absent)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return repr(float(value))
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def differing_columns(option_dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hyper-parameters (dotted keys) whose value is not the same in every dict; an
    option missing from some dicts counts as differing. Recipe options first."""
    return _differing(option_dicts, is_hyperparameter)


def differing_machine_options(option_dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The machine options (device, workers, amp, ...) that differ: said beside the speeds."""
    return _differing(option_dicts, lambda key: key.split(".")[0] in MACHINE_OPTIONS)


def format_option(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(format_option(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _number(value: Any) -> float | None:
    """A finite real number, else None (None, NaN, text, lists and booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def format_metric(value: Any, digits: int = 4) -> str:
    if isinstance(value, list | tuple):
        return "/".join(format_metric(v, digits) for v in value) or "n/a"
    number = _number(value)
    if number is None:
        return "n/a" if value is None or isinstance(value, float) else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{number:,.{digits}f}" if digits == 0 else f"{number:.{digits}f}"


def _shown(rows: Sequence[GridRow], column: MetricColumn) -> bool:
    return any(row.metrics.get(column.key) is not None for row in rows)


def best_rows(values: Sequence[Any], better: str, digits: int) -> list[int]:
    """Indices of the best value (ties as printed included); none unless two are measured
    and not all of them are equal (a best must beat someone)."""
    numbers = [_number(v) for v in values]
    measured = [(i, round(n, digits)) for i, n in enumerate(numbers) if n is not None]
    if len({value for _, value in measured}) < 2:
        return []
    pick = max if better == "higher" else min
    best = pick(value for _, value in measured)
    return [i for i, value in measured if value == best]


def comparison_table(
    rows: Sequence[GridRow],
    metrics: Sequence[MetricColumn] = METRIC_COLUMNS,
    name_title: str = "run",
) -> MarkedTable:
    """The grid: name, the differing hyper-parameters, then the metric columns that any row
    has, the best value of each `better` column marked. Notes say what is the same for all."""
    options = differing_columns([row.options for row in rows])
    flat = [flatten_options(row.options) for row in rows]
    shown = [m for m in metrics if _shown(rows, m)]
    titles = {m.key: m.title for m in shown}
    folded: set[str] = set()
    for column in shown:
        if column.count_for and column.count_for in titles:
            counts = {_canonical(row.metrics.get(column.key)) for row in rows}
            if len(counts) == 1:
                count = format_metric(rows[0].metrics.get(column.key))
                titles[column.count_for] += f" ({count} classes)"
                folded.add(column.key)
        elif column.count_for:
            folded.add(column.key)  # its mean is not shown
    shown = [m for m in shown if m.key not in folded]
    header = [name_title, *options, *(titles[m.key] for m in shown)]
    cells = []
    for row, row_options in zip(rows, flat, strict=True):
        line = [row.name]
        line += [
            format_option(row_options[key]) if key in row_options else NOT_RECORDED
            for key in options
        ]
        for column in shown:
            text = format_metric(row.metrics.get(column.key), column.digits)
            if column.spread_key and _number(row.metrics.get(column.spread_key)) is not None:
                text += f" ± {format_metric(row.metrics[column.spread_key], column.digits)}"
            line.append(text)
        cells.append(line)
    best = set()
    first_metric = 1 + len(options)
    for offset, column in enumerate(shown):
        if column.better:
            values = [row.metrics.get(column.key) for row in rows]
            marked = best_rows(values, column.better, column.digits)
            best |= {(r, first_metric + offset) for r in marked}
    absent = any(key not in row_options for row_options in flat for key in options)
    return MarkedTable(header, cells, frozenset(best), _notes(rows, options, shown, absent))


def _notes(
    rows: Sequence[GridRow], options: list[str], shown: Sequence[MetricColumn], absent: bool
) -> list[str]:
    notes = []
    if not options:
        notes.append("Every hyper-parameter is the same in all rows.")
    machine = differing_machine_options([row.options for row in rows])
    if machine:
        notes.append(
            "Machine options differ ("
            + ", ".join(machine)
            + "): the speed columns compare machines as well as recipes."
        )
    higher = [m.title for m in shown if m.better == "higher"]
    lower = [m.title for m in shown if m.better == "lower"]
    if higher or lower:
        parts = ([f"highest {', '.join(higher)}"] if higher else []) + (
            [f"lowest {', '.join(lower)}"] if lower else []
        )
        notes.append("Best per column in bold: " + "; ".join(parts) + ".")
    if absent:
        notes.append(f"{NOT_RECORDED}: the option is not in that row's config.")
    return notes

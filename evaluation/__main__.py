"""`python -m evaluation`: the report of the latest run (or --run), with no arguments needed."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from evaluation import crossval
from evaluation.compare import MARKDOWN_FILENAME, PDF_FILENAME, ComparisonError, compare_runs
from evaluation.report import (
    ReportInputError,
    ReportInputs,
    ReportSummary,
    load_inputs,
    write_report,
)
from evaluation.tailacc import DEFAULT_NUM_THRESHOLDS, MAX_THRESHOLDS, MIN_THRESHOLDS
from evaluation.unlabelled import write_unlabelled_report
from predictions import (
    PREDICTIONS_FILENAME,
    PredictionsFormatError,
    RunNotFoundError,
    load_predictions,
    resolve_run_dir,
)
from predictions.runs import HISTORY_FILENAME
from vocdata.atomic import atomic_folder, remove_abandoned, why_not_writable
from vocdata.jsonio import JsonFileError
from vocdata.options import add_runs_dir_option, add_voc_root_option
from vocdata.paths import UnsafePathError, display_path, project_relative, resolve_project_path

# What a report folder holds (figures, report.md, grids.json, summary.json): a folder holding
# anything else is not replaced by a new report.
REPORT_SUFFIXES = (".png", ".pdf", ".md", ".json")


def _count_in(low: int, high: int | None):
    """An argparse type: a whole number from `low` to `high` (None: no upper limit), so a bad
    value is a usage error (exit 2) before any work starts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            limit = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Per-class AP, mAP (two AP variants), accuracy vs AP, Tailacc(t), the "
        "training curves and top/bottom image grids of one run, as PNG + PDF figures and "
        "report.md / report.pdf in <run>/report/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--run",
        default=None,
        help="run folder, its name under --runs-dir, or 'latest' (default: the run that wrote "
        "--predictions, else latest)",
    )
    add_runs_dir_option(parser)
    parser.add_argument(
        "--predictions",
        default=None,
        help="predictions file to evaluate instead of the run's own (e.g. one written by "
        "python -m predictions; without labels the report shows score histograms and image "
        "grids only)",
    )
    add_voc_root_option(parser, of_run=True)
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated classes for the image grids (default: 3 classes "
        "with positives, drawn with --seed)",
    )
    parser.add_argument(
        "--k", type=_count_in(1, None), default=10, help="images per grid (top-k and bottom-k)"
    )
    parser.add_argument(
        "--thresholds",
        type=_count_in(MIN_THRESHOLDS, MAX_THRESHOLDS),
        default=DEFAULT_NUM_THRESHOLDS,
        help=f"Tailacc thresholds per class ({MIN_THRESHOLDS}-{MAX_THRESHOLDS})",
    )
    parser.add_argument(
        "--difficult",
        choices=["ignore", "positive", "negative"],
        default=None,
        help="difficult mode for AP (default: the one used in training)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing the grid classes")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: <run>/report; for another predictions file "
        "<its folder>/<its name>-report; with --compare a new <runs-dir>/comparisons/"
        "<date>-<time>/, never a run's report)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        default=None,
        help="compare two or more runs instead (run folders, names under --runs-dir, globs such "
        "as 'lr-*', or 'latest'): comparison.md, comparison.pdf, comparison.json and PNGs with "
        "the grid of the options that differ and the metrics, per-class AP, mAP and Tailacc "
        "curves overlaid; runs scored on other val images, classes or difficult modes are "
        "refused. Uses --runs-dir, --out, --thresholds",
    )
    return parser


def pick_run_dir(run: str | None, runs_dir: str, predictions: Path | None) -> Path:
    """The run whose history and options the report shows: --run; else, for a --predictions
    file, the run folder holding it or the run its provenance names, if either is here. A
    file without labels needs no run (its own folder stands in). A labelled file whose run is
    not found is refused rather than reported with some other run's curves and options."""
    if run is not None or predictions is None:
        return resolve_run_dir(run, runs_dir)
    if (predictions.parent / HISTORY_FILENAME).is_file():
        return predictions.parent
    found = load_predictions(predictions)
    recorded = found.provenance.get("run")
    if recorded and resolve_project_path(recorded).is_dir():
        return resolve_project_path(recorded)
    if found.labels is None:
        return predictions.parent
    raise ReportInputError(
        f"{display_path(predictions)} names no run folder that exists here (provenance 'run': "
        f"{recorded!r}): pass --run with the run that trained the model, so the report shows "
        f"its curves and options"
    )


def default_out_dir(run_dir: Path, predictions: Path | None) -> Path:
    """`<run>/report` for the run's own predictions; any other file's report goes beside that
    file, so it never replaces (or mixes into) the report of the run's own predictions."""
    if predictions is None or predictions == run_dir / PREDICTIONS_FILENAME:
        return run_dir / "report"
    return predictions.parent / f"{predictions.stem}-report"


def check_classes(text: str | None, inputs: ReportInputs) -> list[str] | None:
    """The --classes for the grids, each checked against the file's class names."""
    if not text:
        return None
    classes = [c.strip() for c in text.split(",") if c.strip()]
    for name in classes:
        try:
            inputs.predictions.class_index(name)
        except KeyError as error:
            raise ReportInputError(f"--classes: {error.args[0]}") from None
    return classes


def check_replaceable(out_dir: Path) -> None:
    """A new report replaces `out_dir` whole: refuse when something there is not a report's
    (a file in the way, a folder holding sub-folders or other files), so --out never deletes
    anything but an old report."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ReportInputError(
            f"Cannot write the report into {display_path(out_dir)}: something that is not a "
            f"folder is in the way. Move it, or pass --out with another folder"
        )
    try:
        foreign = [
            entry.name
            for entry in sorted(out_dir.iterdir())
            if entry.is_symlink() or not entry.is_file() or entry.suffix not in REPORT_SUFFIXES
        ]
    except OSError as error:
        raise ReportInputError(
            f"Cannot write the report into {display_path(out_dir)} ({error.strerror or error}):"
            f" pass --out with a writable folder"
        ) from None
    if foreign:
        raise ReportInputError(
            f"Cannot write the report into {display_path(out_dir)}: it holds {foreign[0]!r}, "
            f"which is not part of a report, and a new report replaces the folder whole. Move "
            f"it away, or pass --out with a new or empty folder"
        )


def check_writable(out_dir: Path) -> None:
    """Fail before any work when the report folder cannot be written: the new report is
    written beside it first (then swapped in), so its parent folder must be writable."""
    check_replaceable(out_dir)
    if reason := why_not_writable(out_dir.parent):
        raise ReportInputError(
            f"Cannot write the report into {display_path(out_dir)} ({reason}): pass --out "
            f"with a writable folder"
        )
    remove_abandoned(out_dir.parent, name=out_dir.name)


def tailacc_line(summary: ReportSummary) -> str:
    """The Tailacc part of the closing line; says why when it is undefined."""
    if summary.tailacc_classes == 0:
        return "Tailacc undefined (no image scored above 0.5 for any class)"
    return (
        f"Tailacc mean {summary.tailacc_mean_first:.3f} at t=0.5 -> "
        f"{summary.tailacc_mean_last:.3f} at the highest t"
    )


def compare(args: argparse.Namespace) -> int:
    """`--compare RUN [RUN ...]`: the comparison folder of several runs (evaluation/compare.py)."""
    try:
        result = compare_runs(args.compare, args.runs_dir, args.out, args.thresholds)
    except (ComparisonError, JsonFileError, PredictionsFormatError, RunNotFoundError) as error:
        logging.getLogger("evaluation").error("%s", error.args[0] if error.args else error)
        return 2
    except OSError as error:  # e.g. the disk filled up while writing the figures
        logging.getLogger("evaluation").error(
            "cannot write %s (%s): pass --out with a writable folder",
            error.filename or "the comparison",
            error.strerror or error,
        )
        return 2
    print(result.grid.markdown())
    print(f"comparison: {display_path(result.out_dir / PDF_FILENAME)} and {MARKDOWN_FILENAME}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare is not None:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("run", "predictions", "classes", "difficult", "voc_root")
            if getattr(args, name) is not None
        ]
        if given:
            parser.error(f"--compare reads each run's own predictions: drop {', '.join(given)}")
        return compare(args)
    out_dir: Path | None = None
    try:
        predictions = resolve_project_path(args.predictions) if args.predictions else None
        run_dir = pick_run_dir(args.run, args.runs_dir, predictions)
        inputs = load_inputs(run_dir, predictions)
        out_dir = (
            resolve_project_path(args.out) if args.out else default_out_dir(run_dir, predictions)
        )
        classes = check_classes(args.classes, inputs)
        check_writable(out_dir)
        # Written beside out_dir, then swapped in whole: a failure leaves the old report.
        with atomic_folder(out_dir) as staging:
            if inputs.predictions.labels is None:
                unlabelled = write_unlabelled_report(
                    inputs.predictions,
                    staging,
                    source=predictions or run_dir / PREDICTIONS_FILENAME,
                    voc_root=args.voc_root,
                    classes=classes,
                    k=args.k,
                )
            else:
                summary = write_report(
                    inputs,
                    staging,
                    voc_root=args.voc_root,
                    classes=classes,
                    k=args.k,
                    num_thresholds=args.thresholds,
                    seed=args.seed,
                    difficult=args.difficult,
                )
    except (ReportInputError, PredictionsFormatError, RunNotFoundError, UnsafePathError) as error:
        # Only the errors that describe the user's input; anything else is a bug and keeps
        # its traceback.
        logging.getLogger("evaluation").error("%s", error.args[0] if error.args else error)
        return 2
    except OSError as error:  # e.g. the disk filled up while writing the figures
        where = display_path(out_dir) if out_dir else error.filename or "the report"
        logging.getLogger("evaluation").error(
            "cannot write the report into %s (%s%s): the previous report there, if any, is "
            "unchanged. Free some space, or pass --out with a writable folder",
            where,
            error.strerror or error,
            f": {error.filename}" if error.filename else "",
        )
        return 2
    if inputs.predictions.labels is None:
        print(f"no labels: {unlabelled.images:,} images ranked, AP needs labels")
        print(f"report: {project_relative(out_dir / 'report.pdf')} and report.md")
        return 0
    print(
        f"mAP {summary.map_sklearn:.4f} (scikit-learn) / {summary.map_voc:.4f} (VOC devkit) "
        f"over {summary.classes_in_map} classes; {tailacc_line(summary)}"
    )
    if summary.cross_validation is not None:
        print(crossval.estimate_line(summary.cross_validation))
    print(f"report: {project_relative(out_dir / 'report.pdf')} and report.md, figures beside")
    return 0


if __name__ == "__main__":
    sys.exit(main())

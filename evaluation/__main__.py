"""`python -m evaluation`: the report of the latest run (or --run), with no arguments needed."""

from __future__ import annotations

import argparse
import logging
import sys

from evaluation import crossval
from evaluation.report import ReportInputError, load_inputs, write_report
from evaluation.tailacc import DEFAULT_NUM_THRESHOLDS, MAX_THRESHOLDS, MIN_THRESHOLDS
from predictions import DEFAULT_RUNS_DIR, PredictionsFormatError, RunNotFoundError, resolve_run_dir
from vocdata.files import project_relative, resolve_project_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Per-class AP, mAP (two AP variants), accuracy vs AP, Tailacc(t), the "
        "training curves and top/bottom image grids of one run, as PNG + PDF figures and "
        "report.md / report.pdf in <run>/report/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--run", default="latest", help="run folder, its name under --runs-dir, or 'latest'"
    )
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where runs live")
    parser.add_argument(
        "--predictions", default=None, help="predictions file to evaluate instead of the run's own"
    )
    parser.add_argument(
        "--voc-root",
        default=None,
        help="dataset root for the image grids (default: the one the run "
        "used, else $VOC_ROOT, else data/VOCdevkit/VOC2012)",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated classes for the image grids (default: 3 classes "
        "with positives, drawn with --seed)",
    )
    parser.add_argument("--k", type=int, default=10, help="images per grid (top-k and bottom-k)")
    parser.add_argument(
        "--thresholds",
        type=int,
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
    parser.add_argument("--out", default=None, help="output folder (default: <run>/report)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run_dir = resolve_run_dir(args.run, args.runs_dir)
        predictions = resolve_project_path(args.predictions) if args.predictions else None
        inputs = load_inputs(run_dir, predictions)
        out_dir = resolve_project_path(args.out) if args.out else run_dir / "report"
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        summary = write_report(
            inputs,
            out_dir,
            voc_root=args.voc_root,
            classes=classes,
            k=args.k,
            num_thresholds=args.thresholds,
            seed=args.seed,
            difficult=args.difficult,
        )
    except (
        ReportInputError,
        PredictionsFormatError,
        RunNotFoundError,
        KeyError,
        ValueError,
    ) as error:
        logging.getLogger("evaluation").error("%s", error.args[0] if error.args else error)
        return 2
    print(
        f"mAP {summary.map_sklearn:.4f} (scikit-learn) / {summary.map_voc:.4f} (VOC devkit) "
        f"over {summary.classes_in_map} classes; Tailacc mean {summary.tailacc_mean_first:.3f} "
        f"at t=0.5 -> {summary.tailacc_mean_last:.3f} at the highest t"
    )
    if summary.cross_validation is not None:
        print(crossval.estimate_line(summary.cross_validation))
    print(f"report: {project_relative(out_dir / 'report.pdf')} and report.md, figures beside")
    return 0


if __name__ == "__main__":
    sys.exit(main())

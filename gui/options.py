"""The command line of the ranking browser (`main_gui.py`), also used by `python -m gui.bench`.

It lives in `gui/` rather than in the script so that the bench and the tests build the same
parser without importing a script; it imports neither torch nor Tk, so `--help` stays quick.
"""

from __future__ import annotations

import argparse

from vocdata.options import add_runs_dir_option, add_voc_root_option


def build_parser() -> argparse.ArgumentParser:
    """Options of the browser; every one has a default (no arguments: the latest run)."""
    parser = argparse.ArgumentParser(
        prog="main_gui.py",
        description="Pick a class and page through the validation images sorted by its "
        "score, highest or lowest first, or through its likely label errors (also on the "
        "training split's out-of-fold scores). Borders: green = contains the class, orange = "
        "difficult, red = absent.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--predictions",
        default=None,
        help="predictions file or run folder (default: the latest run)",
    )
    add_runs_dir_option(parser)
    add_voc_root_option(parser, of_run=True)
    parser.add_argument("--rows", type=int, default=4, help="thumbnail rows per page")
    parser.add_argument("--columns", type=int, default=5, help="thumbnail columns per page")
    parser.add_argument("--thumb-size", type=int, default=150, help="thumbnail width, pixels")
    parser.add_argument(
        "--split",
        choices=("val", "train"),
        default=None,
        help="which predictions of the run to open: 'val' (val_predictions.npz) or 'train' "
        "(train_oof_predictions.npz: every training image scored by the fold model that never "
        "saw it; written by --folds K runs). The run is the folder holding --predictions, or "
        "the run it names (default: as --predictions says)",
    )
    parser.add_argument(
        "--view",
        choices=("ranking", "disagreements", "label-errors"),
        default=None,
        help="what the grid shows first: the whole ranking, the disagreements at the "
        "threshold, or the likely label errors (confident learning). Default: label-errors "
        "for an out-of-fold file, else ranking",
    )
    parser.add_argument(
        "--class",
        dest="class_name",
        default=None,
        help="class to start with (default: the first class with a validation positive)",
    )
    return parser

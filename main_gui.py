"""Browse the validation images ranked by each class's score: `python main_gui.py`.

With no arguments it opens the latest run's predictions; see `python main_gui.py --help`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

STARTED = time.perf_counter()  # before the heavy imports: start-up time is measured from here


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main_gui.py",
        description="Pick a class and page through the validation images sorted by its "
        "score, highest or lowest first. Borders: green = contains the class, orange = "
        "difficult, red = absent.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--predictions",
        default=None,
        help="predictions file or run folder (default: the latest run)",
    )
    parser.add_argument("--runs-dir", default="runs", help="where runs live")
    parser.add_argument(
        "--voc-root",
        default=None,
        help="dataset root the image names are relative to (default: the one "
        "the run used, else $VOC_ROOT, else data/VOCdevkit/VOC2012)",
    )
    parser.add_argument("--rows", type=int, default=4, help="thumbnail rows per page")
    parser.add_argument("--columns", type=int, default=5, help="thumbnail columns per page")
    parser.add_argument("--thumb-size", type=int, default=150, help="thumbnail width, pixels")
    parser.add_argument(
        "--class",
        dest="class_name",
        default=None,
        help="class to start with (default: the first class with a validation positive)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from gui.launch import LaunchError, launch

    try:
        app = launch(args, started=STARTED)
    except LaunchError as error:
        return error.report()
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

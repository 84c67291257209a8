"""Browse the validation images ranked by each class's score: `python main_gui.py`.

With no arguments it opens the latest run's predictions; see `python main_gui.py --help`.
"""

from __future__ import annotations

import logging
import sys
import time

STARTED = time.perf_counter()  # before the heavy imports: start-up time is measured from here

from gui.options import build_parser  # noqa: E402  (light: no torch, no Tk)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from gui.launch import LaunchError, launch, switched_args

    try:
        app = launch(args, started=STARTED)
        while app.run() is not None:  # the person switched split: open the other file
            args = switched_args(args, app)
            app = launch(args, started=time.perf_counter())
    except LaunchError as error:
        return error.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())

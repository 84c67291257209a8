"""Train the VOC 2012 multi-label classifier. Every option has a default: `python main_train.py`.

See `python main_train.py --help`, and the README for the dataset path and the outputs.
"""

from __future__ import annotations

import logging
import sys

from predictions.runs import RunNotFoundError
from training import config_from_argv, run
from training.backbones import WeightsUnavailableError
from vocdata.errors import VocDataError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_argv(argv)
        run_dir = run(config)
    except (VocDataError, WeightsUnavailableError, RunNotFoundError, FileNotFoundError) as error:
        logging.getLogger("main_train").error("%s", error)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("main_train").error(
            "interrupted: every completed epoch is saved; continue with "
            "`python main_train.py --resume latest` (or the run folder)"
        )
        return 130
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

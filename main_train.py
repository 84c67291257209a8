"""Train the VOC 2012 multi-label classifier. Every option has a default: `python main_train.py`.

See `python main_train.py --help`, and the README for the dataset path and the outputs.
"""

from __future__ import annotations

import logging
import sys

from predictions.runs import RunNotFoundError
from training import config_from_argv, run
from training.backbones import WeightsUnavailableError
from training.config_checks import ConfigError
from training.runfolder import RunFolderError, TrainingInterrupted
from vocdata.errors import VocDataError, describe_error
from vocdata.jsonio import JsonFileError

# Problems with what the user typed or has on disk: one line on stderr and exit code 2.
USER_ERRORS = (
    ConfigError,
    VocDataError,
    WeightsUnavailableError,
    RunNotFoundError,
    RunFolderError,
    JsonFileError,
    OSError,
)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("main_train")
    try:
        config = config_from_argv(argv)
        run_dir = run(config)
    except USER_ERRORS as error:
        log.error("%s", describe_error(error))
        return 2
    except TrainingInterrupted as stop:
        log.error("%s", stop.message())
        return 130
    except KeyboardInterrupt:
        log.error("interrupted before the run folder was created: nothing was written")
        return 130
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

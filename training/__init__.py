"""Transfer learning on VOC: the backbone registry, the loss, the epoch loop, checkpoints.

`run(config)` is the whole job; `main_train.py` only parses options into a `TrainConfig`.
"""

from training.config import TrainConfig, build_parser, config_from_argv
from training.trainer import run

__all__ = ["TrainConfig", "build_parser", "config_from_argv", "run"]

"""The one on-disk contract between training, evaluation and the GUI.

A predictions file holds, for every validation image in a fixed order: the sigmoid scores of
all classes, the VOC labels (1 / 0 = difficult / -1), the image file name relative to the
dataset root, the class names, and where the scores came from (provenance).
"""

from predictions.format import (
    FORMAT_VERSION,
    PREDICTIONS_FILENAME,
    Predictions,
    PredictionsFormatError,
    load_predictions,
    save_predictions,
    scores_from_logits,
)
from predictions.runs import (
    DEFAULT_RUNS_DIR,
    ImageRoot,
    RunNotFoundError,
    find_predictions_file,
    image_root_of,
    resolve_run_dir,
    voc_root_of,
    write_latest_pointer,
)

__all__ = [
    "DEFAULT_RUNS_DIR",
    "FORMAT_VERSION",
    "PREDICTIONS_FILENAME",
    "ImageRoot",
    "Predictions",
    "PredictionsFormatError",
    "RunNotFoundError",
    "find_predictions_file",
    "image_root_of",
    "load_predictions",
    "resolve_run_dir",
    "save_predictions",
    "scores_from_logits",
    "voc_root_of",
    "write_latest_pointer",
]

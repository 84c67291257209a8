"""From command-line options to an open window, with clear errors instead of tracebacks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gui.cam import CamProvider, model_file_for
from gui.model import RankingModel
from gui.review import MarksFileError, MarkStore, marks_path
from gui.thumbnails import ThumbnailCache
from predictions import (
    Predictions,
    PredictionsFormatError,
    RunNotFoundError,
    find_predictions_file,
    images_root,
    load_predictions,
)

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The app cannot start; the message says why and what to do."""

    def report(self) -> int:
        """Show the message (a dialog when there is a screen, stderr when headless); exit 2."""
        message = str(self)
        log.error("%s", message)
        if has_display():
            import PySimpleGUI as sg

            sg.popup_error(message, title="VOC ranking browser")
        return 2


def has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def load_for_gui(predictions_arg: str | None, runs_dir: str) -> tuple[Predictions, Path]:
    try:
        path = find_predictions_file(predictions_arg, runs_dir)
        return load_predictions(path), path
    except (RunNotFoundError, PredictionsFormatError) as error:
        raise LaunchError(f"Cannot open predictions: {error}") from error


def launch(args: argparse.Namespace, started: float):
    """Load everything, open the window on the first page, and return the app."""
    predictions, path = load_for_gui(args.predictions, args.runs_dir)
    root = images_root(predictions, args.voc_root)
    if not root.is_dir():
        raise LaunchError(
            f"Image folder not found: {root}. Pass --voc-root (or set VOC_ROOT) "
            f"to the dataset root the predictions' file names are relative to."
        )
    if not has_display():
        raise LaunchError(
            "No display: run main_gui.py on a desktop, or under a virtual screen "
            "(xvfb-run -a python main_gui.py)."
        )
    model = RankingModel(predictions, page_size=args.rows * args.columns)
    if args.class_name:
        try:
            model.set_class(predictions.class_index(args.class_name))
        except KeyError as error:
            raise LaunchError(str(error.args[0])) from error
    size = (args.thumb_size, round(args.thumb_size * 0.75))
    cache = ThumbnailCache(root, size=size)
    model_file, no_model_reason = model_file_for(path)
    cam = CamProvider(model_file, root, reason=no_model_reason)
    marks, marks_problem = None, ""
    try:
        marks = MarkStore(marks_path(path))
    except MarksFileError as error:  # marks are not saved this session; the message says why
        marks_problem = f"{error} Marks are off until then."
    from gui.app import BrowserApp

    app = BrowserApp(
        model,
        cache,
        columns=args.columns,
        title=f"VOC ranking browser — {path}",
        screens_dir=path.parent / "screens",
        started=started,
        cam=cam,
        marks=marks,
        marks_problem=marks_problem,
        exports_dir=path.parent / "exports",
    )
    return app

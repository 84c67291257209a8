"""From command-line options to an open window, with clear errors instead of tracebacks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gui.cam import CamProvider
from gui.camsource import cam_source_for
from gui.model import RankingModel, View
from gui.review import MarksFileError, MarkStore, marks_path
from gui.runsplit import describe_split, split_file, split_switch_for
from gui.thumbnails import ThumbnailCache
from predictions import (
    Predictions,
    PredictionsFormatError,
    RunNotFoundError,
    find_predictions_file,
    load_predictions,
)
from predictions.runs import image_root_of
from vocdata.paths import display_path

log = logging.getLogger(__name__)

MIN_THUMB_SIZE = 32  # narrower tiles cannot hold their rank/score caption
MAX_THUMB_SIZE = 1000
DIALOG_TITLE = "VOC ranking browser"


class LaunchError(RuntimeError):
    """The app cannot start; the message says why and what to do."""

    def report(self) -> int:
        """Show the message (a dialog when there is a screen, stderr when headless); exit 2."""
        message = str(self)
        log.error("%s", message)
        if has_display():
            show_error_dialog(message)
        return 2


def error_dialog(message: str):
    """A modal message with one "OK" button that Return (or Escape) also presses."""
    import PySimpleGUI as sg

    window = sg.Window(
        DIALOG_TITLE,
        [[sg.Text(message, size=(70, None))], [sg.Button("OK", bind_return_key=True)]],
        finalize=True,
        keep_on_top=True,
        modal=True,
    )
    window.bind("<Escape>", "OK")
    window["OK"].set_focus()
    return window


def show_error_dialog(message: str) -> None:
    """Show `message` until the user closes it."""
    import PySimpleGUI as sg

    window = error_dialog(message)
    while window.read()[0] not in (sg.WIN_CLOSED, "OK"):
        pass
    window.close()


def check_layout_options(args: argparse.Namespace) -> None:
    """Grid options that cannot draw a page are refused before anything is loaded."""
    for flag, value in (("--rows", args.rows), ("--columns", args.columns)):
        if value < 1:
            raise LaunchError(f"{flag} {value}: a page needs at least 1 (default 4 x 5)")
    if not MIN_THUMB_SIZE <= args.thumb_size <= MAX_THUMB_SIZE:
        raise LaunchError(
            f"--thumb-size {args.thumb_size}: choose {MIN_THUMB_SIZE} to {MAX_THUMB_SIZE} "
            f"pixels (default 150)"
        )


def first_class_with_positives(model: RankingModel) -> int:
    """The class to open on: the first with a defined AP (a validation positive), so the first
    page is not an all-red page with "AP n/a"; the first class if none has one."""
    defined = [c for c, ap in enumerate(model.class_ap) if ap == ap]  # NaN != NaN
    return defined[0] if defined else 0


def has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def load_for_gui(
    predictions_arg: str | None, runs_dir: str, split: str | None = None
) -> tuple[Predictions, Path]:
    try:
        if split:
            path = split_file(predictions_arg, runs_dir, split)
        else:
            path = find_predictions_file(predictions_arg, runs_dir)
        return load_predictions(path), path
    except (RunNotFoundError, PredictionsFormatError) as error:
        raise LaunchError(f"Cannot open predictions: {error}") from error


def switched_args(args: argparse.Namespace, app) -> argparse.Namespace:
    """The options that open the file the person switched to, on the same class and review
    view (from the whole ranking, the other file opens on its own default: the likely label
    errors for the out-of-fold file, the ranking for val)."""
    view = None if app.model.view is View.RANKING else app.model.view.value
    return argparse.Namespace(
        **{
            **vars(args),
            "predictions": str(app.switch_to),
            "split": None,
            "class_name": app.model.class_name,
            "view": view,
        }
    )


def launch(args: argparse.Namespace, started: float):
    """Load everything, open the window on the first page, and return the app."""
    check_layout_options(args)
    predictions, path = load_for_gui(args.predictions, args.runs_dir, getattr(args, "split", None))
    if predictions.num_images == 0:
        raise LaunchError(
            f"Cannot open predictions: {path} holds no images (0 rows). Pass the predictions "
            f"file of a run that validated at least one image"
        )
    image_root = image_root_of(predictions, args.voc_root)
    voc_root = image_root.path
    if not voc_root.is_dir():
        raise LaunchError(
            f"Image folder not found: {voc_root}. Pass --voc-root (or set VOC_ROOT) "
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
    else:
        model.set_class(first_class_with_positives(model))
    view = getattr(args, "view", None)
    if view is None and predictions.provenance.get("out_of_fold") and model.has_labels:
        view = View.LABEL_ERRORS  # what an out-of-fold file is for
    if view:
        try:
            model.set_view(view)
        except ValueError as error:
            raise LaunchError(f"--view {view}: {error}") from error
    size = (args.thumb_size, round(args.thumb_size * 0.75))
    cache = ThumbnailCache(voc_root, size=size)
    cam = CamProvider(cam_source_for(predictions, path), voc_root)
    marks, marks_problem = None, ""
    try:
        marks = MarkStore(marks_path(path))
    except MarksFileError as error:  # marks are not saved this session; the message says why
        marks_problem = f"{error} Marks are off until then."
    from gui.app import BrowserApp

    split_words = describe_split(predictions, path)
    app = BrowserApp(
        model,
        cache,
        columns=args.columns,
        title=f"VOC ranking browser — {display_path(path)} — {split_words}",
        screens_dir=path.parent / "screens",
        started=started,
        cam=cam,
        marks=marks,
        marks_problem=marks_problem,
        exports_dir=path.parent / "exports",
        source_line=f"{split_words} · {image_root.note}",
        split_switch=split_switch_for(path),
    )
    return app

"""The large view of one image: all class scores, the activation map of the selected class,
marks, and stepping through the current view without going back to the grid.

Thin like the main window: the map comes from `gui.cam.CamProvider` (a worker thread posts
CAM_READY here), marks from `gui.review.MarkStore`, the rows from `RankingModel`.
"""

from __future__ import annotations

import time

import PySimpleGUI as sg
from PIL import Image

from evaluation.ranking import TRUTH_WORDS, format_score
from gui.cam import CamKey, CamProvider, overlay
from gui.model import RankedImage, RankingModel
from gui.review import MarksFileError, MarkStore, printable
from gui.thumbnails import decode_inside, to_ppm

CAM_READY = "-CAM-READY-"
DETAIL_SIZE = (640, 480)
DETAIL_KEYS = {
    "<Key-c>": "-CAM-KEY-",
    "<Key-l>": "-MARK-LABEL-",
    "<Key-m>": "-MARK-MODEL-",
    "<Left>": "-D-PREV-",
    "<Right>": "-D-NEXT-",
    "<Escape>": "Close",
}
DETAIL_LEGEND = (
    "keys: C activation map · L label looks wrong · M model wrong (again: unmark) · "
    "←/→ previous/next in the view · Esc close"
)


class DetailView:
    """One modal window; `position` walks the model's current view (ranking or disagreements)."""

    def __init__(
        self,
        model: RankingModel,
        voc_root,
        position: int,
        cam: CamProvider,
        marks: MarkStore | None,
        marks_problem: str = "",
    ) -> None:
        self.model = model
        self.voc_root = voc_root
        self.rows = model.view_rows()
        self.position = position
        self.cam = cam
        self.marks = marks
        self.marks_problem = marks_problem
        self.picture: Image.Image | None = None
        self.heatmap = None  # the map on screen, (H, W) in [0, 1], or None
        self.shown: Image.Image | None = None  # what -BIG- displays
        self.cam_on = False
        self._closed = False
        self.window = sg.Window(
            "image", self._layout(), finalize=True, modal=True, keep_on_top=True
        )
        for key, event in DETAIL_KEYS.items():
            self.window.bind(key, event)
        self.show()

    # -- layout --------------------------------------------------------------------------------
    def _layout(self) -> list[list[sg.Element]]:
        cam_tip = self.cam.source.tooltip()
        marks_off = self.marks is None
        marks_tip = self.marks_problem or "saved next to the predictions file"
        return [
            [sg.Text("", key="-TITLE-", font=("Helvetica", 11, "bold"), size=(100, 2))],
            [
                sg.Image(key="-BIG-", size=DETAIL_SIZE),
                sg.Table(
                    [["", "", ""]] * self.model.predictions.num_classes,
                    headings=["class", "score", "truth"],
                    key="-SCORES-",
                    num_rows=self.model.predictions.num_classes,
                    auto_size_columns=False,
                    col_widths=[12, 8, 9],
                    justification="left",
                ),
            ],
            [
                sg.Checkbox(
                    "where it looked (activation map)",
                    key="-CAM-",
                    enable_events=True,
                    disabled=not self.cam.available,
                    tooltip=cam_tip,
                ),
                sg.Text("" if self.cam.available else cam_tip, key="-CAM-STATUS-", size=(100, 2)),
            ],
            [
                sg.Button(
                    "label looks wrong", key="-MARK-LABEL-", disabled=marks_off, tooltip=marks_tip
                ),
                sg.Button("model wrong", key="-MARK-MODEL-", disabled=marks_off, tooltip=marks_tip),
                sg.Text("", key="-MARK-STATUS-", size=(40, 1)),
            ],
            [
                sg.Button("◀ previous", key="-D-PREV-"),
                sg.Button("next ▶", key="-D-NEXT-"),
                sg.Button("Close"),
                sg.Text(DETAIL_LEGEND, font=("Helvetica", 9)),
            ],
        ]

    # -- state -----------------------------------------------------------------------------------
    @property
    def item(self) -> RankedImage:
        return self.model.item(int(self.rows[self.position]))

    @property
    def cam_key(self) -> CamKey:
        return (self.item.file, self.model.class_index)

    def show(self) -> None:
        """Draw the image at `position`: picture, scores, mark, and the map if it is on."""
        item, model = self.item, self.model
        self.picture, reason = decode_inside(self.voc_root, item.file, DETAIL_SIZE)
        where = f"{model.view.words} {self.position + 1:,} of {len(self.rows):,}"
        if model.label_errors_only:
            quality = model.label_quality()
            past = bool(quality.past_threshold[self.position])
            where += (
                f", label error score {format_score(float(quality.error_scores[self.position]))}"
                + (", past the confident-learning threshold" if past else "")
            )
        name = printable(item.file)
        self.window["-TITLE-"].update(
            f"{name}   rank {item.rank:,} for '{model.class_name}'"
            + (f" — {reason}" if reason else "")
            + f"\n({where})"
        )
        self.window.set_title(name)
        rows = [
            [name, format_score(score), TRUTH_WORDS[label]]
            for name, score, label in model.detail_rows(item.row)
        ]
        highlight = [(r, "yellow") for r, row in enumerate(rows) if row[0] == model.class_name]
        self.window["-SCORES-"].update(values=rows, row_colors=highlight)
        self._show_mark()
        self.heatmap = None
        if self.cam_on:
            self._request_cam()
        self._draw()

    def _draw(self) -> None:
        assert self.picture is not None
        self.shown = self.picture if self.heatmap is None else overlay(self.picture, self.heatmap)
        self.window["-BIG-"].update(data=to_ppm(self.shown))

    def _show_mark(self) -> None:
        if self.marks is None:
            self.window["-MARK-STATUS-"].update(self.marks_problem[:80])
            return
        words = self.marks.words(self.model.class_name, self.item.file)
        self.window["-MARK-STATUS-"].update(f"marked: {words}" if words else "not marked")

    def _request_cam(self) -> None:
        heatmap = self.cam.get(*self.cam_key)
        if heatmap is not None:
            self.heatmap = heatmap
            self._show_cam_source()
            return
        first = not self.cam.loaded
        self.window["-CAM-STATUS-"].update(
            "computing…" + (" (loading the model the first time)" if first else "")
        )
        self.cam.request(*self.cam_key, self._cam_done, row=self.item.row)

    def _show_cam_source(self) -> None:
        """Say whose map is on screen: the file's model, the row's own model, or the mean."""
        self.window["-CAM-STATUS-"].update(
            f"activation map of '{self.model.class_name}' {self.cam.source.describe(self.item.row)}"
        )

    def _cam_done(self, key: CamKey, error: str | None) -> None:  # runs in the worker thread
        if not self._closed:
            self.window.write_event_value(CAM_READY, (key, error))

    def set_cam(self, on: bool) -> None:
        if not self.cam.available:
            return
        self.cam_on = on
        self.window["-CAM-"].update(value=on)
        if on:
            self._request_cam()
        else:
            self.heatmap = None
            self.window["-CAM-STATUS-"].update("")
        self._draw()

    # -- events ----------------------------------------------------------------------------------
    def handle(self, event, values) -> bool:
        """React to one event; False when the window should close."""
        if event in (sg.WIN_CLOSED, "Close"):
            return False
        if event == "-CAM-":
            self.set_cam(bool(values["-CAM-"]))
        elif event == "-CAM-KEY-":
            self.set_cam(not self.cam_on)
        elif event == CAM_READY:
            key, error = values[CAM_READY]
            if error:
                self.window["-CAM-STATUS-"].update(f"activation map failed: {error}"[:120])
            elif self.cam_on and key == self.cam_key:
                self.heatmap = self.cam.get(*key)
                self._show_cam_source()
                self._draw()
        elif event in ("-MARK-LABEL-", "-MARK-MODEL-") and self.marks is not None:
            mark = "label" if event == "-MARK-LABEL-" else "model"
            try:
                self.marks.toggle(self.model.class_name, self.item.file, mark)
            except MarksFileError as error:  # the session goes on; the mark is not kept
                self.window["-MARK-STATUS-"].update(str(error)[:120])
            else:
                self._show_mark()
        elif event in ("-D-PREV-", "-D-NEXT-"):
            step = 1 if event == "-D-NEXT-" else -1
            position = min(max(self.position + step, 0), len(self.rows) - 1)
            if position != self.position:
                self.position = position
                self.show()
        return True

    def pump_until(self, condition, timeout: float = 60.0) -> None:
        """Handle events until `condition()` holds (for scripted use: tests, screenshots)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"detail view: condition not met within {timeout} s")
            event, values = self.window.read(timeout=30)
            if event != sg.TIMEOUT_EVENT and not self.handle(event, values):
                raise RuntimeError("the detail window was closed")

    def send(self, event: str, value=None, timeout: float = 10.0) -> None:
        """Post an event as a user action would, and process the queue up to it."""
        self.window.write_event_value(event, value)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            read, values = self.window.read(timeout=30)
            if read == sg.TIMEOUT_EVENT:
                continue
            if not self.handle(read, values):
                raise RuntimeError("the detail window was closed")
            if read == event:
                return
        raise TimeoutError(f"detail view: {event} not handled within {timeout} s")

    def run(self) -> None:
        try:
            while True:
                event, values = self.window.read()
                if not self.handle(event, values):
                    break
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        self.window.close()

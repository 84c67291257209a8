"""The window and its event loop: thin on purpose. State lives in `RankingModel`, pixels in
`ThumbnailCache`; this file only wires them to PySimpleGUI elements and keys."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import PySimpleGUI as sg
from PIL import Image, ImageColor

from evaluation.ranking import TRUTH_WORDS, format_score
from gui.cam import CamProvider
from gui.camsource import CamSource
from gui.detail import DetailView
from gui.model import RankedImage, RankingModel, View
from gui.review import MarkStore, is_undecodable, output_file, write_csv
from gui.runsplit import SplitSwitch
from gui.threshold import parse_threshold, step_threshold
from gui.thumbnails import (
    ThumbnailCache,
    mark_threshold,
    page_image,
    tile,
    to_ppm,
)
from vocdata.atomic import atomic_write
from vocdata.paths import UnsafePathError, project_relative

log = logging.getLogger(__name__)

THUMB_READY = "-THUMB-READY-"
KEYS = {
    "<Left>": "-PREV-",
    "<Prior>": "-PREV-",
    "<Right>": "-NEXT-",
    "<Next>": "-NEXT-",
    "<Home>": "-FIRST-",
    "<End>": "-LAST-",
    "<Control-b>": "-BEST-F1-",
    "<Control-Up>": "-T-UP-",
    "<Control-Down>": "-T-DOWN-",
    "<Control-t>": "-FOCUS-T-",
    "<Control-d>": "-REVIEW-KEY-",
    "<Control-l>": "-LABEL-ERRORS-KEY-",
    "<Control-e>": "-EXPORT-",
    "<Control-Return>": "-OPEN-",
}
SHORT_MARKS = {"label": "⚑ label?", "model": "⚑ model"}  # captions are 20 characters wide
LEGEND = (
    "click an image (or Ctrl+Enter) for all 20 scores, its activation map and marks\n"
    "{border}; blue bar and ▼t: the first image below the threshold t (▼CL: the first label "
    "below the confident-learning threshold); ⚑ label? / ⚑ model: your marks\n"
    "keys: ←/→ PgUp/PgDn Home/End pages · Ctrl+↑/↓ threshold ±0.05 · Ctrl+B best-F1 threshold "
    "· Ctrl+T type a threshold\n"
    "Ctrl+D disagreements · Ctrl+L likely label errors · Ctrl+E export CSV · in the large "
    "view: C activation map, L / M mark, ←/→ step, Esc close"
)
THEME = "LightGrey1"


@dataclass
class PageTiming:
    """Time from an event to every tile of the new page drawn."""

    event: str
    cached: bool
    milliseconds: float


class BrowserApp:
    def __init__(
        self,
        model: RankingModel,
        cache: ThumbnailCache,
        columns: int = 5,
        title: str = "VOC ranking browser",
        screens_dir: Path | None = None,
        started: float | None = None,
        cam: CamProvider | None = None,
        marks: MarkStore | None = None,
        marks_problem: str = "",
        exports_dir: Path | None = None,
        source_line: str = "",
        split_switch: SplitSwitch | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.columns = columns
        self.screens_dir = screens_dir or Path("screens")
        self.exports_dir = exports_dir or self.screens_dir.parent / "exports"
        self.cam = cam or CamProvider(CamSource(reason="no model file was given"), cache.voc_root)
        self.source_line = source_line
        self.split_switch = split_switch or SplitSwitch()
        self.switch_to: Path | None = None  # set when the person asks for the other split
        self.marks = marks
        self.marks_problem = marks_problem
        self._marker_row: int | None = None
        self.displayed: list[RankedImage] = []
        self.timings: list[PageTiming] = []
        self._waiting: set[str] = set()
        self._page_started = 0.0
        self._page_event = ""
        self._closed = False
        self._started = started if started is not None else time.perf_counter()
        self.startup_seconds: float | None = None
        sg.theme(THEME)
        self.background = ImageColor.getrgb(sg.theme_background_color())
        self.window = sg.Window(
            title, self._layout(), finalize=True, resizable=True, return_keyboard_events=False
        )
        for key, event in KEYS.items():
            self.window.bind(key, event)
        self.window["-RANK-"].bind("<Return>", "-GO-")
        self.window["-THRESHOLD-"].bind("<Return>", "-SET-T-")
        self.show_page("start")
        if marks_problem:
            self.window["-MESSAGE-"].update(marks_problem)

    # -- layout ------------------------------------------------------------------------------
    def _layout(self) -> list[list[sg.Element]]:
        labels = self.model.class_labels()
        tile_w = self.cache.size[0] + 10
        grid = []
        for r in range(-(-self.model.page_size // self.columns)):
            row = []
            for c in range(self.columns):
                slot = r * self.columns + c
                if slot >= self.model.page_size:
                    break
                row.append(
                    sg.Column(
                        [
                            [
                                sg.Image(
                                    key=("-TILE-", slot),
                                    enable_events=True,
                                    size=(tile_w, self.cache.size[1] + 10),
                                )
                            ],
                            [
                                sg.Text(
                                    "",
                                    key=("-CAPTION-", slot),
                                    size=(tile_w // 8, 2),
                                    font=("Helvetica", 9),
                                )
                            ],
                        ],
                        pad=(3, 3),
                    )
                )
            grid.append(row)
        controls = [
            sg.Text("Class"),
            sg.Combo(
                labels,
                default_value=labels[self.model.class_index],
                key="-CLASS-",
                readonly=True,
                enable_events=True,
                size=(26, 20),
            ),
            sg.Radio(
                "highest first", "direction", key="-HIGHEST-", default=True, enable_events=True
            ),
            sg.Radio("lowest first", "direction", key="-LOWEST-", enable_events=True),
            sg.Text("  go to rank"),
            sg.Input(key="-RANK-", size=(7, 1)),
            sg.Button("Go", key="-GO-"),
            sg.Button("Save page as PNG", key="-SAVE-"),
        ]
        no_labels = "" if self.model.has_labels else "this predictions file has no labels"
        held_out = (
            ""
            if self.model.scores_held_out
            else (" Careful: these scores come from models trained on these images.")
        )
        views = [
            sg.Text("view"),
            sg.Radio(
                "whole ranking", "view", key="-VIEW-RANKING-", default=True, enable_events=True
            ),
            sg.Radio(
                "disagreements",
                "view",
                key="-REVIEW-",
                enable_events=True,
                disabled=bool(no_labels),
                tooltip=no_labels
                or "labelled absent above the threshold (highest first), then labelled "
                "present below it (lowest first) (Ctrl+D)",
            ),
            sg.Radio(
                "likely label errors",
                "view",
                key="-LABEL-ERRORS-",
                enable_events=True,
                disabled=bool(no_labels),
                tooltip=no_labels
                or "every label of the class by confident learning on these held-out "
                "scores: first those past its threshold (labelled absent but scored high, "
                "labelled present but scored low; the blue bar ▼CL ends them), then the rest, "
                "each part most likely wrong first (Ctrl+L)."
                + held_out,
            ),
            sg.Text("   "),
            sg.Button(
                self.split_switch.label,
                key="-SWITCH-SPLIT-",
                disabled=self.split_switch.target is None,
                tooltip=self.split_switch.tooltip,
            ),
        ]
        threshold_controls = [
            sg.Text("threshold"),
            sg.Input(f"{self.model.threshold:g}", key="-THRESHOLD-", size=(7, 1)),
            sg.Button("Set", key="-SET-T-"),
            sg.Button(
                "best F1",
                key="-BEST-F1-",
                disabled=bool(no_labels),
                tooltip=no_labels or "the threshold with the best F1 on this class (Ctrl+B)",
            ),
            sg.Button("Export CSV", key="-EXPORT-", tooltip="the whole current view (Ctrl+E)"),
        ]
        navigation = [
            sg.Button("Top", key="-FIRST-"),
            sg.Button("◀ Previous", key="-PREV-"),
            sg.Button("Next ▶", key="-NEXT-"),
            sg.Button("Bottom", key="-LAST-"),
        ]
        return [
            [sg.Text(self.source_line, key="-SOURCE-", font=("Helvetica", 9))],
            controls,
            views,
            threshold_controls,
            [sg.Text("", key="-STATUS-", font=("Helvetica", 12, "bold"), size=(90, 1))],
            [sg.Text("", key="-PRECISION-", size=(120, 1))],
            [sg.Text("", key="-THRESHOLD-LINE-", size=(110, 1))],
            *grid,
            navigation,
            [
                sg.Text(
                    LEGEND.format(border=self.model.border_legend()),
                    font=("Helvetica", 9),
                    key="-LEGEND-",
                )
            ],
            [sg.Text("", key="-MESSAGE-", size=(110, 1), text_color="dark red")],
        ]

    # -- drawing -----------------------------------------------------------------------------
    def _tile(self, thumbnail: Image.Image | None, label: int | None) -> Image.Image:
        return tile(thumbnail, label, self.cache.size, background=self.background)

    def _draw_slot(self, slot: int, item: RankedImage | None) -> None:
        if item is None:
            self.window[("-TILE-", slot)].update(data=to_ppm(self._tile(None, None)))
            self.window[("-CAPTION-", slot)].update("")
            return
        thumbnail = self.cache.get(item.file)
        picture = self._tile(thumbnail, item.label)
        below = item.row == self._marker_row
        if below:
            picture = mark_threshold(picture)
        self.window[("-TILE-", slot)].update(data=to_ppm(picture))
        self.window[("-CAPTION-", slot)].update(self.caption(item, below))

    def caption(self, item: RankedImage, below: bool = False) -> str:
        """'#rank  score' (and '▼t' at the threshold marker), then truth and mark."""
        mark = self.marks.get(self.model.class_name, item.file) if self.marks else None
        cut = " ▼CL" if self.model.label_errors_only else " ▼t"
        return (
            f"#{item.rank:,}  {format_score(item.score)}"
            + (cut if below else "")
            + f"\n{TRUTH_WORDS[item.label]}"
            + (f"  {SHORT_MARKS[mark]}" if mark else "")
        )

    def show_page(self, event: str) -> None:
        """Draw the model's current page; missing thumbnails arrive via THUMB_READY events."""
        self._page_started, self._page_event = time.perf_counter(), event
        self.displayed = self.model.page_items()
        self._marker_row = self.model.marker_row()
        for slot in range(self.model.page_size):
            self._draw_slot(slot, self.displayed[slot] if slot < len(self.displayed) else None)
        self.window["-STATUS-"].update(self.model.status_line())
        self.window["-PRECISION-"].update(self.model.precision_line())
        self.window["-THRESHOLD-LINE-"].update(self.model.threshold_line())
        self.window["-THRESHOLD-"].update(format_score(self.model.threshold))
        view_key = {
            View.RANKING: "-VIEW-RANKING-",
            View.DISAGREEMENTS: "-REVIEW-",
            View.LABEL_ERRORS: "-LABEL-ERRORS-",
        }[self.model.view]
        self.window[view_key].update(value=True)
        self.window["-CLASS-"].update(value=self.model.class_labels()[self.model.class_index])
        self.window["-LOWEST-" if self.model.lowest_first else "-HIGHEST-"].update(value=True)
        ranking = self.model.view is View.RANKING  # the other views have their own order
        for key in ("-HIGHEST-", "-LOWEST-"):
            self.window[key].update(disabled=not ranking)
        needed = [item.file for item in self.displayed if self.cache.get(item.file) is None]
        # A background prefetch may finish one of them between the look-up and this call:
        # `prefetch` then skips it (no callback), so it is drawn now instead of awaited.
        queued = set(self.cache.prefetch(needed, self._thumbnail_ready)) if needed else set()
        self._waiting = set(queued)
        for slot, item in enumerate(self.displayed):
            if item.file in needed and item.file not in queued:
                self._draw_slot(slot, item)
        if not self._waiting:
            self._page_drawn(cached=not needed)
        # Neighbouring pages next, so paging on feels instant.
        for page in (self.model.page + 1, self.model.page - 1):
            if 0 <= page < self.model.num_pages:
                self.cache.prefetch(item.file for item in self.model.page_items(page))

    def _thumbnail_ready(self, relative: str) -> None:  # runs in a worker thread
        if not self._closed:
            self.window.write_event_value(THUMB_READY, relative)

    def _on_thumbnail(self, relative: str) -> None:
        for slot, item in enumerate(self.displayed):
            if item.file == relative:
                self._draw_slot(slot, item)
        if relative in self._waiting:
            self._waiting.discard(relative)
            if not self._waiting:
                self._page_drawn(cached=False)

    def _page_drawn(self, cached: bool) -> None:
        self.window.refresh()
        elapsed = (time.perf_counter() - self._page_started) * 1000
        self.timings.append(PageTiming(self._page_event, cached, elapsed))
        if self.startup_seconds is None:
            self.startup_seconds = time.perf_counter() - self._started
            log.info("first page drawn %.2f s after start", self.startup_seconds)
            self.cache.prefetch(self.model.front_files(), background=True)
        log.debug(
            "page drawn after %s in %.1f ms (%s)",
            self._page_event,
            elapsed,
            "cached" if cached else "decoded",
        )

    # -- events ------------------------------------------------------------------------------
    def handle(self, event, values) -> bool:
        """React to one event; False when the window should close."""
        if event in (sg.WIN_CLOSED, "Exit"):
            return False
        self.window["-MESSAGE-"].update("")
        model = self.model
        if event == THUMB_READY:
            self._on_thumbnail(values[THUMB_READY])
            return True
        page_before = self._view_state()
        if event == "-CLASS-":
            model.set_class(model.class_labels().index(values["-CLASS-"]))
        elif event in ("-HIGHEST-", "-LOWEST-"):
            model.set_lowest_first(event == "-LOWEST-")
        elif event == "-NEXT-":
            model.next_page()
        elif event == "-PREV-":
            model.previous_page()
        elif event == "-FIRST-":
            model.first_page()
        elif event == "-LAST-":
            model.last_page()
        elif event == "-GO-":
            self._go_to_rank(values.get("-RANK-", ""))
        elif event == "-SAVE-":
            self.save_page()
            return True
        elif event == "-SET-T-":
            self._set_threshold(values.get("-THRESHOLD-", ""))
        elif event in ("-T-UP-", "-T-DOWN-"):
            model.set_threshold(step_threshold(model.threshold, 1 if event == "-T-UP-" else -1))
        elif event == "-BEST-F1-" and model.has_labels:
            if model.set_best_threshold() is None:
                self.window["-MESSAGE-"].update(
                    f"'{model.class_name}' has no counted positive: no F1 to maximise"
                )
        elif event == "-FOCUS-T-":
            self.window["-THRESHOLD-"].set_focus()
            return True
        elif event == "-VIEW-RANKING-":
            model.set_view(View.RANKING)
        elif event == "-REVIEW-" and model.has_labels:
            model.set_view(View.DISAGREEMENTS if values.get("-REVIEW-", True) else View.RANKING)
        elif event == "-LABEL-ERRORS-" and model.has_labels:
            model.set_view(View.LABEL_ERRORS)
        elif event == "-REVIEW-KEY-" and model.has_labels:
            model.toggle_view(View.DISAGREEMENTS)
        elif event == "-LABEL-ERRORS-KEY-" and model.has_labels:
            model.toggle_view(View.LABEL_ERRORS)
        elif event == "-SWITCH-SPLIT-":
            if self.split_switch.target is None:
                self.window["-MESSAGE-"].update(self.split_switch.tooltip)
                return True
            self.switch_to = self.split_switch.target
            return False
        elif event == "-EXPORT-":
            self.export_view()
            return True
        elif event == "-OPEN-":
            self.show_detail(0)
            return True
        elif isinstance(event, tuple) and event[0] == "-TILE-":
            self.show_detail(event[1])
            return True
        if self._view_state() != page_before:
            self.show_page(event if isinstance(event, str) else str(event))
        return True

    def _view_state(self) -> tuple:
        model = self.model
        return (
            model.class_index,
            model.lowest_first,
            model.page,
            model.threshold,
            model.view,
        )

    def _set_threshold(self, text: str) -> None:
        try:
            self.model.set_threshold(parse_threshold(text))
        except ValueError as error:
            self.window["-MESSAGE-"].update(str(error))

    def view_name(self) -> str:
        """The current view in a file name: the ranking's direction, or the disagreements at
        the threshold (so a saved page or an export never overwrites another view's)."""
        model = self.model
        if model.disagreements_only:
            return f"disagreements-t{model.threshold:.3f}"
        if model.label_errors_only:
            return "likely-label-errors"
        return "lowest-first" if model.lowest_first else "highest-first"

    def export_path(self) -> Path:
        """`exports/<class>-<view>.csv`; the class name (read from the file) is sanitised and
        the name checked to stay in the folder (UnsafePathError otherwise)."""
        return output_file(self.exports_dir, self.model.class_name, self.view_name(), suffix=".csv")

    def export_view(self) -> Path | None:
        """Write the whole current view as CSV (class, rank, file, score, label, mark, and the
        view's own columns); None, with the reason on the message line, when the file cannot
        be written."""
        marks = self.marks
        rows = self.model.export_rows(lambda c, f: marks.words(c, f) if marks is not None else "")
        try:
            path = self.export_path()
        except UnsafePathError as error:
            return self._refused("export", error)
        try:
            write_csv(path, rows, self.model.export_columns())
        except OSError as error:
            return self._write_failed("export", path, error)
        undecodable = sum(is_undecodable(row.file) for row in rows)
        note = (
            f"; {undecodable:,} file names are not UTF-8: written with \\x escapes of their bytes"
            if undecodable
            else ""
        )
        self.window["-MESSAGE-"].update(
            f"exported {len(rows):,} rows to {project_relative(path)}{note}"
        )
        return path

    def _write_failed(self, action: str, path: Path, error: OSError) -> None:
        """A file the user asked for could not be written (a read-only run folder, a file
        where a folder goes): say so on the message line; the session goes on."""
        self.window["-MESSAGE-"].update(
            f"cannot {action} {project_relative(path)}: {error.strerror or error} "
            f"(is the run folder writable?)"
        )
        log.error("cannot %s %s: %s", action, path, error)

    def _refused(self, action: str, error: UnsafePathError) -> None:
        """An output name built from the file's names would leave its folder: nothing is
        written; the message line says so."""
        self.window["-MESSAGE-"].update(f"cannot {action}: {error}")
        log.error("cannot %s: %s", action, error)

    def _go_to_rank(self, text: str) -> None:
        try:
            self.model.go_to_rank(int(str(text).replace(",", "").strip()))
        except ValueError:
            self.window["-MESSAGE-"].update(
                f"rank must be a whole number from 1 to {self.model.num_images:,}"
            )

    def save_page(self) -> Path | None:
        """Write the current page as one PNG into the screens folder; say where (or why not:
        then None, and the window stays open)."""
        model = self.model
        tiles = [
            (
                self._tile(self.cache.load(i.file), i.label),
                f"#{i.rank:,}  {format_score(i.score)}  {TRUTH_WORDS[i.label]}",
            )
            for i in self.displayed
        ]
        picture = page_image(tiles, self.columns, model.status_line())
        view = "lowest" if model.lowest_first else "highest"
        if model.view is not View.RANKING:
            view = self.view_name()
        try:
            path = output_file(
                self.screens_dir, model.class_name, view, f"page{model.page + 1}", suffix=".png"
            )
        except UnsafePathError as error:
            return self._refused("save", error)
        try:
            with atomic_write(path) as tmp:
                picture.save(tmp, format="PNG")
        except OSError as error:
            return self._write_failed("save", path, error)
        self.window["-MESSAGE-"].update(f"saved {project_relative(path)}")
        return path

    def detail_view(self, slot: int) -> DetailView:
        """The large view of the image in `slot`: all scores, its activation map, marks; it
        steps on through the whole current view."""
        position = self.model.page * self.model.page_size + slot
        return DetailView(
            self.model, self.cache.voc_root, position, self.cam, self.marks, self.marks_problem
        )

    def detail_window(self, slot: int) -> sg.Window:
        """The detail view's window (kept for scripts that only read what it shows)."""
        return self.detail_view(slot).window

    def show_detail(self, slot: int) -> None:
        if slot >= len(self.displayed):
            return
        self.detail_view(slot).run()
        for index, item in enumerate(self.displayed):  # marks may have changed
            self._draw_slot(index, item)

    def pump(self, timeout: float = 20.0) -> None:
        """Handle events until the current page is fully drawn and the queue is quiet (for
        scripted use: tests and the benchmark)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event, values = self.window.read(timeout=30)
            if event == sg.TIMEOUT_EVENT:
                if not self._waiting:
                    return
                continue
            if not self.handle(event, values):
                raise RuntimeError("the window was closed")
        raise TimeoutError(f"page not drawn within {timeout} s; waiting for {self._waiting}")

    def send(self, event: str, value=None) -> None:
        """Post an event as a user action would, and process it completely."""
        self.window.write_event_value(event, value)
        self.pump()

    def run(self) -> Path | None:
        """The event loop; returns the predictions file to open next when the person switched
        split (None when the window was closed)."""
        try:
            while True:
                event, values = self.window.read()
                if not self.handle(event, values):
                    break
        finally:
            self.close()
        return self.switch_to

    def close(self) -> None:
        self._closed = True
        self.cache.shutdown()
        self.cam.shutdown()
        self.window.close()

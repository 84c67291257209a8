"""`--label-fixes FILE`: the training labels a person marked as wrong, fed back into training.

The browser's review of a `--folds K` run's out-of-fold scores leaves marks per (image,
class): "label looks wrong" or "model wrong" (`<predictions stem>.marks.json`, or an exported
CSV a person may have edited). Only "label looks wrong" marks become fixes; "model wrong"
marks say nothing about the label and are counted, then ignored.

Two ways to apply a fix (`--label-fix-mode`):
- `ignore` (default, the safe one): the (image, class) pair leaves the loss and the held-out
  AP, as a difficult label does under the VOC protocol, whatever `--difficult` says. A wrong
  mark then costs one training signal, never a wrong one.
- `flip`: present <-> absent. A difficult label (0) has no opposite, so its fix is applied as
  `ignore`. A wrong mark then teaches the opposite of the truth.

Fixes apply to the **train** split only, before a k-fold run draws its folds. A file naming
val images is refused: a fix there would change what the run is measured against. A file
naming images in neither split, or classes that are not VOC classes, is refused too, naming a
few. The parsed fixes are kept in the run folder (`label_fixes.json`, written once, when the
run starts); `--resume` reads that copy, never the file again, so a run continues with the
fixes it started with even if the file has changed since (a warning says so), and the copy
given as `--label-fixes` to a new run reproduces the run.

In the labels a run writes (its predictions files, the out-of-fold file) an ignored pair is
stored as 0, the label VOC leaves out under its protocol; a flipped one as its new label.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictions.runs import LABEL_FIXES_FILENAME, TRAIN_OOF_PREDICTIONS_FILENAME
from training.config_checks import CHOICES
from vocdata.atomic import atomic_write
from vocdata.classes import VOC_CLASSES
from vocdata.errors import VocDataError
from vocdata.jsonio import MAX_JSON_BYTES, JsonFileError, parse_json_text, read_json
from vocdata.paths import display_path, project_relative, resolve_project_path
from vocdata.splits import DIFFICULT, NEGATIVE, POSITIVE, VocSplit, targets_and_mask

log = logging.getLogger(__name__)

LABEL_FIX_MODES = CHOICES["label_fix_mode"]

FIXES_FORMAT = "voc-label-fixes/1"  # the run folder's copy
# The browser's marks file and CSV (gui/review.py: MARKS_FORMAT, MARK_WORDS, CSV_COLUMNS,
# FORMULA_STARTS). training may not import gui; tests/test_label_fixes.py checks they agree.
MARKS_FORMAT = "voc-gui-marks/1"
MARK_WORDS = {"label": "label looks wrong", "model": "model wrong"}
CSV_REQUIRED_COLUMNS = ("class", "file", "mark")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
SHOWN = 3  # examples named in an error message


class LabelFixesError(VocDataError):
    """A fixes file that cannot be used: the message names it, what is wrong and the way out."""


@dataclass(frozen=True)
class Mark:
    """One "label looks wrong" mark as a file states it: the image (as named there) and class."""

    class_name: str
    image: str


@dataclass(frozen=True)
class MarksFile:
    """What a fixes file says, parsed but not yet checked against the data."""

    path: Path
    sha256: str
    kind: str  # "marks", "csv" or "copy"
    marks: tuple[Mark, ...]
    model_marks: int  # "model wrong" marks: counted, ignored
    copy: dict[str, Any] | None = None  # the whole copy, when the file is one


@dataclass(frozen=True)
class LabelFix:
    """One fix of the train split: row, class column, the label before and what is done."""

    row: int
    column: int
    label: int  # before the fix: 1, 0 or -1
    action: str  # "flip" or "ignore"

    @property
    def new_label(self) -> int:
        return -self.label if self.action == "flip" else DIFFICULT


@dataclass(frozen=True)
class LabelFixes:
    """The fixes of one run: how to apply them, where they came from, and the fixes."""

    mode: str
    source: str  # the file they were read from, project-relative
    sha256: str  # of that file's bytes
    fixes: tuple[LabelFix, ...]
    image_ids: tuple[str, ...] = field(repr=False)  # the train split's ids (rows of `fixes`)
    model_marks: int = 0
    derived_from: dict[str, str] | None = None  # source and sha256 when read from a copy

    def per_class(self) -> dict[str, int]:
        """Fixes per class, in VOC order, classes without one left out."""
        counts = Counter(fix.column for fix in self.fixes)
        return {VOC_CLASSES[c]: counts[c] for c in range(len(VOC_CLASSES)) if counts[c]}

    def summary(self) -> dict[str, Any]:
        """What the provenance and config record (provenance key `label_fixes`)."""
        actions = Counter(fix.action for fix in self.fixes)
        return {
            "count": len(self.fixes),
            "per_class": self.per_class(),
            "mode": self.mode,
            "flipped": actions["flip"],
            "ignored": actions["ignore"],
            "source": self.source,
            "sha256": self.sha256,
            "copy": LABEL_FIXES_FILENAME,
            "model_marks_ignored": self.model_marks,
        }

    def describe(self) -> str:
        """One line for the log and the report."""
        per_class = ", ".join(f"{name}: {n}" for name, n in self.per_class().items())
        return (
            f"{len(self.fixes)} label fixes ({per_class or 'none'}) from {self.source} sha256 "
            f"{self.sha256[:12]}, mode {self.mode}"
        )

    def to_json(self) -> dict[str, Any]:
        """The run folder's copy: enough to apply the fixes again without the file."""
        data: dict[str, Any] = {
            "format": FIXES_FORMAT,
            "meaning": "train labels changed by --label-fixes: 'label' before, 'action' done "
            "(flip: present <-> absent; ignore: left out of loss and held-out AP, stored as 0)",
            "mode": self.mode,
            "source": self.source,
            "sha256": self.sha256,
            "model_marks_ignored": self.model_marks,
            "per_class": self.per_class(),
            "fixes": [
                {
                    "class": VOC_CLASSES[fix.column],
                    "file": f"JPEGImages/{self.image_ids[fix.row]}.jpg",
                    "label": fix.label,
                    "action": fix.action,
                }
                for fix in self.fixes
            ],
        }
        if self.derived_from:
            data["derived_from"] = self.derived_from
        return data

    def apply(self, split: VocSplit) -> FixedSplit:
        """`split` (the train split these fixes were resolved on) with the fixes applied."""
        if split.image_ids != self.image_ids:
            raise ValueError("label fixes applied to another split than they were resolved on")
        labels = split.labels.copy()
        ignored = np.zeros(labels.shape, dtype=bool)
        for fix in self.fixes:
            labels[fix.row, fix.column] = fix.new_label
            ignored[fix.row, fix.column] = fix.action == "ignore"
        return FixedSplit(split.name, split.image_ids, labels, split.class_names, ignored, self)


@dataclass(frozen=True)
class FixedSplit(VocSplit):
    """A train split with label fixes applied. `labels` hold the fixed labels (an ignored pair
    is 0); `ignored` keeps those pairs out of the loss and the AP in every difficult mode (a 0
    alone would count as present under `--difficult positive`)."""

    ignored: np.ndarray | None = field(default=None, compare=False)
    fixes: LabelFixes | None = field(default=None, compare=False, repr=False)

    def targets_and_mask(self, difficult: str) -> tuple[np.ndarray, np.ndarray]:
        targets, mask = targets_and_mask(self.labels, difficult)
        if self.ignored is not None:
            targets[self.ignored] = 0.0
            mask[self.ignored] = 0.0
        return targets, mask

    def subset(self, keep: np.ndarray) -> FixedSplit:
        base = super().subset(keep)
        ignored = None if self.ignored is None else self.ignored[np.asarray(keep, dtype=bool)]
        return FixedSplit(
            base.name, base.image_ids, base.labels, base.class_names, ignored, self.fixes
        )


def labels_for_ap(split: VocSplit, difficult: str) -> tuple[np.ndarray, str]:
    """(labels, difficult mode) that give `split.targets_and_mask(difficult)` to the metrics,
    which take VOC labels: the split's own labels, or, where fixes left pairs out under a mode
    that counts a 0, labels re-encoded for the `ignore` mode (1 counted present, -1 counted
    absent, 0 left out)."""
    if not isinstance(split, FixedSplit) or split.ignored is None or not split.ignored.any():
        return split.labels, difficult
    if difficult == "ignore":
        return split.labels, difficult
    targets, mask = split.targets_and_mask(difficult)
    labels = np.where(mask > 0, np.where(targets > 0, POSITIVE, NEGATIVE), DIFFICULT)
    return labels.astype(np.int8), "ignore"


# -- reading a fixes file ----------------------------------------------------------------------


def _unescape_formula(cell: str) -> str:
    """Undo the browser's CSV formula guard (a leading ' before = + - @ tab CR)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def _mark_kind(word: str) -> str | None:
    """'label', 'model' or None (no mark) for a CSV mark cell; None for an unknown word too,
    which the caller reports."""
    text = word.strip().lower()
    for kind, words in MARK_WORDS.items():
        if text in (words, kind):
            return kind
    return "" if not text else None


def _read_bytes(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise LabelFixesError(
                f"--label-fixes {display_path(path)}: no such file. Give the marks file the "
                f"browser writes beside the out-of-fold predictions "
                f"({Path(TRAIN_OOF_PREDICTIONS_FILENAME).stem}.marks.json), an exported CSV, or "
                f"a run's {LABEL_FIXES_FILENAME}."
            )
        if path.stat().st_size > MAX_JSON_BYTES:
            raise LabelFixesError(
                f"--label-fixes {display_path(path)}: {path.stat().st_size / 2**20:.0f} MB is "
                f"far larger than a marks file or CSV of VOC labels can be."
            )
        return path.read_bytes()
    except OSError as error:
        raise LabelFixesError(
            f"--label-fixes {display_path(path)}: cannot read it ({error.strerror or error})."
        ) from None


def _marks_from_json(path: Path, data: Any) -> tuple[list[Mark], int, str]:
    """The marks of the browser's marks file, or of a run's copy."""
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == FIXES_FORMAT:
        fixes = data.get("fixes")
        valid = isinstance(fixes, list) and all(
            isinstance(f, dict)
            and isinstance(f.get("class"), str)
            and isinstance(f.get("file"), str)
            for f in fixes
        )
        if not valid:
            raise LabelFixesError(
                f"--label-fixes {display_path(path)}: its 'fixes' is not a list of objects with "
                f"'class' and 'file' ({FIXES_FORMAT}); restore the run's copy."
            )
        marks = [Mark(f["class"], f["file"]) for f in fixes]
        return marks, 0, "copy"
    marks_by_class = data.get("marks") if isinstance(data, dict) else None
    valid = (
        fmt == MARKS_FORMAT
        and isinstance(marks_by_class, dict)
        and all(
            isinstance(by_file, dict) and all(isinstance(m, str) for m in by_file.values())
            for by_file in marks_by_class.values()
        )
    )
    if not valid:
        raise LabelFixesError(
            f"--label-fixes {display_path(path)}: a JSON file that is neither the browser's "
            f"marks ({MARKS_FORMAT}) nor a run's {LABEL_FIXES_FILENAME} ({FIXES_FORMAT})."
        )
    marks, model_marks = [], 0
    for class_name, by_file in marks_by_class.items():
        for image, mark in by_file.items():
            if mark == "label":
                marks.append(Mark(class_name, image))
            elif mark == "model":
                model_marks += 1
            else:
                raise LabelFixesError(
                    f"--label-fixes {display_path(path)}: mark {mark[:30]!r} of {image[:60]!r} "
                    f"({class_name[:30]!r}) is neither 'label' nor 'model'."
                )
    return marks, model_marks, "marks"


def _marks_from_csv(path: Path, text: str) -> tuple[list[Mark], int]:
    """The "label looks wrong" rows of an exported (and perhaps edited) CSV."""
    rows = csv.reader(io.StringIO(text, newline=""))
    header = [_unescape_formula(c).strip().lower() for c in next(rows, [])]
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LabelFixesError(
            f"--label-fixes {display_path(path)}: not a marks CSV: no column "
            f"{', '.join(missing)} in its first line (the browser's Export CSV writes class, "
            f"rank, file, score, label, mark)."
        )
    at = {name: header.index(name) for name in CSV_REQUIRED_COLUMNS}
    kinds: dict[tuple[str, str], tuple[str, int]] = {}  # (class, file) -> (mark, first line)
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(at.values()):
            raise LabelFixesError(
                f"--label-fixes {display_path(path)}: line {line} has {len(row)} cells, fewer "
                f"than the header's columns class, file and mark need."
            )
        cells = {name: _unescape_formula(row[i]).strip() for name, i in at.items()}
        kind = _mark_kind(cells["mark"])
        if kind is None:
            raise LabelFixesError(
                f"--label-fixes {display_path(path)}: line {line}: mark {cells['mark'][:30]!r} "
                f"is none of '{MARK_WORDS['label']}', '{MARK_WORDS['model']}' or empty."
            )
        if not kind:
            continue
        key = (cells["class"], cells["file"])
        before = kinds.setdefault(key, (kind, line))
        if before[0] != kind:
            raise LabelFixesError(
                f"--label-fixes {display_path(path)}: line {line} marks {key[1][:60]!r} "
                f"({key[0][:30]}) '{MARK_WORDS[kind]}', line {before[1]} "
                f"'{MARK_WORDS[before[0]]}': keep one of the two."
            )
    marks = [Mark(c, f) for (c, f), (kind, _) in kinds.items() if kind == "label"]
    return marks, sum(kind == "model" for kind, _ in kinds.values())


def read_marks_file(path: str | Path) -> MarksFile:
    """Parse a fixes file: the browser's marks JSON, an exported CSV (UTF-8, with or without
    a byte-order mark, CRLF or LF line ends, the formula quote stripped) or a run's copy."""
    path = resolve_project_path(path)
    raw = _read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelFixesError(
            f"--label-fixes {display_path(path)}: not UTF-8 text (save the CSV as UTF-8)."
        ) from None
    copy = None
    if text.lstrip().startswith("{"):
        try:
            data = parse_json_text(text, "a marks file")
        except JsonFileError as error:
            raise LabelFixesError(f"--label-fixes {display_path(path)} is {error}") from None
        marks, model_marks, kind = _marks_from_json(path, data)
        copy = data if kind == "copy" else None
    else:
        marks, model_marks = _marks_from_csv(path, text)
        kind = "csv"
    return MarksFile(path, digest, kind, tuple(marks), model_marks, copy)


# -- checking the marks against the data -------------------------------------------------------


def _examples(items: Iterable[str]) -> str:
    items = list(dict.fromkeys(items))
    shown = ", ".join(repr(i[:60]) for i in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _image_id(image: str) -> str:
    """The image id a file cell names: `JPEGImages/<id>.jpg` (as the browser writes it) or a
    bare id."""
    name = image.strip()
    if name.startswith("JPEGImages/") and name.endswith(".jpg"):
        return name[len("JPEGImages/") : -len(".jpg")]
    return name


def resolve_fixes(
    marks_file: MarksFile, mode: str, train: VocSplit, val_ids: Iterable[str]
) -> LabelFixes:
    """The fixes of `marks_file` on the train split, or a LabelFixesError naming what does not
    fit: classes that are not VOC classes, val images (refused), unknown images, the same
    label marked twice in different ways. A run's copy must also match the train labels it
    was recorded against."""
    if mode not in LABEL_FIX_MODES:
        raise LabelFixesError(f"--label-fix-mode {mode!r}: choose {' or '.join(LABEL_FIX_MODES)}")
    name = display_path(marks_file.path)
    marks = marks_file.marks
    bad_classes = [m.class_name for m in marks if m.class_name not in VOC_CLASSES]
    if bad_classes:
        raise LabelFixesError(
            f"--label-fixes {name}: {len(bad_classes)} mark(s) name classes that are not VOC "
            f"classes: {_examples(bad_classes)} (the classes are {', '.join(VOC_CLASSES)})."
        )
    row_of = {image_id: row for row, image_id in enumerate(train.image_ids)}
    val_ids = set(val_ids)
    in_val = [m.image for m in marks if _image_id(m.image) in val_ids]
    if in_val:
        raise LabelFixesError(
            f"--label-fixes {name}: {len(in_val)} mark(s) name val images ({_examples(in_val)}): "
            f"fixes change train labels only, since a fix of a val label would change what "
            f"the run is measured against. Use the marks of the run's out-of-fold train "
            f"predictions ({Path(TRAIN_OOF_PREDICTIONS_FILENAME).stem}.marks.json), or delete "
            f"those marks."
        )
    unknown = [m.image for m in marks if _image_id(m.image) not in row_of]
    if unknown:
        raise LabelFixesError(
            f"--label-fixes {name}: {len(unknown)} mark(s) name images in neither the train nor "
            f"the val split ({_examples(unknown)}): was the file made on another dataset? "
            f"Check --voc-root, or delete those marks."
        )
    recorded = _recorded_copy_entries(marks_file)
    fixes: dict[tuple[int, int], LabelFix] = {}
    for index, mark in enumerate(marks):
        row, column = row_of[_image_id(mark.image)], VOC_CLASSES.index(mark.class_name)
        label = int(train.labels[row, column])
        if recorded is not None and recorded[index] != label:
            raise LabelFixesError(
                f"--label-fixes {name}: it was recorded against {mark.class_name} label "
                f"{recorded[index]} of {mark.image[:60]!r}, but the train split now says "
                f"{label}: the dataset's labels changed since. Start a new run from new marks."
            )
        action = "flip" if mode == "flip" and label != DIFFICULT else "ignore"
        fixes[(row, column)] = LabelFix(row, column, label, action)
    derived = None
    if marks_file.copy is not None:
        derived = {
            "source": str(marks_file.copy.get("source", "")),
            "sha256": str(marks_file.copy.get("sha256", "")),
        }
    return LabelFixes(
        mode=mode,
        source=project_relative(marks_file.path),
        sha256=marks_file.sha256,
        fixes=tuple(fixes[key] for key in sorted(fixes)),
        image_ids=train.image_ids,
        model_marks=marks_file.model_marks,
        derived_from=derived,
    )


def _recorded_copy_entries(marks_file: MarksFile) -> list[int] | None:
    """The labels a run's copy recorded before each fix (None for a marks file or CSV)."""
    if marks_file.copy is None:
        return None
    labels = [f.get("label") for f in marks_file.copy["fixes"]]
    if not all(type(v) is int and v in (POSITIVE, DIFFICULT, NEGATIVE) for v in labels):
        raise LabelFixesError(
            f"--label-fixes {display_path(marks_file.path)}: a fix's 'label' is not 1, 0 or -1; "
            f"restore the run's copy."
        )
    return labels


# -- the run folder's copy ---------------------------------------------------------------------


def read_run_copy(path: Path, train: VocSplit, val_ids: Iterable[str]) -> LabelFixes:
    """A run's `label_fixes.json`, checked against today's train labels; its mode and source
    are those it recorded."""
    try:
        data = read_json(path, f"a run's {LABEL_FIXES_FILENAME}", dict)
    except JsonFileError as error:
        raise LabelFixesError(f"{error}; restore it, or start a new run") from None
    mode, source, digest = data.get("mode"), data.get("source"), data.get("sha256")
    if data.get("format") != FIXES_FORMAT or mode not in LABEL_FIX_MODES:
        raise LabelFixesError(
            f"{display_path(path)} is not a run's label fixes ({FIXES_FORMAT}, mode ignore or "
            f"flip); restore it, or start a new run."
        )
    if not (isinstance(source, str) and isinstance(digest, str)):
        raise LabelFixesError(
            f"{display_path(path)} does not name its source file and digest; restore it."
        )
    marks, model_marks, _ = _marks_from_json(path, data)
    count = data.get("model_marks_ignored", 0)
    marks_file = MarksFile(path, digest, "copy", tuple(marks), model_marks, data)
    fixes = resolve_fixes(marks_file, mode, train, val_ids)
    return LabelFixes(
        mode=mode,
        source=source,
        sha256=digest,
        fixes=fixes.fixes,
        image_ids=fixes.image_ids,
        model_marks=count if type(count) is int else 0,
        derived_from=data.get("derived_from")
        if isinstance(data.get("derived_from"), dict)
        else None,
    )


def write_run_copy(run_dir: Path, fixes: LabelFixes | None) -> None:
    """Keep the parsed fixes in the run folder (once, atomically): what `--resume` uses."""
    if fixes is None:
        return
    path = Path(run_dir) / LABEL_FIXES_FILENAME
    if path.is_file():
        return
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(fixes.to_json(), indent=1) + "\n", encoding="utf-8")


def fixes_for_run(
    label_fixes: str | None,
    mode: str,
    train: VocSplit,
    val_ids: Iterable[str],
    run_dir: Path | None = None,
    started: bool = False,
) -> LabelFixes | None:
    """The fixes a run trains with. A run folder that holds its copy (a resumed run, a fold of
    a k-fold run) uses the copy, never the file again; its recorded file and mode must be the
    ones asked for (both are the saved options unless typed again). A run that `started`
    training without a copy trained without fixes and stays so. Otherwise the file is read
    and checked (a new run; nothing is created before that check passes)."""
    copy = None if run_dir is None else Path(run_dir) / LABEL_FIXES_FILENAME
    if copy is not None and copy.is_file():
        fixes = read_run_copy(copy, train, val_ids)
        asked = project_relative(label_fixes) if label_fixes else None
        if asked != fixes.source or mode != fixes.mode:
            raise LabelFixesError(
                f"{display_path(run_dir)} was started with --label-fixes {fixes.source} "
                f"--label-fix-mode {fixes.mode} (kept in {LABEL_FIXES_FILENAME}); a resumed "
                f"run keeps its fixes: drop --label-fixes/--label-fix-mode, or start a new run."
            )
        _warn_if_changed(fixes)
        log.info("train labels: %s (the run's copy, %s)", fixes.describe(), LABEL_FIXES_FILENAME)
        return fixes
    if not label_fixes:
        return None
    if run_dir is not None and started:
        raise LabelFixesError(
            f"{display_path(run_dir)} trained without label fixes; a resumed run keeps its "
            f"labels: drop --label-fixes, or start a new run with it."
        )
    fixes = resolve_fixes(read_marks_file(label_fixes), mode, train, val_ids)
    log.info(
        "train labels: %s; %d 'model wrong' mark(s) ignored",
        fixes.describe(),
        fixes.model_marks,
    )
    return fixes


def _warn_if_changed(fixes: LabelFixes) -> None:
    source = resolve_project_path(fixes.source)
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else None
    except OSError:
        digest = None
    if digest is not None and digest != fixes.sha256:
        log.warning(
            "%s changed since the run started (sha256 %s, then %s): the run continues with "
            "the fixes it started with (%s); start a new run to train with the changed file",
            fixes.source,
            digest[:12],
            fixes.sha256[:12],
            LABEL_FIXES_FILENAME,
        )

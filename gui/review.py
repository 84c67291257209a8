"""Going through the errors: where label and prediction disagree, marks a person leaves on
them, and the CSV of a view. Pure Python and numpy, no GUI.

Exported CSV files are opened in spreadsheets: a cell that begins with =, +, -, @, a tab or a
carriage return is a formula there (CSV injection), so such a cell is written with a leading
single quote, as OWASP recommends. File names that are not valid UTF-8 (read from the disk as
surrogate escapes) are written with \\x escapes of their bytes, so the file stays UTF-8.

The disagreement view of a class at threshold t lists the images labelled absent but scored
above t, highest first (the likely label mistakes: a living room with an unlabelled sofa),
then those labelled present but scored at or below t, lowest first (the positives the
classifier buried). Images whose label is not counted (difficult, under the VOC protocol)
are in neither group.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.ranking import TRUTH_WORDS
from vocdata.atomic import atomic_write
from vocdata.jsonio import JsonFileError, read_json
from vocdata.paths import SAFE_NAME_CHARACTERS, child_path

MARK_WORDS = {"label": "label looks wrong", "model": "model wrong"}
MARKS_FORMAT = "voc-gui-marks/1"
CSV_COLUMNS = ("class", "rank", "file", "score", "label", "mark")
# First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def disagreement_rows(
    scores: np.ndarray, targets: np.ndarray, counted: np.ndarray, threshold: float
) -> np.ndarray:
    """Rows of one class where label and prediction disagree, in review order: counted
    absent above the threshold (highest first), then counted present not above it (lowest
    first). Ties keep file order."""
    scores = np.asarray(scores, dtype=np.float64)
    present = (np.asarray(targets) > 0) & np.asarray(counted, dtype=bool)
    absent = (np.asarray(targets) <= 0) & np.asarray(counted, dtype=bool)
    above = scores > threshold
    false_alarms = np.flatnonzero(absent & above)
    buried = np.flatnonzero(present & ~above)
    false_alarms = false_alarms[np.argsort(-scores[false_alarms], kind="stable")]
    buried = buried[np.argsort(scores[buried], kind="stable")]
    return np.concatenate([false_alarms, buried]).astype(np.int64)


def marks_path(predictions_path: str | os.PathLike[str]) -> Path:
    """The marks of a predictions file live beside it: `val_predictions.marks.json`."""
    path = Path(predictions_path)
    return path.with_name(f"{path.stem}.marks.json")


class MarksFileError(ValueError):
    """The marks file exists but cannot be read; the message names it and the way out."""


class MarkStore:
    """Marks per (class, image), saved as JSON after every change (atomically), so they
    survive a crash and a restart. A mark is 'label' (label looks wrong) or 'model'."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._marks: dict[str, dict[str, str]] = {}
        if self.path.is_file():
            self._marks = self._read()

    def _read(self) -> dict[str, dict[str, str]]:
        fix = "repair it or move it away (the GUI then starts with no marks)"
        try:
            data = read_json(self.path, "a marks file")
        except JsonFileError as error:  # unreadable, not UTF-8, not JSON, nested too deeply
            raise MarksFileError(f"Cannot read the marks file: {error}; {fix}.") from None
        marks = data.get("marks") if isinstance(data, dict) else None
        valid = (
            isinstance(data, dict)
            and data.get("format") == MARKS_FORMAT
            and isinstance(marks, dict)
            and all(
                isinstance(by_file, dict)
                and all(isinstance(m, str) and m in MARK_WORDS for m in by_file.values())
                for by_file in marks.values()
            )
        )
        if not valid:
            raise MarksFileError(f"{self.path} is not a marks file ({MARKS_FORMAT}); {fix}.")
        return {
            str(c): {str(f): str(m) for f, m in by_file.items()} for c, by_file in marks.items()
        }

    def get(self, class_name: str, file: str) -> str | None:
        return self._marks.get(class_name, {}).get(file)

    def words(self, class_name: str, file: str) -> str:
        mark = self.get(class_name, file)
        return MARK_WORDS[mark] if mark else ""

    def toggle(self, class_name: str, file: str, mark: str) -> str | None:
        """Set `mark`, or clear it when it is already set; save; return the new mark."""
        if mark not in MARK_WORDS:
            raise ValueError(f"mark must be one of {sorted(MARK_WORDS)}, got {mark!r}")
        before = {c: dict(by_file) for c, by_file in self._marks.items()}
        by_file = self._marks.setdefault(class_name, {})
        if by_file.get(file) == mark:
            del by_file[file]
            if not by_file:
                del self._marks[class_name]
            new = None
        else:
            by_file[file] = new = mark
        try:
            self.save()
        except OSError as error:  # what is shown must stay what is on disk
            self._marks = before
            raise MarksFileError(
                f"Cannot save the mark to {self.path} ({error.strerror or error}); is the "
                f"folder of the predictions file writable?"
            ) from error
        return new

    def count(self) -> int:
        return sum(len(by_file) for by_file in self._marks.values())

    def save(self) -> None:
        data = {
            "format": MARKS_FORMAT,
            "meaning": MARK_WORDS,
            "marks": {c: dict(sorted(f.items())) for c, f in sorted(self._marks.items())},
        }
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class ExportRow:
    class_name: str
    rank: int
    file: str
    score: float
    label: int | None  # None: the predictions file has no labels
    mark: str  # words, or ""
    extra: tuple[str, ...] = ()  # the view's own columns (see `csv_text`'s extra_columns)


def is_undecodable(text: str) -> bool:
    """True for a name holding bytes that are not UTF-8 (surrogate escapes, as Python reads
    such file names from a Linux disk)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str) -> str:
    """`text` with the bytes of its surrogate escapes written as \\xNN (valid UTF-8, and a
    person can still tell which file it is)."""
    if not is_undecodable(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def escape_formula(cell: str) -> str:
    """A cell a spreadsheet would run as a formula, quoted with a leading ' (OWASP)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def unescape_formula(cell: str) -> str:
    """The inverse of `escape_formula`, for programs that read an exported CSV back."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def csv_cell(value: object) -> str:
    return escape_formula(printable(str(value)))


def csv_text(rows: Iterable[ExportRow], extra_columns: tuple[str, ...] = ()) -> str:
    """The rows as CSV with a header; scores with 6 significant digits (float32 precision).
    Every cell is written UTF-8-safe and formula-safe (see the module text)."""
    buffer = io.StringIO()
    # RFC 4180 line ends: a field holding a carriage return is then quoted too (with "\n"
    # alone as the terminator the csv module leaves a lone "\r" bare, which splits the row).
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([csv_cell(c) for c in (*CSV_COLUMNS, *extra_columns)])
    for row in rows:
        if len(row.extra) != len(extra_columns):
            raise ValueError(
                f"row of {row.file!r} has {len(row.extra)} extra cells, expected "
                f"{len(extra_columns)}"
            )
        cells = (
            row.class_name,
            row.rank,
            row.file,
            f"{row.score:.6g}",
            "" if row.label is None else TRUTH_WORDS[row.label],
            row.mark,
            *row.extra,
        )
        writer.writerow([csv_cell(c) for c in cells])
    return buffer.getvalue()


def write_csv(
    path: str | os.PathLike[str], rows: Iterable[ExportRow], extra_columns: tuple[str, ...] = ()
) -> Path:
    """Write the rows atomically; return the path."""
    path = Path(path)
    text = csv_text(rows, extra_columns)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return path


def safe_name_part(text: str) -> str:
    """A name read from a file (a class name) made fit for a file name: every character
    other than letters, digits and _ - . becomes _ (never empty, never . or ..)."""
    cleaned = "".join(ch if ch in SAFE_NAME_CHARACTERS else "_" for ch in text)
    return cleaned if cleaned.strip(".") else "_" + cleaned


def output_file(folder: str | os.PathLike[str], *parts: str, suffix: str) -> Path:
    """`folder/<part>-<part>...<suffix>` from sanitised parts, checked to stay inside
    `folder` (`vocdata.paths.child_path` raises UnsafePathError otherwise)."""
    return child_path(folder, "-".join(safe_name_part(p) for p in parts) + suffix)

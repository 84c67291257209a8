"""What the browser shows, as plain state: the class, the view, the page; no GUI here.

Ranks are fixed per class: rank 1 is the highest score, rank N the lowest (ties keep file
order). Three views walk them:
- the ranking, highest or lowest first;
- the disagreements (`gui.review`): only the images whose label and prediction at the
  threshold disagree;
- the likely label errors (`evaluation.label_quality`): every counted label of the class,
  those past the confident-learning threshold first, each part the one most likely wrong
  first, on held-out scores (val, or the out-of-fold scores of a `--folds K` run's training
  split).
Every image keeps its rank in the class's ranking whichever view shows it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from evaluation.label_quality import ClassLabelQuality, rank_class
from evaluation.metrics import UndefinedAPWarning, per_class_average_precision
from evaluation.ranking import format_score, ranking_order
from evaluation.tailacc import DECISION_THRESHOLD, tail_accuracy
from gui.review import ExportRow, disagreement_rows
from gui.threshold import (
    DEFAULT_THRESHOLD,
    TAILACC_UNDEFINED_SHORT,
    ThresholdSummary,
    best_threshold,
    first_rank_below,
    summarise,
)
from predictions import Predictions
from vocdata.splits import DifficultMode, targets_and_mask


class View(StrEnum):
    """What the grid walks through (the value is what file names and --view use)."""

    RANKING = "ranking"
    DISAGREEMENTS = "disagreements"
    LABEL_ERRORS = "label-errors"

    @property
    def words(self) -> str:
        return {
            View.RANKING: "ranking",
            View.DISAGREEMENTS: "disagreements",
            View.LABEL_ERRORS: "likely label errors",
        }[self]


# Splits whose images may have trained the model that scored them (unless out of fold).
TRAINING_SPLITS = ("train", "trainval")
LABEL_ERROR_COLUMNS = ("label_error_score", "confident_learning")


@dataclass(frozen=True)
class RankedImage:
    rank: int  # 1 = highest score of the class
    row: int  # row in the predictions file
    file: str  # relative to the dataset root
    score: float
    label: int | None  # 1 contains, 0 difficult, -1 absent; None: the file has no labels


class RankingModel:
    """Ranking, paging, jumping and the precision numbers of one predictions file."""

    def __init__(
        self,
        predictions: Predictions,
        page_size: int = 20,
        difficult: DifficultMode | str | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.predictions = predictions
        self.page_size = page_size
        self.difficult = DifficultMode(
            difficult or predictions.provenance.get("difficult", "ignore")
        )
        if predictions.labels is None:  # unlabelled photos: ranking only, nothing to count
            shape = predictions.scores.shape
            self.targets, self.mask = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            self.class_ap = np.full(predictions.num_classes, np.nan)
        else:
            self.targets, self.mask = targets_and_mask(predictions.labels, self.difficult)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedAPWarning)
                self.class_ap = per_class_average_precision(
                    predictions.scores, predictions.labels, predictions.class_names, self.difficult
                )
        self._orders: dict[int, np.ndarray] = {}
        self._ranks: dict[int, np.ndarray] = {}
        self._disagreements: dict[tuple[int, float], np.ndarray] = {}
        self._label_quality: dict[int, ClassLabelQuality] = {}
        self.class_index = 0
        self.lowest_first = False
        self.page = 0
        self.threshold = DEFAULT_THRESHOLD
        self.view = View.RANKING

    # -- state changes -----------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return self.predictions.num_images

    @property
    def num_in_view(self) -> int:
        return len(self.view_rows())

    def border_legend(self) -> str:
        if not self.has_labels:
            return "border: grey = unknown (these images have no labels)"
        return "border: green = contains, orange = difficult, red = absent"

    @property
    def num_pages(self) -> int:
        return max(1, math.ceil(self.num_in_view / self.page_size))

    @property
    def has_labels(self) -> bool:
        return self.predictions.labels is not None

    def set_threshold(self, threshold: float) -> None:
        """Move the decision threshold; the disagreement view changes with it (back to its
        first page), the ranking view stays where it is."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be from 0 to 1, got {threshold:g}")
        self.threshold = float(threshold)
        if self.disagreements_only:
            self.page = 0

    def set_best_threshold(self) -> float | None:
        """The threshold with the best F1 on the current class (None: no positive, kept)."""
        if not self.has_labels:
            return None
        counted = self.mask[:, self.class_index] > 0
        best = best_threshold(
            self.predictions.scores[counted, self.class_index],
            self.targets[counted, self.class_index],
        )
        if best is not None:
            self.set_threshold(best)
        return best

    @property
    def disagreements_only(self) -> bool:
        return self.view is View.DISAGREEMENTS

    @property
    def label_errors_only(self) -> bool:
        return self.view is View.LABEL_ERRORS

    @property
    def scores_held_out(self) -> bool:
        """False when the provenance says these images may have trained the model that
        scored them (a train split scored by the final model): its label errors hide."""
        provenance = self.predictions.provenance
        return provenance.get("split") not in TRAINING_SPLITS or bool(provenance.get("out_of_fold"))

    def set_view(self, view: View | str) -> None:
        """Show the whole ranking, the disagreements or the likely label errors (the last two
        need labels), from the first page."""
        view = View(view)
        if view is not View.RANKING and not self.has_labels:
            raise ValueError(
                f"this predictions file has no labels: no {view.words} without the truth"
            )
        self.view = view
        self.page = 0

    def set_disagreements_only(self, on: bool) -> None:
        """Switch between the whole ranking and the disagreement view (needs labels)."""
        if on and not self.has_labels:
            raise ValueError("this predictions file has no labels: nothing can disagree")
        self.set_view(View.DISAGREEMENTS if on else View.RANKING)

    def toggle_view(self, view: View | str) -> None:
        """The key of a view: into it, or (when already there) back to the whole ranking."""
        view = View(view)
        self.set_view(View.RANKING if self.view is view else view)

    def set_class(self, class_index: int) -> None:
        """Show another class, from the first page of the current direction."""
        if not 0 <= class_index < self.predictions.num_classes:
            raise IndexError(f"class index {class_index} out of range")
        self.class_index = class_index
        self.page = 0

    def set_lowest_first(self, lowest_first: bool) -> None:
        self.lowest_first = lowest_first
        self.page = 0

    def set_page(self, page: int) -> None:
        """Go to `page`, clamped to the existing pages."""
        self.page = min(max(page, 0), self.num_pages - 1)

    def next_page(self) -> None:
        self.set_page(self.page + 1)

    def previous_page(self) -> None:
        self.set_page(self.page - 1)

    def first_page(self) -> None:
        self.set_page(0)

    def last_page(self) -> None:
        self.set_page(self.num_pages - 1)

    def go_to_rank(self, rank: int) -> None:
        """Show the page (of the current view) that holds `rank` (1 = highest score)."""
        if not 1 <= rank <= self.num_images:
            raise ValueError(f"rank must be between 1 and {self.num_images:,}, got {rank}")
        if self.view is not View.RANKING:
            row = int(self.order()[rank - 1])
            found = np.flatnonzero(self.view_rows() == row)
            if found.size == 0:
                where = (
                    "the disagreements at this threshold"
                    if self.disagreements_only
                    else "the ranked labels (a difficult label is not ranked)"
                )
                raise ValueError(f"rank {rank:,} is not among {where}")
            self.set_page(int(found[0]) // self.page_size)
            return
        position = self.num_images - rank if self.lowest_first else rank - 1
        self.set_page(position // self.page_size)

    # -- what to show ------------------------------------------------------------------------
    @property
    def class_name(self) -> str:
        return self.predictions.class_names[self.class_index]

    def order(self) -> np.ndarray:
        """Rows from rank 1 to rank N for the current class (computed once per class)."""
        if self.class_index not in self._orders:
            self._orders[self.class_index] = ranking_order(
                self.predictions.scores[:, self.class_index]
            )
        return self._orders[self.class_index]

    def rank_of(self, row: int) -> int:
        """Rank of a predictions row in the current class's ranking."""
        if self.class_index not in self._ranks:
            ranks = np.empty(self.num_images, dtype=np.int64)
            ranks[self.order()] = np.arange(1, self.num_images + 1)
            self._ranks[self.class_index] = ranks
        return int(self._ranks[self.class_index][row])

    def label_quality(self) -> ClassLabelQuality:
        """The current class's counted labels in review order (once per class): those past
        the confident-learning threshold first, each part most likely wrong first, so the
        blue bar ▼CL ends the flagged ones."""
        column = self.class_index
        if column not in self._label_quality:
            self._label_quality[column] = rank_class(
                self.predictions.scores[:, column],
                self.targets[:, column] > 0,
                self.mask[:, column] > 0,
            ).flagged_first()
        return self._label_quality[column]

    def view_rows(self) -> np.ndarray:
        """Rows in display order: the ranking (either direction), the disagreements or the
        likely label errors."""
        if self.view is View.RANKING:
            return self.order()[::-1] if self.lowest_first else self.order()
        if self.view is View.LABEL_ERRORS:
            return self.label_quality().rows
        key = (self.class_index, self.threshold)
        if key not in self._disagreements:
            column = self.class_index
            self._disagreements[key] = disagreement_rows(
                self.predictions.scores[:, column],
                self.targets[:, column],
                self.mask[:, column] > 0,
                self.threshold,
            )
        return self._disagreements[key]

    def front_files(self) -> list[str]:
        """The files of the first page of every class, both directions (and in the likely-
        label-errors view its first page too): what a class switch or a jump to the bottom
        will show first."""
        saved = self.class_index, self.lowest_first, self.page, self.view
        views = [View.RANKING] + ([View.LABEL_ERRORS] if self.label_errors_only else [])
        files = []
        for class_index in range(self.predictions.num_classes):
            for view in views:
                self.view = view
                for lowest_first in (False, True) if view is View.RANKING else (False,):
                    self.class_index, self.lowest_first = class_index, lowest_first
                    files += [item.file for item in self.page_items(0)]
        self.class_index, self.lowest_first, self.page, self.view = saved
        return files

    def ranks_on_page(self, page: int | None = None) -> list[int]:
        page = self.page if page is None else page
        if self.view is not View.RANKING:
            rows = self.view_rows()[page * self.page_size : (page + 1) * self.page_size]
            return [self.rank_of(int(row)) for row in rows]
        positions = range(page * self.page_size, min((page + 1) * self.page_size, self.num_images))
        if self.lowest_first:
            return [self.num_images - p for p in positions]
        return [p + 1 for p in positions]

    def page_items(self, page: int | None = None) -> list[RankedImage]:
        """The images of a page (default: the current one), in display order."""
        page = self.page if page is None else page
        rows = self.view_rows()[page * self.page_size : (page + 1) * self.page_size]
        return [self.item(int(row)) for row in rows]

    def item(self, row: int) -> RankedImage:
        """One predictions row as shown for the current class."""
        column = self.class_index
        return RankedImage(
            self.rank_of(row),
            row,
            self.predictions.files[row],
            float(self.predictions.scores[row, column]),
            None if self.predictions.labels is None else int(self.predictions.labels[row, column]),
        )

    def view_items(self) -> list[RankedImage]:
        """Every image of the current view, in display order (what Export writes)."""
        return [self.item(int(row)) for row in self.view_rows()]

    def export_columns(self) -> tuple[str, ...]:
        """Columns the current view adds to the CSV after the common ones."""
        return LABEL_ERROR_COLUMNS if self.label_errors_only else ()

    def export_rows(self, mark_words) -> list[ExportRow]:
        """The current view as CSV rows; `mark_words(class_name, file)` gives each mark. The
        likely-label-errors view adds each label's error score and whether it passes the
        confident-learning threshold."""
        extra: list[tuple[str, ...]] = [()] * self.num_in_view
        if self.label_errors_only:
            quality = self.label_quality()
            extra = [
                (f"{error:.6g}", "past threshold" if past else "")
                for error, past in zip(quality.error_scores, quality.past_threshold, strict=True)
            ]
        return [
            ExportRow(
                self.class_name,
                item.rank,
                item.file,
                item.score,
                item.label if self.has_labels else None,
                mark_words(self.class_name, item.file),
                more,
            )
            for item, more in zip(self.view_items(), extra, strict=True)
        ]

    def marker_row(self) -> int | None:
        """The row marked as 'the first image below the threshold': in the ranking the
        image just under the cut (either direction); in the disagreement view the first
        labelled-present image below it; in the likely-label-errors view the first label that
        does not pass the confident-learning threshold. None when there is no such image."""
        column = self.class_index
        if self.label_errors_only:
            quality = self.label_quality()
            below = np.flatnonzero(~quality.past_threshold)
            return int(quality.rows[below[0]]) if below.size else None
        if self.disagreements_only:
            rows = self.view_rows()
            below = np.flatnonzero(self.predictions.scores[rows, column] <= self.threshold)
            return int(rows[below[0]]) if below.size else None
        order = self.order()
        rank = first_rank_below(self.predictions.scores[order, column], self.threshold)
        return None if rank is None else int(order[rank - 1])

    def threshold_summary(self) -> ThresholdSummary | None:
        """P/R/F1 and Tailacc at the threshold for the current class (None without labels)."""
        if not self.has_labels:
            return None
        counted = self.mask[:, self.class_index] > 0
        return summarise(
            self.predictions.scores[counted, self.class_index],
            self.targets[counted, self.class_index],
            self.threshold,
        )

    def threshold_line(self) -> str:
        summary = self.threshold_summary()
        if summary is None:
            above = int(
                np.count_nonzero(self.predictions.scores[:, self.class_index] > self.threshold)
            )
            return f"threshold {format_score(self.threshold)}: {above:,} above (no labels)"
        return summary.line()

    def status_line(self) -> str:
        """E.g. 'class: dog — ranks 21–40 of 1,729 (highest first)'."""
        ranks = self.ranks_on_page()
        if self.label_errors_only:
            quality = self.label_quality()
            first = self.page * self.page_size
            shown = f"{first + 1:,}–{first + len(ranks):,}" if ranks else "none"
            return (
                f"class: {self.class_name} — likely label errors {shown} of "
                f"{quality.num_ranked:,} labels ({quality.num_past_threshold:,} past the "
                f"confident-learning threshold)"
            )
        if self.disagreements_only:
            rows = self.view_rows()
            above = int(
                np.count_nonzero(self.predictions.scores[rows, self.class_index] > self.threshold)
            )
            shown = (
                f"{self.page * self.page_size + 1:,}–{self.page * self.page_size + len(ranks):,}"
                if ranks
                else "none"
            )
            return (
                f"class: {self.class_name} — disagreements {shown} of {len(rows):,} at "
                f"t = {format_score(self.threshold)} ({above:,} absent above, "
                f"{len(rows) - above:,} present below)"
            )
        direction = "lowest first" if self.lowest_first else "highest first"
        return (
            f"class: {self.class_name} — ranks {ranks[0]:,}–{ranks[-1]:,} of "
            f"{self.num_images:,} ({direction})"
        )

    def precision_at(self, k: int) -> float:
        """Share of true positives among the k highest-scored images (difficult ones, when
        ignored, count neither way); NaN if none of the k counts."""
        rows = self.order()[:k]
        counted = self.mask[rows, self.class_index] > 0
        if not counted.any():
            return float("nan")
        return float(self.targets[rows, self.class_index][counted].mean())

    def tailacc_at(self, score: float) -> float:
        """Tailacc(t = score) of the current class (NaN if no image scores above it)."""
        counted = self.mask[:, self.class_index] > 0
        return tail_accuracy(
            self.predictions.scores[counted, self.class_index],
            self.targets[counted, self.class_index],
            score,
        )

    def precision_line(self) -> str:
        """The HCI lesson, down to the last rank on screen (k): the precision of the top k and
        Tailacc at the k-th score; in the lowest-first view also how many of the images seen
        from the bottom truly contain the class (the misses). Without labels there is nothing
        to count: the line says so instead."""
        if not self.has_labels:
            return "no labels in this file: ranking only (precision, Tailacc and AP need labels)"
        if self.label_errors_only:
            return self.label_error_line()
        ranks = self.ranks_on_page()
        if self.disagreements_only:
            ranks = [max(ranks)] if ranks else [self.num_images]
        k = ranks[-1]
        score = float(self.predictions.scores[self.order()[k - 1], self.class_index])

        def fmt(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.3f}"

        parts = [f"precision of the top {k:,}: {fmt(self.precision_at(k))}"]
        if score >= DECISION_THRESHOLD:
            parts.append(f"Tailacc at score {format_score(score)}: {fmt(self.tailacc_at(score))}")
        else:
            parts.append(TAILACC_UNDEFINED_SHORT)
        if self.lowest_first and not self.disagreements_only:
            seen = self.order()[k - 1 :]
            missed = int(self.targets[seen, self.class_index].sum())
            parts.insert(0, f"lowest {len(seen):,} so far: {missed:,} contain '{self.class_name}'")
        ap = self.class_ap[self.class_index]
        parts.append(f"AP of '{self.class_name}' over all {self.num_images:,}: {fmt(ap)}")
        return "  ·  ".join(parts)

    def label_error_line(self) -> str:
        """What the confident-learning threshold means for this class, in scores: for a model
        that separates the class, an absent label passes when its image scores as high as
        the images labelled present do on average, a present label when it scores as low as
        the absent ones do."""
        quality = self.label_quality()
        t_present, t_absent = quality.threshold_present, quality.threshold_absent
        if quality.num_ranked == 0:
            return f"'{self.class_name}' has no counted label: nothing to rank"
        parts = []
        if not self.scores_held_out:
            parts.append(
                "these scores come from models trained on these images: they hide label "
                "errors (use held-out scores: val, or train out of fold)"
            )
        if math.isnan(t_present):
            parts.append("no image labelled present: no absent label can pass")
        else:
            parts.append(
                f"past the threshold: labelled absent but scored ≥ {format_score(t_present)}"
            )
        if math.isnan(t_absent):
            parts.append("no image labelled absent: no present label can pass")
        else:
            parts.append(
                f"labelled present but scored ≤ {format_score(1 - t_absent)} (the other "
                f"label's mean score)"
            )
        if not (math.isnan(t_present) or math.isnan(t_absent)) and t_present <= 1 - t_absent:
            parts.append("the scores do not separate this class: flags are weak evidence")
        ap = self.class_ap[self.class_index]
        parts.append(f"AP {'n/a' if math.isnan(ap) else f'{ap:.3f}'}")
        return "  ·  ".join(parts)

    def class_labels(self) -> list[str]:
        """Class selector entries: name and AP (name only when there are no labels)."""
        if not self.has_labels:
            return list(self.predictions.class_names)
        return [
            f"{name}  (AP {'n/a' if math.isnan(ap) else f'{ap:.3f}'})"
            for name, ap in zip(self.predictions.class_names, self.class_ap, strict=True)
        ]

    def detail_rows(self, row: int) -> list[tuple[str, float, int | None]]:
        """(class, score, label or None) of every class for one image, highest score first."""
        scores, labels = self.predictions.scores[row], self.predictions.labels
        order = np.argsort(-scores, kind="stable")
        return [
            (
                self.predictions.class_names[c],
                float(scores[c]),
                None if labels is None else int(labels[row, c]),
            )
            for c in order
        ]

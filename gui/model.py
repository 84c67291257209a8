"""What the browser shows, as plain state: the class, the direction, the page; no GUI here.

Ranks are fixed per class: rank 1 is the highest score, rank N the lowest (ties keep file
order). The lowest-first view walks the same ranks from N downwards.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from evaluation.metrics import UndefinedAPWarning, per_class_average_precision
from evaluation.ranking import format_score, ranking_order
from evaluation.tailacc import tail_accuracy
from predictions import Predictions
from vocdata.splits import DifficultMode, targets_and_mask


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
        self.class_index = 0
        self.lowest_first = False
        self.page = 0

    # -- state changes -----------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return self.predictions.num_images

    @property
    def has_labels(self) -> bool:
        return self.predictions.labels is not None

    def border_legend(self) -> str:
        if not self.has_labels:
            return "border: grey = unknown (these images have no labels)"
        return "border: green = contains, orange = difficult, red = absent"

    @property
    def num_pages(self) -> int:
        return max(1, math.ceil(self.num_images / self.page_size))

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
        """Show the page (of the current direction) that holds `rank` (1 = highest score)."""
        if not 1 <= rank <= self.num_images:
            raise ValueError(f"rank must be between 1 and {self.num_images:,}, got {rank}")
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

    def front_files(self) -> list[str]:
        """The files of the first page of every class, both directions: what a class switch
        or a jump to the bottom will show first."""
        saved = self.class_index, self.lowest_first, self.page
        files = []
        for class_index in range(self.predictions.num_classes):
            for lowest_first in (False, True):
                self.class_index, self.lowest_first = class_index, lowest_first
                files += [item.file for item in self.page_items(0)]
        self.class_index, self.lowest_first, self.page = saved
        return files

    def ranks_on_page(self, page: int | None = None) -> list[int]:
        page = self.page if page is None else page
        positions = range(page * self.page_size, min((page + 1) * self.page_size, self.num_images))
        if self.lowest_first:
            return [self.num_images - p for p in positions]
        return [p + 1 for p in positions]

    def page_items(self, page: int | None = None) -> list[RankedImage]:
        """The images of a page (default: the current one), in display order."""
        order, column, labels = self.order(), self.class_index, self.predictions.labels
        items = []
        for rank in self.ranks_on_page(page):
            row = int(order[rank - 1])
            items.append(
                RankedImage(
                    rank,
                    row,
                    self.predictions.files[row],
                    float(self.predictions.scores[row, column]),
                    None if labels is None else int(labels[row, column]),
                )
            )
        return items

    def status_line(self) -> str:
        """E.g. 'class: dog — ranks 21–40 of 1,729 (highest first)'."""
        ranks = self.ranks_on_page()
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
        ranks = self.ranks_on_page()
        k = ranks[-1]
        score = float(self.predictions.scores[self.order()[k - 1], self.class_index])

        def fmt(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.3f}"

        parts = [
            f"precision of the top {k:,}: {fmt(self.precision_at(k))}",
            f"Tailacc at score {format_score(score)}: {fmt(self.tailacc_at(score))}",
        ]
        if self.lowest_first:
            seen = self.order()[k - 1 :]
            missed = int(self.targets[seen, self.class_index].sum())
            parts.insert(0, f"lowest {len(seen):,} so far: {missed:,} contain '{self.class_name}'")
        ap = self.class_ap[self.class_index]
        parts.append(f"AP of '{self.class_name}' over all {self.num_images:,}: {fmt(ap)}")
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

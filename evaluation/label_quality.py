"""How likely each given label is wrong: confident learning, one binary problem per class.

A model scores its own training images too well to reveal their label errors; scores of
images it never saw (the val split, or the out-of-fold scores of a `--folds K` run) can.
For one class c the labels form a binary problem (present / absent) and the score p = the
held-out probability of "present". Following confident learning (C. G. Northcutt, L. Jiang,
I. L. Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, 2021,
section 3), written from the paper's definitions:

- The **self-confidence** of a row is the predicted probability of its given label: p when
  labelled present, 1 − p when labelled absent. The lower it is, the more likely the given
  label is wrong; rows are ranked by `error score = 1 − self-confidence` (p for an absent
  label, 1 − p for a present one), highest first, ties in file order.
- The **per-class thresholds** are the mean self-confidence of each given label:
  t_present = mean p over the rows labelled present, t_absent = mean (1 − p) over the rows
  labelled absent (undefined, NaN, when no row has that label).
- A row is **confidently** of label j when its probability of j is at least t_j; when both
  labels are confident, the more probable one counts (a tie keeps the given label). A row
  **passes the confident-learning threshold** when the label it is confidently of is not its
  given label: the off-diagonal of the paper's confident joint C_{ỹ, y*}, the rows the paper
  counts as label issues. For an informative model (t_present above the mean score of the
  absent rows) that is simply: labelled absent with p ≥ t_present (as high as a typical
  positive), or labelled present with p ≤ 1 − t_absent (as low as a typical absent row).

A label that is not counted (difficult, under the VOC protocol's `ignore` mode) is not
ranked. cleanlab implements the same idea (AGPL); this module is the few lines the
definitions need, in pure numpy, low in the house (training and the GUI can both use it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from evaluation.metrics import as_ranking_inputs, validate_score_matrix
from vocdata.splits import DifficultMode, targets_and_mask

# The mean of equal float64 values can differ from them by a rounding error; a probability this
# close below its threshold still counts as reaching it (far below float32 score resolution).
THRESHOLD_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ClassLabelQuality:
    """One class's counted rows, the most likely wrong label first."""

    rows: np.ndarray  # int64: rows of the predictions file, ranked
    error_scores: np.ndarray  # float64, same order: 1 − self-confidence (non-increasing)
    past_threshold: np.ndarray  # bool, same order: a confident-learning label issue
    given_present: np.ndarray  # bool, same order: the given label (after the difficult mode)
    threshold_present: float  # t_present (mean p of the present rows); NaN: no such row
    threshold_absent: float  # t_absent (mean 1 − p of the absent rows); NaN: no such row

    @property
    def num_ranked(self) -> int:
        return len(self.rows)

    @property
    def num_past_threshold(self) -> int:
        return int(np.count_nonzero(self.past_threshold))

    def flagged_first(self) -> ClassLabelQuality:
        """The same rows with those past the threshold first, each part still most likely
        wrong first (as cleanlab orders its label issues). The two labels have different
        thresholds, so in the plain ranking a label that does not pass (labelled present,
        scored 0.2 where present labels pass below 0.1) can precede one that does (labelled
        absent, scored 0.78 where absent labels pass from 0.7); a review that stops at the
        threshold wants them apart."""
        order = np.argsort(~self.past_threshold, kind="stable")
        return replace(
            self,
            rows=self.rows[order],
            error_scores=self.error_scores[order],
            past_threshold=self.past_threshold[order],
            given_present=self.given_present[order],
        )

    def position_of(self, row: int) -> int | None:
        """Where `row` stands in the ranking (0 = most likely wrong); None: not ranked."""
        found = np.flatnonzero(self.rows == row)
        return int(found[0]) if found.size else None


def _check_column(scores: np.ndarray, given_present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, given_present = as_ranking_inputs(scores, given_present)
    if ((scores < 0) | (scores > 1)).any():
        raise ValueError("scores must be probabilities in [0, 1]")
    return scores, given_present


def error_scores(scores: np.ndarray, given_present: np.ndarray) -> np.ndarray:
    """1 − self-confidence: the probability the model gives the *other* label (p for a row
    labelled absent, 1 − p for a row labelled present)."""
    scores, given_present = _check_column(scores, given_present)
    return np.where(given_present, 1.0 - scores, scores)


def class_thresholds(scores: np.ndarray, given_present: np.ndarray) -> tuple[float, float]:
    """(t_present, t_absent): the mean self-confidence of each given label; NaN for a label
    no row has (then no row can be confidently of it)."""
    scores, given_present = _check_column(scores, given_present)
    present, absent = scores[given_present], 1.0 - scores[~given_present]
    return (
        float(present.mean()) if present.size else float("nan"),
        float(absent.mean()) if absent.size else float("nan"),
    )


def confident_label_issues(
    scores: np.ndarray, given_present: np.ndarray, thresholds: tuple[float, float] | None = None
) -> np.ndarray:
    """Bool per row: the label the row is confidently of (see the module text) is not its
    given label. `thresholds` default to `class_thresholds` of these rows."""
    scores, given_present = _check_column(scores, given_present)
    if thresholds is None:
        thresholds = class_thresholds(scores, given_present)
    t_present, t_absent = thresholds
    # NaN thresholds compare False: nobody is confidently of a label no row was given.
    sure_present = scores >= t_present - THRESHOLD_TOLERANCE
    sure_absent = (1.0 - scores) >= t_absent - THRESHOLD_TOLERANCE
    both = sure_present & sure_absent
    # The label each confident row is counted as: the only confident one, or the more
    # probable of the two (a tie at 0.5 keeps the given label).
    counted_present = np.where(
        both, (scores > 0.5) | ((scores == 0.5) & given_present), sure_present
    )
    confident = sure_present | sure_absent
    return confident & (counted_present != given_present)


def rank_class(
    scores: np.ndarray, given_present: np.ndarray, counted: np.ndarray | None = None
) -> ClassLabelQuality:
    """One class: its counted rows ranked by error score (highest first, ties in row order),
    each with whether it passes the confident-learning threshold. Thresholds are computed over
    the counted rows only."""
    scores, given_present = _check_column(scores, given_present)
    counted = np.ones(scores.shape, bool) if counted is None else np.asarray(counted, bool)
    if counted.shape != scores.shape:
        raise ValueError(f"counted must have shape {scores.shape}, got {counted.shape}")
    rows = np.flatnonzero(counted)
    kept_scores, kept_present = scores[rows], given_present[rows]
    thresholds = class_thresholds(kept_scores, kept_present)
    errors = error_scores(kept_scores, kept_present)
    issues = confident_label_issues(kept_scores, kept_present, thresholds)
    order = np.argsort(-errors, kind="stable")
    return ClassLabelQuality(
        rows=rows[order].astype(np.int64),
        error_scores=errors[order],
        past_threshold=issues[order],
        given_present=kept_present[order],
        threshold_present=thresholds[0],
        threshold_absent=thresholds[1],
    )


def rank_label_errors(
    scores: np.ndarray, labels: np.ndarray, difficult: DifficultMode | str = DifficultMode.IGNORE
) -> list[ClassLabelQuality]:
    """Every class of a predictions file: `scores` (N, C) held-out probabilities, `labels`
    (N, C) VOC labels (1 present, 0 difficult, −1 absent); difficult labels follow
    `difficult` (under `ignore` they are not ranked)."""
    scores, labels, _ = validate_score_matrix(scores, labels, None)
    targets, mask = targets_and_mask(labels, difficult)
    return [
        rank_class(scores[:, c], targets[:, c] > 0, mask[:, c] > 0) for c in range(scores.shape[1])
    ]

"""The label-quality ranking (evaluation.label_quality): hand-made answers, a brute-force
reference written from the definitions, the edge cases, and planted label flips."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.label_quality import (
    THRESHOLD_TOLERANCE,
    class_thresholds,
    confident_label_issues,
    rank_class,
    rank_label_errors,
)

# One class, VOC labels; row 6 is difficult.
#   row      0     1     2     3     4     5     6
#   score  0.9   0.8   0.7   0.1   0.2   0.05  0.6
#   label   -1     1     1    -1     1    -1     0
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.05, 0.6], dtype=np.float32)
HAND_LABELS = np.array([-1, 1, 1, -1, 1, -1, 0], dtype=np.int8)


def ranked(quality) -> list[tuple[int, float, bool]]:
    return [
        (int(r), round(float(e), 4), bool(p))
        for r, e, p in zip(quality.rows, quality.error_scores, quality.past_threshold, strict=True)
    ]


def test_hand_made_case_under_each_difficult_mode():
    (ignore,) = rank_label_errors(HAND_SCORES[:, None], HAND_LABELS[:, None], "ignore")
    # present rows 1, 2, 4: t_present = (0.8 + 0.7 + 0.2) / 3; absent rows 0, 3, 5:
    # t_absent = (0.1 + 0.9 + 0.95) / 3. Row 0 (absent, 0.9) is confidently present; row 4
    # (present, 0.2) confidently absent; the difficult row 6 is not ranked.
    assert ignore.threshold_present == pytest.approx(1.7 / 3, abs=1e-6)
    assert ignore.threshold_absent == pytest.approx(1.95 / 3, abs=1e-6)
    assert ranked(ignore) == [
        (0, 0.9, True),
        (4, 0.8, True),
        (2, 0.3, False),
        (1, 0.2, False),
        (3, 0.1, False),
        (5, 0.05, False),
    ]
    assert ignore.num_ranked == 6 and ignore.num_past_threshold == 2
    assert ignore.position_of(4) == 1 and ignore.position_of(6) is None

    (positive,) = rank_label_errors(HAND_SCORES[:, None], HAND_LABELS[:, None], "positive")
    # row 6 counts as present (error 0.4): t_present = 2.3 / 4 = 0.575 <= 0.6, so it is not
    # an issue
    assert [r for r, *_ in ranked(positive)] == [0, 4, 6, 2, 1, 3, 5]
    assert [p for *_, p in ranked(positive)] == [True, True] + [False] * 5

    (negative,) = rank_label_errors(HAND_SCORES[:, None], HAND_LABELS[:, None], "negative")
    # row 6 counts as absent (error 0.6) and 0.6 >= t_present = 1.7 / 3: an issue
    assert ranked(negative)[:3] == [(0, 0.9, True), (4, 0.8, True), (6, 0.6, True)]
    assert negative.num_past_threshold == 3


def test_both_labels_confident_the_more_probable_counts():
    """An uninformative class (t_present below the absent rows' mean score): a row can be
    confidently of both labels; the more probable one decides, exactly as defined."""
    scores = np.array([0.625, 0.125, 0.25, 0.375])  # binary fractions: exact arithmetic
    present = np.array([0, 0, 1, 1], dtype=bool)
    assert class_thresholds(scores, present) == (0.3125, 0.625)
    # row 0: absent, confidently present only -> issue; row 1: confidently absent -> fine;
    # row 2: present, confidently absent only -> issue; row 3: present, confident of both
    # (0.375 >= 0.3125 and 0.625 >= 0.625), absent more probable -> issue
    assert confident_label_issues(scores, present).tolist() == [True, False, True, True]


def test_a_class_without_positives_is_ranked_but_nothing_passes():
    scores = np.array([0.9, 0.1, 0.5], dtype=np.float32)
    (quality,) = rank_label_errors(scores[:, None], np.array([[-1], [-1], [-1]], np.int8))
    assert np.isnan(quality.threshold_present)
    assert quality.threshold_absent == pytest.approx(0.5, abs=1e-6)
    assert quality.rows.tolist() == [0, 2, 1]  # highest score first: the likeliest misses
    assert not quality.past_threshold.any()


def test_a_class_with_no_counted_row_has_an_empty_ranking():
    (quality,) = rank_label_errors(np.array([[0.3], [0.7]]), np.array([[0], [0]], np.int8))
    assert quality.num_ranked == 0 and quality.num_past_threshold == 0
    assert np.isnan(quality.threshold_present) and np.isnan(quality.threshold_absent)


def test_all_equal_scores_and_ties():
    labels = np.array([[1], [-1], [1], [-1]], np.int8)
    # at 0.5 everything ties: file order, and no row is more probably of the other label
    (half,) = rank_label_errors(np.full((4, 1), 0.5, np.float32), labels)
    assert half.rows.tolist() == [0, 1, 2, 3] and not half.past_threshold.any()
    # at 0.75 the thresholds equal the scores: every row is confident of both labels and the
    # more probable one, present, counts, so the absent labels are the issues (the paper's
    # definition; a model that scores every image alike gives no ranking to act on)
    (constant,) = rank_label_errors(np.full((4, 1), 0.75, np.float32), labels)
    assert constant.rows.tolist() == [1, 3, 0, 2]  # error 0.75 (absent) before 0.25
    assert constant.past_threshold.tolist() == [True, True, False, False]
    # equal error scores of a present and an absent row keep file order
    quality = rank_class(np.array([0.75, 0.25, 0.9]), np.array([1, 0, 0], bool))
    assert quality.rows.tolist() == [2, 0, 1]
    assert quality.error_scores.tolist() == [0.9, 0.25, 0.25]


def test_flagged_first_keeps_the_threshold_a_clean_cut():
    """The two labels have their own thresholds: a present label scored 0.2 (error 0.8) does
    not pass (present labels pass at or below the absent rows' mean, 0.196) while an absent
    one scored 0.78 (error 0.78) does (absent labels pass from 0.725)."""
    scores = np.array([0.9, 0.9, 0.9, 0.2, 0.78, 0.05, 0.05, 0.05, 0.05])
    present = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    quality = rank_class(scores, present)
    assert quality.rows[:2].tolist() == [3, 4]
    assert quality.past_threshold[:2].tolist() == [False, True]
    review = quality.flagged_first()
    assert review.rows.tolist() == [4, 3, *quality.rows[2:].tolist()]
    assert review.past_threshold.tolist() == [True] + [False] * 8
    assert review.error_scores[:2].tolist() == [0.78, pytest.approx(0.8)]
    assert review.given_present[:2].tolist() == [False, True]
    assert review.position_of(3) == 1
    assert (review.threshold_present, review.threshold_absent) == (
        quality.threshold_present,
        quality.threshold_absent,
    )


def brute_force(scores: np.ndarray, labels: np.ndarray, mode: str):
    """The definitions as plain loops over one class (no numpy in the logic)."""
    given, counted = {}, []
    for row, label in enumerate(labels.tolist()):
        if label == 0 and mode == "ignore":
            continue
        counted.append(row)
        given[row] = label == 1 or (label == 0 and mode == "positive")
    probability = {
        row: {True: float(scores[row]), False: 1.0 - float(scores[row])} for row in counted
    }
    threshold = {}
    for label in (True, False):
        mine = [probability[r][label] for r in counted if given[r] == label]
        threshold[label] = sum(mine) / len(mine) if mine else None
    issues = {}
    for row in counted:
        sure = [
            label
            for label in (True, False)
            if threshold[label] is not None
            and probability[row][label] >= threshold[label] - THRESHOLD_TOLERANCE
        ]
        if not sure:
            issues[row] = False
            continue
        if len(sure) == 2:
            p = probability[row]
            guess = given[row] if p[True] == p[False] else max(sure, key=lambda lab: p[lab])
        else:
            guess = sure[0]
        issues[row] = guess != given[row]
    error = {row: probability[row][not given[row]] for row in counted}
    order = sorted(counted, key=lambda row: (-error[row], row))
    return order, [error[r] for r in order], [issues[r] for r in order]


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 40)), 4
    scores = rng.random((n, c)).astype(np.float32)
    coarse = rng.random((n, c)) < 0.5  # many ties, and scores at exactly 0, 0.5 and 1
    scores[coarse] = (np.round(scores[coarse] * 4) / 4).astype(np.float32)
    labels = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, c), p=[0.6, 0.1, 0.3])
    labels[:, 0] = -1  # a class with no positive
    for mode in ("ignore", "positive", "negative"):
        for column, quality in enumerate(rank_label_errors(scores, labels, mode)):
            order, errors, issues = brute_force(scores[:, column], labels[:, column], mode)
            assert quality.rows.tolist() == order, (mode, column)
            np.testing.assert_array_equal(quality.error_scores, errors)
            assert quality.past_threshold.tolist() == issues, (mode, column)


def test_planted_flips_come_first():
    """Scores of a fair model of the true labels, 5 % of the given labels flipped: the top of
    the ranking is where the flips are."""
    rng = np.random.default_rng(7)
    n = 2000
    truth = rng.random(n) < 0.3
    scores = np.where(truth, rng.beta(8, 2, n), rng.beta(2, 8, n))
    flipped = rng.choice(n, size=n // 20, replace=False)
    given = truth.copy()
    given[flipped] = ~given[flipped]
    quality = rank_class(scores, given)
    top = set(quality.rows[: len(flipped)].tolist())
    precision = len(top & set(flipped.tolist())) / len(flipped)
    assert precision > 0.9, precision  # chance: 0.05
    flagged = set(quality.rows[quality.past_threshold].tolist())
    found = flagged & set(flipped.tolist())
    # The threshold is strict (an absent label must score like a typical positive): few false
    # alarms, about two thirds of the flips.
    assert len(found) / len(flagged) > 0.9 and len(found) / len(flipped) > 0.5


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="VOC labels"):
        rank_label_errors(np.zeros((2, 1)), np.array([[2], [1]]))
    with pytest.raises(ValueError, match="of one shape"):
        rank_label_errors(np.zeros((2, 1)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN or infinity"):
        rank_class(np.array([0.5, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        rank_class(np.array([0.5, 1.5]), np.array([1, 0]))

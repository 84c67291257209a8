"""evaluation: AP against brute-force references, Tailacc by hand, the report end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from evaluation.__main__ import main as evaluation_main
from evaluation.metrics import (
    UndefinedAPWarning,
    average_precision,
    mean_average_precision,
    per_class_average_precision,
    threshold_metrics,
    voc_average_precision,
)
from evaluation.ranking import format_score, ranking_order, top_and_bottom
from evaluation.tailacc import tail_accuracy, tail_thresholds, tailacc_curves
from predictions import Predictions, save_predictions
from tests.conftest import PROVENANCE, RUN_PROVENANCE
from vocdata import VOC_CLASSES, read_split
from vocdata.paths import PROJECT_ROOT

# -- references written here, independently of the implementation --------------------------


def brute_force_ap(scores, positives) -> float:
    """sum over distinct thresholds t (high to low) of (R(t) - R(previous t)) * P(t)."""
    total_pos = sum(positives)
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        kept = [p for s, p in zip(scores, positives, strict=True) if s >= t]
        recall = sum(kept) / total_pos
        ap += (recall - previous_recall) * (sum(kept) / len(kept))
        previous_recall = recall
    return ap


def brute_force_voc_ap(scores, positives) -> float:
    """Mean over positives of the best precision at that positive's rank or any lower rank."""
    ranked = [p for _, p in sorted(zip(scores, positives, strict=True), key=lambda x: -x[0])]
    precisions = [sum(ranked[: i + 1]) / (i + 1) for i in range(len(ranked))]
    best_from = [max(precisions[i:]) for i in range(len(ranked))]
    return sum(b for b, p in zip(best_from, ranked, strict=True) if p) / sum(ranked)


@pytest.mark.parametrize("seed", range(6))
def test_ap_equals_brute_force_and_sklearn_on_random_rankings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = rng.random(n)
    positives = rng.random(n) < rng.uniform(0.1, 0.6)
    positives[0] = True
    assert average_precision(scores, positives) == pytest.approx(
        brute_force_ap(list(scores), list(positives))
    )
    assert average_precision(scores, positives) == pytest.approx(
        average_precision_score(positives, scores)
    )
    voc = voc_average_precision(scores, positives)
    assert voc == pytest.approx(brute_force_voc_ap(list(scores), list(positives)))
    assert voc >= average_precision(scores, positives) - 1e-12  # interpolation only raises


def test_ap_on_hand_made_rankings():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(scores, [1, 1, 0, 0]) == 1.0  # perfect
    assert average_precision(scores, [0, 0, 0, 1]) == pytest.approx(0.25)  # reversed
    assert average_precision(scores, [0, 1, 0, 1]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    ties = np.full(5, 0.5)
    assert average_precision(ties, [1, 0, 1, 0, 0]) == pytest.approx(2 / 5)
    assert average_precision(ties, [1, 0, 1, 0, 0]) == pytest.approx(
        brute_force_ap(list(ties), [1, 0, 1, 0, 0])
    )
    assert np.isnan(average_precision(scores, [0, 0, 0, 0]))


def test_class_without_positive_is_nan_named_and_left_out_of_the_mean():
    labels = np.array([[1, -1], [-1, -1], [1, 0]], dtype=np.int8)
    scores = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.9]])
    with pytest.warns(UndefinedAPWarning, match="'dog'"):
        ap = per_class_average_precision(scores, labels, ["cat", "dog"])
    assert ap[0] == 1.0 and np.isnan(ap[1])
    mean = mean_average_precision(ap)
    assert (mean.value, mean.num_classes, mean.num_undefined) == (1.0, 1, 1)
    assert "over 1 classes" in str(mean) and "1 without positives" in str(mean)


def test_difficult_entries_are_left_out_under_ignore():
    labels = np.array([[1], [0], [-1], [1]], dtype=np.int8)
    scores = np.array([[0.5], [0.99], [0.6], [0.7]])
    assert per_class_average_precision(scores, labels)[0] == pytest.approx(
        average_precision([0.5, 0.6, 0.7], [1, 0, 1])
    )
    assert per_class_average_precision(scores, labels, difficult="positive")[0] == pytest.approx(
        average_precision([0.5, 0.99, 0.6, 0.7], [1, 1, 0, 1])
    )


def test_metric_inputs_are_validated():
    with pytest.raises(ValueError, match="one shape"):
        per_class_average_precision(np.zeros((3, 2)), np.ones((3, 3), np.int8))
    with pytest.raises(ValueError, match="VOC labels"):
        per_class_average_precision(np.zeros((2, 1)), np.array([[2], [1]]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([np.nan, 1.0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="variant"):
        per_class_average_precision(np.zeros((1, 1)), np.ones((1, 1)), variant="x")


def test_threshold_metrics_by_hand():
    scores = np.array([[0.9], [0.6], [0.4], [0.2], [0.7]])
    labels = np.array([[1], [-1], [1], [-1], [0]], dtype=np.int8)
    m = threshold_metrics(scores, labels)  # the difficult row is not counted
    assert m.counted[0] == 4 and m.positives[0] == 2
    assert m.accuracy[0] == pytest.approx(2 / 4)  # right: 0.9 and 0.2
    assert m.all_negative_accuracy[0] == pytest.approx(2 / 4)
    assert m.precision[0] == pytest.approx(1 / 2) and m.recall[0] == pytest.approx(1 / 2)
    assert m.f1[0] == pytest.approx(0.5)


# -- Tailacc ---------------------------------------------------------------------------------


def test_tail_accuracy_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
    positives = np.array([1, 0, 1, 1, 0, 1])
    assert tail_accuracy(scores, positives, 0.5) == pytest.approx(3 / 4)
    assert tail_accuracy(scores, positives, 0.75) == pytest.approx(1 / 2)
    assert tail_accuracy(scores, positives, 0.85) == pytest.approx(1.0)
    assert tail_accuracy(scores, positives, 0.3) == pytest.approx(4 / 5)  # 0.4: right negative
    assert np.isnan(tail_accuracy(scores, positives, 0.95))


@pytest.mark.parametrize("count", [10, 15, 20])
def test_thresholds_increase_from_half_to_below_the_max(count):
    scores = np.random.default_rng(count).random(300)
    thresholds = tail_thresholds(scores, count)
    assert len(thresholds) == count and thresholds[0] == 0.5
    assert (np.diff(thresholds) > 0).all() and thresholds[-1] < scores.max()
    kept = [(scores > t).sum() / (scores > 0.5).sum() for t in thresholds]
    np.testing.assert_allclose(kept, 1 - np.arange(count) / count, atol=0.02)


def test_threshold_count_is_limited_and_empty_tails_are_handled():
    with pytest.raises(ValueError, match="10 to 20"):
        tail_thresholds(np.random.default_rng(0).random(50), 5)
    assert tail_thresholds(np.full(10, 0.3), 10).size == 0
    scores = np.column_stack([np.linspace(0.01, 0.99, 50), np.full(50, 0.2)])
    labels = np.column_stack([np.where(np.arange(50) > 25, 1, -1), np.ones(50)]).astype(np.int8)
    curves = tailacc_curves(scores, labels, ["a", "b"], 10)
    assert np.isnan(curves.tailacc[1]).all() and (curves.classes_in_mean == 1).all()
    np.testing.assert_allclose(curves.mean, curves.tailacc[0])


def test_mean_curve_is_monotone_for_perfect_rankings():
    rng = np.random.default_rng(7)
    n, c = 400, 5
    positives = rng.random((n, c)) < 0.3
    scores = np.where(positives, rng.uniform(0.55, 1.0, (n, c)), rng.uniform(0.0, 0.8, (n, c)))
    # perfect ranking: every positive above every negative of its class
    scores = np.where(positives, 0.81 + 0.19 * scores, scores)
    labels = np.where(positives, 1, -1).astype(np.int8)
    curves = tailacc_curves(scores, labels, None, 15)
    assert (np.diff(curves.mean) >= -1e-12).all()
    assert curves.mean[-1] == pytest.approx(1.0)


def test_scores_near_zero_and_one_stay_distinguishable():
    assert [format_score(s) for s in (0.99991, 0.99979, 1.0, 0.5, 4e-4, 3.2e-5, 0.0)] == [
        "1-9e-5",
        "1-2e-4",
        "1",
        "0.500",
        "4e-4",
        "3e-5",
        "0",
    ]
    assert format_score(0.9994) == "0.999" and format_score(0.0005) == "0.001"


def test_ranking_is_descending_with_ties_in_file_order():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert ranking_order(scores).tolist() == [1, 3, 2, 0, 4]
    top, bottom = top_and_bottom(scores, 2)
    assert top.tolist() == [1, 3] and bottom.tolist() == [4, 0]


# -- the report on real labels -------------------------------------------------------------------


def make_run(run_dir, val_split, seed=0, history=True, produced_by=True):
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1.5, val_split.labels.shape)
    scores = (1 / (1 + np.exp(-(noise + 3.0 * (val_split.labels >= 0) - 2.0)))).astype(np.float32)
    provenance = PROVENANCE | {"epoch": 2, "train_images": 1697, "head": "Linear(512 -> 20)"}
    predictions = Predictions(
        scores, val_split.labels, tuple(val_split.relative_paths), VOC_CLASSES, provenance
    )
    run_dir.mkdir(parents=True)
    save_predictions(run_dir / "val_predictions.npz", predictions)
    if history:
        records = [
            {
                "epoch": e,
                "train_loss": 1 / e,
                "val_loss": 1.2 / e,
                "val_map": 0.3 + e / 10,
                "val_map_classes": 19,
            }
            for e in (1, 2, 3)
        ]
        (run_dir / "history.json").write_text(json.dumps(records))
    (run_dir / "config.json").write_text(json.dumps({"arch": "resnet18", "seed": 0}))
    if produced_by:
        (run_dir / "provenance.json").write_text(json.dumps(RUN_PROVENANCE))
    return predictions


def pdf_pages(path) -> int:
    return len(re.findall(rb"/Type\s*/Page[^s]", path.read_bytes()))


def test_report_end_to_end_on_real_labels(real_voc_root, tmp_path):
    run_dir = tmp_path / "runs" / "real"
    predictions = make_run(run_dir, read_split(real_voc_root, "val"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation",
            "--run",
            str(run_dir),
            "--voc-root",
            str(real_voc_root),
            "--classes",
            "dog,sheep,tvmonitor",
            "--k",
            "10",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = run_dir / "report"
    stems = [
        "curves",
        "per_class_ap",
        "accuracy_vs_ap",
        "tailacc",
        "grid_dog",
        "grid_sheep",
        "grid_tvmonitor",
    ]
    for stem in stems:
        for suffix in (".png", ".pdf"):
            assert (out / f"{stem}{suffix}").stat().st_size > 1000, stem + suffix
    assert pdf_pages(out / "report.pdf") == 2 + len(stems) <= 10
    markdown = (out / "report.md").read_text()
    for needle in (
        RUN_PROVENANCE["loss_code"],
        "torch==2.14.1",
        RUN_PROVENANCE["git"]["commit"],
        "Tailacc",
        "1729 val images",
        "aeroplane",
    ):
        assert needle in markdown, needle

    grids = json.loads((out / "grids.json").read_text())
    for name in ("dog", "sheep", "tvmonitor"):
        column = VOC_CLASSES.index(name)
        col = predictions.scores[:, column]
        by_score = sorted(range(len(col)), key=lambda i: (-col[i], i))
        assert [t["file"] for t in grids[name]["top"]] == [
            predictions.files[i] for i in by_score[:10]
        ]
        assert [t["rank"] for t in grids[name]["top"]] == list(range(1, 11))
        assert [t["file"] for t in grids[name]["bottom"]] == [
            predictions.files[i] for i in by_score[::-1][:10]
        ]
        assert [t["label"] for t in grids[name]["top"]] == [
            int(predictions.labels[i, column]) for i in by_score[:10]
        ]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes_in_map"] == 19 and summary["undefined_classes"] == ["aeroplane"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        expected = mean_average_precision(
            per_class_average_precision(predictions.scores, predictions.labels)
        ).value
    assert summary["map_sklearn"] == pytest.approx(expected)


def test_report_bad_inputs_are_clear(tiny_voc, tmp_path, caplog, capsys):
    val = read_split(tiny_voc.root, "val")
    no_history = tmp_path / "no_history"
    make_run(no_history, val, history=False)
    assert evaluation_main(["--run", str(no_history)]) == 2
    assert "history.json not found" in caplog.text

    broken = tmp_path / "broken"
    make_run(broken, val)
    with np.load(broken / "val_predictions.npz") as archive:
        arrays = dict(archive)
    arrays["scores"] = arrays["scores"][:, :5]
    np.savez(broken / "val_predictions.npz", **arrays)
    assert evaluation_main(["--run", str(broken)]) == 2
    assert "scores have shape (16, 5), expected (16, 20)" in caplog.text

    assert evaluation_main(["--run", str(tmp_path / "absent")]) == 2
    assert "Run folder not found" in caplog.text

    good = tmp_path / "good"
    predictions = make_run(good, val, produced_by=False)  # a run from before provenance.json
    column = VOC_CLASSES.index("person")
    top_file = predictions.files[int(np.argmax(predictions.scores[:, column]))]
    (tiny_voc.root / top_file).unlink()
    caplog.clear()
    assert (
        evaluation_main(
            [
                "--run",
                str(good),
                "--voc-root",
                str(tiny_voc.root),
                "--classes",
                "person",
                "--k",
                "3",
            ]
        )
        == 0
    )
    assert f"grid image {top_file} unreadable" in caplog.text
    assert (good / "report" / "report.pdf").is_file()
    # The loss code and versions come from the run folder only; an older run without them
    # is reported as "not recorded", never described with today's checkout.
    markdown = (good / "report" / "report.md").read_text()
    assert markdown.count("not recorded (the run folder has no provenance.json)") == 2
    assert "binary_cross_entropy_with_logits" not in markdown and "torch==" not in markdown
    assert evaluation_main(["--run", str(good), "--classes", "unicorn"]) == 2
    assert "unknown class 'unicorn'" in caplog.text


def test_report_option_values_out_of_range_are_usage_errors(capsys):
    for argv in (["--thresholds", "3"], ["--thresholds", "21"], ["--k", "0"], ["--k", "ten"]):
        with pytest.raises(SystemExit) as info:
            evaluation_main(argv)
        assert info.value.code == 2, argv
    assert "must be from 10 to 20, got 3" in capsys.readouterr().err


def test_a_programming_error_in_the_report_is_not_hidden(tiny_voc, tmp_path, monkeypatch):
    make_run(tmp_path / "run", read_split(tiny_voc.root, "val"))

    def broken(*args, **kwargs):
        raise ValueError("a bug, not a bad input")

    monkeypatch.setattr("evaluation.__main__.write_report", broken)
    with pytest.raises(ValueError, match="a bug"):
        evaluation_main(["--run", str(tmp_path / "run")])

"""predictions: the on-disk contract, validated on load with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from predictions import (
    Predictions,
    PredictionsFormatError,
    RunNotFoundError,
    find_predictions_file,
    load_predictions,
    resolve_run_dir,
    save_predictions,
    write_latest_pointer,
)
from tests.conftest import PROVENANCE


def make_predictions(n: int = 6, c: int = 3, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    return Predictions(
        scores=rng.random((n, c), dtype=np.float32),
        labels=rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n, c)),
        files=tuple(f"JPEGImages/{i:04d}.jpg" for i in range(n)),
        class_names=("cat", "dog", "person")[:c],
        provenance=dict(PROVENANCE),
    )


def test_round_trip_is_exact_and_leaves_no_temporary_files(tmp_path):
    original = make_predictions()
    path = save_predictions(tmp_path / "val_predictions.npz", original)
    loaded = load_predictions(path)
    np.testing.assert_array_equal(loaded.scores, original.scores)
    np.testing.assert_array_equal(loaded.labels, original.labels)
    assert loaded.scores.dtype == np.float32 and loaded.labels.dtype == np.int8
    assert loaded.files == original.files and loaded.class_names == original.class_names
    assert loaded.provenance == {"format_version": 2, **PROVENANCE}
    assert [p.name for p in tmp_path.iterdir()] == ["val_predictions.npz"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scores": np.zeros((5, 3), np.float32)}, "scores have shape"),
        ({"labels": np.zeros((6, 2), np.int8)}, "labels have shape"),
        ({"scores": np.full((6, 3), 1.5, np.float32)}, "probabilities"),
        ({"labels": np.full((6, 3), 2, np.int8)}, "labels must be"),
        ({"files": ("/abs/a.jpg", *(f"b{i}.jpg" for i in range(5)))}, "relative"),
        ({"files": ("a.jpg",) * 6}, "not unique"),
    ],
)
def test_invalid_contents_are_rejected(change, message):
    fields = make_predictions().__dict__ | change
    with pytest.raises(PredictionsFormatError, match=message):
        Predictions(**fields)


def test_load_rejects_files_that_are_not_predictions(tmp_path):
    with pytest.raises(PredictionsFormatError, match="not found"):
        load_predictions(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(PredictionsFormatError, match="is not a predictions file") as info:
        load_predictions(garbage)
    assert "pickle" not in str(info.value)  # numpy would advise loading it unsafely
    partial = tmp_path / "partial.npz"
    np.savez(partial, scores=np.zeros((2, 2), np.float32))
    with pytest.raises(PredictionsFormatError, match="lacks files, class_names, provenance"):
        load_predictions(partial)


def test_load_reports_shape_mismatch_and_future_versions(tmp_path):
    good = make_predictions()
    path = tmp_path / "p.npz"
    np.savez(
        path,
        scores=good.scores[:4],
        labels=good.labels,
        files=np.array(good.files),
        class_names=np.array(good.class_names),
        provenance=np.array(json.dumps({"format_version": 1, **PROVENANCE})),
    )
    with pytest.raises(PredictionsFormatError, match=r"p\.npz: scores have shape \(4, 3\)"):
        load_predictions(path)
    np.savez(
        path,
        scores=good.scores,
        labels=good.labels,
        files=np.array(good.files),
        class_names=np.array(good.class_names),
        provenance=np.array(json.dumps({"format_version": 99})),
    )
    with pytest.raises(PredictionsFormatError, match="format version 99"):
        load_predictions(path)


def _write_raw(path, predictions: Predictions, version: int, with_labels: bool = True) -> None:
    """An archive as an older (or another) writer would have left it."""
    arrays = {
        "scores": predictions.scores,
        "files": np.array(predictions.files),
        "class_names": np.array(predictions.class_names),
        "provenance": np.array(json.dumps({"format_version": version, **PROVENANCE})),
    }
    if with_labels:
        arrays["labels"] = predictions.labels
    np.savez(path, **arrays)


def test_version_1_files_still_load_and_are_rewritten_as_version_2(tmp_path):
    original = make_predictions()
    _write_raw(tmp_path / "v1.npz", original, version=1)
    loaded = load_predictions(tmp_path / "v1.npz")
    np.testing.assert_array_equal(loaded.labels, original.labels)
    assert loaded.has_labels and loaded.provenance["format_version"] == 1
    save_predictions(tmp_path / "again.npz", loaded)
    assert load_predictions(tmp_path / "again.npz").provenance["format_version"] == 2
    _write_raw(tmp_path / "v1-bare.npz", original, version=1, with_labels=False)
    with pytest.raises(PredictionsFormatError, match=r"format version 1\) lacks labels"):
        load_predictions(tmp_path / "v1-bare.npz")


def test_version_2_allows_no_labels_and_still_validates_the_rest(tmp_path):
    unlabelled = Predictions(**(make_predictions().__dict__ | {"labels": None}))
    assert not unlabelled.has_labels
    path = save_predictions(tmp_path / "photos.npz", unlabelled)
    with np.load(path) as archive:
        assert "labels" not in archive.files
    loaded = load_predictions(path)
    assert loaded.labels is None and loaded.files == unlabelled.files
    np.testing.assert_array_equal(loaded.scores, unlabelled.scores)
    with pytest.raises(PredictionsFormatError, match="scores have shape"):
        Predictions(**(unlabelled.__dict__ | {"scores": np.zeros((2, 3), np.float32)}))
    broken = make_predictions()
    object.__setattr__(broken, "scores", np.full((6, 3), 2.0, np.float32))
    _write_raw(tmp_path / "bad.npz", broken, version=2, with_labels=False)
    with pytest.raises(PredictionsFormatError, match="probabilities"):
        load_predictions(tmp_path / "bad.npz")


def test_saving_requires_provenance():
    bare = Predictions(**(make_predictions().__dict__ | {"provenance": {"arch": "x"}}))
    with pytest.raises(PredictionsFormatError, match="provenance lacks"):
        save_predictions("never-written.npz", bare)


def test_latest_pointer_and_run_resolution(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(RunNotFoundError, match=r"python main_train\.py"):
        resolve_run_dir(None, runs)
    run = runs / "20261122-120000-resnet18"
    run.mkdir(parents=True)
    write_latest_pointer(runs, run)
    assert (runs / "latest").read_text().strip() == "20261122-120000-resnet18"
    assert resolve_run_dir(None, runs) == run
    assert resolve_run_dir("20261122-120000-resnet18", runs) == run
    with pytest.raises(RunNotFoundError, match=r"no val_predictions\.npz yet"):
        find_predictions_file(None, runs)
    save_predictions(run / "val_predictions.npz", make_predictions())
    assert find_predictions_file(None, runs) == run / "val_predictions.npz"
    assert (
        find_predictions_file(str(run / "val_predictions.npz"), runs) == run / "val_predictions.npz"
    )

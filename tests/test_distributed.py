"""torchrun with 2 CPU processes (gloo): one run, one predictions file in val order, and the
mAP of a single-process evaluation of the same checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from evaluation.metrics import (
    UndefinedAPWarning,
    mean_average_precision,
    per_class_average_precision,
)
from predictions import load_predictions
from tests.conftest import assert_run_scores_match_saved_model
from tests.voc_fixture import tiny_run_args
from vocdata import read_split
from vocdata.paths import PROJECT_ROOT


@pytest.mark.slow
def test_two_process_ddp_run_matches_a_single_process_evaluation(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    options = tiny_run_args(
        tiny_voc.root, runs, "--batch-size", "4", "--epochs", "2", "--device", "cpu"
    )
    result = subprocess.run(
        [*torchrun, "main_train.py", *options],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1  # rank 0 alone creates and writes
    run_dir = run_dirs[0]
    assert (runs / "latest").read_text().strip() == run_dir.name

    val = read_split(tiny_voc.root, "val")
    predictions = load_predictions(run_dir / "val_predictions.npz")
    assert list(predictions.files) == val.relative_paths  # gathered back into split order
    assert predictions.scores.shape == (len(val), 20)
    np.testing.assert_array_equal(predictions.labels, val.labels)

    saved, scores = assert_run_scores_match_saved_model(run_dir, tiny_voc.root, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        single = mean_average_precision(per_class_average_precision(scores, val.labels)).value
    history = json.loads((run_dir / "history.json").read_text())
    best = next(h for h in history if h["epoch"] == saved["provenance"]["epoch"])
    assert best["val_map"] == pytest.approx(single, abs=1e-6)
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 4

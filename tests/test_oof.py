"""Out-of-fold predictions of a --folds K run: every train image scored once, by the fold model
that held it out, with the labels the folds trained with; and planted label flips found by
ranking those scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import main_train
from evaluation.label_quality import rank_label_errors
from gui.camsource import cam_source_for
from predictions import load_predictions
from predictions.provenance import check_provenance
from tests.conftest import saved_model_scores
from tests.voc_fixture import TinyVoc, tiny_run_args, write_tiny_voc
from training.checkpoint import load_trusted
from vocdata import read_split
from vocdata.classes import VOC_CLASSES
from vocdata.paths import resolve_project_path

OOF = "train_oof_predictions.npz"


def _flip_marks(voc: TinyVoc, path: Path) -> list[tuple[int, int]]:
    """Marks 'label looks wrong' on the first present and first absent dog/cat labels."""
    labels, ids = voc.labels["train"], voc.ids["train"]
    picked = [(int(np.flatnonzero(labels[:, c] == v)[0]), c) for c in (7, 11) for v in (1, -1)]
    marks: dict[str, dict[str, str]] = {}
    for row, column in picked:
        marks.setdefault(VOC_CLASSES[column], {})[f"JPEGImages/{ids[row]}.jpg"] = "label"
    path.write_text(json.dumps({"format": "voc-gui-marks/1", "marks": marks}))
    return picked


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory) -> tuple[TinyVoc, Path, list[tuple[int, int]], list[str]]:
    """A 3-fold run of 2 epochs on the tiny tree, trained with four flipped labels:
    (voc, run folder, the flipped (row, column), the arguments without --run-name)."""
    base = tmp_path_factory.mktemp("oof")
    voc = write_tiny_voc(base / "VOCdevkit" / "VOC2012")
    picked = _flip_marks(voc, base / "marks.json")
    args = tiny_run_args(voc.root, base / "runs", "--folds", "3", "--epochs", "2")
    args += ["--label-fixes", str(base / "marks.json"), "--label-fix-mode", "flip"]
    assert main_train.main([*args, "--run-name", "whole"]) == 0
    return voc, base / "runs" / "whole", picked, args


def test_every_train_image_is_scored_once_by_the_fold_model_that_held_it_out(fold_run):
    voc, run, picked, _ = fold_run
    oof = load_predictions(run / OOF)
    train = read_split(voc.root, "train")
    assert list(oof.files) == train.relative_paths  # train-split order, every image once
    fold_of = json.loads((run / "folds.json").read_text())["fold_of_image"]
    prov = oof.provenance
    check_provenance(prov, writing=True)
    assert prov["split"] == "train" and prov["out_of_fold"] is True and prov["folds"] == 3
    assert prov["epoch"] is None and prov["val_map"] is None
    models, row_models = prov["models"], prov["row_models"]
    assert [m["fold"] for m in models] == [1, 2, 3]
    assert row_models == [
        models.index(next(m for m in models if m["fold"] == fold_of[f])) for f in oof.files
    ]
    val = load_predictions(run / "val_predictions.npz")
    assert prov["tta"] == val.provenance["tta"] == "hflip"
    assert val.provenance["models"] == models  # the ensemble's maps: all fold models

    for index, entry in enumerate(models):
        fold_dir = run / "folds" / str(entry["fold"])
        model_path = resolve_project_path(entry["path"])
        assert model_path == (fold_dir / "model_best.pt").resolve()
        assert entry["epoch"] == load_trusted(model_path)["provenance"]["epoch"]
        held_out = load_predictions(fold_dir / "heldout_predictions.npz")
        rows = np.flatnonzero(np.array(row_models) == index)
        assert [oof.files[r] for r in rows] == list(held_out.files)
        np.testing.assert_array_equal(oof.scores[rows], held_out.scores)
        again = saved_model_scores(model_path, voc.root, "train", prov["tta"])
        np.testing.assert_allclose(oof.scores[rows], again[rows], atol=1e-6)

    # the labels are those the folds trained with: the four flipped, the rest as read
    expected = train.labels.copy()
    for row, column in picked:
        expected[row, column] = -expected[row, column]
    np.testing.assert_array_equal(oof.labels, expected)
    assert prov["label_fixes"]["count"] == 4 and prov["label_fixes"]["mode"] == "flip"
    np.testing.assert_array_equal(val.labels, read_split(voc.root, "val").labels)

    # the browser's activation map of a row comes from that row's own fold model
    source = cam_source_for(oof, run / OOF)
    assert source.available
    for row in (0, len(oof.files) - 1):
        (member,) = source.members(row)
        assert source.models[member].resolve() == resolve_project_path(
            models[row_models[row]]["path"]
        )


def test_a_resumed_fold_run_writes_the_same_out_of_fold_file_at_the_end(fold_run):
    _, run, _, args = fold_run
    runs = run.parent
    assert main_train.main([*args, "--run-name", "halves", "--stop-after", "3"]) == 0
    assert not (runs / "halves" / OOF).exists()
    assert main_train.main(["--resume", "halves", "--runs-dir", str(runs)]) == 0
    whole, halves = load_predictions(run / OOF), load_predictions(runs / "halves" / OOF)
    np.testing.assert_array_equal(whole.scores, halves.scores)
    np.testing.assert_array_equal(whole.labels, halves.labels)
    assert whole.provenance["row_models"] == halves.provenance["row_models"]


def _plant_flips(voc: TinyVoc, share: float, seed: int) -> set[tuple[int, int]]:
    """Flip `share` of the counted train labels in the class files (the images keep their
    true colour patches); return the flipped (row, column)."""
    labels = voc.labels["train"].copy()
    counted = np.argwhere(labels != 0)
    rng = np.random.default_rng(seed)
    chosen = counted[rng.choice(len(counted), round(share * len(counted)), replace=False)]
    for row, column in chosen:
        labels[row, column] = -labels[row, column]
    main = voc.root / "ImageSets" / "Main"
    for column, name in enumerate(VOC_CLASSES):
        lines = (f"{i} {labels[r, column]:2d}\n" for r, i in enumerate(voc.ids["train"]))
        (main / f"{name}_train.txt").write_text("".join(lines))
    return {(int(r), int(c)) for r, c in chosen}


def test_the_ranking_of_out_of_fold_scores_finds_planted_label_flips(tmp_path):
    """300 generated train images (each class paints its own colour patch), 5 % of their
    counted labels flipped; 3 frozen EfficientNet-Lite0 fold models at 64 px. Pooled over the
    classes, the k labels with the highest error score (k = the number of flips) are mostly
    flips: measured 0.55 (chance 0.05)."""
    voc = write_tiny_voc(tmp_path / "VOCdevkit" / "VOC2012", n_train=300, n_val=30, seed=5)
    flips = _plant_flips(voc, 0.05, seed=7)
    args = tiny_run_args(voc.root, tmp_path / "runs", "--folds", "3", "--run-name", "cv")
    args[args.index("--weights") + 1] = "imagenet"
    args[args.index("--image-size") + 1] = "64"
    args += ["--arch", "efficientnet_lite0", "--freeze-backbone", "--head", "random"]
    assert main_train.main(args) == 0

    oof = load_predictions(tmp_path / "runs" / "cv" / OOF)
    ranked = rank_label_errors(oof.scores, oof.labels, oof.provenance["difficult"])
    pooled = sorted(
        (
            (-float(error), int(row), column)
            for column, quality in enumerate(ranked)
            for row, error in zip(quality.rows, quality.error_scores, strict=True)
        ),
    )
    top = {(row, column) for _, row, column in pooled[: len(flips)]}
    precision = len(top & flips) / len(flips)
    chance = len(flips) / len(pooled)
    assert chance == pytest.approx(0.05, abs=0.002)
    print(f"top-{len(flips)} precision {precision:.3f}, chance {chance:.3f}")
    assert precision > 6 * chance, f"top-{len(flips)} precision {precision:.2f}"

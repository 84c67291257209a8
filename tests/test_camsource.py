"""Which model an activation map comes from (gui.camsource) and how the provider uses it: the
provenance's models, a row's own model in an out-of-fold file, the mean of an ensemble, the
fallbacks of older files, and images read only inside the dataset root. No torch needed: the
model files are stand-in archives and the mappers stand-ins that paint known maps."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gui.cam import CamProvider
from gui.camsource import CamSource, cam_source_for, model_file_problem
from predictions import Predictions
from tests.conftest import PROVENANCE
from vocdata.paths import project_relative


def fake_model_file(path: Path) -> Path:
    """An archive laid out like `torch.save`'s (the loader checks the rest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{path.stem}/data.pkl", b"not read here")
    return path


def predictions_with(rows: int = 3, **provenance) -> Predictions:
    return Predictions(
        np.full((rows, 2), 0.5, np.float32),
        np.ones((rows, 2), np.int8),
        tuple(f"JPEGImages/{i}.jpg" for i in range(rows)),
        ("cat", "dog"),
        {**PROVENANCE, **provenance},
    )


def named(*paths: Path) -> list[dict]:
    """The provenance's `models` as writers store them: project-relative paths."""
    return [{"path": project_relative(p), "arch": "resnet18"} for p in paths]


def test_a_file_written_elsewhere_finds_its_model_through_the_provenance(tmp_path):
    """`python -m predictions` writes <run>/predictions/<name>.npz: no model beside it."""
    model = fake_model_file(tmp_path / "run" / "model_best.pt")
    file = tmp_path / "run" / "predictions" / "VOC2007-test.npz"
    source = cam_source_for(predictions_with(models=named(model)), file)
    assert source.models == (model,) and source.row_models is None
    assert source.members(0) == (0,) and source.members(None) == (0,)
    assert "model_best.pt" in source.describe(1) and "named by the file" in source.tooltip()


def test_an_ensemble_maps_the_mean_of_its_members(tmp_path):
    models = [fake_model_file(tmp_path / f"r{k}" / "model_best.pt") for k in range(3)]
    source = cam_source_for(predictions_with(models=named(*models)), tmp_path / "e.npz")
    assert source.members(2) == (0, 1, 2)
    assert source.describe(2) == "mean of the 3 ensemble members' maps"
    assert "mean of the 3" in source.tooltip()


def test_an_out_of_fold_file_maps_each_row_with_its_own_model(tmp_path):
    models = [fake_model_file(tmp_path / "folds" / str(k) / "model_best.pt") for k in (1, 2)]
    file = tmp_path / "train_oof_predictions.npz"
    oof = predictions_with(rows=4, models=named(*models), row_models=[1, 0, 0, 1], out_of_fold=True)
    source = cam_source_for(oof, file)
    assert [source.members(r) for r in range(4)] == [(1,), (0,), (0,), (1,)]
    assert "folds/2/model_best.pt" in source.describe(0) and "model 2 of 2" in source.describe(0)
    with pytest.raises(ValueError, match="give the row"):
        source.members(None)
    # without row_models, an out-of-fold file's map could come from a model that saw the image
    unsure = cam_source_for(predictions_with(models=named(*models), out_of_fold=True), file)
    assert not unsure.available and "row_models" in unsure.reason


@pytest.mark.parametrize(
    "row_models",
    [[0, 1], [0, 1, 2], [0, 1, -1], [0, 1, 1.0], [0, True, 1], "0,1,1"],
    ids=["short", "out-of-range", "negative", "float", "bool", "text"],
)
def test_malformed_row_models_mean_no_map(tmp_path, row_models):
    models = [fake_model_file(tmp_path / f"m{k}.pt") for k in (0, 1)]
    source = cam_source_for(
        predictions_with(models=named(*models), row_models=row_models), tmp_path / "p.npz"
    )
    assert not source.available and "row_models" in source.reason


def test_a_named_model_that_is_missing_or_not_a_model_is_refused_with_its_name(tmp_path):
    fake_model_file(tmp_path / "model_best.pt")  # beside: not used when models are named
    missing = tmp_path / "gone" / "model_best.pt"
    source = cam_source_for(predictions_with(models=named(missing)), tmp_path / "p.npz")
    assert not source.available and "gone/model_best.pt does not exist" in source.reason
    text = tmp_path / "notes.pt"
    text.write_text("a text file")
    source = cam_source_for(predictions_with(models=named(text)), tmp_path / "p.npz")
    assert not source.available and "notes.pt is not a saved model" in source.reason
    assert model_file_problem(tmp_path) is not None  # a folder
    for broken in ([], [{"arch": "resnet18"}], "runs/x", [{"path": 3}]):
        source = cam_source_for(predictions_with(models=broken), tmp_path / "p.npz")
        assert not source.available and "'models'" in source.reason


def test_older_files_fall_back_beside_then_fold_models_then_run(tmp_path):
    file = tmp_path / "run" / "val_predictions.npz"
    old = predictions_with()  # no models named
    source = cam_source_for(old, file)
    assert not source.available and "model_best.pt" in source.reason
    # a k-fold run's val file of before: fold models relative to the run folder
    folds = [fake_model_file(tmp_path / "run" / "folds" / str(k) / "model_best.pt") for k in (1, 2)]
    kfold = predictions_with(fold_models=["folds/1/model_best.pt", "folds/2/model_best.pt"])
    assert cam_source_for(kfold, file).models == tuple(folds)
    # fold models that lead out of the run folder are not followed
    outside = fake_model_file(tmp_path / "elsewhere" / "model_best.pt")
    escaping = predictions_with(fold_models=["../elsewhere/model_best.pt"])
    assert not cam_source_for(escaping, file).available
    # the run folder named by the file
    in_run = predictions_with(run=project_relative(outside.parent))
    assert cam_source_for(in_run, file).models == (outside,)
    # and the model beside the file first of all
    beside = fake_model_file(tmp_path / "run" / "model_best.pt")
    assert cam_source_for(in_run, file).models == (beside,)
    # an out-of-fold file never falls back to a model that may have trained on its images
    oof = predictions_with(out_of_fold=True)
    assert not cam_source_for(oof, tmp_path / "run" / "train_oof_predictions.npz").available


class PaintingMapper:
    """Stands in for GradCamMapper: a map of one value, at the size of the pixels given."""

    def __init__(self, value: float, shorter_side: int) -> None:
        self.value, self.shorter_side = value, shorter_side
        self.calls = 0

    def heatmap(self, pixels: np.ndarray, class_index: int) -> np.ndarray:
        self.calls += 1
        return np.full(pixels.shape[:2], self.value, np.float32)


def write_image(root: Path, name: str) -> None:
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 20), (90, 90, 90)).save(root / "JPEGImages" / name)


def test_the_provider_uses_the_rows_model_or_the_mean_of_the_members(tmp_path):
    write_image(tmp_path, "0.jpg")
    write_image(tmp_path, "1.jpg")
    paths = (Path("a.pt"), Path("b.pt"))
    mappers = {Path("a.pt"): PaintingMapper(0.2, 16), Path("b.pt"): PaintingMapper(0.8, 32)}
    per_row = CamProvider(CamSource(paths, (1, 0)), tmp_path, mapper_factory=mappers.get)
    assert not per_row.loaded
    assert per_row.compute("JPEGImages/0.jpg", 0, row=0).max() == pytest.approx(0.8)
    assert per_row.compute("JPEGImages/1.jpg", 0, row=1).max() == pytest.approx(0.2)
    assert per_row.loaded and mappers[Path("b.pt")].calls == 1
    per_row.shutdown()
    ensemble = CamProvider(CamSource(paths), tmp_path, mapper_factory=mappers.get)
    heatmap = ensemble.compute("JPEGImages/0.jpg", 1, row=0)
    assert heatmap.shape == (16, 32)  # the first member's size (shorter side 16)
    np.testing.assert_allclose(heatmap, 0.5, atol=1e-6)  # (0.2 + 0.8) / 2
    ensemble.shutdown()


def test_the_provider_reads_no_image_outside_the_dataset_root(tmp_path):
    root, secret = tmp_path / "root", tmp_path / "secret.jpg"
    write_image(root, "0.jpg")
    Image.new("RGB", (8, 8)).save(secret)
    os.symlink(secret, root / "JPEGImages" / "link.jpg")
    mapper = PaintingMapper(1.0, 8)
    provider = CamProvider(CamSource((Path("a.pt"),)), root, mapper_factory=lambda _p: mapper)
    with pytest.raises(ValueError, match="outside the dataset root"):
        provider.compute("JPEGImages/link.jpg", 0, row=0)
    assert mapper.calls == 0 and provider.get("JPEGImages/link.jpg", 0) is None
    provider.shutdown()

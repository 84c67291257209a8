"""Issue 11: the synset table, the ImageNet-derived heads, --epochs 0, TTA, frozen features."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import main_train
import training.features
from evaluation.metrics import per_class_average_precision
from predictions import load_predictions
from tests.voc_fixture import tiny_run_args
from training.checkpoint import load_model, saved_views
from training.heads import PriorHead, build_head
from training.loop import tta_logits
from training.model import build_classifier
from training.synsets import VOC_SYNSETS, synset_indices
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import VocClassification
from vocdata.splits import read_split
from vocdata.transforms import eval_transform

LITE0 = ("--arch", "efficientnet_lite0", "--weights", "imagenet")


def _latest(runs: Path) -> Path:
    return runs / (runs / "latest").read_text().strip()


# -- the synset table ----------------------------------------------------------------------------


def test_synset_table_matches_timm_imagenet_classes():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert set(VOC_SYNSETS) <= set(VOC_CLASSES)
    seen: dict[int, str] = {}
    for voc_class, synsets in VOC_SYNSETS.items():
        assert synsets, f"{voc_class} is listed with no synset"
        for index, wnid, name in synsets:
            assert info.index_to_label_name(index) == wnid, (voc_class, index)
            assert name in info.index_to_description(index), (voc_class, index)
            assert index not in seen, f"{index} is both {seen[index]} and {voc_class}"
            seen[index] = voc_class
    # The ranges quoted in issue 11, checked against the table.
    assert synset_indices("dog") == tuple(range(151, 269))
    assert synset_indices("cat") == tuple(range(281, 286))
    assert {466, 547, 565, 705, 820} == set(synset_indices("train"))
    assert synset_indices("no-such-class") == ()


def test_synset_table_matches_the_imagenet_samples_labels(imagenet_samples):
    with open(imagenet_samples / "labels.csv", newline="") as handle:
        wnid_of = {int(row["class_index"]): row["wnid"] for row in csv.DictReader(handle)}
    for synsets in VOC_SYNSETS.values():
        for index, wnid, _ in synsets:
            assert wnid_of[index] == wnid


# -- the heads on a controlled ImageNet layer ----------------------------------------------------


def _controlled_case(seed: int = 0):
    """An ImageNet layer whose row j fires for feature vector 'image of synset j' (the rows of
    one VOC class's synsets share a direction, as in a trained layer), and images of dogs,
    cats, boats and other synsets (truth: which VOC class each image shows)."""
    generator = torch.Generator().manual_seed(seed)
    features = 64
    layer = nn.Linear(features, 1000)
    weight = torch.randn(1000, features, generator=generator)
    for name in VOC_SYNSETS:  # like a trained layer: a class's synsets share a direction
        weight[list(synset_indices(name))] += 2 * torch.randn(features, generator=generator)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    shown = [151, 200, 268, 281, 285, 472, 814, 3, 400, 500, 600, 700, 900, 950]
    images = torch.stack([0.3 * layer.weight[j] for j in shown])
    images = images + 0.05 * torch.randn(images.shape, generator=generator)
    truth = {
        "dog": [j in range(151, 269) for j in shown],
        "cat": [j in range(281, 286) for j in shown],
        "boat": [j in (472, 814) for j in shown],
    }
    return layer, images, truth


@pytest.mark.parametrize("kind", ["prior", "init"])
def test_untrained_imagenet_head_ranks_a_class_synsets_first(kind):
    layer, images, truth = _controlled_case()
    head = build_head(kind, layer, VOC_CLASSES)
    with torch.no_grad():
        logits = head(images)
    for name, is_class in truth.items():
        scores = logits[:, VOC_CLASSES.index(name)]
        positives, negatives = scores[torch.tensor(is_class)], scores[~torch.tensor(is_class)]
        assert positives.min() > negatives.max(), (kind, name)


def test_prior_is_the_log_odds_of_the_synsets_softmax_mass():
    layer, images, _ = _controlled_case()
    head = build_head("prior", layer, VOC_CLASSES)
    with torch.no_grad():
        probabilities = torch.softmax(layer(images).double(), dim=1)
        scores = torch.sigmoid(head(images).double())
    dog = VOC_CLASSES.index("dog")
    np.testing.assert_allclose(
        scores[:, dog], probabilities[:, 151:269].sum(1), rtol=1e-4, atol=1e-6
    )


def test_random_head_does_not_know_imagenet():
    layer, images, truth = _controlled_case()
    torch.manual_seed(0)
    head = build_head("random", layer, VOC_CLASSES)
    with torch.no_grad():
        scores = head(images)[:, VOC_CLASSES.index("dog")]
    is_dog = torch.tensor(truth["dog"])
    assert not scores[is_dog].min() > scores[~is_dog].max()


def test_prior_head_trains_only_scale_offset_and_residual():
    head = build_head("prior", nn.Linear(8, 1000), VOC_CLASSES)
    assert isinstance(head, PriorHead)
    names = {name for name, p in head.named_parameters() if p.requires_grad}
    assert names == {"scale", "offset", "residual.weight", "residual.bias"}
    assert {"imagenet_weight", "imagenet_bias", "members", "residual_gain"} <= set(
        head.state_dict()
    )


def test_prior_residual_is_damped_for_classes_with_few_examples():
    head = build_head("prior", nn.Linear(8, 1000), VOC_CLASSES[:3])
    head.set_train_positives([0, 20, 380])
    np.testing.assert_allclose(head.residual_gain.numpy(), [0.0, 0.5, 0.95])
    with torch.no_grad():
        head.residual.bias.fill_(1.0)
        head.imagenet_weight.zero_()  # flat ImageNet logits: every prior is the same number
        out = head(torch.zeros(1, 8)) - head.prior_logits(torch.zeros(1, 8))
    np.testing.assert_allclose(out.numpy()[0], [0.0, 0.5, 0.95], atol=1e-6)


# -- the genuine network on real ImageNet images ------------------------------------------------


@pytest.mark.slow
def test_zero_shot_lite0_prior_ranks_real_imagenet_images(imagenet_samples):
    with open(imagenet_samples / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = rows[151:269:12] + rows[281:286]  # 10 dog breeds, the 5 cats
    picked += [r for r in rows[::50] if r not in picked]  # and a spread of everything else
    model = build_classifier("efficientnet_lite0", 20, "imagenet", head="prior").eval()
    transform = eval_transform(224)
    images = torch.stack(
        [
            transform(Image.open(imagenet_samples / "images" / r["file"]).convert("RGB"))
            for r in picked
        ]
    )
    with torch.no_grad():
        scores = torch.sigmoid(model(images)).numpy()
    labels = -np.ones((len(picked), 20), dtype=np.int8)
    for i, r in enumerate(picked):
        for name in VOC_SYNSETS:
            if int(r["class_index"]) in synset_indices(name):
                labels[i, VOC_CLASSES.index(name)] = 1
    with pytest.warns(UserWarning):  # classes without a positive here have no AP
        ap = per_class_average_precision(scores, labels, VOC_CLASSES, "ignore")
    assert ap[VOC_CLASSES.index("dog")] > 0.9
    assert ap[VOC_CLASSES.index("cat")] > 0.9


# -- whole runs on the tiny fixture --------------------------------------------------------------


def test_epochs_0_validates_the_start_and_prior_differs_from_random(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    scores = {}
    for head in ("prior", "random"):
        args = tiny_run_args(tiny_voc.root, runs, *LITE0, "--head", head, "--epochs", "0")
        assert main_train.main(args) == 0
        run_dir = _latest(runs)
        assert {"history.json", "model_best.pt", "val_predictions.npz", "config.json"} <= {
            p.name for p in run_dir.iterdir()
        }
        history = json.loads((run_dir / "history.json").read_text())
        assert [h["epoch"] for h in history] == [0] and history[0]["train_loss"] is None
        preds = load_predictions(run_dir / "val_predictions.npz")
        assert preds.provenance["head_kind"] == head and preds.provenance["epoch"] == 0
        scores[head] = preds.scores
    assert not np.allclose(scores["prior"], scores["random"], atol=1e-3)


def test_saved_prior_model_reloads_and_reproduces_its_predictions(tiny_voc, tmp_path):
    runs = tmp_path / "runs"
    extra = ("--head", "prior", "--freeze-backbone", "--tta", "hflip", "--epochs", "2")
    assert main_train.main(tiny_run_args(tiny_voc.root, runs, *LITE0, *extra)) == 0
    run_dir = _latest(runs)
    preds = load_predictions(run_dir / "val_predictions.npz")
    assert preds.provenance["tta"] == "hflip" and preds.provenance["freeze_backbone"]
    model, saved = load_model(run_dir / "model_best.pt")
    assert saved["head"] == "prior" and isinstance(model.head, PriorHead)
    positives = torch.tensor((read_split(tiny_voc.root, "train").labels == 1).sum(0))
    torch.testing.assert_close(model.head.residual_gain, positives / (positives + 20.0))
    # Training moved the head away from its start, so reproducing it needs the saved values.
    assert not torch.equal(model.head.residual.weight, torch.zeros_like(model.head.residual.weight))
    # Written out here: each view of each image (the default: the whole image), its mirror
    # averaged in, the views' logits averaged, then the sigmoid.
    views = saved_views(saved)
    assert [view.kind for view in views] == ["whole"] and saved["spatial_max"]
    val = read_split(tiny_voc.root, "val")
    datasets = [VocClassification(tiny_voc.root, val, "ignore", v.transform()) for v in views]
    rows = []
    with torch.no_grad():
        for index in range(len(val)):
            per_view = [tta_logits(model, d[index][0][None], "hflip") for d in datasets]
            rows.append(torch.sigmoid(torch.stack(per_view).mean(dim=0)))
    np.testing.assert_allclose(preds.scores, torch.cat(rows).numpy(), atol=1e-5)


def test_imagenet_head_with_weights_none_is_a_clear_error(tiny_voc, tmp_path, caplog):
    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--head", "prior", "--epochs", "0")
    with caplog.at_level(logging.ERROR):
        assert main_train.main(args) == 2
    assert "--head prior" in caplog.text and "--weights none" in caplog.text
    assert "--head random" in caplog.text
    # The default (`auto`) falls back to random with --weights none, as documented.
    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--epochs", "0")
    assert main_train.main(args) == 0
    preds = load_predictions(_latest(tmp_path / "runs") / "val_predictions.npz")
    assert preds.provenance["head_kind"] == "random"


def test_frozen_features_are_computed_once_and_reused(tiny_voc, tmp_path, monkeypatch):
    passes: list[int] = []
    extract = training.features.extract_features

    def counting(forward, loader, size, *args, **kwargs):
        passes.append(size)
        return extract(forward, loader, size, *args, **kwargs)

    monkeypatch.setattr(training.features, "extract_features", counting)
    runs = tmp_path / "runs"
    extra = ("--freeze-backbone", "--epochs", "1")
    assert main_train.main(tiny_run_args(tiny_voc.root, runs, *LITE0, *extra)) == 0
    first = load_predictions(_latest(runs) / "val_predictions.npz").scores
    assert sorted(passes) == sorted([len(tiny_voc.ids["train"]), len(tiny_voc.ids["val"])])
    assert main_train.main(tiny_run_args(tiny_voc.root, runs, *LITE0, *extra)) == 0
    assert len(passes) == 2  # the second run read both splits from the feature cache
    again = load_predictions(_latest(runs) / "val_predictions.npz").scores
    np.testing.assert_array_equal(first, again)


def test_residual_shrink_20_is_the_default_run_and_other_values_change_it(
    tiny_voc, tmp_path, caplog
):
    runs = tmp_path / "runs"
    base = (*LITE0, "--head", "prior", "--freeze-backbone", "--epochs", "2")
    runs_of = {}
    for name, extra in (
        ("default", ()),
        ("20", ("--residual-shrink", "20")),
        ("2", ("--residual-shrink", "2")),
    ):
        args = tiny_run_args(tiny_voc.root, runs, *base, *extra, "--run-name", name)
        assert main_train.main(args) == 0
        model, saved = load_model(runs / name / "model_best.pt")
        preds = load_predictions(runs / name / "val_predictions.npz")
        runs_of[name] = (model.state_dict(), preds, saved)
    positives = (read_split(tiny_voc.root, "train").labels == 1).sum(0)
    # The damping the head had before it was an option: set_train_positives' own default.
    before = build_head("prior", nn.Linear(8, 1000), VOC_CLASSES)
    before.set_train_positives(positives)
    default_state, default_preds, default_saved = runs_of["default"]
    assert torch.equal(default_state["backbone.classifier.residual_gain"], before.residual_gain)
    state_20, preds_20, _ = runs_of["20"]
    assert default_state.keys() == state_20.keys()
    assert all(torch.equal(default_state[k], state_20[k]) for k in default_state)
    np.testing.assert_array_equal(default_preds.scores, preds_20.scores)
    assert default_preds.provenance["residual_shrink"] == 20.0
    state_2, preds_2, _ = runs_of["2"]
    gain = torch.as_tensor(positives, dtype=torch.float32)
    torch.testing.assert_close(state_2["backbone.classifier.residual_gain"], gain / (gain + 2))
    assert not np.array_equal(default_preds.scores, preds_2.scores)
    assert preds_2.provenance["residual_shrink"] == 2.0
    assert (
        "n/(n+2)" in preds_2.provenance["head"]
        and "n/(n+20)" in default_saved["provenance"]["head"]
    )
    assert json.loads((runs / "2" / "config.json").read_text())["residual_shrink"] == 2.0
    # The damping is in the checkpoint: a resumed run cannot change it.
    resume = ["--resume", str(runs / "2"), "--runs-dir", str(runs), "--epochs", "3"]
    with caplog.at_level(logging.ERROR):
        assert main_train.main([*resume, "--residual-shrink", "5"]) == 2
    assert "--residual-shrink 5.0 differs from the run's own --residual-shrink 2.0" in caplog.text

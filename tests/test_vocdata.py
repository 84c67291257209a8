"""vocdata: parsing, difficult modes, targets, relative file names, errors, the real subset."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vocdata import VOC_CLASSES, read_split, resolve_voc_root
from vocdata.dataset import VocClassification, load_split_checked
from vocdata.download import ensure_voc_root
from vocdata.errors import ImageReadError, VocDataError, VocRootNotFoundError
from vocdata.images import open_rgb
from vocdata.paths import PROJECT_ROOT, project_relative
from vocdata.splits import targets_and_mask
from vocdata.transforms import eval_transform, train_transform


def test_split_is_one_record_per_image_with_exact_labels(tiny_voc):
    for split in ("train", "val", "trainval"):
        parsed = read_split(tiny_voc.root, split)
        assert list(parsed.image_ids) == tiny_voc.ids[split]  # sorted, whatever the file order
        assert parsed.labels.shape == (len(tiny_voc.ids[split]), 20)
        np.testing.assert_array_equal(parsed.labels, tiny_voc.labels[split])
        assert parsed.relative_paths == [f"JPEGImages/{i}.jpg" for i in tiny_voc.ids[split]]


def test_train_and_val_are_disjoint_and_make_trainval(tiny_voc):
    train, val = read_split(tiny_voc.root, "train"), read_split(tiny_voc.root, "val")
    trainval = read_split(tiny_voc.root, "trainval")
    assert not set(train.image_ids) & set(val.image_ids)
    assert sorted(train.image_ids + val.image_ids) == list(trainval.image_ids)


def test_difficult_modes_on_a_hand_made_row():
    labels = np.array([[1, 0, -1]], dtype=np.int8)
    targets, mask = targets_and_mask(labels, "ignore")
    np.testing.assert_array_equal(targets, [[1, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 0, 1]])
    targets, mask = targets_and_mask(labels, "positive")
    np.testing.assert_array_equal(targets, [[1, 1, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1]])
    targets, mask = targets_and_mask(labels, "negative")
    np.testing.assert_array_equal(targets, [[1, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1]])
    with pytest.raises(ValueError):
        targets_and_mask(labels, "sometimes")


def test_dataset_item_is_uint8_image_target_mask_and_row(tiny_voc):
    split = read_split(tiny_voc.root, "val")
    dataset = VocClassification(tiny_voc.root, split, "ignore", eval_transform(32))
    assert len(dataset) == len(tiny_voc.ids["val"])
    image, target, mask, index = dataset[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    expected_targets, expected_mask = targets_and_mask(tiny_voc.labels["val"][3], "ignore")
    np.testing.assert_array_equal(target.numpy(), expected_targets)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    assert index == 3


def test_augmentation_depends_only_on_the_sample_seed(tiny_voc):
    split = read_split(tiny_voc.root, "train")
    dataset = VocClassification(tiny_voc.root, split, "ignore", train_transform(32))
    torch.manual_seed(1)
    first = dataset[(2, 12345)][0]
    torch.manual_seed(999)  # the global RNG must not matter
    again = dataset[(2, 12345)][0]
    other = [dataset[(2, seed)][0] for seed in range(5)]
    assert torch.equal(first, again)
    assert any(not torch.equal(first, o) for o in other)


def test_voc_root_setting_precedence(monkeypatch):
    monkeypatch.delenv("VOC_ROOT", raising=False)
    assert resolve_voc_root() == PROJECT_ROOT / "data" / "VOCdevkit" / "VOC2012"
    monkeypatch.setenv("VOC_ROOT", "elsewhere/VOC2012")
    assert resolve_voc_root() == PROJECT_ROOT / "elsewhere" / "VOC2012"
    assert resolve_voc_root("cli/VOC2012") == PROJECT_ROOT / "cli" / "VOC2012"
    assert project_relative(PROJECT_ROOT / "cli" / "VOC2012") == "cli/VOC2012"


def test_real_subset_counts(real_voc_root):
    train, val = read_split(real_voc_root, "train"), read_split(real_voc_root, "val")
    assert (len(train), len(val)) == (1697, 1729)
    cat, person = VOC_CLASSES.index("cat"), VOC_CLASSES.index("person")
    assert (train.labels[:, cat] == 1).sum() == 539
    assert (val.labels[:, cat] == 1).sum() == 541
    assert (val.labels[:, person] == 0).sum() == 55
    assert (val.labels[:, VOC_CLASSES.index("aeroplane")] == 1).sum() == 0
    assert len(load_split_checked(real_voc_root, "val")) == 1729  # every image decodes


# -- errors people will meet -------------------------------------------------------------------


def test_missing_root_names_the_path_and_the_fix(tmp_path):
    root = tmp_path / "nowhere" / "VOCdevkit" / "VOC2012"
    with pytest.raises(VocRootNotFoundError) as info:
        read_split(root, "train")
    assert str(root) in str(info.value) and "--voc-root" in str(info.value)
    with pytest.raises(VocRootNotFoundError) as info:
        ensure_voc_root(root, download=False)
    assert str(root) in str(info.value) and "--no-download" in str(info.value)


def test_offline_download_fails_with_a_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("vocdata.download.download_and_extract_archive", offline)
    root = tmp_path / "VOCdevkit" / "VOC2012"
    with pytest.raises(VocRootNotFoundError) as info:
        ensure_voc_root(root, download=True)
    message = str(info.value)
    assert "offline" in message and str(root) in message and "VOCtrainval_11-May-2012" in message


def test_download_needs_a_vocdevkit_root(tmp_path, monkeypatch):
    monkeypatch.setattr("vocdata.download.download_and_extract_archive", pytest.fail)
    with pytest.raises(VocRootNotFoundError, match="VOCdevkit/VOC2012"):
        ensure_voc_root(tmp_path / "my_voc", download=True)


def test_download_target_is_the_folder_above_vocdevkit(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, **kwargs):
        calls.append((url, Path(download_root), kwargs["md5"]))
        (Path(download_root) / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main").mkdir(parents=True)

    monkeypatch.setattr("vocdata.download.download_and_extract_archive", fake_download)
    root = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    assert ensure_voc_root(root, download=True) == root
    assert calls == [(calls[0][0], tmp_path / "data", "6cd6e144f989b92b3379bac3b3de84fd")]


def test_unknown_class_file_is_named(tiny_voc):
    bogus = tiny_voc.root / "ImageSets" / "Main" / "dinosaur_train.txt"
    bogus.write_text("2008_000001 1\n")
    with pytest.raises(VocDataError) as info:
        read_split(tiny_voc.root, "train")
    assert str(bogus) in str(info.value) and "dinosaur" in str(info.value)
    read_split(tiny_voc.root, "val")  # the val split is unaffected


def test_missing_class_file_is_named(tiny_voc):
    path = tiny_voc.root / "ImageSets" / "Main" / "cow_val.txt"
    path.unlink()
    with pytest.raises(VocDataError, match=r"cow_val\.txt"):
        read_split(tiny_voc.root, "val")


def test_bad_label_line_is_located(tiny_voc):
    path = tiny_voc.root / "ImageSets" / "Main" / "dog_val.txt"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " 2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VocDataError, match=r"dog_val\.txt:3"):
        read_split(tiny_voc.root, "val")


def test_class_file_must_cover_the_split(tiny_voc):
    path = tiny_voc.root / "ImageSets" / "Main" / "dog_val.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(VocDataError, match="no label for 1 image"):
        read_split(tiny_voc.root, "val")
    path.write_text(path.read_text() + "2099_000001 1\n2099_000001 1\n")
    with pytest.raises(VocDataError, match="not listed in the split file"):
        read_split(tiny_voc.root, "val")


def test_missing_and_corrupt_images_are_named_or_skipped(tiny_voc, caplog):
    missing_id, corrupt_id = tiny_voc.ids["val"][1], tiny_voc.ids["val"][4]
    tiny_voc.image_path(missing_id).unlink()
    data = tiny_voc.image_path(corrupt_id).read_bytes()
    tiny_voc.image_path(corrupt_id).write_bytes(data[: len(data) // 3])  # truncated JPEG
    with pytest.raises(ImageReadError) as info:
        load_split_checked(tiny_voc.root, "val")
    assert f"JPEGImages/{missing_id}.jpg: missing" in str(info.value)
    assert f"JPEGImages/{corrupt_id}.jpg: cannot decode" in str(info.value)
    assert "--skip-bad-images" in str(info.value)
    with pytest.raises(ImageReadError, match=corrupt_id):
        open_rgb(tiny_voc.image_path(corrupt_id))
    kept = load_split_checked(tiny_voc.root, "val", skip_bad_images=True)
    assert len(kept) == len(tiny_voc.ids["val"]) - 2
    assert missing_id not in kept.image_ids and corrupt_id not in kept.image_ids
    assert "skipped 2 of 16 val images" in caplog.text

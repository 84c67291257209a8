"""vocdata.images: one way to open an image for every program. EXIF orientation applied, every
PIL mode converted to 8-bit RGB; scored by `python -m predictions` like its upright twin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gui.cam import network_pixels
from predictions import load_predictions
from vocdata.errors import ImageReadError
from vocdata.images import TRANSPARENT_BACKGROUND, open_rgb, thumbnail_or_placeholder, to_rgb
from vocdata.paths import PROJECT_ROOT

ORIENTATION_TAG = 0x0112


def _save_with_orientation(pixels: np.ndarray, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def _structured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB picture whose rotation matters: a colour gradient and a block in one corner."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    pixels[: height // 3, : width // 4] = rng.integers(0, 256, 3)
    return pixels


# -- every mode to 8-bit RGB ---------------------------------------------------------------------
def test_sixteen_bit_and_float_grey_are_scaled_not_clipped():
    sixteen = Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16))
    assert sixteen.mode == "I;16"
    as_rgb = _pixels(to_rgb(sixteen))
    np.testing.assert_array_equal(as_rgb[0], [[v, v, v] for v in (0, 1, 128, 255)])

    wide = Image.fromarray(np.array([[0, 25700, 65535]], dtype=np.int32))
    assert wide.mode == "I"
    np.testing.assert_array_equal(_pixels(to_rgb(wide))[0, :, 0], [0, 100, 255])

    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(_pixels(to_rgb(unit))[0, :, 0], [0, 128, 255])
    byte_range = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    np.testing.assert_array_equal(_pixels(to_rgb(byte_range))[0, :, 0], [0, 100, 255])


def test_transparency_is_composited_onto_the_background():
    white = np.array(TRANSPARENT_BACKGROUND)
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # invisible red
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    out = _pixels(to_rgb(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(out[0, 0], white)
    np.testing.assert_array_equal(out[0, 1], (255, 0, 0))
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)

    grey_alpha = Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA")
    np.testing.assert_array_equal(_pixels(to_rgb(grey_alpha))[0], [white, (0, 0, 0)])

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    np.testing.assert_array_equal(_pixels(to_rgb(palette))[0], [white, (0, 0, 255)])


def test_cmyk_one_bit_and_grey_become_rgb():
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 0, 0, 255))
    np.testing.assert_array_equal(_pixels(to_rgb(cmyk))[0], [(255, 255, 255), (0, 0, 0)])
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    np.testing.assert_array_equal(_pixels(to_rgb(bilevel))[0], [(0, 0, 0), (255, 255, 255)])
    grey = Image.fromarray(np.array([[7, 200]], np.uint8))
    np.testing.assert_array_equal(_pixels(to_rgb(grey))[0], [(7, 7, 7), (200, 200, 200)])


def test_open_rgb_and_thumbnails_turn_an_exif_rotated_photo_upright(tmp_path):
    stored = np.rot90(_structured(40, 64), k=1).copy()  # the camera stored it on its side
    path = tmp_path / "phone.jpg"
    _save_with_orientation(stored, path, 6)  # 6: "turn 90 degrees clockwise to show"
    with Image.open(path) as raw:
        decoded = np.asarray(raw.convert("RGB"))  # as stored, not turned
    expected = np.rot90(decoded, k=-1)
    opened = _pixels(open_rgb(path))
    assert opened.shape == (40, 64, 3)
    np.testing.assert_array_equal(opened, expected)

    thumb, reason = thumbnail_or_placeholder(path, (32, 32))
    assert reason is None and thumb.size == (32, 20)  # landscape, like the photo shown
    # The activation map runs the network on the same upright pixels (same size: no resize).
    np.testing.assert_array_equal(network_pixels(path, 40), expected)


def test_a_sixteen_bit_png_is_opened_and_shown_like_its_eight_bit_twin(tmp_path):
    grey = _structured(30, 50)[..., 0]
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "twin.png")
    with Image.open(tmp_path / "deep.png") as deep:
        assert deep.mode.startswith("I")  # really a 16-bit file
    np.testing.assert_array_equal(
        _pixels(open_rgb(tmp_path / "deep.png")), _pixels(open_rgb(tmp_path / "twin.png"))
    )
    deep_thumb, _ = thumbnail_or_placeholder(tmp_path / "deep.png", (25, 25))
    twin_thumb, _ = thumbnail_or_placeholder(tmp_path / "twin.png", (25, 25))
    np.testing.assert_array_equal(np.asarray(deep_thumb), np.asarray(twin_thumb))
    assert np.asarray(deep_thumb).min() < 200  # not the all-white image of a clipped read
    deep_map_input = network_pixels(tmp_path / "deep.png", 60)
    np.testing.assert_array_equal(deep_map_input, network_pixels(tmp_path / "twin.png", 60))
    assert deep_map_input.min() < 200


# -- as a user meets it: python -m predictions --images ------------------------------------------
def test_scoring_treats_a_rotated_jpeg_and_a_sixteen_bit_png_like_their_upright_twins(
    tiny_model_run, tmp_path
):
    voc, runs, _ = tiny_model_run
    photos = tmp_path / "photos"
    photos.mkdir()
    with Image.open(voc.image_path(voc.ids["val"][0])) as source:
        upright = np.asarray(source.convert("RGB").resize((56, 40)))  # landscape
    _save_with_orientation(np.rot90(upright, k=1).copy(), photos / "rotated.jpg", 6)
    with Image.open(photos / "rotated.jpg") as raw:
        stored = np.asarray(raw.convert("RGB"))
    Image.fromarray(np.rot90(stored, k=-1).copy()).save(photos / "rotated_twin.png")
    Image.fromarray(stored).save(photos / "sideways.png")  # the pixels as stored, not turned

    grey = upright.mean(axis=2).round().astype(np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(photos / "deep.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(photos / "deep_twin.png")

    out = tmp_path / "photos.npz"
    command = [sys.executable, "-m", "predictions", "--runs-dir", str(runs), "--model", "m"]
    command += ["--images", str(photos), "--out", str(out), "--workers", "0", "--no-progress"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    scored = load_predictions(out)
    row = {name: scored.scores[scored.files.index(name)] for name in scored.files}
    assert np.abs(row["rotated.jpg"] - row["rotated_twin.png"]).max() <= 1e-3
    assert np.abs(row["deep.png"] - row["deep_twin.png"]).max() <= 1e-3
    # The comparison can tell: the same photo on its side scores differently.
    assert np.abs(row["sideways.png"] - row["rotated_twin.png"]).max() > 1e-3


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "1", "I;16", "F"])
def test_every_mode_opens_as_eight_bit_rgb(tmp_path, mode):
    """Files of every mode a PNG, TIFF or JPEG can hold open as (H, W, 3) uint8."""
    pixels = _structured(8, 12)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(pixels[..., 0].astype(np.float32) / 255)
    else:
        image = image.convert(mode)
    suffix = {"CMYK": ".jpg", "F": ".tiff"}.get(mode, ".png")
    path = tmp_path / f"image{suffix}"
    image.save(path)
    opened = open_rgb(path)
    assert opened.mode == "RGB" and np.asarray(opened).shape == (8, 12, 3)
    if mode in ("I;16", "F"):
        np.testing.assert_array_equal(np.asarray(opened)[..., 0], pixels[..., 0])


def test_odd_files_open_by_content_or_fail_naming_the_file(tmp_path, monkeypatch):
    """A GIF named .jpg and a 1 x 1 image open as RGB; a symlink loop and a decompression bomb
    are one ImageReadError naming the file (never a hang, never PIL's own exception)."""
    gif = tmp_path / "really-a-gif.jpg"
    Image.fromarray(_structured(6, 9)).convert("P").save(gif, format="GIF")
    assert np.asarray(open_rgb(gif)).shape == (6, 9, 3)
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tiny)
    np.testing.assert_array_equal(np.asarray(open_rgb(tiny)), [[[10, 20, 30]]])

    loop = tmp_path / "loop.jpg"
    loop.symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(ImageReadError, match=r"loop\.jpg"):
        open_rgb(loop)

    bomb = tmp_path / "bomb.png"
    Image.new("L", (64, 64)).save(bomb)
    # PIL refuses images above twice its pixel limit; lower the limit instead of writing GBs.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)
    with pytest.raises(ImageReadError, match=r"bomb\.png"):
        open_rgb(bomb)

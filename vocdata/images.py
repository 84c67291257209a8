"""Reading VOC images, and checking up front that every listed image is there and decodable.

`open_rgb` is the one way every program turns an image file into pixels (scoring, training,
the image cache, the GUI and the report): the EXIF orientation applied (a phone photo is
upright, as every viewer shows it) and every PIL mode converted to 8-bit RGB by `to_rgb`
(a 16-bit PNG scaled, not clipped to white; transparency composited onto white). Also the
one way every viewer shrinks an image for display or, when it cannot be read, shows a grey
tile naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageOps, UnidentifiedImageError

from vocdata.errors import ImageReadError

SKIP_HINT = "pass --skip-bad-images to leave such files out (they are counted and logged)"
# What PIL raises for a file that is not a readable image (truncated, corrupt, not an image).
IMAGE_READ_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


TRANSPARENT_BACKGROUND = (255, 255, 255)  # what shows through transparent pixels
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says (itself when there is nothing to turn)."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return image if orientation in (1, None) else ImageOps.exif_transpose(image)


def _scaled_to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit ('I;16*', and 'I', what older Pillow made of 16-bit files) or float ('F')
    grey image as 8-bit 'L': 0..65535 maps onto 0..255; floats are taken as 0..1 when all
    lie in [0, 1], else as 0..255 (values outside are clipped)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            values = values * 255
        values = np.nan_to_num(values, nan=0.0)
    else:
        values = values / 257
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB, whatever its mode: high bit depths scaled, transparency
    composited onto TRANSPARENT_BACKGROUND, palettes, CMYK, 1-bit and grey expanded."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scaled_to_8_bit(image).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to an upright 8-bit RGB PIL image (see `to_rgb`), or raise
    ImageReadError naming the file."""
    with _read_errors_named(path), Image.open(path) as image:
        image.load()
        return to_rgb(upright(image))


@contextmanager
def _read_errors_named(path: str | os.PathLike[str]) -> Iterator[None]:
    """PIL's many ways of failing on a missing or damaged file, as one ImageReadError that
    names the file and the fix."""
    try:
        yield
    except FileNotFoundError as error:
        raise ImageReadError(f"Image missing: {path}. Restore it, or {SKIP_HINT}.") from error
    except IMAGE_READ_ERRORS as error:
        raise ImageReadError(
            f"Cannot decode image {path} ({error}). Replace the file, or {SKIP_HINT}."
        ) from error


def _decode_problem(path: Path) -> str | None:
    """None if `path` decodes; else the reason. Draft mode keeps the full check cheap for JPEG."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except FileNotFoundError:
        return "missing"
    except IMAGE_READ_ERRORS as error:
        return f"cannot decode ({error})"
    return None


PLACEHOLDER_GREY = (200, 200, 200)


def placeholder(size: tuple[int, int], name: str, reason: str = "missing") -> Image.Image:
    """A grey tile that names the image that could not be shown, and why."""
    image = Image.new("RGB", size, PLACEHOLDER_GREY)
    ImageDraw.Draw(image).multiline_text(
        (6, size[1] // 2 - 14), f"{reason}\n{name}", fill=(50, 50, 50)
    )
    return image


def thumbnail_or_placeholder(path: Path, size: tuple[int, int]) -> tuple[Image.Image, str | None]:
    """The image shrunk to fit `size` and None; or, if it cannot be read, a placeholder naming
    it and the reason ("missing", "unreadable (...)"). Callers log the reason their own way."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", size)  # JPEG: decode at a reduced scale, much faster
            image.load()
            thumb = to_rgb(upright(image))
            thumb.thumbnail(size)
            return thumb, None
    except FileNotFoundError:
        reason = "missing"
    except IMAGE_READ_ERRORS as error:
        reason = f"unreadable ({type(error).__name__})"
    return placeholder(size, Path(path).name, reason.split(" ")[0]), reason


def find_bad_images(
    voc_root: Path, relative_paths: Sequence[str], workers: int = 8
) -> list[tuple[str, str]]:
    """(relative path, reason) for every listed image that is missing or does not decode."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = pool.map(_decode_problem, (voc_root / rel for rel in relative_paths))
        pairs = zip(relative_paths, problems, strict=True)
        return [(rel, problem) for rel, problem in pairs if problem]


_TURNED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def upright_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of the image as `open_rgb` returns it, from the file's header alone
    (no pixels decoded): what a `whole` view needs to batch images by shape."""
    with _read_errors_named(path), Image.open(path) as image:
        width, height = image.size
        turned = image.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED_ORIENTATIONS
    return (height, width) if turned else (width, height)


def upright_sizes(
    root: Path, relative_paths: Sequence[str], workers: int = 8
) -> list[tuple[int, int]]:
    """`upright_size` of every listed image, in order (headers read in threads)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(upright_size, (Path(root) / rel for rel in relative_paths)))

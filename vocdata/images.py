"""Reading VOC images, and checking up front that every listed image is there and decodable.

Also the one way every viewer (the GUI's thumbnails, the report's grids) shrinks an image for
display or, when it cannot be read, shows a grey tile naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

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


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to an RGB PIL image, or raise ImageReadError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
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
            thumb = ImageOps.exif_transpose(image).convert("RGB")
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

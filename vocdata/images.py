"""Reading VOC images, and checking up front that every listed image is there and decodable."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vocdata.errors import ImageReadError

SKIP_HINT = "pass --skip-bad-images to leave such files out (they are counted and logged)"
_DECODE_ERRORS = (
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
    except _DECODE_ERRORS as error:
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
    except _DECODE_ERRORS as error:
        return f"cannot decode ({error})"
    return None


def find_bad_images(
    root: Path, relative_paths: Sequence[str], workers: int = 8
) -> list[tuple[str, str]]:
    """(relative path, reason) for every listed image that is missing or does not decode."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = pool.map(_decode_problem, (root / rel for rel in relative_paths))
        pairs = zip(relative_paths, problems, strict=True)
        return [(rel, problem) for rel, problem in pairs if problem]

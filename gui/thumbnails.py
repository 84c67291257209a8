"""Thumbnails: decoded off the event loop in a thread pool, kept in an LRU cache, and drawn as
fixed-size tiles whose border says the truth (green contains, orange difficult, red absent).

Tiles go to Tk as PPM, which it reads about ten times faster than PNG. Images are read only
from inside the dataset root actually used (symbolic links resolved): a name that leads out of
it becomes a grey tile saying so.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

from evaluation.ranking import TRUTH_COLOURS
from vocdata.images import PLACEHOLDER_GREY, placeholder, thumbnail_or_placeholder
from vocdata.paths import resolve_inside

log = logging.getLogger(__name__)

BACKGROUND = (236, 236, 236)


def decode_thumbnail(path: Path, size: tuple[int, int]) -> tuple[Image.Image, str | None]:
    """The image shrunk to fit `size` and the reason it failed (None if it did not)."""
    thumb, reason = thumbnail_or_placeholder(path, size)
    if reason is not None:
        log.warning("cannot show %s: %s", path, reason)
    return thumb, reason


def outside_root_reason(root: Path) -> str:
    return f"outside the dataset root {root}: not read"


def image_inside(root: Path, relative: str) -> Path | None:
    """The file `relative` names under `root`, or None when it leads outside `root` (a link
    pointing elsewhere): the one check before any image named by a file is opened."""
    return resolve_inside(root, relative)


def decode_inside(
    root: Path, relative: str, size: tuple[int, int]
) -> tuple[Image.Image, str | None]:
    """`decode_thumbnail` of `root/relative`, or a grey tile naming it when it is outside."""
    path = image_inside(root, relative)
    if path is None:
        reason = outside_root_reason(root)
        log.warning("cannot show %s: %s", relative, reason)
        return placeholder(size, Path(relative).name, "outside root"), reason
    return decode_thumbnail(path, size)


class ThumbnailCache:
    """Thread-safe LRU cache of thumbnails keyed by file name relative to the dataset root."""

    def __init__(
        self,
        voc_root: Path,
        size: tuple[int, int] = (150, 112),
        capacity: int = 3000,
        workers: int = 4,
    ) -> None:
        self.voc_root = Path(voc_root)
        self.size = size
        self.capacity = capacity
        self.failed: dict[str, str] = {}
        self._items: OrderedDict[str, Image.Image] = OrderedDict()
        self._pending: dict[str, Future] = {}  # decodes someone waits for
        self._speculative: dict[str, Future] = {}  # decodes for what may come next
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="thumbnails")
        # Speculative work gets one thread of its own, so it never delays what is on screen.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thumbnails-bg")

    def get(self, relative: str) -> Image.Image | None:
        """The cached thumbnail, or None if it has not been decoded yet."""
        with self._lock:
            image = self._items.get(relative)
            if image is not None:
                self._items.move_to_end(relative)
            return image

    def load(self, relative: str) -> Image.Image:
        """Decode now (in the calling thread) and cache."""
        image = self.get(relative)
        if image is not None:
            return image
        image, reason = decode_inside(self.voc_root, relative, self.size)
        with self._lock:
            if reason:
                self.failed[relative] = reason
            self._items[relative] = image
            self._items.move_to_end(relative)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            self._pending.pop(relative, None)
            self._speculative.pop(relative, None)
        return image

    def prefetch(
        self,
        relatives: Iterable[str],
        on_ready: Callable[[str], None] | None = None,
        background: bool = False,
    ) -> list[str]:
        """Decode the uncached ones in worker threads; `on_ready(name)` runs in a worker thread
        after each. `background` work (guesses about what comes next) uses its own single
        thread. Returns the names that were not cached yet."""
        own = self._speculative if background else self._pending
        queued = []
        for relative in relatives:
            with self._lock:
                if relative in self._items:
                    continue
                # Needed now but only queued speculatively: queue it again, in front.
                future = own.get(relative) or (self._pending.get(relative) if background else None)
                if future is None:
                    pool = self._background if background else self._pool
                    future = pool.submit(self.load, relative)
                    own[relative] = future
            if on_ready is not None:
                future.add_done_callback(lambda _f, r=relative: on_ready(r))
            queued.append(relative)
        return queued

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._background.shutdown(wait=False, cancel_futures=True)


def tile(
    thumbnail: Image.Image | None,
    label: int | None,
    size: tuple[int, int],
    border: int = 5,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """A fixed-size tile: the thumbnail centred on a border in the truth colour (grey while
    loading), so the grid never changes shape."""
    colour = TRUTH_COLOURS[label] if thumbnail is not None else PLACEHOLDER_GREY
    canvas = Image.new("RGB", (size[0] + 2 * border, size[1] + 2 * border), background)
    if thumbnail is None:
        return canvas
    left = border + (size[0] - thumbnail.width) // 2
    top = border + (size[1] - thumbnail.height) // 2
    ImageDraw.Draw(canvas).rectangle(
        (
            left - border,
            top - border,
            left + thumbnail.width + border - 1,
            top + thumbnail.height + border - 1,
        ),
        fill=colour,
    )
    canvas.paste(thumbnail, (left, top))
    return canvas


THRESHOLD_COLOUR = (30, 90, 230)


def mark_threshold(picture: Image.Image, width: int = 5) -> Image.Image:
    """A copy with a blue bar down the left edge and along the top: the threshold cuts the
    ranking just before this image."""
    marked = picture.copy()
    draw = ImageDraw.Draw(marked)
    draw.rectangle((0, 0, width - 1, marked.height - 1), fill=THRESHOLD_COLOUR)
    draw.rectangle((0, 0, marked.width - 1, width // 2 - 1), fill=THRESHOLD_COLOUR)
    return marked


def to_ppm(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PPM")
    return buffer.getvalue()


def page_image(tiles: list[tuple[Image.Image, str]], columns: int, title: str) -> Image.Image:
    """The page as one picture (for 'Save page as PNG'): tiles with captions under a title."""
    if not tiles:
        raise ValueError("no tiles to draw")
    tile_w, tile_h = tiles[0][0].size
    caption_h, title_h, gap = 30, 28, 6
    rows = -(-len(tiles) // columns)
    width = columns * (tile_w + gap) + gap
    height = title_h + rows * (tile_h + caption_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 8), title, fill=(0, 0, 0))
    for index, (picture, caption) in enumerate(tiles):
        x = gap + (index % columns) * (tile_w + gap)
        y = title_h + (index // columns) * (tile_h + caption_h + gap)
        sheet.paste(picture, (x, y))
        draw.multiline_text((x + 2, y + tile_h + 2), caption, fill=(0, 0, 0))
    return sheet

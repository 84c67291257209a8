"""Views: how an image becomes the network's input at evaluation (validation, features, scoring).

- `crop` (the classic evaluation view): resize the shorter side to `size / 0.875` (256 for 224)
  and keep the centre `size` x `size` square. A quarter of a landscape photo is cut away, and
  with it whatever stood at the edges.
- `whole`: the whole image, its shorter side resized to `size`, the longer side to the nearest
  multiple of 32 (the backbones' total stride, so every feature cell covers whole pixels, and
  images of similar shape share one batch shape). Nothing is cut away; the aspect ratio
  changes by at most half a cell (16 px, under 4% of a side of 400 px or more).

A model may look at several views of each image (`crop+whole`): its head is trained on the
features of all of them and its logits are averaged over them (and over the mirror images
with `--tta hflip`). Images of a `whole` view have different shapes: they are batched by shape
(`shape_batches`), never padded or squashed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from torchvision.transforms import v2

from vocdata.transforms import EVAL_CROP_FRACTION, Transform, eval_transform

VIEW_KINDS = ("crop", "whole")
CELL = 32  # pixels per feature cell of the last stage: the longer side of `whole` is a multiple
WHOLE_PER_CROP = 10 / 7  # default shorter side of `whole` per crop size: 320 for 224


@dataclass(frozen=True)
class View:
    """One view: `crop` at `size` (the square's side) or `whole` at `size` (shorter side)."""

    kind: str
    size: int

    def __post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise ValueError(f"unknown view {self.kind!r}; choose from {', '.join(VIEW_KINDS)}")
        if self.size < CELL:
            raise ValueError(f"a {self.kind} view needs a size of at least {CELL} pixels")

    @property
    def name(self) -> str:
        return f"{self.kind}{self.size}"

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the network input made from a `width` x `height` image."""
        if self.kind == "crop":
            return self.size, self.size
        short, long = (height, width) if height <= width else (width, height)
        long_out = max(CELL, round(self.size * long / short / CELL) * CELL)
        return (self.size, long_out) if height <= width else (long_out, self.size)

    def transform(self) -> Transform:
        """PIL image (upright RGB) -> uint8 CHW tensor of `output_size`."""
        if self.kind == "crop":
            return eval_transform(self.size)
        return v2.Compose([_WholeResize(self), v2.PILToTensor()])

    def describe(self) -> str:
        if self.kind == "crop":
            side = round(self.size / EVAL_CROP_FRACTION)
            return f"crop{self.size}: shorter side {side}, centre {self.size}x{self.size}"
        return (
            f"whole{self.size}: whole image, shorter side {self.size}, longer side to the "
            f"nearest multiple of {CELL}"
        )


class _WholeResize:
    """Resize a PIL image to its view's `output_size` (bilinear, antialiased as PIL does)."""

    def __init__(self, view: View) -> None:
        self.view = view

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.view.output_size(*image.size)
        return v2.functional.resize(image, [height, width], antialias=True)


def parse_views(text: str, image_size: int, whole_size: int | None = None) -> tuple[View, ...]:
    """`crop`, `whole` or `crop+whole` -> the views, `crop` at `image_size` and `whole` at
    `whole_size` (default: `image_size` x 10/7, 320 for 224)."""
    kinds = [part.strip() for part in str(text).split("+")]
    if not kinds or any(kind not in VIEW_KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"{text!r} is not a view: choose crop, whole or crop+whole (each at most once)"
        )
    whole = whole_size if whole_size is not None else round(image_size * WHOLE_PER_CROP)
    return tuple(View(kind, image_size if kind == "crop" else whole) for kind in kinds)


def shape_batches(shapes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Rows grouped into batches of one input shape each, every group in row order, the groups
    in order of their first row: deterministic, and a crop view (one shape) gives the plain
    sequential batches."""
    groups: dict[tuple[int, int], list[int]] = {}
    for row, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(row)
    return [
        rows[start : start + batch_size]
        for rows in groups.values()
        for start in range(0, len(rows), batch_size)
    ]

"""Where the network looked: Grad-CAM maps of one image for one class, from the run's model.

Grad-CAM (the `grad-cam` package) weights the feature maps of a late convolutional layer by
the gradient of the class's logit and keeps the positive part. For our backbones (global
average pooling, then one linear layer) that is exactly the class-activation map of Zhou et
al., and it needs no change to the model. The layer per backbone is in the backbone registry
(`training.backbones.Backbone.cam_layer`).

Which model (or models) a row's map comes from is `gui.camsource`'s answer: the row's own
model in an out-of-fold file, the one model, or the mean of an ensemble's members' maps.

Nothing here imports torch at module level: the browser starts without it, and each model is
loaded on its first request, in a worker thread, through `training.checkpoint.load_model`.
Maps are cached per (image, class). Images are read only inside the dataset root.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gui.camsource import CamSource
from gui.thumbnails import image_inside, outside_root_reason
from vocdata.images import open_rgb

log = logging.getLogger(__name__)

# Colour ramp for the heat (low to high): dark blue, cyan, green, yellow, red.
_RAMP_AT = (0.0, 0.3, 0.55, 0.8, 1.0)
_RAMP_RGB = ((20, 20, 140), (0, 170, 255), (70, 210, 70), (255, 210, 0), (220, 20, 20))

CamKey = tuple[str, int]  # (image file relative to the dataset root, class index)


class ModelRefusedError(RuntimeError):
    """The model cannot be rebuilt here (a wsconv network): no maps, rather than maps of the
    plain network it is not."""


def heat_colours(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours on the ramp."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, 1.0)
    channels = [np.interp(heat, _RAMP_AT, [c[i] for c in _RAMP_RGB]) for i in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """The heatmap, stretched to the image's size, blended over it."""
    heat = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8))
    heat = heat.resize(image.size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(heat_colours(np.asarray(heat, dtype=np.float64) / 255.0))
    return Image.blend(image.convert("RGB"), colours, opacity)


def network_pixels(path: Path, shorter_side: int) -> np.ndarray:
    """The whole image (no crop, so the map covers all of it) as (H, W, 3) uint8, its shorter
    side at the size the model was trained at."""
    picture = open_rgb(path)  # upright, 8-bit RGB: the pixels the model was trained on
    scale = shorter_side / min(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return np.array(picture.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


def mean_of_maps(heatmaps: list[np.ndarray]) -> np.ndarray:
    """The mean of several maps in [0, 1], each first stretched to the first one's size
    (ensemble members may see the image at different sizes)."""
    height, width = heatmaps[0].shape
    stretched = [
        heat
        if heat.shape == (height, width)
        else np.asarray(
            Image.fromarray(heat.astype(np.float32), mode="F").resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for heat in heatmaps
    ]
    return np.mean(stretched, axis=0).astype(np.float32)


def align(heatmap: np.ndarray, offset: float) -> np.ndarray:
    """Move a map upsampled by a plain resize by `offset` pixels down and right (up and left
    when negative), onto where the cells of the network's layer really look."""
    if offset == 0:
        return heatmap
    from scipy.ndimage import shift

    return shift(heatmap, (offset, offset), order=1, mode="nearest").astype(np.float32)


def cam_target_layer(model: Any, arch: str) -> Any:
    """The module whose feature maps Grad-CAM uses, named in the backbone registry."""
    from training.backbones import get_backbone

    name = get_backbone(arch).cam_layer
    if not name:
        raise ValueError(f"the backbone registry names no activation-map layer for {arch!r}")
    try:
        return model.backbone.get_submodule(name)
    except AttributeError as error:
        raise ValueError(
            f"the model has no layer backbone.{name} (the registry's activation-map layer "
            f"for {arch!r})"
        ) from error


class GradCamMapper:
    """A loaded model and its Grad-CAM: pixels and a class in, a map in [0, 1] out."""

    def __init__(self, model: Any, arch: str, shorter_side: int) -> None:
        from pytorch_grad_cam import GradCAM

        from training.backbones import get_backbone

        self.model = model
        self.shorter_side = shorter_side
        self.offset = get_backbone(arch).cam_offset
        self._cam = GradCAM(model=model, target_layers=[cam_target_layer(model, arch)])

    @classmethod
    def from_file(cls, model_path: Path) -> GradCamMapper:
        from training.checkpoint import load_model

        model, saved = load_model(model_path)
        return cls(model, saved["arch"], int(saved.get("image_size", 224)))

    def heatmap(self, pixels: np.ndarray, class_index: int) -> np.ndarray:
        """(H, W) float32 in [0, 1] at the size of `pixels` ((H, W, 3) uint8), aligned with
        the image (grad-cam's own resize would put it half a cell off, see `align`)."""
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        images = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1)[None].float()
        with torch.enable_grad():
            maps = self._cam(input_tensor=images, targets=[ClassifierOutputTarget(class_index)])
        self.model.zero_grad(set_to_none=True)
        return align(np.asarray(maps[0], dtype=np.float32), self.offset)


class CamProvider:
    """Activation maps on demand: one worker thread, each model loaded on its first request,
    maps cached per (image, class). `available` is False (with `reason`) without a model."""

    def __init__(
        self,
        source: CamSource,
        voc_root: Path,
        capacity: int = 200,
        mapper_factory: Callable[[Path], GradCamMapper] = GradCamMapper.from_file,
    ) -> None:
        self.source = source
        self.voc_root = Path(voc_root)
        self.capacity = capacity
        self.mappers: dict[int, GradCamMapper] = {}  # by index into source.models
        self._mapper_factory = mapper_factory
        self._maps: OrderedDict[CamKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="activation-maps")

    @property
    def available(self) -> bool:
        return self.source.available

    @property
    def reason(self) -> str:
        return self.source.reason

    @property
    def loaded(self) -> bool:
        """Whether any model has been loaded (the first map takes longer)."""
        return bool(self.mappers)

    def _mapper(self, index: int) -> GradCamMapper:
        if index not in self.mappers:
            from training.checkpoint import ModelVariantError

            path = self.source.models[index]
            log.info("loading %s for activation maps", path)
            try:
                self.mappers[index] = self._mapper_factory(path)
            except ModelVariantError as error:  # from now on the map is off, and says why
                self.source = CamSource(
                    reason=f"No activation maps: {path.name} holds a '{error.variant}' network "
                    f"(changed before training), which the browser cannot rebuild"
                )
                raise ModelRefusedError(self.source.reason) from None
        return self.mappers[index]

    def get(self, file: str, class_index: int) -> np.ndarray | None:
        with self._lock:
            heatmap = self._maps.get((file, class_index))
            if heatmap is not None:
                self._maps.move_to_end((file, class_index))
            return heatmap

    def compute(self, file: str, class_index: int, row: int | None = None) -> np.ndarray:
        """The map now, in the calling thread (the worker uses this); cached. `row` (the
        predictions row of `file`) picks the model when rows were scored by different ones."""
        cached = self.get(file, class_index)
        if cached is not None:
            return cached
        members = self.source.members(row)
        if not members:
            raise RuntimeError(self.reason)
        path = image_inside(self.voc_root, file)
        if path is None:
            raise ValueError(f"{file}: {outside_root_reason(self.voc_root)}")
        pixels: dict[int, np.ndarray] = {}  # by shorter side: members may share a decode
        maps = []
        for index in members:
            mapper = self._mapper(index)
            if mapper.shorter_side not in pixels:
                pixels[mapper.shorter_side] = network_pixels(path, mapper.shorter_side)
            maps.append(mapper.heatmap(pixels[mapper.shorter_side], class_index))
        heatmap = maps[0] if len(maps) == 1 else mean_of_maps(maps)
        with self._lock:
            self._maps[(file, class_index)] = heatmap
            while len(self._maps) > self.capacity:
                self._maps.popitem(last=False)
        return heatmap

    def request(
        self,
        file: str,
        class_index: int,
        on_done: Callable[[CamKey, str | None], None],
        row: int | None = None,
    ) -> Future:
        """Compute in the worker thread; `on_done((file, class), error_or_None)` runs there."""
        key = (file, class_index)

        def job() -> None:
            try:
                self.compute(file, class_index, row)
            except ModelRefusedError as error:
                on_done(key, str(error))
                return
            except Exception as error:  # reported to the person, never swallowed
                log.exception("activation map of %s failed", file)
                on_done(key, f"{type(error).__name__}: {error}")
                return
            on_done(key, None)

        return self._pool.submit(job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

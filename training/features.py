"""Head inputs computed once per image, per view and mirrored, by an inference engine; cached.

With the backbone frozen, every epoch would push the same images through the same network:
on a CPU that is nearly all of the time. Instead each image is passed through once in eval
mode per view (`vocdata/views.py`: the centre crop, the whole image, or both), and once
mirrored, and the head's input (`MultiLabelClassifier.head_inputs`: the pooled features, and
for a head that looks at every position what it derives from the feature map) is kept. The
recipes that train on them are in `training/frozen.py`; `python -m predictions` scores any
images through the same two steps (features, then `training.frozen.head_logits`), so a
re-scored file matches the trainer's own.

The pass runs through `training.engine` (ONNX Runtime or OpenVINO on a CPU, torch on CUDA).
The cache (`<cache-dir>/features/`) is keyed by the dataset root, the files, their sizes and
modification times, the view, and a digest of every weight the head inputs depend on, so a
changed image, view or network never reuses stale features; each entry's file is checksummed
and a damaged one is rebuilt with a warning (`vocdata.cachefiles.open_entry`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.config import TrainConfig
from training.data import RowSubset, RunData, seeded_loader_options
from training.engine import ForwardEngine, build_engine
from training.folds import Fold
from training.model import HeadInputs, MultiLabelClassifier
from training.runtime import Runtime
from vocdata.atomic import atomic_write
from vocdata.cache import ImageCache, cache_key, dataset_digest
from vocdata.cachefiles import open_entry, remove_stale_entries
from vocdata.dataset import VocClassification
from vocdata.errors import CacheError
from vocdata.images import upright_sizes
from vocdata.paths import resolve_project_path
from vocdata.splits import VocSplit
from vocdata.transforms import eval_resize_size
from vocdata.views import View, parse_views, shape_batches

log = logging.getLogger(__name__)

FEATURES_VERSION = 2
FEATURES_SUBDIR = "features"
FEATURE_FILE = ".pt"


@dataclass
class FeatureSet:
    """Head inputs of one split in split order: per view, of the images and their mirrors."""

    plain: torch.Tensor  # (V, N, D) float32
    flipped: torch.Tensor | None  # (V, N, D) float32; None when mirrors were not computed

    def __len__(self) -> int:
        return self.plain.shape[1]

    @property
    def num_views(self) -> int:
        return self.plain.shape[0]

    def rows(self, rows: np.ndarray) -> FeatureSet:
        """The features of rows `rows` (a fold's share of its split), in that order."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        flipped = None if self.flipped is None else self.flipped[:, index]
        return FeatureSet(self.plain[:, index], flipped)

    @classmethod
    def of_views(cls, per_view: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> FeatureSet:
        plain = torch.stack([p for p, _ in per_view])
        mirrored = [f for _, f in per_view]
        flipped = None if any(f is None for f in mirrored) else torch.stack(mirrored)
        return cls(plain, flipped)


def head_input_digest(model: MultiLabelClassifier) -> str:
    """sha256 of every tensor `model.head_inputs` depends on: the backbone's, and the head's
    frozen ImageNet layer when the head reads the feature map (never its trained numbers)."""
    digest = hashlib.sha256()
    head_prefix = f"{model.head_name}."
    frozen_head = ("imagenet_weight", "imagenet_bias", "members")
    for name, tensor in model.backbone.state_dict().items():
        if name.startswith(head_prefix):
            part = name[len(head_prefix) :]
            if not (getattr(model.head, "uses_feature_map", False) and part in frozen_head):
                continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(f"head-inputs:{getattr(model.head, 'uses_feature_map', False)}".encode())
    return digest.hexdigest()


def forward_engine(
    model: MultiLabelClassifier,
    engine: str,
    runtime: Runtime,
    cache_dir: Path | None,
    example_size: int,
) -> ForwardEngine:
    """The engine that computes `model.head_inputs` (ONNX Runtime / OpenVINO on a CPU, torch
    on CUDA, as `training.engine` chooses), checked against torch on a random batch."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, example_size, example_size), generator=generator)
    return build_engine(
        HeadInputs(model).eval(),
        engine,
        example=example.to(torch.uint8),
        cache_dir=cache_dir,
        key=head_input_digest(model),
        device=runtime.device,
        channels_last=runtime.channels_last,  # --channels-last, for the torch engine
        amp_dtype=runtime.amp_dtype,
    )


def view_loader(
    dataset: Dataset, view: View, sizes: Sequence[tuple[int, int]], batch_size: int, workers: int
) -> DataLoader:
    """Rows of `dataset` in batches of one input shape (`vocdata.views.shape_batches`)."""
    shapes = [view.output_size(width, height) for width, height in sizes]
    return DataLoader(
        dataset,
        batch_sampler=shape_batches(shapes, batch_size),
        **seeded_loader_options(workers, seed=0, pin_memory=False),
    )


@torch.inference_mode()
def extract_features(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    size: int,
    mirrored: bool = True,
    progress: bool = True,
    description: str = "features",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One eval-mode pass over `loader` (batches in any order, rows put back by their
    index): the head inputs of every image, and of its mirror image when `mirrored`."""
    plain: torch.Tensor | None = None
    flipped: torch.Tensor | None = None
    for images, _, _, index in tqdm(loader, desc=description, leave=False, disable=not progress):
        out = forward(images)
        if plain is None:
            plain = torch.empty((size, out.shape[1]), dtype=torch.float32)
            flipped = torch.empty_like(plain) if mirrored else None
        plain[index] = out.float().cpu()
        if mirrored:
            flipped[index] = forward(torch.flip(images, dims=(-1,))).float().cpu()
    if plain is None:
        raise ValueError("no images to compute features of")
    return plain, flipped


@dataclass(frozen=True)
class ImageSource:
    """What a view's dataset is made from: a split of a VOC root (with its image cache, which
    holds the crop view's pixels) and, read only when a whole view is computed, the upright
    size of every image (for shape batches)."""

    voc_root: Path
    split: VocSplit
    difficult: str
    image_cache: ImageCache | None
    workers: int

    @cached_property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """Every image's upright (width, height), from the file headers (read once)."""
        return tuple(upright_sizes(self.voc_root, self.split.relative_paths, self.workers))

    def sizes_for(self, view: View) -> Sequence[tuple[int, int]]:
        """What `view_loader` batches by: a crop view's inputs all have one shape."""
        if view.kind == "crop":
            return [(view.size, view.size)] * len(self.split)
        return self.sizes

    def dataset(self, view: View) -> Dataset:
        cache = self.image_cache
        if (
            view.kind != "crop"
            or cache is None
            or cache.meta["shorter_side"] != eval_resize_size(view.size)
        ):
            cache = None  # the image cache holds the crop view's resized pixels only
        return VocClassification(self.voc_root, self.split, self.difficult, view.transform(), cache)


def image_source(
    voc_root: Path, split: VocSplit, config: TrainConfig, image_cache: ImageCache | None
) -> ImageSource:
    return ImageSource(voc_root, split, config.difficult, image_cache, max(1, config.workers))


def cached_view_features(
    forward: ForwardEngine,
    source: ImageSource,
    view: View,
    digest: str,
    cache_dir: Path | None,
    config: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One view's features of a whole split: from the feature cache when its entry is sound,
    else computed (and stored, unless `cache_dir` is None)."""
    split = source.split

    def compute() -> tuple[torch.Tensor, torch.Tensor | None]:
        log.info(
            "computing %s features of %d images once (%s, plain and mirrored) with %s",
            split.name,
            len(split),
            view.name,
            forward.name,
        )
        loader = view_loader(
            source.dataset(view),
            view,
            source.sizes_for(view),
            2 * config.batch_size,
            config.workers,
        )
        return extract_features(
            forward, loader, len(split), True, config.progress, f"{split.name} {view.name}"
        )

    if cache_dir is None:
        return compute()
    key = hashlib.sha256(
        f"features-v{FEATURES_VERSION}|{view.name}|{digest}|"
        f"{cache_key(source.voc_root, split.relative_paths, view.size)}".encode()
    ).hexdigest()
    folder = Path(cache_dir) / FEATURES_SUBDIR
    family = f"{split.name}-{view.name}-{dataset_digest(source.voc_root)}"
    prefix = folder / f"{family}-{key[:16]}"
    computed: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def build(prefix: Path) -> None:
        plain, flipped = compute()
        computed.append((plain, flipped))
        with atomic_write(prefix.with_name(prefix.name + FEATURE_FILE)) as tmp:
            torch.save({"key": key, "plain": plain, "flipped": flipped}, tmp)

    try:
        entry = open_entry(prefix, key, (FEATURE_FILE,), build, "the feature cache")
    except OSError as error:
        raise CacheError(
            f"Cannot write the feature cache {prefix}: {error.strerror or error}. Free some "
            f"space, or pass --cache-dir with another folder (none: no cache)"
        ) from None
    try:
        if computed:
            return computed[0]
        saved = torch.load(entry.file(FEATURE_FILE), map_location="cpu", weights_only=True)
        plain, flipped = saved["plain"], saved["flipped"]
        if plain.shape[0] != len(split) or flipped is None or flipped.shape != plain.shape:
            raise ValueError(f"holds {tuple(plain.shape)} features for {len(split)} images")
        log.info("feature cache hit: %s", prefix.name)
        return plain, flipped
    except (RuntimeError, ValueError, KeyError, EOFError) as error:
        # Checksums matched what was written, yet it is not ours: build it again.
        log.warning("the feature cache %s is unusable (%s): recomputing", prefix, error)
        return compute()
    finally:
        entry.release()
        removed = remove_stale_entries(folder, family, prefix, (FEATURE_FILE,))
        for name in removed:
            log.info("removed the outdated feature cache %s", name)


def split_features(
    forward: ForwardEngine,
    digest: str,
    source: ImageSource,
    config: TrainConfig,
) -> FeatureSet:
    """The features of every image of `source.split` (in split order) for each view of
    `config`, computed by `forward` (whose weights `digest` names): from the feature cache,
    or computed once and cached."""
    cache_dir = resolve_project_path(config.cache_dir) if config.cache_dir else None
    views = parse_views(config.view, config.image_size, config.whole_size)
    return FeatureSet.of_views(
        [cached_view_features(forward, source, view, digest, cache_dir, config) for view in views]
    )


@dataclass
class FeaturePass:
    """What computes a run's features: the engine, and the digest of the weights it runs."""

    forward: ForwardEngine
    digest: str

    @classmethod
    def of(cls, model: MultiLabelClassifier, config: TrainConfig, runtime: Runtime) -> FeaturePass:
        cache_dir = resolve_project_path(config.cache_dir) if config.cache_dir else None
        forward = forward_engine(model, config.engine, runtime, cache_dir, config.image_size)
        return cls(forward, head_input_digest(model))

    def features(self, source: ImageSource, config: TrainConfig) -> FeatureSet:
        return split_features(self.forward, self.digest, source, config)


def load_features(
    feature_pass: FeaturePass,
    data: RunData,
    config: TrainConfig,
    fold: Fold | None = None,
) -> dict[str, FeatureSet]:
    """The features of what the run trains on ("train") and chooses its epoch on ("val").
    A fold run's two parts are rows of the train split, whose features are computed (or
    read from the cache) once for the whole split and shared by every fold."""
    forward, digest = feature_pass.forward, feature_pass.digest
    train_set = data.train_loader.dataset
    whole_train = train_set.dataset if isinstance(train_set, RowSubset) else train_set
    train_source = image_source(data.voc_root, whole_train.split, config, whole_train.image_cache)
    train = split_features(forward, digest, train_source, config)
    if fold is not None:
        return {"train": train.rows(fold.train_rows), "val": train.rows(fold.held_out_rows)}
    val_source = image_source(
        data.voc_root, data.val_split, config, data.val_loader.dataset.image_cache
    )
    return {"train": train, "val": split_features(forward, digest, val_source, config)}

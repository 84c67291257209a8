"""`python -m training.bench`: a plain course-style loop against our pipeline, side by side.

(a) is written the way course code usually is: a Dataset that opens each JPEG with PIL and
returns float32 tensors normalised on the CPU, batch 16, a default DataLoader (no workers, no
pinned memory), float32, NCHW, Adam. (b) is our trainer's pipeline: the same loaders,
model, loop and prediction code `main_train.py` uses. Both run in this process on the same
data. Printed per setup: data-loading images/s alone, training and prediction images/s,
peak GPU memory, seconds per epoch, the ratios (b)/(a), and where (b)'s time goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from training.backbones import BACKBONES, create_imagenet_network, get_backbone
from training.config import TrainConfig
from training.distributed import DistContext
from training.loop import StepTimes, predict, train_one_epoch
from training.runtime import Runtime, configure_determinism
from training.trainer import TrainingParts, build_training_parts, runtime_for
from vocdata.classes import NUM_CLASSES
from vocdata.options import (
    add_arch_option,
    add_cache_dir_option,
    add_device_option,
    add_voc_root_option,
)
from vocdata.splits import VocSplit, read_split, resolve_voc_root


@dataclass
class Measurement:
    name: str
    batch_size: int
    data_images_per_s: float = float("nan")
    train_images_per_s: float = float("nan")
    predict_images_per_s: float = float("nan")
    peak_train_mb: float = float("nan")
    peak_predict_mb: float = float("nan")
    epoch_seconds: float = float("nan")  # one pass over train + one over val, from the rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**20


def _rate(
    run: Callable[[Iterable], int],
    make_batches: Callable[[], Iterable],
    device: torch.device,
    warmup: int,
    batches: int | None,
) -> float:
    """Images per second of `run` over `batches` batches, after `warmup` batches."""
    if warmup:
        run(itertools.islice(make_batches(), warmup))
    _sync(device)
    started = time.perf_counter()
    images = run(itertools.islice(make_batches(), batches) if batches else make_batches())
    _sync(device)
    return images / (time.perf_counter() - started)


def _count_images(batches: Iterable) -> int:
    return sum(len(batch[0]) for batch in batches)


# -- (a) the course-style baseline ---------------------------------------------------------------


class CourseStyleDataset(Dataset):
    """One PIL decode per sample, float32 normalised on the CPU: the usual first version."""

    def __init__(self, voc_root: Path, split: VocSplit, transform) -> None:
        self.voc_root, self.split, self.transform = voc_root, split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image = Image.open(self.voc_root / self.split.relative_paths[index]).convert("RGB")
        target = torch.from_numpy((self.split.labels[index] == 1).astype("float32"))
        return self.transform(image), target


def measure_course_loop(
    voc_root: Path,
    arch: str,
    weights: str,
    device: torch.device,
    image_size: int,
    warmup: int,
    batches: int | None,
) -> Measurement:
    spec = get_backbone(arch)
    normalize = T.Normalize(spec.mean, spec.std)
    train_set = CourseStyleDataset(
        voc_root,
        read_split(voc_root, "train"),
        T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
        ),
    )
    val_set = CourseStyleDataset(
        voc_root,
        read_split(voc_root, "val"),
        T.Compose(
            [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size), T.ToTensor(), normalize]
        ),
    )
    network = create_imagenet_network(arch, weights)
    head = getattr(network, spec.head_name)
    setattr(network, spec.head_name, nn.Linear(head.in_features, NUM_CLASSES))
    model = network.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.BCEWithLogitsLoss()

    def train_loader():
        return DataLoader(train_set, batch_size=16, shuffle=True)

    def val_loader():
        return DataLoader(val_set, batch_size=16)

    def train(batches) -> int:
        model.train()
        seen = 0
        for images, targets in batches:
            images, targets = images.to(device), targets.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), targets)
            loss.backward()
            optimizer.step()
            seen += len(images)
        return seen

    def evaluate(batches) -> int:
        model.eval()
        seen = 0
        with torch.no_grad():
            for images, _ in batches:
                torch.sigmoid(model(images.to(device))).cpu()
                seen += len(images)
        return seen

    result = Measurement("(a) course loop", 16)
    result.data_images_per_s = _rate(_count_images, train_loader, device, 1, batches)
    _reset_peak(device)
    result.train_images_per_s = _rate(train, train_loader, device, warmup, batches)
    result.peak_train_mb = _peak_mb(device)
    _reset_peak(device)
    result.predict_images_per_s = _rate(evaluate, val_loader, device, warmup, batches)
    result.peak_predict_mb = _peak_mb(device)
    result.epoch_seconds = (
        len(train_set) / result.train_images_per_s + len(val_set) / result.predict_images_per_s
    )
    return result


# -- (b) our pipeline ------------------------------------------------------------------------------


@dataclass
class OurSetup:
    """Our pipeline as the trainer builds it (`build_training_parts`), plus the compiled or
    plain module the steps run through."""

    config: TrainConfig
    runtime: Runtime
    parts: TrainingParts
    model: nn.Module


def our_setup(config: TrainConfig, voc_root: Path) -> OurSetup:
    context = DistContext()
    runtime = runtime_for(config, context)
    configure_determinism(runtime, config.cudnn_benchmark, config.deterministic)
    parts = build_training_parts(config, runtime, context, voc_root)
    model = torch.compile(parts.model) if config.compile else parts.model
    return OurSetup(config, runtime, parts, model)


def measure_our_pipeline(
    setup: OurSetup, name: str, warmup: int, batches: int | None
) -> Measurement:
    device, data = setup.runtime.device, setup.parts.data

    def train(batches_) -> int:
        return _train(setup, batches_)

    def evaluate(batches_) -> int:
        return len(predict(setup.model, batches_, setup.runtime, progress=False).indices)

    result = Measurement(name, setup.config.batch_size)
    result.data_images_per_s = _rate(_count_images, lambda: data.train_loader, device, 1, batches)
    _reset_peak(device)
    result.train_images_per_s = _rate(train, lambda: data.train_loader, device, warmup, batches)
    result.peak_train_mb = _peak_mb(device)
    _reset_peak(device)
    # Warm up on a whole pass when timing whole passes: the last, partial batch is a new
    # shape, and autotuning it must not be counted as prediction time.
    val_warmup = warmup if batches else len(data.val_loader)
    result.predict_images_per_s = _rate(
        evaluate, lambda: data.val_loader, device, val_warmup, batches
    )
    result.peak_predict_mb = _peak_mb(device)
    result.epoch_seconds = (
        len(data.train_split) / result.train_images_per_s
        + len(data.val_split) / result.predict_images_per_s
    )
    return result


def _train(setup: OurSetup, batches: Iterable, step_times: StepTimes | None = None) -> int:
    """The trainer's own training loop over `batches`; returns the images seen."""
    parts = setup.parts
    return train_one_epoch(
        setup.model,
        batches,
        parts.optimizer,
        parts.scheduler,
        parts.scaler,
        setup.runtime,
        progress=False,
        step_times=step_times,
    )[1]


def breakdown(setup: OurSetup, batches: int | None) -> dict[str, float]:
    """Milliseconds per training step spent waiting for data, in forward+backward and in the
    optimizer, timed inside the trainer's own loop (each phase synchronised, so the sum is a
    little above the real step), and the seconds of one validation pass (extrapolated from
    `batches` batches when given)."""
    data, runtime = setup.parts.data, setup.runtime
    step_times = StepTimes()
    train_batches = itertools.islice(data.train_loader, batches) if batches else data.train_loader
    _train(setup, train_batches, step_times)
    result = step_times.milliseconds_per_step()
    val_batches = itertools.islice(data.val_loader, batches) if batches else data.val_loader
    started = time.perf_counter()
    predicted = len(predict(setup.model, val_batches, runtime, progress=False).indices)
    _sync(runtime.device)
    seconds = time.perf_counter() - started
    result["validation pass (s)"] = seconds * len(data.val_split) / max(predicted, 1)
    return result


def format_table(results: list[Measurement]) -> str:
    baseline = results[0]
    compared = results[1:] if baseline.name.startswith("(a)") else []
    rows = [
        ("batch size", "batch_size", "{:.0f}"),
        ("data loading alone, images/s", "data_images_per_s", "{:.0f}"),
        ("training, images/s", "train_images_per_s", "{:.0f}"),
        ("prediction, images/s", "predict_images_per_s", "{:.0f}"),
        ("peak GPU memory training, MiB", "peak_train_mb", "{:.0f}"),
        ("peak GPU memory prediction, MiB", "peak_predict_mb", "{:.0f}"),
        ("seconds per epoch (train + val)", "epoch_seconds", "{:.1f}"),
    ]
    header = f"{'':<34}" + "".join(f"{r.name:>22}" for r in results)
    header += "".join(f"{r.name.split()[0] + '/(a)':>16}" for r in compared)
    lines = [header]
    for label, attribute, fmt in rows:
        values = [getattr(r, attribute) for r in results]
        line = f"{label:<34}" + "".join(f"{fmt.format(v):>22}" for v in values)
        base = getattr(baseline, attribute)
        line += "".join(
            f"{getattr(r, attribute) / base:>16.2f}" if base == base and base else f"{'':>16}"
            for r in compared
        )
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Options of the benchmark; the shared ones are spelled as in main_train.py."""
    parser = argparse.ArgumentParser(
        prog="python -m training.bench",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_voc_root_option(parser)
    add_arch_option(parser, BACKBONES, TrainConfig.arch)
    parser.add_argument(
        "--weights",
        default="none",
        help="speed does not depend on the weights; 'none' works offline",
    )
    add_device_option(parser)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="batches per measurement (default: whole epochs on CUDA, 8 on CPU)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing")
    parser.add_argument("--workers", type=int, default=-1, help="our loader processes")
    add_cache_dir_option(parser)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="cuDNN autotuning in our pipeline (as main_train.py); the timed passes follow a "
        "warm-up, so this shows the steady state",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    voc_root = resolve_voc_root(args.voc_root)
    base = TrainConfig(
        voc_root=str(voc_root),
        arch=args.arch,
        weights=args.weights,
        device=args.device,
        image_size=args.image_size,
        workers=args.workers,
        cache_dir=args.cache_dir,
        progress=False,
        cudnn_benchmark=args.cudnn_benchmark,
        freeze_backbone=False,  # the benchmark times fine-tuning steps
    )
    runtime = runtime_for(base, DistContext())
    batches = (
        args.batches if args.batches is not None else (None if runtime.device.type == "cuda" else 8)
    )
    print(
        f"device {runtime.device}"
        + (
            f" ({torch.cuda.get_device_name(runtime.device)})"
            if runtime.device.type == "cuda"
            else f" ({torch.get_num_threads()} threads)"
        )
        + f", {args.arch}, {args.image_size} px, amp {runtime.amp_dtype}, "
        f"workers {base.workers}, batches per measurement: {batches or 'whole epoch'}"
    )
    results = []
    if not args.skip_baseline:
        results.append(
            measure_course_loop(
                voc_root,
                args.arch,
                args.weights,
                runtime.device,
                args.image_size,
                args.warmup,
                batches,
            )
        )
        print(f"measured {results[-1]}", flush=True)
    setups = [
        ("(b) ours, batch 16", dataclasses.replace(base, batch_size=16)),
        (f"(b) ours, batch {base.batch_size}", base),
    ]
    if args.compile:
        setups.append(("(c) ours + compile", dataclasses.replace(base, compile=True)))
    last = None
    for name, config in setups:
        try:
            setup = our_setup(config, voc_root)
            results.append(measure_our_pipeline(setup, name, args.warmup, batches))
        except Exception as error:  # one failing setup (e.g. compile) must not hide the rest
            print(f"{name} failed: {type(error).__name__}: {error}", flush=True)
            continue
        last = setup
        print(f"measured {name}: {results[-1]}", flush=True)
    print()
    print(format_table(results))
    print()
    if last is None:
        return 1
    print(f"where the time of '{results[-1].name}' goes, per training step:")
    for key, value in breakdown(last, batches).items():
        print(f"  {key:<22} {value:8.2f}" + (" ms" if "(s)" not in key else " s"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

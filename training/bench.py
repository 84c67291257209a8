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
    add_engine_bench_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engines or args.decode:
        return engine_bench_main(args)

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


# -- inference engines and decoding on the CPU (--engines, --decode) -------------------------------
# The backbones as measured: Lite0 with its real weights (what the default recipe runs), ResNet-18
# with random ones (offline; speed does not depend on them).
ENGINE_BENCH_ARCHS = (("resnet18", "none"), ("efficientnet_lite0", "imagenet"))


def add_engine_bench_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference engines and decoding (CPU)")
    group.add_argument(
        "--engines",
        action="store_true",
        help="instead of the training comparison: forward images/s of torch eager (NCHW, "
        "channels-last), ONNX Runtime and OpenVINO (f32 and its default precision), side by "
        "side for resnet18 and efficientnet_lite0, and a fine-tuning step NCHW vs channels-last",
    )
    group.add_argument(
        "--decode",
        action="store_true",
        help="JPEG decoding for the evaluation transform, full vs Pillow's draft mode, and the "
        "loader workers x engine threads of a whole prediction pass",
    )
    group.add_argument(
        "--engine-batch-size", type=int, default=32, help="images per forward (--engines)"
    )
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of torch and the engines (default: torch's current count)",
    )


def _engine_images(voc_root: Path | None, image_size: int, count: int) -> tuple[torch.Tensor, str]:
    """`count` val images of `voc_root` as the prediction pass sees them, else random pixels."""
    from vocdata.images import open_rgb
    from vocdata.transforms import eval_transform

    try:
        names = read_split(voc_root, "val").relative_paths[:count]
        transform = eval_transform(image_size)
        images = torch.stack([transform(open_rgb(voc_root / name)) for name in names])
    except Exception:  # no dataset here: speed does not depend on the pixels
        generator = torch.Generator().manual_seed(0)
        shape = (count, 3, image_size, image_size)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator), "random"
    if len(images) < count:
        images = images.repeat((count + len(images) - 1) // len(images), 1, 1, 1)[:count]
    return images, "real val"


def _best_seconds(call: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls: on a machine shared with other work the fastest
    call is the one least disturbed (as `timeit` recommends)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def _fine_tuning_step(model: nn.Module, images: torch.Tensor, channels_last: bool):
    """One training step as training does it (forward, masked BCE, backward, SGD) in the
    given memory layout, as a callable, after one warm-up step."""
    from training.loss import masked_bce_with_logits

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    images = images.contiguous(memory_format=memory_format)
    targets = (torch.arange(images.shape[0] * NUM_CLASSES) % 7 == 0).float().view(-1, NUM_CLASSES)
    mask = torch.ones_like(targets)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss = masked_bce_with_logits(model(images), targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    return step


def measure_fine_tuning(arch: str, images: torch.Tensor, steps: int) -> dict[str, float]:
    """Fine-tuning images/s, NCHW vs channels-last, taking turns (as `measure_engines`)."""
    import copy

    from training.model import build_classifier

    torch.manual_seed(0)
    model = build_classifier(arch, NUM_CLASSES, weights="none")
    layouts = {
        "NCHW": _fine_tuning_step(copy.deepcopy(model), images, False),
        "channels-last": _fine_tuning_step(model, images, True),
    }
    best = dict.fromkeys(layouts, float("inf"))
    for _ in range(max(1, steps)):
        for layout, step in layouts.items():
            best[layout] = min(best[layout], _best_seconds(step, 1))
    return {layout: len(images) / seconds for layout, seconds in best.items()}


def measure_engines(
    arch: str, weights: str, images: torch.Tensor, batches: int, threads: int
) -> tuple[list[tuple[str, float, float]], float]:
    """Rows (name, images/s, max |dlogit| vs eager NCHW) for one backbone, in one process, and
    the seconds the ONNX export took. The rows take turns, one batch each per round, and each
    keeps its fastest batch: other work on the machine then disturbs all rows alike instead of
    whichever ran while it did. A row whose engine cannot run shows nan."""
    import copy
    import tempfile

    from training.engine import (
        OnnxRuntimeEngine,
        OpenVinoEngine,
        export_onnx_graph,
        output_names,
    )
    from training.model import build_classifier

    torch.manual_seed(0)
    model = build_classifier(arch, NUM_CLASSES, weights=weights).eval()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def eager(module: nn.Module, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(batch: torch.Tensor) -> torch.Tensor:
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return module(batch)

        return run

    runners: list[tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]] = [
        ("torch eager, NCHW", eager(model, False)),
        ("torch eager, channels-last", eager(last, True)),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as scratch:
        graph = Path(scratch) / f"{arch}.onnx"
        started = time.perf_counter()
        export_onnx_graph(model, images[:2], graph, output_names(1))
        export_seconds = time.perf_counter() - started
        for name, open_engine in (
            ("onnxruntime, CPU provider", lambda: OnnxRuntimeEngine(graph, threads, True)),
            ("openvino, precision f32 (pinned)", lambda: OpenVinoEngine(graph, threads, True)),
            ("openvino, default precision", lambda: OpenVinoEngine(graph, threads, True, None)),
        ):
            try:
                engine = open_engine()
            except Exception as error:  # one missing engine must not hide the others
                print(f"{name}: {type(error).__name__}: {error}", flush=True)
                runners.append((name, None))
                continue
            if isinstance(engine, OpenVinoEngine) and "default" in name:
                name = f"openvino, default precision ({engine.precision})"
            runners.append((name, engine))
    outputs = {name: run(images) for name, run in runners if run is not None}  # warm-up
    best = dict.fromkeys(outputs, float("inf"))
    for _ in range(max(1, batches)):
        for name, run in runners:
            if run is not None:
                best[name] = min(best[name], _best_seconds(lambda run=run: run(images), 1))
    reference = outputs[runners[0][0]]
    rows = []
    for name, run in runners:
        if run is None:
            rows.append((name, float("nan"), float("nan")))
        else:
            difference = float((outputs[name] - reference).abs().max())
            rows.append((name, len(images) / best[name], difference))
    return rows, export_seconds


def _engine_table(rows: list[tuple[str, float, float]]) -> str:
    base = rows[0][1]
    lines = [f"{'':<44}{'images/s':>10}{'x eager NCHW':>14}{'max |dlogit|':>14}"]
    for name, rate, difference in rows:
        shown = "-" if name == rows[0][0] else f"{difference:.1e}"
        lines.append(f"{name:<44}{rate:>10.1f}{rate / base:>14.2f}{shown:>14}")
    return "\n".join(lines)


def _draft_decode(path: Path, shorter_side: int):
    """Decode with Pillow's draft mode: the JPEG decoder scales by 1/2, 1/4 or 1/8 while
    decoding, to the smallest scale whose shorter side is still >= `shorter_side`."""
    with Image.open(path) as image:
        width, height = image.size
        scale = shorter_side / min(width, height)
        image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
        return image.convert("RGB")


def measure_decoding(voc_root: Path, image_size: int, count: int) -> None:
    """Images/s (one thread) of decode + the evaluation transform, full vs draft decoding, and
    whether draft changes the pixels, on the first `count` val images."""
    from vocdata.images import open_rgb
    from vocdata.transforms import eval_resize_size, eval_transform

    names = read_split(voc_root, "val").relative_paths[:count]
    paths = [voc_root / name for name in names]
    transform, side = eval_transform(image_size), eval_resize_size(image_size)
    results = {}
    for label, decode in (
        ("full decode + resize", open_rgb),
        ("draft decode + resize", lambda path: _draft_decode(path, side)),
    ):
        decode(paths[0])
        started = time.perf_counter()
        results[label] = [transform(decode(path)) for path in paths]
        rate = len(paths) / (time.perf_counter() - started)
        print(f"  {label:<24} {rate:8.1f} images/s (one thread)")
    reduced = 0
    for path in paths:
        with Image.open(path) as image:
            reduced += _draft_decode(path, side).size != image.size
    changed = [
        float((a.int() - b.int()).abs().max())
        for a, b in zip(*results.values(), strict=True)
        if not torch.equal(a, b)
    ]
    print(
        f"  draft reduced the decoded size of {reduced} of {len(paths)} images; pixels differ "
        f"in {len(changed)} (max |dpixel| {max(changed, default=0):.0f})"
    )


def measure_pipeline(
    voc_root: Path, image_size: int, batches: int, batch_size: int, cache_dir: str | None
) -> None:
    """Images/s of a prediction pass over real val images with flip TTA (decoding in the
    loader's workers, Lite0 forward) for loader workers x engine threads of the `auto`
    engine (who gets the 2 cores), then PyTorch eager NCHW (today) and channels-last."""
    import copy
    import tempfile

    from training.engine import build_engine
    from training.model import build_classifier
    from vocdata.dataset import VocClassification
    from vocdata.transforms import eval_transform

    model = build_classifier("efficientnet_lite0", NUM_CLASSES, weights="imagenet").eval()
    dataset = VocClassification(
        voc_root, read_split(voc_root, "val"), "ignore", eval_transform(image_size)
    )
    subset = torch.utils.data.Subset(dataset, range(batch_size * (batches + 1)))
    example = torch.stack([dataset[i][0] for i in range(2)])
    cpu, torch_threads = torch.device("cpu"), torch.get_num_threads()
    print(f"{'workers':>8}{'threads':>8}{'images/s':>10}  (flip TTA: 2 forwards per image)")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        setups = [(workers, threads, "auto", None) for threads in (1, 2) for workers in (0, 1, 2)]
        setups += [(2, torch_threads, "torch", False), (2, torch_threads, "torch", True)]
        for workers, threads, name, channels_last in setups:
            engine = build_engine(
                copy.deepcopy(model),
                name,
                example=example,
                cache_dir=Path(cache_dir or scratch),
                key="bench-lite0-imagenet",
                device=cpu,
                threads=threads,
                channels_last=channels_last,
            )
            seen, started = 0, None
            for images, *_ in DataLoader(subset, batch_size=batch_size, num_workers=workers):
                engine(images)
                engine(torch.flip(images, dims=(-1,)))
                if started is None:  # the first batch pays for the workers' start
                    started = time.perf_counter()
                    continue
                seen += len(images)
            rate = seen / (time.perf_counter() - started)
            shown = engine.name + (
                "" if channels_last is None else (", channels-last" if channels_last else ", NCHW")
            )
            print(f"{workers:>8}{threads:>8}{rate:>10.1f}  {shown}", flush=True)


def engine_bench_main(args: argparse.Namespace) -> int:
    """--engines / --decode: the CPU-side measurements of the inference engines (docs/)."""
    import logging
    import os

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batches = args.batches or 4
    try:
        voc_root: Path | None = resolve_voc_root(args.voc_root)
        read_split(voc_root, "val")
    except Exception:
        voc_root = None
    print(
        f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs, "
        f"{args.image_size} px, batch {args.engine_batch_size}, the fastest of {batches} timed "
        f"batches per row"
    )
    if args.engines:
        images, source = _engine_images(voc_root, args.image_size, args.engine_batch_size)
        for arch, weights in ENGINE_BENCH_ARCHS:
            rows, export_seconds = measure_engines(arch, weights, images, batches, threads)
            print(
                f"\n{arch} ({weights} weights, {source} images; ONNX export {export_seconds:.1f} s)"
            )
            print(_engine_table(rows))
            for layout, rate in measure_fine_tuning(arch, images, max(2, batches // 2)).items():
                print(f"{'fine-tuning step, ' + layout:<44}{rate:>10.1f}  images/s (fwd+bwd+SGD)")
    if args.decode:
        if voc_root is None:
            print("--decode needs the VOC subset (--voc-root)")
            return 1
        print("\ndecoding for the evaluation transform, first 300 val images:")
        measure_decoding(voc_root, args.image_size, 300)
        print("\nprediction pass, efficientnet_lite0, engine auto:")
        measure_pipeline(voc_root, args.image_size, batches, args.engine_batch_size, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every training option in one place: a dataclass of defaults and the one argparse parser.

`python main_train.py` with no arguments trains with these defaults. The full config is
saved as `config.json` in the run folder; `--resume RUN` reloads it and applies only the
options given again on the command line (for example a larger `--epochs`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from predictions.runs import DEFAULT_RUNS_DIR, resolve_run_dir
from vocdata.splits import DEFAULT_VOC_ROOT, VOC_ROOT_ENV, DifficultMode

CONFIG_FILENAME = "config.json"


def default_workers() -> int:
    """Loader processes: one per core, at most 8 (more rarely helps at this image size)."""
    return max(0, min(8, (os.cpu_count() or 1)))


@dataclass
class TrainConfig:
    """The training recipe. Defaults are the recommended transfer-learning setup."""

    # data
    voc_root: str | None = None
    download: bool = True
    skip_bad_images: bool = False
    difficult: str = DifficultMode.IGNORE.value
    image_size: int = 224
    # model
    arch: str = "resnet18"
    weights: str = "imagenet"
    head: str = "auto"  # training/heads.py; auto = prior with pretrained weights, else random
    tta: str = "none"  # test-time augmentation at prediction: none | hflip (issue 11)
    freeze_backbone: bool = False  # train only the head, on cached features
    lp_ft: bool = False  # fit the head on frozen features first, then fine-tune everything
    # optimisation
    epochs: int = 12
    batch_size: int = 32
    optimizer: str = "adamw"
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    # machine
    device: str = "auto"
    workers: int = -1
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cudnn_benchmark: bool = False
    deterministic: bool = False
    cache_dir: str | None = "cache"
    # bookkeeping
    seed: int = 0
    runs_dir: str = DEFAULT_RUNS_DIR
    run_name: str | None = None
    resume: str | None = None
    stop_after: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            self.workers = default_workers()
        if self.cache_dir in ("", "none"):
            self.cache_dir = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: Path) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        data = json.loads(Path(path).read_text())
        return cls(**{key: value for key, value in data.items() if key in known})


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command-line interface of `main_train.py`.

    With `suppress_defaults`, options that are not given stay absent from the namespace: used
    to find which options the user typed when resuming.
    """
    d = TrainConfig(workers=0)
    parser = argparse.ArgumentParser(
        prog="main_train.py",
        description="Train a 20-class multi-label classifier on Pascal VOC 2012 (ImageNet "
        "transfer learning). With no arguments: ResNet-18, the default recipe, a new run "
        "folder under runs/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )

    def default(value):
        return argparse.SUPPRESS if suppress_defaults else value

    data = parser.add_argument_group("data")
    data.add_argument(
        "--voc-root",
        default=default(d.voc_root),
        help=f"folder holding ImageSets/ and JPEGImages/; relative paths are taken "
        f"from the project root. Default: ${VOC_ROOT_ENV} if set, else "
        f"{DEFAULT_VOC_ROOT}",
    )
    data.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=default(d.download),
        help="download VOC2012 trainval (2 GB, md5-checked) if the root is missing",
    )
    data.add_argument(
        "--skip-bad-images",
        action=argparse.BooleanOptionalAction,
        default=default(d.skip_bad_images),
        help="test-decode every image first and leave out missing or corrupt "
        "ones (counted and logged) instead of stopping with an error",
    )
    data.add_argument(
        "--difficult",
        choices=[m.value for m in DifficultMode],
        default=default(d.difficult),
        help="label 0 (only difficult objects of a class): 'ignore' leaves it out "
        "of that class's loss and AP (VOC protocol); 'positive'/'negative' count "
        "it as present/absent",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=default(d.image_size),
        help="side of the square training and validation crops, in pixels",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        choices=["resnet18", "efficientnet_lite0"],
        default=default(d.arch),
        help="backbone (see training/backbones.py)",
    )
    model.add_argument(
        "--weights",
        default=default(d.weights),
        help="'imagenet' (download via torchvision for resnet18; shipped by the "
        "pip package for efficientnet_lite0), a path to a local ImageNet state "
        "dict, or 'none' for random initialisation",
    )

    model.add_argument(
        "--head",
        choices=["auto", "random", "init", "prior"],
        default=default(d.head),
        help="the 20-output layer: 'random' (a fresh linear layer), 'init' (rows started from "
        "the ImageNet rows of each class's synsets), 'prior' (the frozen ImageNet layer's "
        "probability of the class's synsets, scaled, shifted and corrected by a learned "
        "linear residual). 'auto': prior with pretrained weights, random with --weights none",
    )
    model.add_argument(
        "--tta",
        choices=["none", "hflip"],
        default=default(d.tta),
        help="test-time augmentation: 'hflip' averages the logits of each validation image "
        "and its mirror image (twice the prediction time)",
    )
    model.add_argument(
        "--freeze-backbone",
        action=argparse.BooleanOptionalAction,
        default=default(d.freeze_backbone),
        help="train only the head, on backbone features computed once per image (and its "
        "mirror image) and cached under --cache-dir: a whole training costs about one pass "
        "over the images (the recommended CPU recipe)",
    )
    model.add_argument(
        "--lp-ft",
        action=argparse.BooleanOptionalAction,
        default=default(d.lp_ft),
        help="linear probe, then fine-tune: fit the head on frozen cached features for "
        "--epochs passes first, then fine-tune the whole network; keeps more of what the "
        "pretrained features know than fine-tuning with an untrained head",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--epochs",
        type=int,
        default=default(d.epochs),
        help="training epochs; 0 trains nothing and only validates the starting model (the "
        "zero-shot baseline with an ImageNet head, chance with --head random)",
    )
    optim.add_argument(
        "--batch-size",
        type=int,
        default=default(d.batch_size),
        help="images per step (per process under torchrun)",
    )
    optim.add_argument(
        "--optimizer",
        choices=["adamw", "sgd"],
        default=default(d.optimizer),
        help="AdamW, or SGD with Nesterov momentum 0.9",
    )
    optim.add_argument(
        "--lr-head",
        type=float,
        default=default(d.lr_head),
        help="peak learning rate of the new 20-output layer",
    )
    optim.add_argument(
        "--lr-backbone",
        type=float,
        default=default(d.lr_backbone),
        help="peak learning rate of the pretrained backbone (lower: it only needs adjusting)",
    )
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=default(d.weight_decay),
        help="decoupled weight decay (not applied to biases and norm layers)",
    )
    optim.add_argument(
        "--warmup-epochs",
        type=float,
        default=default(d.warmup_epochs),
        help="linear warm-up before the cosine decay, in epochs",
    )

    machine = parser.add_argument_group("machine")
    machine.add_argument(
        "--device",
        default=default(d.device),
        help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'",
    )
    machine.add_argument(
        "--workers",
        type=int,
        default=default(-1),
        help="data-loading processes (-1: one per core, at most 8; 0: load in the main process)",
    )
    machine.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        default=default(d.amp),
        help="mixed precision on CUDA: auto = bf16 where supported, else fp16 "
        "with loss scaling; always off on the CPU",
    )
    machine.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=default(d.channels_last),
        help="NHWC memory layout on CUDA (faster convolutions)",
    )
    machine.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=default(d.compile),
        help="torch.compile the model",
    )
    machine.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=default(d.cudnn_benchmark),
        help="let cuDNN time its algorithms for every layer shape and keep the fastest. Off by "
        "default: measured on an H100 with EfficientNet-Lite0 it adds ~15 s to the first epoch "
        "and saves ~0.2 s per later epoch, so it pays off only for long runs",
    )
    machine.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=default(d.deterministic),
        help="deterministic kernels only (slower on CUDA; CPU runs are reproducible anyway)",
    )
    machine.add_argument(
        "--cache-dir",
        default=default(d.cache_dir),
        help="folder (relative to the project root) for a one-time cache of the images decoded "
        "and resized to the evaluation scale, reused by every later epoch and run and rebuilt "
        "when the images change; about 3 GB for full VOC 2012; 'none' to decode every time",
    )

    book = parser.add_argument_group("bookkeeping")
    book.add_argument(
        "--seed",
        type=int,
        default=default(d.seed),
        help="seed of python, numpy, torch, the data order and augmentation",
    )
    book.add_argument(
        "--runs-dir",
        default=default(d.runs_dir),
        help="where run folders and the 'latest' pointer go",
    )
    book.add_argument(
        "--run-name",
        default=default(d.run_name),
        help="run folder name (default: <date>-<time>-<arch>)",
    )
    book.add_argument(
        "--resume",
        default=default(d.resume),
        metavar="RUN",
        help="continue an interrupted run exactly: a run folder, its name under "
        "--runs-dir, or 'latest'; its saved config is used, options given again "
        "here override it",
    )
    book.add_argument(
        "--stop-after",
        type=int,
        default=default(d.stop_after),
        metavar="N",
        help="stop cleanly after N epochs of this session (time-boxed jobs); "
        "continue later with --resume",
    )
    book.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default(d.progress),
        help="progress bars",
    )
    return parser


def config_from_argv(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse the command line into a TrainConfig; with --resume, start from the saved config."""
    args = build_parser().parse_args(argv)
    if args.resume is None:
        return TrainConfig(**vars(args))
    run_dir = resolve_run_dir(args.resume, args.runs_dir)
    saved = run_dir / CONFIG_FILENAME
    if not saved.is_file():
        raise FileNotFoundError(f"Cannot resume {run_dir}: it has no {CONFIG_FILENAME}.")
    config = TrainConfig.from_json_file(saved)
    explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
    for key, value in explicit.items():
        setattr(config, key, value)
    config.resume = str(run_dir)
    config.run_name = run_dir.name
    if config.workers < 0:
        config.workers = default_workers()
    return config

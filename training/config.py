"""Every training option in one place: a dataclass of defaults and the one argparse parser.

`python main_train.py` with no arguments trains with these defaults. The full config is
saved as `config.json` in the run folder; `--resume RUN` reloads it. Options given again on
the command line either take effect (CHANGEABLE_ON_RESUME: how and where the run computes,
and `--epochs`) or, when they differ from the run's own, are refused (FIXED_ON_RESUME: what
the checkpoint's state means); none is recorded without being used.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from predictions.runs import (
    CONFIG_FILENAME,
    DEFAULT_RUNS_DIR,
    LAST_STARTED_POINTER,
    resolve_run_dir,
)
from training.backbones import BACKBONES
from training.config_checks import CHOICES, ConfigError, problems
from training.engine import ENGINE_CHOICES
from training.heads import RESIDUAL_SHRINK
from training.runtime import AMP_MODES
from vocdata.jsonio import JsonFileError, read_json
from vocdata.options import (
    add_amp_option,
    add_arch_option,
    add_cache_dir_option,
    add_channels_last_option,
    add_device_option,
    add_engine_option,
    add_progress_option,
    add_runs_dir_option,
    add_voc_root_option,
    add_workers_option,
    none_or_value,
)
from vocdata.paths import project_relative, resolve_project_path
from vocdata.splits import DifficultMode

PATH_FIELDS = ("voc_root", "runs_dir", "cache_dir", "resume", "label_fixes")  # project-relative
# A resumed run's checkpoint holds the state of one recipe: the network, its head, the
# optimizer with its learning rates and schedule (restored from the checkpoint, so a new
# value could not take effect), the batches' size and order, the images' size and labels,
# what the epoch is chosen on. Given again with another value, these are refused.
FIXED_ON_RESUME = (
    "arch",
    "weights",
    "head",
    "tta",
    "freeze_backbone",
    "lp_ft",
    "optimizer",
    "lr_head",
    "lr_backbone",
    "weight_decay",
    "warmup_epochs",
    "batch_size",
    "image_size",
    "difficult",
    "seed",
    "folds",
    "run_name",
    "view",
    "whole_size",
    "spatial_max",
    "label_fixes",
    "label_fix_mode",
    "residual_shrink",  # a buffer set when training starts: the checkpoint keeps it
)
# These may change on resume and take effect: where the data and outputs are, the machine,
# the bookkeeping, and --epochs (the cosine schedule is laid out again over the new total:
# see README "Resuming").
CHANGEABLE_ON_RESUME = (
    "epochs",
    "voc_root",
    "download",
    "skip_bad_images",
    "device",
    "workers",
    "amp",
    "engine",
    "channels_last",
    "compile",
    "cudnn_benchmark",
    "deterministic",
    "cache_dir",
    "runs_dir",
    "stop_after",
    "progress",
)


# What a run behaved like before the option existed: a config.json without the key resumes so.
SAVED_BEFORE_OPTION = {"view": "crop", "spatial_max": False}


def under_torchrun() -> bool:
    """Started by torchrun with several processes (it sets WORLD_SIZE for each)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


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
    # train labels a person marked wrong (training/labelfixes.py): the browser's marks file or
    # an exported CSV; ignore (leave the pair out of loss and held-out AP) or flip it
    label_fixes: str | None = None
    label_fix_mode: str = "ignore"
    # model
    arch: str = "resnet18"
    weights: str = "imagenet"
    head: str = "auto"  # training/heads.py; auto = prior with pretrained weights, else random
    tta: str = "hflip"  # test-time augmentation at prediction: none | hflip (measured: helps)
    # How images are seen at evaluation (vocdata/views.py): crop, whole or crop+whole; the
    # whole view's shorter side (None: image_size x 10/7, 320 for 224). The prior head's
    # class-wise maximum over positions. None (auto): whole and on for the frozen recipe with
    # the prior head (chosen by 5-fold CV on train: docs/measurements.md), else crop and off.
    view: str | None = None
    whole_size: int | None = None
    spatial_max: bool | None = None
    # The prior head damps class c's residual by n_c / (n_c + residual_shrink) (training/heads.py)
    residual_shrink: float = RESIDUAL_SHRINK
    # Train only the head, on cached features. None (auto): frozen with pretrained weights,
    # fine-tuned with --weights none or --lp-ft; resolved when the config is made.
    freeze_backbone: bool | None = None
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
    engine: str = "auto"  # forward-only passes: training/engine.py
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
    # k-fold cross-validation on the train split (1 = one model, epoch chosen on val)
    folds: int = 1

    def __post_init__(self) -> None:
        self.cache_dir = none_or_value(self.cache_dir)
        if self.freeze_backbone is None:  # frozen features are a one-process recipe
            pretrained = self.weights != "none"
            self.freeze_backbone = pretrained and not self.lp_ft and not under_torchrun()
        prior_head = self.head == "prior" or (self.head == "auto" and self.weights != "none")
        if self.view is None:
            self.view = "whole" if self.freeze_backbone else "crop"
        if self.spatial_max is None:
            self.spatial_max = bool(self.freeze_backbone and prior_head)
        self.validate()
        if self.workers < 0:
            self.workers = default_workers()

    def validate(self) -> None:
        """Check every option's value (training/config_checks.py); a ConfigError names them."""
        found = problems({f.name: getattr(self, f.name) for f in fields(self)})
        if self.freeze_backbone and self.weights == "none":
            found.append(
                "--freeze-backbone with --weights none: a random backbone has nothing to keep; "
                "drop --freeze-backbone (or pass --no-freeze-backbone) to train it"
            )
        if (self.freeze_backbone or self.lp_ft) and under_torchrun():
            found.append(
                "--freeze-backbone and --lp-ft train the head on cached features in one "
                "process: run them without torchrun, or fine-tune (--no-freeze-backbone)"
            )
        if self.spatial_max and (
            self.head in ("random", "init") or (self.head == "auto" and self.weights == "none")
        ):
            found.append(
                "--spatial-max belongs to the prior head (--head prior, or auto with pretrained "
                "weights): drop --spatial-max or use the prior head"
            )
        if self.view != "crop" and not self.freeze_backbone:
            found.append(
                f"--view {self.view} is for the frozen-feature recipe (features of each view "
                f"computed once); a fine-tuned backbone validates on the crop view: drop --view "
                f"or train with --freeze-backbone"
            )
        if self.freeze_backbone and self.lp_ft:
            found.append(
                "--freeze-backbone with --lp-ft: LP-FT fine-tunes the backbone after the linear "
                "probe; choose one"
            )
        if found:
            raise ConfigError("; ".join(found))

    def to_json(self) -> str:
        """Every option, paths relative to the project root (as the README promises)."""
        data = asdict(self)
        for key in PATH_FIELDS:
            if data.get(key) is not None:
                data[key] = project_relative(data[key])
        if data["weights"] not in ("imagenet", "none"):
            data["weights"] = project_relative(data["weights"])
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: Path) -> TrainConfig:
        return cls(**read_config_file(path))


def read_config_file(path: Path) -> dict[str, Any]:
    """The options saved in a run's config.json (unknown keys dropped), naming the file if it
    cannot be read."""
    known = {f.name for f in fields(TrainConfig)}
    try:
        data = read_json(path, "a run's config.json", dict)
    except JsonFileError as error:
        raise ConfigError(
            f"Cannot read the saved options: {error}; restore that file, or start a new run "
            f"without --resume"
        ) from None
    # A run saved before an option existed ran as that option's old behaviour did.
    return {**SAVED_BEFORE_OPTION, **{key: v for key, v in data.items() if key in known}}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `main_train.py`: every option has a default."""
    d = TrainConfig(workers=0)
    parser = argparse.ArgumentParser(
        prog="main_train.py",
        description="Train a 20-class multi-label classifier on Pascal VOC 2012 (ImageNet "
        "transfer learning). With no arguments: ResNet-18, the default recipe, a new run "
        "folder under runs/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    data = parser.add_argument_group("data")
    add_voc_root_option(data)
    data.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=d.download,
        help="download VOC2012 trainval (2 GB, md5-checked) if the root is missing",
    )
    data.add_argument(
        "--skip-bad-images",
        action=argparse.BooleanOptionalAction,
        default=d.skip_bad_images,
        help="test-decode every image first and leave out missing or corrupt "
        "ones (counted and logged) instead of stopping with an error",
    )
    data.add_argument(
        "--difficult",
        choices=[m.value for m in DifficultMode],
        default=d.difficult,
        help="label 0 (only difficult objects of a class): 'ignore' leaves it out "
        "of that class's loss and AP (VOC protocol); 'positive'/'negative' count "
        "it as present/absent",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="side of the square training and validation crops, in pixels",
    )

    data.add_argument(
        "--label-fixes",
        default=d.label_fixes,
        metavar="FILE",
        help="train labels a person marked 'label looks wrong' in the browser: its marks file "
        "(e.g. <run>/train_oof_predictions.marks.json), an exported CSV (edited or not) or a "
        "run's label_fixes.json. Train split only ('model wrong' marks are ignored); a file "
        "naming val images is refused. Recorded in the run folder (label_fixes.json, used by "
        "--resume), its provenance and report",
    )
    data.add_argument(
        "--label-fix-mode",
        choices=CHOICES["label_fix_mode"],
        default=d.label_fix_mode,
        help="'ignore': each fixed (image, class) pair leaves the loss and the held-out AP, "
        "like a difficult label under the VOC protocol, in every --difficult mode (safe: a "
        "wrong mark costs one label, never teaches a wrong one); 'flip': present <-> absent "
        "(a difficult label has no opposite and is ignored)",
    )

    model = parser.add_argument_group("model")
    add_arch_option(model, BACKBONES, d.arch)
    model.add_argument(
        "--weights",
        default=d.weights,
        help="'imagenet' (resnet18: torchvision's file, downloaded once into "
        "<TORCH_HOME>/hub/checkpoints, its sha256 checked against its name and read as tensors "
        "only; efficientnet_lite0: shipped by its pip package), a path to a local ImageNet "
        "state dict, or 'none' for random initialisation",
    )

    model.add_argument(
        "--head",
        choices=CHOICES["head"],
        default=d.head,
        help="the 20-output layer: 'random' (a fresh linear layer), 'init' (rows started from "
        "the ImageNet rows of each class's synsets), 'prior' (the frozen ImageNet layer's "
        "probability of the class's synsets, scaled, shifted and corrected by a learned "
        "linear residual). 'auto': prior with pretrained weights, random with --weights none",
    )
    model.add_argument(
        "--tta",
        choices=CHOICES["tta"],
        default=d.tta,
        help="test-time augmentation: 'hflip' averages the logits of each validation image "
        "and its mirror image (twice the prediction time)",
    )
    model.add_argument(
        "--view",
        default=None,
        help="how an image is seen at evaluation (features, validation, scoring): 'crop' "
        "(shorter side to --image-size/0.875, the centre square), 'whole' (the whole image, "
        "shorter side --whole-size, longer side to the nearest multiple of 32, aspect kept "
        "within 16 px) or 'crop+whole' (the head sees both; logits averaged over them). "
        "Default: whole with a frozen backbone (chosen by 5-fold CV on train), crop when "
        "fine-tuning"
        "%(default).0s",
    )
    model.add_argument(
        "--whole-size",
        type=int,
        default=d.whole_size,
        metavar="PIXELS",
        help="shorter side of the whole view (default: --image-size x 10/7, 320 for 224)",
    )
    model.add_argument(
        "--spatial-max",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prior head: add each class's highest prior over the cells of the feature map "
        "(a learned weight per class, started at 0): finds small objects that average "
        "pooling dilutes. Default: on for the frozen recipe with the prior head (chosen by "
        "5-fold CV on train), off otherwise"
        "%(default).0s",
    )
    model.add_argument(
        "--residual-shrink",
        type=float,
        default=d.residual_shrink,
        metavar="S",
        help="prior head only: each class's learned residual is multiplied by n / (n + S), n "
        "its positive training images, so a class with few examples stays near what ImageNet "
        "knew (0: no damping)",
    )
    model.add_argument(
        "--freeze-backbone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train only the head, on backbone features computed once per image (and its "
        "mirror image) and cached under --cache-dir: a whole training costs about one pass "
        "over the images. Default: frozen with pretrained weights (it keeps what ImageNet "
        "knows; see README), fine-tuned with --weights none or --lp-ft. "
        "--no-freeze-backbone fine-tunes the whole network"
        # '%(default).0s' prints nothing; it only stops the formatter appending "(default:
        # None)" (None means the automatic choice described above).
        "%(default).0s",
    )
    model.add_argument(
        "--lp-ft",
        action=argparse.BooleanOptionalAction,
        default=d.lp_ft,
        help="linear probe, then fine-tune: fit the head on frozen cached features for "
        "--epochs passes first, then fine-tune the whole network; keeps more of what the "
        "pretrained features know than fine-tuning with an untrained head",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="training epochs; 0 trains nothing and only validates the starting model (the "
        "zero-shot baseline with an ImageNet head, chance with --head random)",
    )
    optim.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="images per step (per process under torchrun)",
    )
    optim.add_argument(
        "--optimizer",
        choices=CHOICES["optimizer"],
        default=d.optimizer,
        help="AdamW, or SGD with Nesterov momentum 0.9",
    )
    optim.add_argument(
        "--lr-head",
        type=float,
        default=d.lr_head,
        help="peak learning rate of the new 20-output layer",
    )
    optim.add_argument(
        "--lr-backbone",
        type=float,
        default=d.lr_backbone,
        help="peak learning rate of the pretrained backbone (lower: it only needs adjusting)",
    )
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="decoupled weight decay (not applied to biases and norm layers)",
    )
    optim.add_argument(
        "--warmup-epochs",
        type=float,
        default=d.warmup_epochs,
        help="linear warm-up before the cosine decay, in epochs",
    )

    machine = parser.add_argument_group("machine")
    add_device_option(machine, d.device)
    add_workers_option(machine)
    add_amp_option(machine, AMP_MODES, d.amp)
    add_engine_option(machine, ENGINE_CHOICES, d.engine)
    add_channels_last_option(machine, d.channels_last)
    machine.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=d.compile,
        help="torch.compile the model",
    )
    machine.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=d.cudnn_benchmark,
        help="let cuDNN time its algorithms for every layer shape and keep the fastest. Off by "
        "default: measured on an H100 with EfficientNet-Lite0 it adds ~15 s to the first epoch "
        "and saves ~0.2 s per later epoch, so it pays off only for long runs",
    )
    machine.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=d.deterministic,
        help="deterministic kernels only (slower on CUDA; CPU runs are reproducible anyway)",
    )
    add_cache_dir_option(machine, d.cache_dir)

    book = parser.add_argument_group("bookkeeping")
    book.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of python, numpy, torch, the data order and augmentation",
    )
    add_runs_dir_option(book)
    book.add_argument(
        "--run-name",
        default=d.run_name,
        help="run folder name (default: <date>-<time>-<arch>)",
    )
    book.add_argument(
        "--resume",
        default=d.resume,
        metavar="RUN",
        help="continue an interrupted run exactly: a run folder, its name under "
        "--runs-dir, or 'latest'; its saved config is used, options given again "
        "here override it",
    )
    book.add_argument(
        "--stop-after",
        type=int,
        default=d.stop_after,
        metavar="N",
        help="stop cleanly after N epochs of this session (time-boxed jobs); "
        "continue later with --resume",
    )
    book.add_argument(
        "--folds",
        type=int,
        default=d.folds,
        metavar="K",
        help="1: one model, its epoch chosen on the val split. K >= 2: K-fold cross-validation "
        "on the train split (multi-label stratified, fixed by --seed): K models under "
        "<run>/folds/<k>/, each with its epoch chosen on its own held-out fold only; the val "
        "split is scored once, by the average of the K models, and never used for a choice",
    )
    add_progress_option(book, d.progress)
    return parser


def _resume_target(argv: Sequence[str] | None) -> tuple[str | None, str]:
    """--resume and --runs-dir alone, read before the full parse (the rest is ignored here)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--resume", default=None)
    add_runs_dir_option(first)
    known, _ = first.parse_known_args(argv)
    return known.resume, known.runs_dir


def config_from_argv(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse the command line into a TrainConfig, once, and check every value.

    With --resume, the saved config becomes the parser's defaults (`parser.set_defaults`), so
    the one parse yields the saved run with only the options given again overriding it.
    `--resume latest` follows the `last-started` pointer: the newest run folder created,
    finished or not.
    """
    parser = build_parser()
    resume, runs_dir = _resume_target(argv)
    if resume is None:
        return TrainConfig(**vars(parser.parse_args(argv)))
    run_dir = resolve_run_dir(resume, runs_dir, pointer=LAST_STARTED_POINTER)
    saved_path = run_dir / CONFIG_FILENAME
    if not saved_path.is_file():
        raise FileNotFoundError(
            f"Cannot resume {run_dir}: it has no {CONFIG_FILENAME}, so it is not a run folder "
            f"(or was stopped before training began). Start a new run without --resume."
        )
    saved = read_config_file(saved_path)
    parser.set_defaults(**saved)
    values = vars(parser.parse_args(argv))
    check_resume_overrides(saved, values, run_dir)
    values.update(resume=str(run_dir), run_name=run_dir.name)
    return TrainConfig(**values)


def _same_option(key: str, given: Any, saved: Any, run_dir: Path) -> bool:
    """Whether a value given again on resume is the run's own (paths compared resolved)."""
    if key == "run_name":
        return given in (saved, run_dir.name)
    if key == "weights" and {given, saved}.isdisjoint({"imagenet", "none"}):
        return resolve_project_path(given) == resolve_project_path(saved)
    return given == saved


def check_resume_overrides(saved: dict[str, Any], given: dict[str, Any], run_dir: Path) -> None:
    """Refuse options that the run's checkpoint cannot follow (FIXED_ON_RESUME). The saved
    values are the parser's defaults, so a value that differs was typed again."""
    for key in FIXED_ON_RESUME:
        if key in given and key in saved and not _same_option(key, given[key], saved[key], run_dir):
            flag = key.replace("_", "-")
            raise ConfigError(
                f"--{flag} {given[key]} differs from the run's own --{flag} {saved[key]}: "
                f"{run_dir} can only be resumed as it was started (options that may change on "
                f"resume: {', '.join('--' + k.replace('_', '-') for k in CHANGEABLE_ON_RESUME)})."
                f" Drop --{flag}, or start a new run without --resume."
            )

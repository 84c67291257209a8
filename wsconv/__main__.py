"""`python -m wsconv`: the prediction-time check on ImageNet images, then the training check.

With no arguments: both backbones with real weights on ../shared/data/imagenet-samples
(ResNet-18 only when its torchvision weights can be had), then 5 epochs on VOC of mode A,
the mode that survives training. `--train baseline A B` runs the full comparison. Options
not listed here are main_train.py options (--voc-root, --batch-size, ...) for the training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from datetime import datetime

import torch

from evaluation.tables import markdown_table
from training.backbones import (
    BACKBONES,
    WeightsRefusedError,
    WeightsUnavailableError,
    create_imagenet_network,
)
from training.config import build_parser as trainer_parser
from training.config import config_from_argv
from training.config_checks import FIELD_CHECKS, ConfigError
from training.runfolder import RunFolderError
from vocdata.atomic import atomic_write
from vocdata.errors import VocDataError, describe_error
from vocdata.options import add_device_option
from vocdata.paths import project_relative, resolve_project_path
from wsconv.imagenet_check import DEFAULT_IMAGENET_SAMPLES, format_check_table, prediction_check
from wsconv.layers import WS_EPS
from wsconv.train_check import (
    MIN_EPOCHS,
    VARIANTS,
    WORKING_MODE,
    explanation,
    map_per_epoch,
    train_variant,
)

log = logging.getLogger("wsconv")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsconv",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Training options (main_train.py): "
        + " ".join(
            a.option_strings[0]
            for a in trainer_parser()._actions
            if a.option_strings
            and a.option_strings[0] not in ("-h", "--epochs", "--arch", "--weights")
        ),
    )
    check = parser.add_argument_group("prediction-time check")
    check.add_argument(
        "--imagenet",
        default=DEFAULT_IMAGENET_SAMPLES,
        help="folder with labels.csv and images/ (relative to the project root)",
    )
    check.add_argument(
        "--backbones",
        nargs="+",
        default=list(BACKBONES),
        choices=list(BACKBONES),
        help="backbones to check (those without available weights are skipped)",
    )
    check.add_argument(
        "--resnet18-weights",
        default="imagenet",
        help="'imagenet' (torchvision download or cache) or a local state dict",
    )
    check.add_argument("--limit", type=int, default=None, help="use only the first N images")
    check.add_argument(
        "--float64",
        action="store_true",
        help="also compare in float64, to separate round-off from real error",
    )
    check.add_argument("--skip-check", action="store_true", help="skip the prediction check")
    train = parser.add_argument_group("training-time check")
    train.add_argument(
        "--train",
        nargs="*",
        default=[WORKING_MODE],
        choices=VARIANTS,
        help="what to train: 'A', 'B' (converted) and/or 'baseline' "
        "(unconverted); none to skip training",
    )
    train.add_argument("--epochs", type=int, default=5, help=f"epochs (at least {MIN_EPOCHS})")
    train.add_argument(
        "--arch",
        default="auto",
        choices=["auto", *BACKBONES],
        help="backbone to train: auto = resnet18 if its ImageNet weights are "
        "available, else efficientnet_lite0",
    )
    train.add_argument("--weights", default="imagenet", help="as main_train.py --weights")
    parser.add_argument(
        "--out", default=None, help="output folder (default runs/wsconv/<date>-<time>)"
    )
    add_device_option(parser)
    return parser


def _training_arch(arch: str, weights: str) -> str:
    if arch != "auto":
        return arch
    try:
        create_imagenet_network("resnet18", weights)
        return "resnet18"
    except WeightsRefusedError:  # a file that is there but not trusted is an error, not a skip
        raise
    except WeightsUnavailableError as error:
        log.warning("training check uses efficientnet_lite0: %s", error)
        return "efficientnet_lite0"


def _training_config(trainer_args: list[str], args: argparse.Namespace, arch: str):
    return config_from_argv(
        [
            *trainer_args,
            *("--epochs", str(args.epochs), "--arch", arch),
            *("--weights", args.weights, "--device", args.device),
            "--no-freeze-backbone",  # BatchNorm must train: that is where mode B breaks
        ]
    )


def check_options(args: argparse.Namespace, trainer_args: list[str]) -> None:
    """Every option, before any folder is made or any network is loaded (ConfigError)."""
    if args.train and args.epochs < MIN_EPOCHS:
        raise ConfigError(f"--epochs {args.epochs}: must be at least {MIN_EPOCHS}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: use at least 1 image, or leave it out")
    problem = FIELD_CHECKS["device"](args.device)
    if problem:
        raise ConfigError(f"--device {args.device!r}: {problem}")
    if args.train:  # the training options, with the arch decided later
        _training_config(trainer_args, args, "efficientnet_lite0")
    labels = resolve_project_path(args.imagenet) / "labels.csv"
    if not args.skip_check and not labels.is_file():
        raise ConfigError(
            f"--imagenet {args.imagenet!r}: {labels} not found; pass a folder holding "
            f"labels.csv (file, wnid, class_index, name) and images/, or --skip-check"
        )
    if args.out:
        problem = FIELD_CHECKS["runs_dir"](args.out)
        if problem:
            raise ConfigError(f"--out {args.out!r}: {problem}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, trainer_args = build_parser().parse_known_args(argv)
    try:
        check_options(args, trainer_args)
        return _main(args, trainer_args)
    except (ConfigError, VocDataError, WeightsUnavailableError, RunFolderError) as error:
        log.error("%s", error)
    except OSError as error:  # RunNotFoundError and FileNotFoundError carry their own message
        log.error("%s", describe_error(error))
    return 2


def _main(args: argparse.Namespace, trainer_args: list[str]) -> int:
    out = resolve_project_path(args.out or f"runs/wsconv/{datetime.now():%Y%m%d-%H%M%S}")
    device_name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if device_name == "auto" else device_name)
    summary: dict = {"ws_eps": WS_EPS, "variance": "biased (unbiased=False)"}
    markdown = ["# Weight-standardised convolutions folded into BatchNorm\n"]

    if not args.skip_check:
        backbones = {
            name: (args.resnet18_weights if name == "resnet18" else "imagenet")
            for name in args.backbones
        }
        dtypes = (torch.float32, torch.float64) if args.float64 else (torch.float32,)
        rows, skipped = prediction_check(
            backbones, resolve_project_path(args.imagenet), device, args.limit, dtypes
        )
        summary["prediction_check"] = [asdict(r) for r in rows]
        summary["prediction_check_skipped"] = skipped
        table = format_check_table(rows)
        print(table)
        markdown += ["## Prediction time (ImageNet samples)\n", table, ""]
        markdown += [f"- {arch}: skipped, {reason}" for arch, reason in skipped.items()]

    if args.train:
        config = _training_config(trainer_args, args, _training_arch(args.arch, args.weights))
        maps = {}
        for variant in args.train:
            run_dir = train_variant(config, variant, out / "runs")
            maps[variant] = map_per_epoch(run_dir)
            log.info("%s: val mAP per epoch %s", variant, maps[variant])
        summary["training_check"] = {
            "arch": config.arch,
            "epochs": config.epochs,
            "val_map_per_epoch": maps,
        }
        table = markdown_table(
            ["epoch", *maps],
            [
                [e + 1, *("n/a" if maps[v][e] is None else f"{maps[v][e]:.4f}" for v in maps)]
                for e in range(config.epochs)
            ],
        )
        print(table)
        markdown += [f"## Training time: validation mAP per epoch ({config.arch})\n", table, ""]
    markdown += ["## Which mode breaks in training, and why\n", explanation(), ""]
    with atomic_write(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    with atomic_write(out / "summary.md") as tmp:
        tmp.write_text("\n".join(markdown) + "\n")
    print(f"summary: {project_relative(out / 'summary.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

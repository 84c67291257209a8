"""Command-line options that several programs share, each spelled and explained once.

`main_train.py`, `main_gui.py`, `python -m evaluation`, `python -m training.bench`,
`python -m wsconv` and `python -m gui.bench` take some of the same options. Adding them here
keeps one name, one default, one help line and one way of saying "off" (`none`) for each.
This module sits on the ground floor (no torch, no other project package above `vocdata`),
so the light programs (GUI, evaluation) can use it too; facts owned higher up (the backbone
names) are passed in by the caller.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vocdata.paths import DEFAULT_RUNS_DIR
from vocdata.splits import DEFAULT_VOC_ROOT, VOC_ROOT_ENV

NONE_WORDS = ("", "none")  # how a user switches an optional folder off


def none_or_value(value: str | None) -> str | None:
    """None for an option value that means "off" ('none' or empty), else the value."""
    if value is None or value.strip().lower() in NONE_WORDS:
        return None
    return value


def add_voc_root_option(parser: argparse.ArgumentParser, *, of_run: bool = False) -> None:
    """`--voc-root`: the one dataset-root setting. `of_run`: for programs that read a run's
    predictions, whose default is the root that run used."""
    first = "the one the run used, else " if of_run else ""
    parser.add_argument(
        "--voc-root",
        default=None,
        help="dataset root: the folder holding ImageSets/ and JPEGImages/, which image names "
        f"are relative to; relative paths are taken from the project root. Default: {first}"
        f"${VOC_ROOT_ENV} if set, else {DEFAULT_VOC_ROOT}",
    )


def add_runs_dir_option(parser: argparse.ArgumentParser) -> None:
    """`--runs-dir`: where run folders and the `latest` pointer live."""
    parser.add_argument(
        "--runs-dir",
        default=DEFAULT_RUNS_DIR,
        help="where run folders and the 'latest' pointer go (relative to the project root)",
    )


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """`--device`: where the network runs."""
    parser.add_argument(
        "--device",
        default=default,
        help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'",
    )


def add_arch_option(parser: argparse.ArgumentParser, names: Sequence[str], default: str) -> None:
    """`--arch`, its choices given by the caller from training's backbone registry."""
    parser.add_argument(
        "--arch",
        choices=list(names),
        default=default,
        help="backbone (registry in training/backbones.py)",
    )


def add_cache_dir_option(parser: argparse.ArgumentParser, default: str | None = "cache") -> None:
    """`--cache-dir`: the one-time decoded-image cache; 'none' switches it off."""
    parser.add_argument(
        "--cache-dir",
        type=none_or_value,
        default=default,
        help="folder (relative to the project root) for a one-time cache of the images decoded "
        "and resized to the evaluation scale, reused by every later epoch and run and rebuilt "
        "when the images change; about 3 GB for full VOC 2012; 'none' to decode every time",
    )


def add_workers_option(parser: argparse.ArgumentParser, default: int = -1) -> None:
    """`--workers`: data-loading processes."""
    parser.add_argument(
        "--workers",
        type=int,
        default=default,
        help="data-loading processes (-1: one per core, at most 8; 0: load in the main process)",
    )


def add_amp_option(
    parser: argparse.ArgumentParser, choices: Sequence[str], default: str = "auto"
) -> None:
    """`--amp`, its choices given by the caller from training's runtime."""
    parser.add_argument(
        "--amp",
        choices=list(choices),
        default=default,
        help="mixed precision on CUDA: auto = bf16 where supported, else fp16 with loss "
        "scaling; always off on the CPU",
    )


def add_channels_last_option(parser: argparse.ArgumentParser, default: bool = True) -> None:
    """`--channels-last`: the memory layout of images and convolution weights."""
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="NHWC memory layout of images and weights (measured faster on CUDA and on the CPU)",
    )


def add_progress_option(parser: argparse.ArgumentParser, default: bool = True) -> None:
    """`--progress`: progress bars on long work."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="progress bars",
    )


def add_engine_option(
    parser: argparse.ArgumentParser, choices: Sequence[str], default: str = "auto"
) -> None:
    """`--engine`, its choices given by the caller from training's engine registry."""
    parser.add_argument(
        "--engine",
        choices=list(choices),
        default=default,
        help="what runs the forward-only passes (frozen features, scoring): auto = the fastest "
        "installed CPU engine on a CPU (OpenVINO, else ONNX Runtime; float32, checked against "
        "torch), torch on CUDA",
    )

"""`python -m predictions`: score any images with a saved model (or an ensemble) and write a
predictions file that the GUI and `python -m evaluation` open.

Thin on purpose: options, paths and messages here; the scoring itself (the trainer's own
preprocessing and prediction loop) is `training.scoring`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from predictions.ensemble import AVERAGING_RULES, DEFAULT_AVERAGING_RULE
from predictions.format import PredictionsFormatError, file_size_bound, save_predictions
from predictions.provenance import provenance_value
from predictions.runs import RunNotFoundError
from training.engine import ENGINE_CHOICES
from training.loop import TTA_MODES
from training.runtime import AMP_MODES
from training.scoring import TTA_AUTO
from vocdata.atomic import free_bytes, megabytes, why_not_writable
from vocdata.options import (
    add_amp_option,
    add_cache_dir_option,
    add_channels_last_option,
    add_device_option,
    add_engine_option,
    add_progress_option,
    add_runs_dir_option,
    add_workers_option,
)
from vocdata.paths import display_path, project_relative, resolve_project_path
from vocdata.splits import VOC_ROOT_ENV, resolve_voc_root

log = logging.getLogger("predictions")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictions",
        description="Score images with a trained model, or average several (an ensemble), and "
        "write a predictions file for `python main_gui.py --predictions FILE` and `python -m "
        "evaluation --predictions FILE`. With no arguments: the latest run's model on its own "
        "validation split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=["latest"],
        metavar="MODEL",
        help="run folder, its name under --runs-dir, a model_best.pt, or 'latest'; several "
        "make an ensemble whose scores are averaged with --average",
    )
    add_runs_dir_option(parser)
    parser.add_argument(
        "--export-onnx",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN",
        help="instead of scoring: write RUN (a run folder, its name or 'latest'; a k-fold run: "
        "its fold models averaged) as one standalone ONNX file (uint8 images in, the classes' "
        "sigmoid scores out, TTA and views inside, class names, preprocessing and provenance in "
        "its metadata), checked against torch on real images first; --out names the file "
        "(default <run>/model.onnx)",
    )
    data = parser.add_argument_group("what to score (a VOC-layout split, or --images)")
    data.add_argument(
        "--voc-root",
        default=None,
        help=f"VOC-layout dataset root (holding ImageSets/Main and JPEGImages). Default: the "
        f"root the (first) model was trained on if it exists here, else ${VOC_ROOT_ENV}, else "
        f"the default root",
    )
    data.add_argument(
        "--split",
        default=None,
        help="any split with files in ImageSets/Main: val, train, trainval, test, ... "
        "(default: val); labels are read as training reads them",
    )
    data.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="score every JPEG/PNG under DIR (recursively, sorted) instead; no labels. Other "
        "and unreadable files are skipped and listed",
    )
    data.add_argument(
        "--skip-bad-images",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="VOC split: leave out missing or corrupt images (listed) instead of stopping",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        default=None,
        help="predictions file to write (default: <run of the first model>/predictions/"
        "<dataset>-<split>.npz)",
    )
    output.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists already"
    )
    output.add_argument(
        "--average",
        choices=AVERAGING_RULES,
        default=DEFAULT_AVERAGING_RULE,
        help="how an ensemble's scores become one: the mean of the probabilities, or the "
        "sigmoid of the mean logit (recorded in the file)",
    )
    output.add_argument(
        "--tta",
        choices=[TTA_AUTO, *TTA_MODES],
        default=TTA_AUTO,
        help="test-time augmentation: 'hflip' averages the logits of each image and its mirror "
        "image; 'auto' uses what the model(s) were validated with (recorded in the file)",
    )
    machine = parser.add_argument_group("machine")
    add_device_option(machine)
    machine.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    add_workers_option(machine)
    add_amp_option(machine, AMP_MODES)
    add_engine_option(machine, ENGINE_CHOICES)
    add_cache_dir_option(machine)
    add_channels_last_option(machine)
    add_progress_option(machine)
    return parser


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "data"


def default_output(run_dir: Path, dataset_name: str, split: str) -> Path:
    """`<run>/predictions/<dataset>-<split>.npz`, e.g. runs/x/predictions/VOC2007-test.npz."""
    return run_dir / "predictions" / f"{_file_stem(dataset_name)}-{_file_stem(split)}.npz"


def _default_voc_root(stored: str | None) -> Path:
    """The model's own training root when it exists here, else the one dataset-root setting."""
    if stored and resolve_project_path(stored).is_dir():
        return resolve_project_path(stored)
    return resolve_voc_root()


def check_output_folder(out: Path) -> None:
    """Fail before any slow work when the folder of `out` cannot be written."""
    if reason := why_not_writable(out.parent):
        raise OutputError(
            f"Cannot write {display_path(out)}: {display_path(out.parent)} is not a writable "
            f"folder ({reason}). Pass --out with a file in a writable folder."
        )


def check_room(out: Path, needed: int) -> None:
    """Fail before the scoring pass when the disk holding `out` has less room than `needed`."""
    free = free_bytes(out.parent)
    if free is not None and free < needed:
        raise OutputError(
            f"Not enough space for {display_path(out)}: the predictions file needs up to "
            f"{megabytes(needed)}, {display_path(out.parent)} has {megabytes(free)} free. "
            f"Free some space, or pass --out with a file on another disk."
        )


class OutputError(ValueError):
    """The predictions file cannot be written where asked; the message names the path."""


def run(args: argparse.Namespace) -> Path:
    """Load, check, score, write; returns the file written. Errors are ScoringError & co."""
    from training.config import default_workers
    from training.runtime import pick_runtime
    from training.scoring import (
        ScoringError,
        check_same_classes,
        ensemble_home,
        image_folder_data,
        load_saved_model,
        resolve_model_paths,
        score,
        voc_split_data,
    )

    if args.images and (args.voc_root or args.split):
        raise ScoringError(
            "--images scores a plain folder; it cannot be combined with --voc-root or --split."
        )
    if args.batch_size < 1:
        raise ScoringError(f"--batch-size must be at least 1, got {args.batch_size}")
    workers = default_workers() if args.workers < 0 else args.workers
    try:
        runtime = pick_runtime(args.device, args.amp, args.channels_last)
    except RuntimeError as error:  # --device cuda without a GPU
        raise ScoringError(str(error)) from error
    paths = [path for spec in args.model for path in resolve_model_paths(spec, args.runs_dir)]
    if len(set(paths)) != len(paths):
        raise ScoringError("The same model is named twice in --model; name each model once.")
    from wsconv import model_hooks  # an entry point may: wsconv sits above training

    hooks = model_hooks()  # wsconv runs are rebuilt converted, as they were trained
    models = [load_saved_model(path, hooks) for path in paths]
    check_same_classes(models)

    if args.images:
        images_dir = resolve_project_path(args.images)
        dataset_name, split = images_dir.name, "images"
    else:
        voc_root = (
            resolve_project_path(args.voc_root)
            if args.voc_root
            else _default_voc_root(models[0].provenance.get("voc_root"))
        )
        dataset_name, split = voc_root.name, args.split or "val"
    out = (
        resolve_project_path(args.out)
        if args.out
        else default_output(ensemble_home(paths), dataset_name, split)
    )
    if out.exists() and not args.overwrite:  # said before any slow work
        raise ScoringError(
            f"{project_relative(out)} exists already. Pass --overwrite to replace it, or "
            f"--out with another file name."
        )
    check_output_folder(out)
    if args.images:
        data = image_folder_data(images_dir, workers)
    else:
        difficult = provenance_value(models[0].provenance, "difficult")
        data = voc_split_data(voc_root, split, difficult, args.skip_bad_images, workers)
    needed = file_size_bound(data.files, len(models[0].class_names), data.labels is not None)
    check_room(out, needed)
    log.info(
        "scoring %d image(s) of %s (%s) with %d model(s) on %s%s",
        len(data.files),
        project_relative(data.root),
        data.split,
        len(models),
        runtime.device,
        f", {args.average}" if len(models) > 1 else "",
    )
    result = score(
        models,
        data,
        runtime,
        batch_size=args.batch_size,
        workers=workers,
        rule=args.average,
        tta=args.tta,
        engine=args.engine,
        cache_dir=resolve_project_path(args.cache_dir) if args.cache_dir else None,
        progress=args.progress,
    )
    try:
        save_predictions(out, result.predictions)
    except OSError as error:  # a full disk, a folder removed meanwhile: nothing half-written
        free = free_bytes(out.parent) if out.parent.is_dir() else 0
        raise OutputError(
            f"Cannot write {display_path(out)} ({error.strerror or error}): the predictions "
            f"file needs up to {megabytes(needed)}, {megabytes(free or 0)} are free there. Free "
            f"some space, or pass --out with a file on another disk; nothing was written."
        ) from None
    log.info(
        "%d images in %.1f s: %.1f images/s on %s (batch %d, %d worker(s), %d model(s))",
        len(data.files),
        result.seconds,
        result.images_per_second,
        result.device,
        args.batch_size,
        workers,
        len(models),
    )
    return out


def export(args: argparse.Namespace) -> Path:
    """`--export-onnx RUN`: the run's model(s) as one checked ONNX file; returns it."""
    from training.export import export_onnx
    from training.scoring import ensemble_home, resolve_model_paths

    paths = resolve_model_paths(args.export_onnx, args.runs_dir)
    out = resolve_project_path(args.out) if args.out else ensemble_home(paths) / "model.onnx"
    if out.exists() and not args.overwrite:
        raise OutputError(
            f"{project_relative(out)} exists already. Pass --overwrite to replace it, or --out "
            f"with another file name."
        )
    check_output_folder(out)
    result = export_onnx(paths, out, tta=args.tta)
    log.info(
        "exported %d model(s) (TTA %s, views %s) in %.1f s, %.1f MB; checked against torch on "
        "%d %s images: max |score difference| %.2g",
        result.models,
        result.tta,
        "+".join(result.views),
        result.seconds,
        result.bytes / 1e6,
        result.checked_images,
        "real" if result.real_images else "generated",
        result.max_score_difference,
    )
    return result.path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from training.export import ExportError
    from training.scoring import ScoringError
    from vocdata.errors import VocDataError

    if args.export_onnx is not None:
        try:
            out = export(args)
        except (ExportError, ScoringError, RunNotFoundError, OutputError) as error:
            log.error("%s", error)
            return 2
        print(f"onnx: {project_relative(out)}")
        return 0
    try:
        out = run(args)
    except (
        ScoringError,
        VocDataError,
        RunNotFoundError,
        PredictionsFormatError,
        OutputError,
    ) as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: nothing was written")
        return 130
    relative = project_relative(out)
    print(f"predictions: {relative}")
    print(f"browse:   python main_gui.py --predictions {relative}")
    print(f"evaluate: python -m evaluation --predictions {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

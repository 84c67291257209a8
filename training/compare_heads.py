"""Side-by-side comparison of the heads of issue 11, with the real trainer.

    python -m training.compare_heads --voc-root DIR --arch efficientnet_lite0 --out cmp.json

Runs, one after another and each through `training.run` (the recipe of `main_train.py`):
zero-shot (`--epochs 0`, prior head), today's `random` head, `init`, `prior`, each fine-tuned
and with `--freeze-backbone`, and `prior --lp-ft`. Every run trains with `--tta none`; its best
model is then re-scored on the val split both without and with horizontal-flip averaging, so
TTA costs one prediction pass, not a second training. Prints one markdown table: mAP over
the classes with val positives, the mean over the classes with >= 20 train images, per-class
AP, wall time, and the classes more than 0.05 below their zero-shot AP; writes all of it to
`--out` as JSON.

On a CPU, `--epochs 1 --limit 64` (first 64 train and val images) smoke-tests it in minutes.
Options after `--` go to every run (e.g. `-- --batch-size 64`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from evaluation.metrics import UndefinedAPWarning, per_class_average_precision
from evaluation.tables import markdown_table
from predictions import PREDICTIONS_FILENAME, load_predictions
from predictions.runs import BEST_MODEL_FILENAME
from training import run
from training.checkpoint import load_model
from training.config import config_from_argv
from training.loop import predict
from training.runtime import Runtime
from vocdata.cache import open_or_build_cache
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import VocClassification
from vocdata.paths import resolve_project_path
from vocdata.splits import read_split, resolve_voc_root
from vocdata.transforms import eval_resize_size, eval_transform

log = logging.getLogger("compare_heads")

MIN_TRAIN_IMAGES = 20  # "classes with enough examples": >= this many train images
BELOW_ZERO_SHOT = 0.05  # a class this far below its zero-shot AP lost what ImageNet knew
ZERO_SHOT = "zero-shot (prior, --epochs 0)"

# name -> main_train.py options of the variant
VARIANTS: dict[str, list[str]] = {
    ZERO_SHOT: ["--head", "prior", "--epochs", "0"],
    "random (old default)": ["--head", "random", "--no-freeze-backbone"],
    "init": ["--head", "init", "--no-freeze-backbone"],
    "prior": ["--head", "prior", "--no-freeze-backbone"],
    "random, frozen backbone": ["--head", "random", "--freeze-backbone"],
    "init, frozen backbone": ["--head", "init", "--freeze-backbone"],
    "prior, frozen backbone": ["--head", "prior", "--freeze-backbone"],
    "prior, LP-FT": ["--head", "prior", "--lp-ft"],
}


def limited_voc_root(voc_root: Path, limit: int, folder: Path) -> Path:
    """A VOC tree in `folder` whose train and val splits are the first `limit` images of the
    real ones (image and annotation folders linked, not copied)."""
    root = folder / "VOC2012"
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for name in ("JPEGImages", "Annotations"):
        if (voc_root / name).exists():
            (root / name).symlink_to((voc_root / name).resolve())
    source = voc_root / "ImageSets" / "Main"
    for split in ("train", "val"):
        keep = sorted((source / f"{split}.txt").read_text().split())[:limit]
        (main / f"{split}.txt").write_text("\n".join(keep) + "\n")
        kept = set(keep)
        for class_name in VOC_CLASSES:
            lines = (source / f"{class_name}_{split}.txt").read_text().splitlines()
            lines = [line for line in lines if line.split() and line.split()[0] in kept]
            (main / f"{class_name}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def rescore(
    run_dir: Path, voc_root: Path, cache_dir: str | None, device: torch.device, workers: int
) -> dict[str, np.ndarray]:
    """Val sigmoid scores of the run's best model, without and with flip TTA."""
    model, saved = load_model(run_dir / BEST_MODEL_FILENAME)
    model.to(device)
    split = read_split(voc_root, "val")
    cache = None
    if cache_dir:
        cache = open_or_build_cache(
            resolve_project_path(cache_dir),
            "val",
            voc_root,
            split.relative_paths,
            eval_resize_size(saved["image_size"]),
            max(1, workers),
            progress=False,
        )
    difficult = saved["provenance"].get("difficult", "ignore")
    dataset = VocClassification(
        voc_root, split, difficult, eval_transform(saved["image_size"]), cache
    )
    loader = DataLoader(dataset, batch_size=128, num_workers=workers)
    scores = {}
    for tta in ("none", "hflip"):
        result = predict(model, loader, Runtime(device), progress=False, tta=tta)
        logits = np.empty_like(result.logits)
        logits[result.indices] = result.logits
        scores[tta] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return scores


def summarise(
    scores: np.ndarray, labels: np.ndarray, difficult: str, enough: np.ndarray
) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAPWarning)
        ap = per_class_average_precision(scores, labels, VOC_CLASSES, difficult)
    defined = ~np.isnan(ap)
    return {
        "map": float(np.mean(ap[defined])) if defined.any() else None,
        "map_classes": int(defined.sum()),
        "map_enough": float(np.mean(ap[defined & enough])) if (defined & enough).any() else None,
        "map_enough_classes": int((defined & enough).sum()),
        "ap": {
            n: (None if math.isnan(a) else float(a)) for n, a in zip(VOC_CLASSES, ap, strict=True)
        },
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def results_table(rows: list[dict[str, Any]]) -> str:
    """One markdown row per variant and TTA: the mAPs, wall time, losses and per-class AP."""
    header = ["variant", "TTA", "mAP", "mAP (>=20 train)", "wall s", "below zero-shot - 0.05"]
    return markdown_table(
        [*header, *(name[:5] for name in VOC_CLASSES)],
        [
            [
                row["variant"],
                row["tta"],
                _fmt(row["map"]),
                _fmt(row["map_enough"]),
                f"{row['wall_seconds']:.0f}",
                ", ".join(row["below_zero_shot"]) or "none",
                *(_fmt(row["ap"][name]) for name in VOC_CLASSES),
            ]
            for row in rows
        ],
    )


def compare(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    voc_root = resolve_voc_root(args.voc_root)
    work = Path(tempfile.mkdtemp(prefix="compare-heads-"))
    if args.limit:
        voc_root = limited_voc_root(voc_root, args.limit, work)
    runs_dir = args.runs_dir or str(work / "runs")
    common = [
        "--voc-root",
        str(voc_root),
        "--arch",
        args.arch,
        "--runs-dir",
        runs_dir,
        "--cache-dir",
        args.cache_dir,
        "--tta",
        "none",
        "--no-progress",
        "--no-download",
        "--device",
        args.device,
    ]
    if args.epochs is not None:
        common += ["--epochs", str(args.epochs)]
    if args.workers is not None:
        common += ["--workers", str(args.workers)]
    names = [name for name in VARIANTS if not args.only or name in args.only]
    rows, zero_shot_ap = [], None
    train_labels = read_split(voc_root, "train").labels
    enough = (train_labels == 1).sum(axis=0) >= MIN_TRAIN_IMAGES
    for name in names:
        argv = [*common, *extra, *VARIANTS[name]]  # the variant's own options win
        config = config_from_argv(argv)
        log.info("%s: main_train.py %s", name, " ".join(argv))
        started = time.perf_counter()
        run_dir = run(config)
        wall = time.perf_counter() - started
        preds = load_predictions(run_dir / PREDICTIONS_FILENAME)
        device = torch.device(
            "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
        )
        started = time.perf_counter()
        scored = rescore(run_dir, voc_root, config.cache_dir, device, config.workers)
        rescore_wall = time.perf_counter() - started
        for tta, scores in scored.items():
            row = {
                "variant": name,
                "tta": tta,
                "options": VARIANTS[name],
                "run": str(run_dir),
                "wall_seconds": wall,
                "rescore_seconds": rescore_wall,
                "best_epoch": preds.provenance.get("epoch"),
                **summarise(scores, preds.labels, config.difficult, enough),
            }
            if name == ZERO_SHOT and tta == "none":
                zero_shot_ap = row["ap"]
            row["below_zero_shot"] = [
                c
                for c in VOC_CLASSES
                if zero_shot_ap is not None
                and None not in (row["ap"][c], zero_shot_ap[c])
                and row["ap"][c] < zero_shot_ap[c] - BELOW_ZERO_SHOT
            ]
            rows.append(row)
    return {
        "arch": args.arch,
        "voc_root": str(voc_root),
        "limit": args.limit,
        "device": str(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
        "torch": torch.__version__,
        "classes_with_enough_train_images": [
            c for c, e in zip(VOC_CLASSES, enough, strict=True) if e
        ],
        "rows": rows,
        "table": results_table(rows),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m training.compare_heads",
        description="Train and score every head variant of issue 11 side by side.",
    )
    parser.add_argument("--voc-root", default=None, help="VOC root (as in main_train.py)")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--out", default="compare_heads.json", help="JSON file to write")
    parser.add_argument("--epochs", type=int, default=None, help="default: main_train's")
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="use only the first N train and val images (smoke tests)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--runs-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="a subset of variants")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = compare(args, extra)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

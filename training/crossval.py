"""`--folds k`: k-fold cross-validation on the train split, then the val split scored by the
average of the k fold models.

Choosing the epoch on the val split and then reporting the val mAP is optimistic: the val
images took part in a choice. Here every choice is made inside the train split: fold model j
trains on the other k-1 folds with the normal recipe (the same `TrainConfig`, so every option
applies to every fold model) and its epoch is chosen by mAP on fold j alone. The val split is
looked at once, at the end, by the ensemble. The folds' held-out mAPs give the
cross-validated estimate (mean ± std); the ensemble's val mAP is an honest test score.

Run folder:
    config.json  folds.json (which image each fold holds out)  train.log
    history.json       every fold's epochs, each record with "fold"
    val_predictions.npz  the ensemble's scores of the val split (provenance: see below)
    train_oof_predictions.npz  every train image scored by the fold model that held it out
    label_fixes.json   with --label-fixes: the fixes the folds' train labels carry
    crossval.json      the summary: per fold chosen epoch and held-out mAP, mean ± std, ...
    folds/<j>/         a normal run folder of fold model j: model_best.pt, checkpoint_last.pt,
                       history.json, heldout_predictions.npz (its held-out fold),
                       val_predictions.npz (the val split by this model alone), fold.json

Folds run one after another (under torchrun each one data-parallel); a stopped run resumes
at the fold and epoch where it stopped.

The out-of-fold file is assembled from the fold models' `heldout_predictions.npz` (each
written at that model's chosen epoch, with the run's TTA), in train-split order; `row_models`
in its provenance says which fold model scored each row. Those scores are slightly
optimistic: each fold model's epoch was chosen by mAP on the very fold it scores here (one
choice among `--epochs` candidates, made on these labels), though no model ever trained on
the images it scores.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.metrics import split_average_precision
from evaluation.tables import format_number
from predictions import (
    PREDICTIONS_FILENAME,
    Predictions,
    load_predictions,
    save_predictions,
    write_latest_pointer,
)
from predictions.ensemble import DEFAULT_AVERAGING_RULE, combine_scores
from predictions.runs import (
    BEST_MODEL_FILENAME,
    CROSSVAL_FILENAME,
    FOLD_SUMMARY_FILENAME,
    FOLDS_FILENAME,
    HELD_OUT_PREDICTIONS_FILENAME,
    HISTORY_FILENAME,
    LAST_CHECKPOINT_FILENAME,
    TRAIN_OOF_PREDICTIONS_FILENAME,
)
from training.checkpoint import ModelHook, load_trusted
from training.config import TrainConfig
from training.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from training.folds import Fold, FoldsError, assign_folds, load_folds, make_folds, save_folds
from training.hparams import ensemble_hparams
from training.labelfixes import fixes_for_run, write_run_copy
from training.records import finite_or_none, now_iso, positives_per_class
from training.runfolder import (
    RunLock,
    TrainingInterrupted,
    attach_log_file,
    create_run_dir,
    detach_log_file,
    write_config,
    write_history,
)
from training.selection import check_held_out_fold
from training.trainer import Trainer
from vocdata.atomic import remove_abandoned
from vocdata.classes import VOC_CLASSES
from vocdata.dataset import load_split_checked
from vocdata.download import ensure_voc_root
from vocdata.jsonio import JsonFileError, read_json, write_json
from vocdata.paths import project_relative, resolve_project_path
from vocdata.splits import VocSplit, read_split, resolve_voc_root

log = logging.getLogger("training.crossval")


@dataclass
class FoldResult:
    """What one finished fold model contributes (also its `fold.json`)."""

    fold: int
    epochs: int  # epochs trained
    chosen_epoch: int | None  # by held-out mAP only
    heldout_map: float | None
    heldout_map_classes: int
    heldout_images: int
    train_images: int
    val_map_alone: float | None  # this model alone on the val split: reported, never used
    model: str  # its model_best.pt, relative to the run folder


def cv_estimate(heldout_maps: list[float | None]) -> tuple[float, float]:
    """Mean and standard deviation (ddof=1: the spread between folds) of the held-out mAPs."""
    values = np.array([v for v in heldout_maps if v is not None], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return float(values.mean()), std


def _val_map(scores: np.ndarray, split: VocSplit, difficult: str) -> tuple[float | None, int]:
    """mAP of `scores` on `split` (the undefined classes were named when training started)."""
    mean = split_average_precision(scores, split.labels, VOC_CLASSES, difficult).mean
    return finite_or_none(mean.value), mean.num_classes


def _finished(fold: Fold, epochs: int) -> FoldResult | None:
    """The fold's result if it was trained to `epochs` and scored on val in an earlier session."""
    summary = fold.run_dir / FOLD_SUMMARY_FILENAME
    if not (summary.is_file() and (fold.run_dir / PREDICTIONS_FILENAME).is_file()):
        return None
    result = FoldResult(**read_json(summary, "a fold model's fold.json", dict))
    return result if result.epochs >= epochs else None


def _save_fold_val(trainer: Trainer, scores: np.ndarray) -> FoldResult:
    """Write the fold model's own val predictions and its `fold.json`."""
    fold, split = trainer.fold, trainer.data.test_split
    assert fold is not None and split is not None
    val_map, val_classes = _val_map(scores, split, trainer.config.difficult)
    provenance = dict(load_trusted(fold.run_dir / BEST_MODEL_FILENAME)["provenance"])
    provenance.update(
        split="val",
        val_map=val_map,
        val_map_classes=val_classes,
        val_images=len(split),
        selected_on=fold.label,
        created=now_iso(),
    )
    save_predictions(
        fold.run_dir / PREDICTIONS_FILENAME,
        Predictions(
            scores=scores,
            labels=split.labels,
            files=tuple(split.relative_paths),
            class_names=VOC_CLASSES,
            provenance=provenance,
        ),
    )
    result = FoldResult(
        fold=fold.number,
        epochs=trainer.state.epoch,
        chosen_epoch=trainer.state.best_epoch,
        heldout_map=provenance["heldout_map"],
        heldout_map_classes=provenance["heldout_map_classes"],
        heldout_images=len(fold.held_out_rows),
        train_images=len(fold.train_rows),
        val_map_alone=val_map,
        model=(fold.run_dir / BEST_MODEL_FILENAME)
        .relative_to(fold.run_dir.parent.parent)
        .as_posix(),
    )
    write_json(fold.run_dir / FOLD_SUMMARY_FILENAME, asdict(result))
    return result


def _write_combined_history(run_dir: Path, folds: list[Fold]) -> None:
    """`<run>/history.json`: every fold's epoch records in order, each marked with its fold."""
    combined = []
    for fold in folds:
        path = fold.run_dir / HISTORY_FILENAME
        if path.is_file():
            for record in read_json(path, "a fold model's history.json", list):
                combined.append({"fold": fold.number, "scored_on": fold.label, **record})
    write_history(run_dir, combined)


def _model_entries(folds: list[Fold], results: list[FoldResult]) -> list[dict[str, Any]]:
    """The provenance's `models`: each fold model's file (project-relative), fold and epoch."""
    return [
        {
            "path": project_relative(fold.run_dir / BEST_MODEL_FILENAME),
            "fold": fold.number,
            "epoch": result.chosen_epoch,
        }
        for fold, result in zip(folds, results, strict=True)
    ]


# What the run's files copy from the fold models' provenance (the same in every fold model).
SHARED_KEYS = (
    "arch",
    "weights",
    "model_variant",
    "difficult",
    "image_size",
    "head",
    "head_kind",
    "tta",
    "freeze_backbone",
    "lp_ft",
    "voc_root",
    "label_fixes",
)


def _write_ensemble(
    config: TrainConfig,
    run_dir: Path,
    folds: list[Fold],
    results: list[FoldResult],
    full_train: VocSplit,
    seconds: float,
) -> dict[str, Any]:
    """Average the fold models' own val predictions into the run's predictions file, and
    gather their held-out predictions into the out-of-fold file of the train split."""
    fold_predictions = [load_predictions(f.run_dir / PREDICTIONS_FILENAME) for f in folds]
    first = fold_predictions[0]
    scores = combine_scores([p.scores for p in fold_predictions], DEFAULT_AVERAGING_RULE)
    val_split = VocSplit("val", tuple(Path(f).stem for f in first.files), first.labels)
    val_map, val_classes = _val_map(scores, val_split, config.difficult)
    mean, std = cv_estimate([r.heldout_map for r in results])
    summary = {
        "folds": len(folds),
        "averaging_rule": DEFAULT_AVERAGING_RULE,
        "fold_models": [r.model for r in results],
        "fold_epochs": [r.chosen_epoch for r in results],
        "fold_heldout_map": [r.heldout_map for r in results],
        "fold_heldout_map_classes": [r.heldout_map_classes for r in results],
        "fold_val_map_alone": [r.val_map_alone for r in results],
        "cv_map_mean": finite_or_none(mean),
        "cv_map_std": finite_or_none(std),
        "ensemble_val_map": val_map,
        "ensemble_val_map_classes": val_classes,
    }
    provenance = {key: first.provenance[key] for key in SHARED_KEYS if key in first.provenance}
    provenance.update(
        summary,
        epoch=None,  # one per fold model: fold_epochs
        val_map=val_map,  # measured after every choice was made
        val_map_classes=val_classes,
        seed=config.seed,
        split="val",
        selected_on="each fold model's own held-out fold of the train split; never val",
        models=_model_entries(folds, results),  # every row scored by all of them
        train_images=len(full_train),
        val_images=len(val_split),
        train_positives=positives_per_class(full_train),
        run=project_relative(run_dir),
        created=now_iso(),
    )
    save_predictions(
        run_dir / PREDICTIONS_FILENAME,
        Predictions(scores, first.labels, first.files, first.class_names, provenance),
    )
    oof_path = write_out_of_fold(config, run_dir, folds, results, full_train, summary)
    log.info(
        "out-of-fold scores of the %d train images (each by the fold model that held it out): %s",
        len(full_train),
        project_relative(oof_path),
    )
    write_json(run_dir / CROSSVAL_FILENAME, {**summary, "wall_seconds_last_session": seconds})
    write_latest_pointer(config.runs_dir, run_dir)
    return summary


def out_of_fold_predictions(
    folds: list[Fold], results: list[FoldResult], full_train: VocSplit
) -> tuple[Predictions, list[dict[str, Any]]]:
    """Every train image's scores from the fold model that held it out, in train-split order:
    (the scores with the held-out files' labels and the first fold model's provenance, the
    fold models' provenance). Each held-out file must hold exactly its fold's rows."""
    count = len(full_train)
    scores = np.full((count, len(VOC_CLASSES)), np.nan, dtype=np.float32)
    labels = np.zeros((count, len(VOC_CLASSES)), dtype=np.int8)
    row_models = np.full(count, -1, dtype=np.int64)
    provenances = []
    for index, (fold, result) in enumerate(zip(folds, results, strict=True)):
        path = fold.run_dir / HELD_OUT_PREDICTIONS_FILENAME
        held_out = load_predictions(path)
        expected = [full_train.relative_paths[row] for row in fold.held_out_rows]
        if list(held_out.files) != expected or held_out.labels is None:
            raise FoldsError(
                f"{project_relative(path)} does not hold fold {fold.number}'s held-out images "
                f"in train-split order (folds.json): the run folder was changed; train the "
                f"fold again (delete folds/{fold.number}/) with --resume"
            )
        if held_out.provenance.get("epoch") != result.chosen_epoch:
            raise FoldsError(
                f"{project_relative(path)} is of epoch {held_out.provenance.get('epoch')}, not "
                f"the chosen epoch {result.chosen_epoch}: the run folder was changed; train "
                f"the fold again (delete folds/{fold.number}/) with --resume"
            )
        scores[fold.held_out_rows] = held_out.scores
        labels[fold.held_out_rows] = held_out.labels
        row_models[fold.held_out_rows] = index
        provenances.append(held_out.provenance)
    if (row_models < 0).any():
        missing = full_train.relative_paths[int(np.flatnonzero(row_models < 0)[0])]
        raise FoldsError(f"no fold holds out {missing}: folds.json does not cover the train split")
    if not np.array_equal(labels, full_train.labels):
        log.warning(
            "the held-out files' labels differ from today's train labels in %d place(s): the "
            "out-of-fold file keeps the labels the fold models were chosen with",
            int((labels != full_train.labels).sum()),
        )
    first = provenances[0]
    predictions = Predictions(
        scores, labels, tuple(full_train.relative_paths), VOC_CLASSES, dict(first)
    )
    predictions.provenance["row_models"] = row_models.tolist()
    return predictions, provenances


def write_out_of_fold(
    config: TrainConfig,
    run_dir: Path,
    folds: list[Fold],
    results: list[FoldResult],
    full_train: VocSplit,
    summary: dict[str, Any],
) -> Path:
    """`<run>/train_oof_predictions.npz`: see the module text."""
    assembled, provenances = out_of_fold_predictions(folds, results, full_train)
    tta = {p.get("tta") for p in provenances}
    if len(tta) != 1:
        raise FoldsError(f"the fold models' held-out scores use different TTA ({sorted(tta)})")
    first = provenances[0]
    provenance = {key: first[key] for key in SHARED_KEYS if key in first}
    provenance.update(
        split="train",
        out_of_fold=True,
        folds=len(folds),
        models=_model_entries(folds, results),
        row_models=assembled.provenance["row_models"],
        epoch=None,  # one per fold model: models[i]["epoch"]
        val_map=None,
        val_map_classes=None,
        seed=config.seed,
        selected_on="each fold model's epoch was chosen on the held-out fold it scores here "
        "(slightly optimistic; no model trained on the image it scores)",
        fold_epochs=summary["fold_epochs"],
        fold_heldout_map=summary["fold_heldout_map"],
        cv_map_mean=summary["cv_map_mean"],
        cv_map_std=summary["cv_map_std"],
        train_images=len(full_train),
        train_positives=positives_per_class(full_train),
        run=project_relative(run_dir),
        created=now_iso(),
    )
    path = run_dir / TRAIN_OOF_PREDICTIONS_FILENAME
    save_predictions(
        path,
        Predictions(assembled.scores, assembled.labels, assembled.files, VOC_CLASSES, provenance),
    )
    return path


def summary_line(summary: dict[str, Any], seconds: float, resumed: bool = False) -> str:
    """One line for the console: the CV estimate, the ensemble's val mAP and the wall time."""

    fmt = format_number
    folds = ", ".join(fmt(v) for v in summary["fold_heldout_map"])
    return (
        f"{summary['folds']}-fold CV on train: held-out mAP {fmt(summary['cv_map_mean'])} ± "
        f"{fmt(summary['cv_map_std'])} (folds {folds}; epochs {summary['fold_epochs']}) | "
        f"ensemble of {summary['folds']} on val: mAP {fmt(summary['ensemble_val_map'])} over "
        f"{summary['ensemble_val_map_classes']} classes | wall time {seconds:.1f} s"
        + (" (this session)" if resumed else "")
    )


def _prepare_run(
    config: TrainConfig, context: DistContext
) -> tuple[Path, VocSplit, np.ndarray, RunLock | None]:
    """The run folder (locked by the main process), the train split (its label fixes
    applied) and its fold assignment: drawn and saved for a new run, read back (and checked)
    when resuming. Nothing is created before the inputs, the label fixes among them, are
    checked."""
    lock = None
    if config.resume and context.is_main:  # before anything is read: refused at once if busy
        lock = RunLock(resolve_project_path(config.resume)).acquire()
    try:
        run_dir, full_train, assignment, created = _prepare_folder(config, context)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run_dir, full_train, assignment, lock or created


def draw_folds(train: VocSplit, config: TrainConfig, folds: int) -> np.ndarray:
    """The fold of every train image (1..folds), stratified and drawn from --seed, each held-out
    fold checked to have a counted positive (else no epoch could be chosen on it). The train
    split's labels are the ones the fold models train with (label fixes applied)."""
    targets, _ = train.targets_and_mask(config.difficult)
    assignment = assign_folds(targets, folds, config.seed)
    for number in range(1, folds + 1):
        check_held_out_fold(
            train.labels[assignment == number], config.difficult, number, folds, len(train)
        )
    return assignment


def _prepare_folder(
    config: TrainConfig, context: DistContext
) -> tuple[Path, VocSplit, np.ndarray, RunLock | None]:
    voc_root = resolve_voc_root(config.voc_root)
    if context.is_main:
        ensure_voc_root(voc_root, download=config.download)
    barrier(context)
    full_train = load_split_checked(
        voc_root, "train", config.skip_bad_images, max(1, config.workers)
    )
    val_ids = read_split(voc_root, "val").image_ids  # a fix naming one of these is refused
    if config.resume:
        run_dir = resolve_project_path(config.resume)
        started = (run_dir / FOLDS_FILENAME).is_file()
        fixes = fixes_for_run(
            config.label_fixes, config.label_fix_mode, full_train, val_ids, run_dir, started
        )
        if fixes is not None:
            full_train = fixes.apply(full_train)
        assignment = load_folds(run_dir / FOLDS_FILENAME, full_train, config.folds)
        if context.is_main:  # with the options given again (e.g. a larger --epochs)
            remove_abandoned(run_dir)  # temporaries of a session that was killed
            write_config(run_dir, config)
            write_run_copy(run_dir, fixes)
        barrier(context)
        return run_dir, full_train, assignment, None
    fixes = fixes_for_run(config.label_fixes, config.label_fix_mode, full_train, val_ids)
    if fixes is not None:  # the folds are drawn on the labels the fold models train with
        full_train = fixes.apply(full_train)
    assignment = draw_folds(full_train, config, config.folds)
    smallest = len(full_train) - int(np.bincount(assignment).max())
    if smallest < config.batch_size * context.world_size:
        raise FoldsError(
            f"with --folds {config.folds} a fold model trains on as few as {smallest} images, "
            f"fewer than one batch of {config.batch_size} x {context.world_size} process(es): "
            f"lower --batch-size or --folds."
        )
    created, lock = create_run_dir(config) if context.is_main else (None, None)
    run_dir = Path(broadcast_object(str(created) if created else None, context))
    if context.is_main:
        # create_run_dir wrote config.json and the last-started pointer (--resume latest);
        # the fixes' copy comes before folds.json, which marks a run that has started
        write_run_copy(run_dir, fixes)
        save_folds(run_dir / FOLDS_FILENAME, full_train, assignment, config.seed, config.difficult)
    barrier(context)
    return run_dir, full_train, assignment, lock


def run_cross_validation(
    config: TrainConfig, model_hook: ModelHook | None = None, model_variant: str = "plain"
) -> Path:
    """Train (or resume) the k fold models, then write the ensemble; return the run folder."""
    started = time.perf_counter()
    context = init_distributed(use_cuda=config.device != "cpu" and torch.cuda.is_available())
    handler = lock = None
    try:
        run_dir, full_train, assignment, lock = _prepare_run(config, context)
        if context.is_main:
            handler = attach_log_file(run_dir)
            log.info(
                "%d-fold cross-validation in %s; the val split is scored only by the final "
                "ensemble",
                config.folds,
                project_relative(run_dir),
            )
        folds = make_folds(assignment, run_dir)
        try:
            results = _train_folds(config, folds, context, model_hook, model_variant)
        except KeyboardInterrupt as error:  # name the k-fold run, not the fold, to resume
            raise TrainingInterrupted(run_dir, _epochs_done(run_dir)) from error
        if results is None or not context.is_main:
            barrier(context)
            return run_dir
        seconds = time.perf_counter() - started
        summary = _write_ensemble(config, run_dir, folds, results, full_train, seconds)
        ensemble_hparams(run_dir, config, summary)
        print(summary_line(summary, seconds, resumed=bool(config.resume)), flush=True)
        barrier(context)
        return run_dir
    finally:
        detach_log_file(handler)
        if lock is not None:
            lock.release()
        shutdown_distributed(context)


def _train_folds(
    config: TrainConfig,
    folds: list[Fold],
    context: DistContext,
    model_hook: ModelHook | None,
    model_variant: str,
) -> list[FoldResult] | None:
    """Train and score every unfinished fold in order; None if `--stop-after` stopped it."""
    run_dir = folds[0].run_dir.parent.parent
    session_left = config.stop_after  # epochs this session may still train (None: no limit)
    results: list[FoldResult] = []
    for fold in folds:
        done = broadcast_object(
            _finished(fold, config.epochs) if context.is_main else None, context
        )
        if done is not None:
            results.append(done)
            continue
        if session_left is not None and session_left <= 0:
            return _stopped(fold, run_dir)
        resumable = broadcast_object((fold.run_dir / LAST_CHECKPOINT_FILENAME).is_file(), context)
        fold_config = replace(
            config, resume=str(fold.run_dir) if resumable else None, stop_after=session_left
        )
        log.info("fold %d of %d%s", fold.number, fold.count, " (resumed)" if resumable else "")
        trainer = Trainer(fold_config, model_hook, model_variant, fold=fold)
        epochs_before = trainer.state.epoch
        trainer.fit()
        if context.is_main:
            _write_combined_history(run_dir, folds)
        if session_left is not None:
            session_left -= trainer.state.epoch - epochs_before
        if trainer.state.epoch < config.epochs:
            return _stopped(fold, run_dir)
        if not (fold.run_dir / BEST_MODEL_FILENAME).is_file():
            raise FoldsError(
                f"fold {fold.number} saved no model: no epoch had a defined held-out mAP"
            )
        scores = trainer.score_test_split()
        result = _save_fold_val(trainer, scores) if context.is_main else None
        results.append(broadcast_object(result, context))
        del trainer  # its loader workers end before the next fold starts its own
        gc.collect()
    return results


def _epochs_done(run_dir: Path) -> int:
    """Epochs finished over all folds so far (from the combined history; 0 if none yet)."""
    try:
        return len(read_json(run_dir / HISTORY_FILENAME, "a run's history.json", list))
    except JsonFileError:
        return 0


def _stopped(fold: Fold, run_dir: Path) -> None:
    log.info(
        "stopped in fold %d of %d as asked; continue with --resume %s",
        fold.number,
        fold.count,
        project_relative(run_dir),
    )

"""What a sweep writes for people and programs: `sweep.md` (the grid of every trial, the
chosen one, the final run on val), `sweep.json` and `sweep.png` (the CV estimate per trial).

Everything is rebuilt from the study (the SQLite file) and the final run's folder, so the
report of a resumed sweep covers every session.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluation.compare_table import GridRow, MetricColumn, comparison_table
from evaluation.tables import markdown_table
from predictions import PREDICTIONS_FILENAME, load_predictions
from predictions.runs import HISTORY_FILENAME
from training.config import TrainConfig
from vocdata.atomic import atomic_write
from vocdata.jsonio import JsonFileError, read_json
from vocdata.paths import project_relative

REPORT_FILENAME = "sweep.md"
JSON_FILENAME = "sweep.json"
FIGURE_FILENAME = "sweep.png"
MIN_TRAIN_IMAGES = 20  # "classes with enough examples", as in the comparison grid
GRID_COLUMNS = (
    MetricColumn("cv_map_mean", "CV mAP ± std (last epoch)", "higher", spread_key="cv_map_std"),
    MetricColumn(
        "cv_best_epoch_mean",
        "CV mAP ± std (each fold's best epoch)",
        "higher",
        spread_key="cv_best_epoch_std",
    ),
)

GRID_KEYS = ("cv_map_mean", "cv_map_std", "cv_best_epoch_mean", "cv_best_epoch_std")


@dataclass(frozen=True)
class SweepDescription:
    """What the report says about the sweep itself."""

    folds: int
    searched: dict[str, dict[str, Any]]  # option -> its range (Searched as a dict)
    ranges: dict[str, str]  # option -> its range in words
    base: TrainConfig
    command: list[str]


@dataclass
class FinalRun:
    """The chosen options trained on all of train, scored on val (read from its run folder)."""

    run: str  # project-relative
    epochs: int
    best_epoch: int | None
    val_map: float | None  # at the best epoch: what main_train.py reports (chosen on val)
    val_map_classes: int | None
    val_map_frequent: float | None  # same epoch, classes with >= 20 positive train images
    last_epoch_val_map: float | None  # at the last epoch: nothing chosen on val
    last_epoch_val_map_frequent: float | None
    frequent_classes: int
    seconds: float | None = None  # this session's training (None: trained in an earlier one)


def _frequent_mean(val_ap: Mapping[str, Any], positives: Mapping[str, int]) -> float | None:
    values = [
        float(ap)
        for name, ap in val_ap.items()
        if isinstance(ap, int | float) and positives.get(name, 0) >= MIN_TRAIN_IMAGES
    ]
    return sum(values) / len(values) if values else None


def read_final_run(run_dir: Path, epochs: int) -> FinalRun | None:
    """The final run's results if it trained its `epochs` and wrote its predictions; else
    None (not started, or stopped before its end)."""
    predictions_path = run_dir / PREDICTIONS_FILENAME
    if not (predictions_path.is_file() and (run_dir / HISTORY_FILENAME).is_file()):
        return None
    try:
        history = read_json(run_dir / HISTORY_FILENAME, "a run's history.json", list)
    except JsonFileError:
        return None
    trained = [r for r in history if isinstance(r, dict) and isinstance(r.get("epoch"), int)]
    if not trained or trained[-1]["epoch"] < max(epochs, 0):
        return None
    provenance = load_predictions(predictions_path).provenance
    positives = provenance.get("train_positives") or {}
    best_epoch = provenance.get("epoch")
    best = next((r for r in trained if r["epoch"] == best_epoch), trained[-1])
    last = trained[-1]
    return FinalRun(
        run=project_relative(run_dir),
        epochs=last["epoch"],
        best_epoch=best_epoch,
        val_map=provenance.get("val_map"),
        val_map_classes=provenance.get("val_map_classes"),
        val_map_frequent=_frequent_mean(best.get("val_ap", {}), positives),
        last_epoch_val_map=last.get("val_map"),
        last_epoch_val_map_frequent=_frequent_mean(last.get("val_ap", {}), positives),
        frequent_classes=sum(1 for n in positives.values() if n >= MIN_TRAIN_IMAGES),
    )


def trial_records(study) -> list[dict[str, Any]]:
    """Every trial of the study, in order, as sweep.json states it."""
    records = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        records.append(
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "params": dict(trial.params),
                "cv_map_mean": trial.value,  # the objective: each fold at its last epoch
                "cv_map_std": attrs.get("cv_map_std"),
                "fold_last_map": attrs.get("fold_last_map"),
                "cv_best_epoch_mean": attrs.get("cv_best_epoch_mean"),
                "cv_best_epoch_std": attrs.get("cv_best_epoch_std"),
                "fold_heldout_map": attrs.get("fold_heldout_map"),
                "fold_epochs": attrs.get("fold_epochs"),
                "seconds": attrs.get("seconds"),
                "error": attrs.get("error"),
                "started": trial.datetime_start.isoformat(timespec="seconds")
                if trial.datetime_start
                else None,
            }
        )
    return records


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _timing(sessions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Seconds over every session: feature passes (or cache reads), trials, the final run."""

    def total(key: str) -> float:
        return sum(float(s.get(key) or 0.0) for s in sessions if isinstance(s, Mapping))

    return {
        "sessions": len(sessions),
        "feature_seconds": total("feature_seconds"),
        "trials_seconds": total("trials_seconds"),
        "final_seconds": total("final_seconds"),
        "sessions_seconds": total("seconds"),
    }


def _markdown(
    setup: SweepDescription,
    trials: list[dict[str, Any]],
    chosen: dict[str, Any] | None,
    final: FinalRun | None,
    timing: dict[str, Any],
    sweep_name: str,
) -> str:
    complete = [t for t in trials if t["state"] == "complete"]
    failed = [t for t in trials if t["state"] != "complete"]
    lines = [
        f"# Sweep {sweep_name}",
        "",
        f"Objective: the {setup.folds}-fold CV estimate on the train split at the last "
        f"epoch (mean held-out mAP of {setup.folds} fold models, each after all its epochs), "
        f"the way the final model trained on all of train is used: it has no held-out part "
        f"to choose an epoch on. Beside it, each fold model at the epoch it chose on its own "
        f"held-out fold: the number `main_train.py --folds {setup.folds}` reports, optimistic "
        f"for a recipe that peaks early and then over-fits. Val labels are read only by the "
        f"final run, after the choice. {len(complete)} finished trial(s)"
        + (f", {len(failed)} failed or interrupted" if failed else "")
        + ".",
        "",
        "Command: `python -m training.sweep " + " ".join(setup.command) + "`",
        "",
        "## Searched",
        "",
        markdown_table(
            ["option", "range", "base recipe"],
            [[name, text, str(getattr(setup.base, name))] for name, text in setup.ranges.items()],
        ),
        "",
        "## Trials",
        "",
    ]
    if complete:
        rows = [
            GridRow(
                f"trial {t['number']}" + (" (chosen)" if t is chosen else ""),
                t["params"],
                {key: t[key] for key in GRID_KEYS},
            )
            for t in complete
        ]
        lines += [comparison_table(rows, GRID_COLUMNS, name_title="trial").markdown(), ""]
        lines += [f"![CV estimate per trial]({FIGURE_FILENAME})", ""]
    else:
        lines += ["No trial finished yet.", ""]
    if failed:
        lines += [
            "Not finished: "
            + "; ".join(f"trial {t['number']} ({t['error'] or t['state']})" for t in failed)
            + ".",
            "",
        ]
    lines += ["## The chosen options on all of train, scored on val", ""]
    if final is None:
        lines += [
            "Not trained yet (the sweep was stopped, or run with --no-final): "
            "`python -m training.sweep --resume` trains it.",
            "",
        ]
    else:
        lines += [
            markdown_table(
                [
                    "run",
                    "epochs",
                    "val mAP at its last epoch",
                    f"≥{MIN_TRAIN_IMAGES} train",
                    "val mAP at its best epoch",
                    f"≥{MIN_TRAIN_IMAGES} train",
                    "best epoch",
                ],
                [
                    [
                        f"`{final.run}`",
                        final.epochs,
                        _fmt(final.last_epoch_val_map),
                        _fmt(final.last_epoch_val_map_frequent),
                        _fmt(final.val_map),
                        _fmt(final.val_map_frequent),
                        _fmt(final.best_epoch),
                    ]
                ],
            ),
            "",
            f"The last epoch's val mAP is the honest test score: the number of epochs was "
            f"chosen by cross-validation, nothing on val. The best epoch's is what "
            f"`main_train.py` reports for any single run (its epoch is chosen on val), for "
            f"comparison with other runs. '≥{MIN_TRAIN_IMAGES} train': the mean over the "
            f"{final.frequent_classes} classes with at least {MIN_TRAIN_IMAGES} positive train "
            f"images. mAP over {final.val_map_classes} classes (those with a val positive).",
            "",
        ]
    lines += [
        "## Time",
        "",
        f"Feature pass (or cache read) {timing['feature_seconds']:.1f} s, trials "
        f"{timing['trials_seconds']:.1f} s"
        + (f", final run {timing['final_seconds']:.1f} s" if timing["final_seconds"] else "")
        + f" ({timing['sessions']} session(s)).",
        "",
    ]
    return "\n".join(lines)


def _figure(path: Path, complete: list[dict[str, Any]], chosen: dict[str, Any] | None) -> None:
    """CV estimate ± std per trial, the best so far as a step line, the chosen trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    numbers = [t["number"] for t in complete]
    means = [t["cv_map_mean"] for t in complete]
    stds = [t["cv_map_std"] or 0.0 for t in complete]
    best_so_far, best = [], -math.inf
    for mean in means:
        best = max(best, mean)
        best_so_far.append(best)
    figure, axes = plt.subplots(figsize=(7, 3.6), layout="constrained")
    axes.errorbar(
        numbers,
        means,
        yerr=stds,
        fmt="o",
        color="tab:blue",
        ecolor="lightsteelblue",
        markersize=4,
        label="trial (± std over folds)",
    )
    axes.step(numbers, best_so_far, where="post", color="tab:gray", label="best so far")
    if chosen is not None:
        axes.plot(
            [chosen["number"]],
            [chosen["cv_map_mean"]],
            "*",
            color="tab:red",
            markersize=14,
            label=f"chosen: trial {chosen['number']}",
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel("CV mAP (train split)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def write_report(sweep_dir: Path, setup: SweepDescription, study, final: FinalRun | None) -> Path:
    """Write sweep.json, sweep.md and sweep.png; returns sweep.md."""
    trials = trial_records(study)
    complete = [t for t in trials if t["state"] == "complete"]
    chosen = None
    if complete:  # Optuna's best trial: the one the final run trains (the first of a tie)
        chosen = next(t for t in complete if t["number"] == study.best_trial.number)
    timing = _timing(study.user_attrs.get("sessions", []))
    data = {
        "sweep": project_relative(sweep_dir),
        "objective": f"{setup.folds}-fold CV estimate on the train split, each fold model at "
        f"its last epoch (cv_map_mean; cv_best_epoch_mean: each at its best held-out epoch)",
        "folds": setup.folds,
        "seed": setup.base.seed,
        "search": setup.searched,
        "base_config": json.loads(setup.base.to_json()),
        "command": setup.command,
        "trials": trials,
        "chosen_trial": None if chosen is None else chosen["number"],
        "chosen_params": None if chosen is None else chosen["params"],
        "final": None if final is None else asdict(final),
        "timing": timing,
    }
    with atomic_write(sweep_dir / JSON_FILENAME) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    if complete:
        _figure(sweep_dir / FIGURE_FILENAME, complete, chosen)
    text = _markdown(setup, trials, chosen, final, timing, sweep_dir.name)
    with atomic_write(sweep_dir / REPORT_FILENAME) as tmp:
        tmp.write_text(text + "\n")
    return sweep_dir / REPORT_FILENAME

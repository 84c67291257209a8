"""`python -m training.sweep`: choose hyper-parameters by K-fold cross-validation on the train
split, never by the val split, then train the chosen recipe once and score val once.

    python -m training.sweep --trials 30 --folds 5 -- --arch efficientnet_lite0
    python -m training.sweep --resume runs/sweeps/20261130-141500 --trials 40

Options after `--` are `main_train.py`'s and fix the base recipe; each trial changes the
searched options (`--search`, default SEARCH_DEFAULT) and is scored by its CV estimate: the mean
held-out mAP of K fold models on the train split, each at its last epoch — as the final model,
trained on all of train with nothing held out to choose an epoch on, will be used. (The number
`main_train.py --folds K` reports, each fold at the epoch it chose on its held-out part, is
recorded beside it.)
With the default frozen backbone it is computed on cached features (`training.featurecv`): one
feature pass, then a trial costs seconds. Optuna's TPE sampler (seeded by `--seed`) proposes the
trials; the study lives in an SQLite file in the sweep folder, so `--resume` continues it
without repeating a finished trial. At the end the best trial's options train one model on all
of train through the normal trainer (a run folder under `--runs-dir`), and val is scored: the
first time the sweep reads a val label.

The sweep folder holds `sweep-options.json` (what `--resume` restores), `study.db`, `sweep.log`,
and the report: `sweep.md` (the grid of all trials, the chosen one, the final run), `sweep.json`
and `sweep.png`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from predictions.runs import (
    CROSSVAL_FILENAME,
    FOLDS_DIRNAME,
    HISTORY_FILENAME,
    RunNotFoundError,
)
from training.backbones import WeightsUnavailableError
from training.config import TrainConfig
from training.config_checks import ConfigError
from training.featurecv import CVResult, TrainFeatures, cross_validate, prepare
from training.folds import FoldsError
from training.runfolder import RunFolderError
from training.seed import derive_seed
from training.sweep_report import FinalRun, read_final_run, write_report
from training.sweep_setup import (
    DEFAULT_TRIALS,
    SEARCH_SPACE,
    STUDY_FILENAME,
    SweepError,
    SweepSetup,
    build_parser,
    setup_sweep,
)
from vocdata.errors import VocDataError, describe_error
from vocdata.jsonio import JsonFileError, read_json
from vocdata.paths import display_path, project_relative, resolve_project_path

log = logging.getLogger("training.sweep")

SWEEP_LOG_FILENAME = "sweep.log"
STUDY_NAME = "sweep"
MAX_FAILED_IN_A_ROW = 5  # then the options cannot work (e.g. a fold without positives)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: the finished trials are kept; the message says how to go on."""

    def __init__(self, sweep_dir: Path, finished: int) -> None:
        super().__init__(str(sweep_dir))
        self.sweep_dir, self.finished = sweep_dir, finished

    def message(self) -> str:
        folder = display_path(self.sweep_dir)
        return (
            f"interrupted: sweep folder {folder} keeps its {self.finished} finished trial(s); "
            f"continue it with `python -m training.sweep --resume {folder}` (the trial that "
            f"was running starts again as a new trial)"
        )


# -- the study -------------------------------------------------------------------------------------


def open_study(sweep_dir: Path, seed: int):
    """The sweep's Optuna study (created on the first call). Its TPE sampler is seeded from
    --seed and the number of trials already there, so a resumed sweep draws new points
    instead of replaying the first session's."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(sweep_dir / STUDY_FILENAME).resolve()}"
    try:
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True
        )
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # A session killed mid-trial left it running; it is never finished now.
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    except Exception as error:  # sqlalchemy/optuna storage errors: the file is not a study
        raise SweepError(
            f"cannot open the study {display_path(sweep_dir / STUDY_FILENAME)} ({error}); "
            f"restore it, or start a new sweep"
        ) from error
    study.sampler = optuna.samplers.TPESampler(seed=derive_seed(seed, len(study.trials)) % 2**32)
    return study


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _record(trial, result: CVResult) -> None:
    trial.set_user_attr("cv_map_std", result.last_std)
    trial.set_user_attr("fold_last_map", result.fold_last_map)
    trial.set_user_attr("cv_best_epoch_mean", result.cv_map_mean)
    trial.set_user_attr("cv_best_epoch_std", result.cv_map_std)
    trial.set_user_attr("fold_heldout_map", result.fold_heldout_map)
    trial.set_user_attr("fold_epochs", result.fold_epochs)
    trial.set_user_attr("seconds", result.seconds)


def fine_tune_trial(sweep_dir: Path, config: TrainConfig, folds: int, number: int) -> CVResult:
    """A trial of a fine-tuning sweep: a real `main_train.py --folds K` run under `trials/`
    (its fold models also score val, as every k-fold run does; the sweep reads only the
    run's CV estimate from its crossval.json)."""
    from training import run

    started = time.perf_counter()
    run_dir = run(
        replace(
            config,
            folds=folds,
            runs_dir=str(sweep_dir / "trials"),
            run_name=f"trial-{number}",
            progress=False,
        )
    )
    summary = read_json(run_dir / CROSSVAL_FILENAME, "a k-fold run's crossval.json", dict)
    last = []
    for number in range(1, folds + 1):  # each fold model's held-out mAP at its last epoch
        history = run_dir / FOLDS_DIRNAME / str(number) / HISTORY_FILENAME
        records = read_json(history, "a fold model's history.json", list)
        last.append(records[-1]["val_map"] if records else None)
    return CVResult(
        fold_heldout_map=list(summary["fold_heldout_map"]),
        fold_epochs=list(summary["fold_epochs"]),
        cv_map_mean=summary["cv_map_mean"],
        cv_map_std=summary["cv_map_std"],
        seconds=time.perf_counter() - started,
        fold_last_map=last,
    )


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in params.items()
    )


def run_trials(
    sweep_dir: Path,
    setup: SweepSetup,
    study,
    target: int | None,
    timeout: float | None,
    progress: bool,
    session: dict[str, Any],
) -> None:
    """Run trials until the study has `target` finished ones (None: no limit) or `timeout`
    seconds have passed; `session` gets the seconds of the feature pass and of the trials."""
    from optuna.trial import TrialState

    done = len(finished_trials(study))
    session.update(feature_seconds=0.0, trials_seconds=0.0)
    if target is not None and done >= target:
        return
    shared: TrainFeatures | None = None
    if setup.base.freeze_backbone:  # else each trial is a real k-fold run (--fine-tune)
        log.info(
            "train split features for %d-fold CV (computed once, or read from the cache)",
            setup.folds,
        )
        shared = prepare(setup.base, setup.folds)
        session["feature_seconds"] = shared.seconds
        log.info("features of %d train images ready in %.1f s", len(shared.split), shared.seconds)
    started = time.perf_counter()
    failed_in_a_row = 0
    total = None if target is None else target - done
    bar = tqdm(total=total, desc="trials", unit="trial", disable=not progress)
    with bar, logging_redirect_tqdm():
        while (target is None or done < target) and (
            timeout is None or time.perf_counter() - started < timeout
        ):
            trial = study.ask()
            params = {name: SEARCH_SPACE[name].suggest(trial, name) for name in setup.search}
            try:
                config = replace(setup.base, **params)
                if shared is not None:
                    result = cross_validate(shared, config)
                else:
                    result = fine_tune_trial(sweep_dir, config, setup.folds, trial.number)
                if result.last_mean is None:
                    raise FoldsError(
                        "a fold model has no defined held-out mAP at its last epoch (no "
                        "positive in its held-out images): use fewer folds"
                    )
            except KeyboardInterrupt:
                trial.set_user_attr("error", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
                raise
            except (FoldsError, ConfigError) as error:
                trial.set_user_attr("error", str(error))
                study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d failed: %s", trial.number, error)
                failed_in_a_row += 1
                if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    raise SweepError(
                        f"{failed_in_a_row} trials in a row failed, the last with: {error}"
                    ) from error
                continue
            finally:
                session["trials_seconds"] = time.perf_counter() - started
            failed_in_a_row = 0
            _record(trial, result)
            # The objective: each fold model at its last epoch, as the final run will be
            # used. A fold's best epoch is chosen on its held-out part, which the final run on
            # all of train does not have: scored that way, a recipe that peaks early and then
            # over-fits looks better than the final model it gives.
            study.tell(trial, result.last_mean)
            done += 1
            bar.update(1)
            best = study.best_trial
            bar.set_postfix(best=f"{best.value:.4f} (trial {best.number})")
            log.info(
                "trial %d: CV mAP %.4f ± %.4f at the last epoch (%.4f at each fold's best) "
                "(%s) in %.1f s",
                trial.number,
                result.last_mean,
                result.last_std if result.last_std is not None else math.nan,
                result.cv_map_mean,
                _describe(params),
                result.seconds,
            )


# -- the end: the chosen options on all of train, val scored once ---------------------------


def final_run(setup: SweepSetup, sweep_dir: Path, study, train: bool = True) -> FinalRun | None:
    """The best trial's options trained on all of train (a normal run folder, resumed if an
    earlier session started it) and what it measured on val; with `train` False only what
    an earlier session finished (None if none did, or no trial finished)."""
    from training import run

    if not finished_trials(study):
        return None
    best = study.best_trial
    name = f"{sweep_dir.name}-sweep-trial-{best.number}"
    run_dir = resolve_project_path(setup.base.runs_dir) / name
    config = replace(setup.base, **best.params, folds=1, run_name=name, resume=None)
    finished = read_final_run(run_dir, config.epochs)
    if finished is not None or not train:
        return finished
    if run_dir.is_dir():  # started by an earlier session, stopped before its end
        config = replace(config, resume=str(run_dir))
    log.info(
        "training trial %d's options on all of train (%s); val is scored now, once",
        best.number,
        project_relative(run_dir),
    )
    started = time.perf_counter()
    run(config)
    result = read_final_run(run_dir, config.epochs)
    if result is None:
        raise SweepError(f"the final run {display_path(run_dir)} did not finish its epochs")
    result.seconds = time.perf_counter() - started
    return result


def _add_session(study, session: dict[str, Any], started: float) -> None:
    """Keep this session's timing in the study (the report adds up every session's)."""
    session["seconds"] = time.perf_counter() - started
    study.set_user_attr("sessions", [*study.user_attrs.get("sessions", []), session])


def sweep(argv: Sequence[str]) -> Path:
    """The whole command; returns the sweep folder."""
    argv = command = list(argv)
    base_argv: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, base_argv = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if args.trials is not None and args.trials < 1:
        raise SweepError(f"--trials {args.trials}: must be at least 1")
    if args.timeout is not None and not args.timeout > 0:
        raise SweepError(f"--timeout {args.timeout}: must be a number of seconds > 0")
    sweep_dir, setup = setup_sweep(args, base_argv, command)
    progress = setup.base.progress if args.progress is None else args.progress
    target = args.trials if args.trials is not None or args.timeout else DEFAULT_TRIALS
    handler = logging.FileHandler(sweep_dir / SWEEP_LOG_FILENAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        study = open_study(sweep_dir, setup.base.seed)
        log.info(
            "sweep %s: %d finished trial(s) so far; searching %s by %d-fold CV on train",
            project_relative(sweep_dir),
            len(finished_trials(study)),
            ", ".join(setup.search),
            setup.folds,
        )
        session: dict[str, Any] = {"started": datetime.now().isoformat(timespec="seconds")}
        started = time.perf_counter()
        try:
            run_trials(sweep_dir, setup, study, target, args.timeout, progress, session)
            final = final_run(setup, sweep_dir, study, train=args.final)
            if final is not None and final.seconds is not None:
                session["final_seconds"] = final.seconds
        except KeyboardInterrupt as error:
            _add_session(study, session, started)
            write_report(sweep_dir, setup.description(), study, None)
            raise SweepInterrupted(sweep_dir, len(finished_trials(study))) from error
        _add_session(study, session, started)
        written = write_report(sweep_dir, setup.description(), study, final)
        log.info("sweep report: %s", display_path(written))
        return sweep_dir
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


USER_ERRORS = (
    SweepError,
    ConfigError,
    VocDataError,
    WeightsUnavailableError,
    RunNotFoundError,
    RunFolderError,
    JsonFileError,
    OSError,
)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sweep_dir = sweep(sys.argv[1:] if argv is None else argv)
    except USER_ERRORS as error:
        log.error("%s", describe_error(error))
        return 2
    except SweepInterrupted as stop:
        log.error("%s", stop.message())
        return 130
    except KeyboardInterrupt:
        log.error("interrupted before the sweep folder was made: nothing was written")
        return 130
    print(f"sweep folder: {sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a sweep is: its command-line options, the searched ranges, its folder, and the
`sweep-options.json` that `python -m training.sweep --resume` restores. Checked before any
data is read or any folder made."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from training.config import TrainConfig, config_from_argv
from training.config_checks import ConfigError
from training.featurecv import TRIAL_OPTIONS
from training.sweep_report import SweepDescription
from vocdata.atomic import atomic_write
from vocdata.jsonio import read_json
from vocdata.paths import display_path, resolve_project_path

OPTIONS_FILENAME = "sweep-options.json"
STUDY_FILENAME = "study.db"
SWEEPS_DIRNAME = "sweeps"  # default sweep folders: <runs-dir>/sweeps/<date>-<time>/
DEFAULT_TRIALS = 20  # when neither --trials nor --timeout is given
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class Searched:
    """One searched option: a float or int range (log-uniform if `log`) or a list of choices."""

    kind: str  # "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()

    def suggest(self, trial, name: str) -> Any:
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> str:
        if self.kind == "choice":
            return ", ".join(self.choices)
        scale = "log-uniform" if self.log else "uniform"
        return f"{self.low:g} to {self.high:g} ({scale}{', whole numbers' * (self.kind == 'int')})"


# Ranges around the default recipe (frozen backbone, prior head; README "Training recipe").
SEARCH_SPACE: dict[str, Searched] = {
    "lr_head": Searched("float", 1e-4, 3e-2, log=True),
    "weight_decay": Searched("float", 1e-6, 1e-1, log=True),
    "epochs": Searched("int", 3, 40),
    "warmup_epochs": Searched("float", 0.0, 3.0),
    "residual_shrink": Searched("float", 1.0, 300.0, log=True),
    "tta": Searched("choice", choices=("none", "hflip")),
    "optimizer": Searched("choice", choices=("adamw", "sgd")),
    "lr_backbone": Searched("float", 1e-5, 1e-3, log=True),  # fine-tuning only
}
SEARCH_DEFAULT = ("lr_head", "weight_decay", "epochs", "warmup_epochs", "residual_shrink", "tta")
assert set(SEARCH_SPACE) <= set(TRIAL_OPTIONS)


class SweepError(RuntimeError):
    """A sweep that cannot start or continue; the message says what to do."""


# -- the sweep's options ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.sweep",
        description="Search hyper-parameters by K-fold cross-validation on the train split "
        "(Optuna TPE), then train the chosen recipe on all of train and score val once. "
        "Options after `--` are main_train.py's and fix everything that is not searched.",
        epilog="Example: python -m training.sweep --trials 30 -- --arch efficientnet_lite0. "
        "The sweep folder's sweep.md has the grid of every trial; see the README.",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help=f"finished trials the sweep should have (a resumed sweep counts those it has); "
        f"default {DEFAULT_TRIALS}, or no limit with --timeout",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new trial after this many seconds of trials (this session)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help=f"the CV estimate's folds, drawn from --seed as `main_train.py --folds K` draws "
        f"them (default {DEFAULT_FOLDS})",
    )
    parser.add_argument(
        "--search",
        nargs="+",
        choices=list(SEARCH_SPACE),
        default=None,
        metavar="OPTION",
        help="the options to search (default: "
        + " ".join(SEARCH_DEFAULT)
        + "), over these ranges: "
        + "; ".join(f"{name} {space.describe()}" for name, space in SEARCH_SPACE.items()),
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="FOLDER",
        help="the new sweep's folder (default <runs-dir>/sweeps/<date>-<time>)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="SWEEP_FOLDER",
        help="continue a sweep: its saved options and study are used; --trials, --timeout, "
        "--final and --progress may be given again",
    )
    parser.add_argument(
        "--final",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="at the end, train the chosen options on all of train and score val once "
        "(default; --no-final stops after the trials)",
    )
    parser.add_argument(
        "--fine-tune",
        action="store_true",
        help="allow a base recipe that trains the backbone (--no-freeze-backbone, --lp-ft, "
        "--weights none): each trial is then a real `main_train.py --folds K` run, K backbone "
        "trainings per trial, instead of seconds on cached features",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: the base recipe's --progress)",
    )
    return parser


@dataclass
class SweepSetup:
    """What a sweep is, saved in `sweep-options.json` when it starts and restored by --resume."""

    folds: int
    search: list[str]
    fine_tune: bool
    base: TrainConfig
    command: list[str]  # the first session's arguments, for the report

    def description(self) -> SweepDescription:
        return SweepDescription(
            folds=self.folds,
            searched={name: asdict(SEARCH_SPACE[name]) for name in self.search},
            ranges={name: SEARCH_SPACE[name].describe() for name in self.search},
            base=self.base,
            command=self.command,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "folds": self.folds,
                "search": self.search,
                "fine_tune": self.fine_tune,
                "command": self.command,
                "base_config": json.loads(self.base.to_json()),
            },
            indent=2,
        )

    @classmethod
    def read(cls, sweep_dir: Path) -> SweepSetup:
        path = sweep_dir / OPTIONS_FILENAME
        if not path.is_file():
            raise SweepError(
                f"{display_path(sweep_dir)} is not a sweep folder (no {OPTIONS_FILENAME}); name "
                f"the folder `python -m training.sweep` created, or start a new sweep"
            )
        data = read_json(path, "a sweep's options", dict)
        try:
            known = {f.name for f in fields(TrainConfig)}
            base = TrainConfig(**{k: v for k, v in data["base_config"].items() if k in known})
            setup = cls(
                int(data["folds"]),
                [str(name) for name in data["search"]],
                bool(data["fine_tune"]),
                base,
                [str(word) for word in data.get("command", [])],
            )
        except ConfigError:
            raise  # a saved option that no longer works here (a weights file gone): said as such
        except (KeyError, TypeError, ValueError) as error:
            raise SweepError(
                f"{display_path(path)} is damaged ({error}); restore it, or start a new sweep"
            ) from error
        unknown = [name for name in setup.search if name not in SEARCH_SPACE]
        if unknown:
            raise SweepError(f"{display_path(path)} searches unknown options {unknown}")
        return setup


def _check_base(base: TrainConfig, search: Sequence[str], fine_tune: bool, folds: int) -> None:
    if base.resume:
        raise SweepError(
            "--resume after `--` would continue a training run; continue a sweep with "
            "`python -m training.sweep --resume SWEEP_FOLDER`"
        )
    if base.folds != 1:
        raise SweepError(
            f"--folds {base.folds} after `--`: the sweep's own --folds sets the CV estimate's "
            f"folds, and the chosen options train one model on all of train; drop it there"
        )
    if folds < 2:
        raise SweepError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if not base.freeze_backbone and not fine_tune:
        raise SweepError(
            "the base recipe trains the backbone (--no-freeze-backbone, --lp-ft or --weights "
            "none): every trial would then train the backbone K times, minutes to hours per "
            "trial instead of seconds on cached features. Sweep the default frozen recipe, or "
            "pass --fine-tune to accept the cost"
        )
    if base.freeze_backbone and "lr_backbone" in search:
        raise SweepError("--search lr_backbone: the backbone is frozen, its learning rate unused")
    if len(set(search)) != len(search):
        raise SweepError(f"--search names an option twice: {' '.join(search)}")


def _new_sweep_dir(out: str | None, runs_dir: str) -> Path:
    if out is not None:
        sweep_dir = resolve_project_path(out)
        if sweep_dir.exists() and (not sweep_dir.is_dir() or any(sweep_dir.iterdir())):
            raise SweepError(
                f"--out {display_path(sweep_dir)} exists and is not an empty folder; name a new "
                f"one, or continue a sweep there with --resume"
            )
    else:
        base = resolve_project_path(runs_dir) / SWEEPS_DIRNAME / f"{datetime.now():%Y%m%d-%H%M%S}"
        sweep_dir, suffix = base, 1
        while sweep_dir.exists():
            suffix += 1
            sweep_dir = base.with_name(f"{base.name}-{suffix}")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SweepError(
            f"cannot create the sweep folder {display_path(sweep_dir)} "
            f"({error.strerror or error}); choose a writable --out or --runs-dir"
        ) from error
    return sweep_dir


def setup_sweep(args: argparse.Namespace, base_argv: list[str], argv: list[str]):
    """(sweep folder, setup): a new sweep's, created and saved, or a resumed one's, read back."""
    if args.resume is not None:
        given = [
            flag
            for flag, value in (
                ("--folds", args.folds),
                ("--search", args.search),
                ("--out", args.out),
                ("--fine-tune", args.fine_tune or None),
                ("options after --", base_argv or None),
            )
            if value is not None
        ]
        if given:
            raise SweepError(
                f"{', '.join(given)} cannot change a resumed sweep (its trials were scored with "
                f"its saved options); drop them, or start a new sweep"
            )
        sweep_dir = resolve_project_path(args.resume)
        if not sweep_dir.is_dir():
            raise SweepError(f"--resume {args.resume}: no such folder")
        if not (sweep_dir / STUDY_FILENAME).is_file():
            raise SweepError(
                f"{display_path(sweep_dir)} has no {STUDY_FILENAME}: nothing to resume"
            )
        return sweep_dir, SweepSetup.read(sweep_dir)
    base = config_from_argv(base_argv)
    folds = DEFAULT_FOLDS if args.folds is None else args.folds
    search = list(args.search or SEARCH_DEFAULT)
    if args.search is None and not base.freeze_backbone:
        search.append("lr_backbone")
    _check_base(base, search, args.fine_tune, folds)
    sweep_dir = _new_sweep_dir(args.out, base.runs_dir)
    setup = SweepSetup(folds, search, args.fine_tune, base, argv)
    with atomic_write(sweep_dir / OPTIONS_FILENAME) as tmp:
        tmp.write_text(setup.to_json() + "\n")
    return sweep_dir, setup

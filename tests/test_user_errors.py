"""Every bad input a user can type, per command line: exit code 2, one message naming the
problem and the fix, no traceback, nothing half-written.

Each table runs in-process (`main(argv)`, fast: torch is imported once), and a few cases of
each command also run as a real subprocess, as a user would start them. Write failures are
made real for root too (which ignores chmod): a regular file stands where a folder belongs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import main_train
from evaluation.__main__ import main as evaluation_main
from tests.conftest import errors_of, save_zero_row_predictions, snapshot
from tests.test_evaluation import make_run
from tests.voc_fixture import TinyVoc, tiny_run_args
from training.config import TrainConfig
from vocdata import read_split
from vocdata.paths import PROJECT_ROOT
from wsconv.__main__ import main as wsconv_main


@dataclass
class Case:
    """One bad input: the arguments (built from the tree and a scratch folder), an optional
    set-up that breaks something on disk, and words the message must contain."""

    name: str
    args: Callable[[Path, Path], list[str]]
    expected: tuple[str, ...]
    setup: Callable[[Path, Path], None] | None = None
    extra_checks: list[Callable[[Path, Path], None]] = field(default_factory=list)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# -- main_train.py -------------------------------------------------------------------------------


def _fresh_tree(template: TinyVoc, scratch: Path) -> Path:
    root = scratch / "VOCdevkit" / "VOC2012"
    shutil.copytree(template.root, root)
    return root


def _old_run(scratch: Path, **options) -> Path:
    """A run folder as main_train.py leaves it at the start (config.json only)."""
    run_dir = scratch / "runs" / "old"
    run_dir.mkdir(parents=True)
    config = TrainConfig(
        voc_root=str(scratch / "VOCdevkit" / "VOC2012"),
        runs_dir=str(scratch / "runs"),
        weights="none",
        image_size=32,
        batch_size=8,
        workers=0,
        **options,
    )
    (run_dir / "config.json").write_text(config.to_json() + "\n")
    return run_dir


def _write(relative: str, content: bytes) -> Callable[[Path, Path], None]:
    def setup(root: Path, scratch: Path) -> None:
        del root
        (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
        (scratch / relative).write_bytes(content)

    return setup


def _save_weights(make: Callable[[], object], cut: bool = False) -> Callable[[Path, Path], None]:
    def setup(root: Path, scratch: Path) -> None:
        del root
        torch.save(make(), scratch / "weights.pth")
        if cut:
            data = (scratch / "weights.pth").read_bytes()
            (scratch / "weights.pth").write_bytes(data[: len(data) // 2])

    return setup


def _split_edit(edit: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def setup(root: Path, scratch: Path) -> None:
        del scratch
        edit(root / "ImageSets" / "Main")

    return setup


def _leak(main: Path) -> None:
    first_train = (main / "train.txt").read_text().split()[0]
    with open(main / "val.txt", "a") as handle:
        handle.write(f"{first_train}\n")
    for class_file in main.glob("*_val.txt"):
        with open(class_file, "a") as handle:
            handle.write(f"{first_train} -1\n")


def _duplicate(main: Path) -> None:
    lines = (main / "train.txt").read_text().splitlines()
    (main / "train.txt").write_text("\n".join([*lines, lines[2]]) + "\n")


def _empty_root(root: Path, scratch: Path) -> None:
    del scratch
    shutil.rmtree(root)
    root.mkdir()


def _resume_args(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda root, scratch: ["--resume", "old", "--runs-dir", str(scratch / "runs"), *extra]


def _tiny(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda root, scratch: tiny_run_args(root, scratch / "runs", *extra)


NO_CUDA = not torch.cuda.is_available()

TRAIN_CASES = [
    Case("lr nan", _tiny("--lr-head", "nan"), ("--lr-head nan", "finite number >= 0")),
    Case("negative lr", _tiny("--lr-backbone", "-1"), ("--lr-backbone -1.0", ">= 0")),
    Case("negative decay", _tiny("--weight-decay", "-0.5"), ("--weight-decay", ">= 0")),
    Case("negative warm-up", _tiny("--warmup-epochs", "-1"), ("--warmup-epochs", ">= 0")),
    Case("workers", _tiny("--workers", "-3"), ("--workers -3", ">= -1")),
    Case("epochs", _tiny("--epochs", "-1"), ("--epochs -1", ">= 0")),
    Case("stop after 0", _tiny("--stop-after", "0"), ("--stop-after 0", ">= 1")),
    Case("batch 0", _tiny("--batch-size", "0"), ("--batch-size 0", ">= 1")),
    Case("image size 0", _tiny("--image-size", "0"), ("--image-size 0", ">= 32")),
    Case("device gpu", _tiny("--device", "gpu"), ("--device 'gpu'", "'cpu', 'cuda' or 'cuda:N'")),
    Case("seed", _tiny("--seed", "-1"), ("--seed -1", "0 to 2**32")),
    Case("run name", _tiny("--run-name", "a/b"), ("--run-name 'a/b'", "plain folder name")),
    Case(
        "weights missing",
        lambda root, scratch: _tiny("--weights", str(scratch / "absent.pth"))(root, scratch),
        ("--weights", "no such file", "'imagenet' or 'none'"),
    ),
    Case(
        "weights folder",
        lambda root, scratch: _tiny("--weights", str(scratch))(root, scratch),
        ("--weights", "is a folder"),
    ),
    Case(
        "weights text file",
        lambda root, scratch: _tiny("--weights", str(scratch / "weights.pth"))(root, scratch),
        ("weights.pth is not a readable PyTorch weights file", "--weights none"),
        setup=_write("weights.pth", b"resnet18 weights, honest\n"),
    ),
    Case(
        "weights truncated",
        lambda root, scratch: _tiny("--weights", str(scratch / "weights.pth"))(root, scratch),
        ("weights.pth is not a readable PyTorch weights file", "copy it again"),
        setup=_save_weights(lambda: torchvision.models.resnet18().state_dict(), cut=True),
    ),
    Case(
        "weights whole model",
        lambda root, scratch: _tiny("--weights", str(scratch / "weights.pth"))(root, scratch),
        ("pickled Python objects", "torch.save(model.state_dict(), PATH)"),
        setup=_save_weights(torchvision.models.resnet18),
    ),
    Case(
        "resnet34 weights into resnet18",
        lambda root, scratch: _tiny("--weights", str(scratch / "weights.pth"))(root, scratch),
        ("80 tensors this network does not have", "layer1.2.conv1.weight", "--arch"),
        setup=_save_weights(lambda: torchvision.models.resnet34().state_dict()),
    ),
    Case(
        "runs dir is a file",
        lambda root, scratch: tiny_run_args(root, scratch / "runs-file"),
        ("--runs-dir", "is a file, not a folder", "choose another folder"),
        setup=_write("runs-file", b"not a folder"),
    ),
    Case(
        "train/val leakage",
        _tiny(),
        ("1 image id(s) are listed in both", "train.txt", "val.txt", "remove them"),
        setup=_split_edit(_leak),
    ),
    Case(
        "duplicate id",
        _tiny(),
        ("train.txt:", "is listed again (first on line 3)", "remove one"),
        setup=_split_edit(_duplicate),
    ),
    Case(
        "empty root",
        _tiny(),
        ("exists but is empty", "--voc-root"),
        setup=_empty_root,
    ),
    Case(
        "resume unknown run",
        lambda root, scratch: ["--resume", "nosuchrun", "--runs-dir", str(scratch / "runs")],
        ("'nosuchrun'", "as a run name in", "--runs-dir"),
    ),
    Case(
        "resume broken config.json",
        _resume_args(),
        ("old/config.json", "restore that file"),
        setup=lambda root, scratch: (_old_run(scratch) / "config.json").write_text("{ half"),
    ),
    Case(
        "resume with another arch",
        _resume_args("--arch", "efficientnet_lite0"),
        ("--arch efficientnet_lite0 differs from the run's own --arch resnet18", "Drop --arch"),
        setup=lambda root, scratch: _old_run(scratch),
    ),
    Case(
        "resume a folder that is no run",
        _resume_args(),
        ("has no config.json", "not a run folder"),
        setup=lambda root, scratch: (scratch / "runs" / "old").mkdir(parents=True),
    ),
    Case(
        "resume where a folder is a file",
        _resume_args(),
        ("Cannot resume", "tensorboard is a file, not a folder"),
        setup=lambda root, scratch: (_old_run(scratch) / "tensorboard").write_text("x"),
    ),
]
if NO_CUDA:
    TRAIN_CASES += [
        Case("device cuda", _tiny("--device", "cuda"), ("no CUDA GPU", "--device cpu")),
        Case("device cuda:1", _tiny("--device", "cuda:1"), ("no CUDA GPU", "--device cpu")),
    ]
if os.geteuid() != 0:  # root writes anyway; the tensorboard-file case above stands in for it

    def _read_only(root: Path, scratch: Path) -> None:
        del root
        _old_run(scratch).chmod(0o555)

    TRAIN_CASES.append(
        Case("resume read-only", _resume_args(), ("not writable", "chmod"), setup=_read_only)
    )


def test_main_train_refuses_bad_input(_tiny_voc_template, tmp_path, caplog):
    failures = []
    for number, case in enumerate(TRAIN_CASES):
        scratch = tmp_path / f"case{number}"
        root = _fresh_tree(_tiny_voc_template, scratch)
        if case.setup:
            case.setup(root, scratch)
        before = snapshot(scratch / "runs")
        caplog.clear()
        code = main_train.main(case.args(root, scratch))
        message = errors_of(caplog)
        missing = [words for words in case.expected if words not in message]
        if code != 2 or missing:
            failures.append(f"{case.name}: exit {code}, missing {missing} in {message!r}")
        if snapshot(scratch / "runs") != before:
            failures.append(f"{case.name}: the runs folder changed")
        if len(message.splitlines()) != 1:
            failures.append(f"{case.name}: not one line: {message!r}")
    assert not failures, "\n".join(failures)


def test_main_train_subprocess_bad_input_leaves_nothing(tiny_voc, tmp_path):
    """As a user runs it: the message on stderr, exit code 2, no traceback, no run folder."""
    runs = tmp_path / "runs"
    result = run_cli("main_train.py", *tiny_run_args(tiny_voc.root, runs, "--image-size", "0"))
    assert result.returncode == 2 and "--image-size 0" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_a_bom_in_split_files_is_read_as_text(tiny_voc):
    main = tiny_voc.root / "ImageSets" / "Main"
    for name in ("train.txt", "aeroplane_train.txt"):
        (main / name).write_bytes(b"\xef\xbb\xbf" + (main / name).read_bytes())
    assert list(read_split(tiny_voc.root, "train").image_ids) == tiny_voc.ids["train"]


# -- python -m evaluation ------------------------------------------------------------------------


def _zero_rows(run_dir: Path) -> None:
    save_zero_row_predictions(run_dir / "val_predictions.npz")


def _random_bytes(run_dir: Path) -> None:
    (run_dir / "val_predictions.npz").write_bytes(np.random.default_rng(0).bytes(4096))


EVALUATION_CASES = [
    # (name, extra arguments, set-up of the run folder, words in the message)
    ("zero rows", [], _zero_rows, ("holds no images (0 rows)", "nothing to evaluate")),
    ("random bytes", [], _random_bytes, ("is not a predictions file", "main_train.py")),
    (
        "broken config.json",
        [],
        lambda run: (run / "config.json").write_text("{ half"),
        ("config.json is not the file a run writes there", "not valid JSON", "restore it"),
    ),
    (
        "report folder blocked by a file",
        [],
        lambda run: (run / "report").write_text("a file where the report folder goes"),
        ("Cannot write the report into", "pass --out"),
    ),
    ("unknown class", ["--classes", "unicorn"], None, ("unknown class 'unicorn'", "known:")),
]


@pytest.mark.parametrize(
    ("option", "expected"),
    [(["--k", "0"], "--k: must be at least 1"), (["--thresholds", "3"], "from 10 to 20")],
)
def test_evaluation_number_options_are_usage_errors(option, expected, capsys):
    """Out-of-range counts are refused by the parser itself: exit 2 before any file is read."""
    with pytest.raises(SystemExit) as exited:
        evaluation_main(["--run", "nosuchrun", *option])
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_evaluation_refuses_bad_input(tiny_voc, tmp_path, caplog):
    val = read_split(tiny_voc.root, "val")
    failures = []
    for number, (name, extra, setup, expected) in enumerate(EVALUATION_CASES):
        run_dir = tmp_path / f"case{number}" / "run"
        make_run(run_dir, val)
        if setup:
            setup(run_dir)
        before = snapshot(run_dir)
        caplog.clear()
        code = evaluation_main(["--run", str(run_dir), *extra])
        message = errors_of(caplog)
        missing = [words for words in expected if words not in message]
        if code != 2 or missing:
            failures.append(f"{name}: exit {code}, missing {missing} in {message!r}")
        if snapshot(run_dir) != before:
            failures.append(f"{name}: the run folder changed")
        if "allow_pickle" in message:
            failures.append(f"{name}: suggests allow_pickle")
    runs = tmp_path / "runs"
    caplog.clear()
    assert evaluation_main(["--run", "nosuchrun", "--runs-dir", str(runs)]) == 2
    assert f"as a run name in {runs}" in errors_of(caplog)
    assert not failures, "\n".join(failures)


def test_evaluation_report_of_another_file_goes_beside_it(tiny_voc, tmp_path):
    """`--predictions other.npz` never replaces the latest run's report (as a subprocess)."""
    val = read_split(tiny_voc.root, "val")
    runs = tmp_path / "runs"
    make_run(runs / "latest-run", val)
    (runs / "latest").write_text("latest-run\n")
    (runs / "latest-run" / "report").mkdir()
    (runs / "latest-run" / "report" / "report.md").write_text("the latest run's own report\n")
    before = snapshot(runs / "latest-run")
    other = tmp_path / "elsewhere"
    make_run(other, val, seed=1, history=False)
    (other / "val_predictions.npz").rename(other / "other.npz")

    command = (
        "-m", "evaluation", "--runs-dir", str(runs), "--predictions", str(other / "other.npz"),
        "--voc-root", str(tiny_voc.root), "--k", "2",
    )  # fmt: skip
    # The file names no run that exists here: its report would borrow some other run's
    # curves and options, so the command asks which run made it.
    result = run_cli(*command)
    assert result.returncode == 2 and "pass --run" in result.stderr
    assert "Traceback" not in result.stderr and not (other / "other-report").exists()
    result = run_cli(*command, "--run", "latest")
    assert result.returncode == 0, result.stderr
    assert snapshot(runs / "latest-run") == before
    assert (other / "other-report" / "report.md").is_file()
    assert "other-report" in result.stdout
    # One line for all classes without a positive, not one warning per class.
    assert result.stderr.count("no positive image") <= 1

    zero = tmp_path / "zero"
    make_run(zero, val)
    _zero_rows(zero)
    result = run_cli("-m", "evaluation", "--run", str(zero))
    assert result.returncode == 2 and "holds no images" in result.stderr
    assert "Traceback" not in result.stderr and not (zero / "report").exists()


# -- python -m wsconv ----------------------------------------------------------------------------


def test_wsconv_refuses_bad_input(tiny_voc, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = tmp_path / "out"
    cases = [
        (["--device", "gpu"], ("--device 'gpu'", "'cpu', 'cuda'")),
        (["--limit", "0"], ("--limit 0", "at least 1")),
        (["--epochs", "1"], ("--epochs 1", "at least 3")),
        (["--lr-head", "nan"], ("--lr-head nan", "finite")),
        (["--batch-size", "0"], ("--batch-size 0", ">= 1")),
        (["--imagenet", str(tmp_path / "absent")], ("labels.csv", "not found", "--skip-check")),
        (["--out", str(blocker / "out")], ("--out", "is a file, not a folder")),
    ]
    failures = []
    for extra, expected in cases:
        caplog.clear()
        args = ["--voc-root", str(tiny_voc.root), "--runs-dir", str(tmp_path / "runs")]
        code = wsconv_main([*args, "--out", str(out), *extra])
        message = errors_of(caplog)
        missing = [words for words in expected if words not in message]
        if code != 2 or missing:
            failures.append(f"{extra}: exit {code}, missing {missing} in {message!r}")
        if out.exists():
            failures.append(f"{extra}: created {out}")
    assert not failures, "\n".join(failures)
    result = run_cli("-m", "wsconv", "--device", "gpu", "--out", str(out))
    assert result.returncode == 2 and "--device 'gpu'" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


# -- configuration -------------------------------------------------------------------------------


def test_config_json_stores_relative_paths(tmp_path):
    config = TrainConfig(
        voc_root=str(PROJECT_ROOT / "data" / "somewhere"),
        runs_dir=str(PROJECT_ROOT / "runs"),
        cache_dir=str(tmp_path / "cache"),
    )
    saved = json.loads(config.to_json())
    assert saved["voc_root"] == "data/somewhere" and saved["runs_dir"] == "runs"
    assert not Path(saved["cache_dir"]).is_absolute()
    assert Path(os.path.normpath(PROJECT_ROOT / saved["cache_dir"])) == tmp_path / "cache"

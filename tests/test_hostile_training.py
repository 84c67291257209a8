"""Training meets hostile files and faults: a crafted file in the torch hub cache, a second
process resuming a run that is still training, options given again on resume, a saved wsconv
network, a full disk, a split with nothing to choose an epoch on, two runs racing for a name,
and torch's advice to turn its weights-only guard off.

Each case is met as a user meets it (`main_train.py`, `python -m wsconv`, `python -m
predictions` in a subprocess; in-process `main` where a fault has to be injected): the crafted
file or the fault, then the refusal (exit 2, one line, no traceback) or the right result,
nothing written outside the folders named, nothing half-written. The evil pickles create a
marker file when unpickled: it must never appear.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch
import torchvision

import main_train
from predictions import load_predictions
from tests.conftest import errors_of, snapshot, tracked_python_files
from tests.refusals import UNPICKLE_ADVICE, assert_refused
from tests.voc_fixture import TinyVoc, tiny_run_args, write_tiny_voc
from training.backbones import (
    WeightsRefusedError,
    WeightsUnavailableError,
    hub_state_dict,
)
from training.checkpoint import ModelVariantError, load_model, save_atomic
from training.config import CHANGEABLE_ON_RESUME, FIXED_ON_RESUME, TrainConfig
from training.runfolder import RunBusyError, RunLock, RunWriteError, create_run_dir
from vocdata.classes import VOC_CLASSES
from vocdata.paths import PROJECT_ROOT

TIMEOUT_S = 300
HUB_NAME = (
    "resnet18-f37072fd.pth"  # torchvision's ResNet-18 ImageNet weights, as torch.hub names it
)


class _Touch:
    """Unpickling this creates `path`: the proof that code in a file ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _evil_torch_file(path: Path, marker: Path) -> Path:
    """A torch file whose full unpickling would create `marker` (checked to be true)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": torch.zeros(2), "payload": _Touch(marker)}, path)
    proof = marker.with_name(marker.name + "-proof")
    pickle.loads(pickle.dumps(_Touch(proof))).close()  # unpickled in full, it does run
    assert proof.exists()
    proof.unlink()
    return path


def _run(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kwargs,
    )


def _train_args(voc: TinyVoc, scratch: Path, *extra: str) -> list[str]:
    return ["main_train.py", *tiny_run_args(voc.root, scratch / "runs", *extra)]


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def _relabel(voc: TinyVoc, split: str, labels: np.ndarray) -> None:
    """Rewrite a split's class files with `labels` ((N, 20) in {1, 0, -1}, in id order)."""
    main = voc.root / "ImageSets" / "Main"
    for column, name in enumerate(VOC_CLASSES):
        lines = [f"{i} {labels[r, column]:2d}\n" for r, i in enumerate(voc.ids[split])]
        (main / f"{name}_{split}.txt").write_text("".join(lines))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[TinyVoc, Path, Path]:
    """(voc, runs folder, run folder) of a one-epoch run; tests copy it before changing it."""
    base = tmp_path_factory.mktemp("finished")
    voc = write_tiny_voc(base / "VOCdevkit" / "VOC2012")
    runs = base / "runs"
    args = tiny_run_args(voc.root, runs, "--epochs", "1", "--run-name", "done")
    assert main_train.main(args) == 0
    return voc, runs, runs / "done"


def _copy_run(finished: tuple[TinyVoc, Path, Path], scratch: Path) -> tuple[TinyVoc, Path, Path]:
    """A private copy of the finished run and its dataset (its config names the copy's root)."""
    voc, _runs, run_dir = finished
    root = scratch / "VOCdevkit" / "VOC2012"
    shutil.copytree(voc.root, root)
    copy = scratch / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(voc_root=str(root), runs_dir=str(scratch / "runs"))
    config["cache_dir"] = str(scratch / "cache")
    (copy / "config.json").write_text(json.dumps(config))
    (scratch / "runs" / "last-started").write_text(f"{run_dir.name}\n")
    return TinyVoc(root, voc.ids, voc.labels), scratch / "runs", copy


# -- 1. the torch hub cache ----------------------------------------------------------------------
def test_a_crafted_file_in_the_hub_cache_runs_no_code_and_is_refused(tiny_voc, tmp_path):
    """The default --weights imagenet reads <TORCH_HOME>/hub/checkpoints/resnet18-*.pth: a
    pickle put there is refused by main_train.py and python -m wsconv, and never runs."""
    torch_home = tmp_path / "torch-home"
    marker = tmp_path / "code-ran"
    evil = _evil_torch_file(torch_home / "hub" / "checkpoints" / HUB_NAME, marker)
    env = {"TORCH_HOME": str(torch_home)}

    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--epochs", "1", "--weights", "imagenet")
    result = _run("main_train.py", *args, env=env)
    assert_refused(result, str(evil), "sha256", "f37072fd", "Delete it", "--weights none")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()

    imagenet = tmp_path / "imagenet"  # one sample, so the prediction check reaches the weights
    (imagenet / "images").mkdir(parents=True)
    shutil.copy(tiny_voc.image_path(tiny_voc.ids["val"][0]), imagenet / "images" / "a.jpg")
    (imagenet / "labels.csv").write_text("file,wnid,class_index,name\na.jpg,n0,0,tench\n")
    out = tmp_path / "wsconv-out"
    for extra in (["--imagenet", str(imagenet), "--train"], ["--skip-check"]):
        result = _run(
            "-m",
            "wsconv",
            *("--voc-root", str(tiny_voc.root), "--out", str(out), "--no-download"),
            *extra,
            env=env,
        )
        assert_refused(result, str(evil), "sha256", "f37072fd")
        assert not out.exists()
    assert not marker.exists()
    assert evil.is_file()  # refused, not deleted: the user decides


def test_genuine_weights_under_a_hash_they_do_not_have_are_refused(tiny_voc, tmp_path):
    """Real ResNet-18 tensors (weights-only readable) named as the ImageNet download: the
    hash in the name is checked first, so the file is not the one torchvision publishes."""
    torch_home = tmp_path / "torch-home"
    fake = torch_home / "hub" / "checkpoints" / HUB_NAME
    fake.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), fake)
    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--weights", "imagenet")
    result = _run("main_train.py", *args, env={"TORCH_HOME": str(torch_home)})
    found = hashlib.sha256(fake.read_bytes()).hexdigest()[:8]
    assert_refused(result, str(fake), f"begins {found}, not f37072fd")
    assert not (tmp_path / "runs").exists()


def test_the_hub_loader_downloads_checks_the_hash_then_reads_tensors_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    source = tmp_path / "published.pth"
    torch.save(state, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    url = f"https://example.invalid/weights/tiny-{digest[:8]}.pth"
    downloads = []

    def download(url_, dst, hash_prefix=None, progress=True):  # torch.hub's, without a network
        downloads.append((url_, hash_prefix))
        shutil.copy(source, dst)

    monkeypatch.setattr("torch.hub.download_url_to_file", download)
    loaded = hub_state_dict(url, "tiny")  # missing: downloaded, with the hash to check
    assert torch.equal(loaded["w"], state["w"])
    assert downloads == [(url, digest[:8])]
    assert torch.equal(hub_state_dict(url, "tiny")["w"], state["w"])  # cached: no download
    assert len(downloads) == 1

    marker = tmp_path / "code-ran"
    evil = _evil_torch_file(tmp_path / "evil.pth", marker)
    evil_hash = hashlib.sha256(evil.read_bytes()).hexdigest()
    shutil.copy(evil, checkpoints / f"evil-{evil_hash[:8]}.pth")  # a hash that matches
    with pytest.raises(WeightsRefusedError, match="pickled Python objects") as info:
        hub_state_dict(f"https://example.invalid/evil-{evil_hash[:8]}.pth", "evil")
    assert not marker.exists()
    assert not any(advice in str(info.value) for advice in UNPICKLE_ADVICE)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError, match="are you offline") as info:
        hub_state_dict("https://example.invalid/other-0123abcd.pth", "other")
    assert not isinstance(info.value, WeightsRefusedError)  # offline is not a bad file


# -- 6. one process per run folder ---------------------------------------------------------------
@contextlib.contextmanager
def _writing_to_reader(fifo: Path, process: subprocess.Popen) -> Iterator[BinaryIO]:
    """Open the FIFO `fifo` for writing: this returns once `process` has opened it for reading
    (it then waits, blocked, for the bytes). Should the process end first, the open is
    released instead of hanging, and the test fails naming it."""

    def release_if_gone() -> None:
        process.wait()
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    threading.Thread(target=release_if_gone, daemon=True).start()
    with open(fifo, "wb") as pipe:
        assert process.poll() is None, f"the first process ended (exit {process.returncode})"
        yield pipe


def _image_on_a_fifo(voc: TinyVoc) -> tuple[Path, bytes]:
    """One train image replaced by a FIFO: reading it blocks until the test writes it."""
    image = voc.image_path(voc.ids["train"][5])
    content = image.read_bytes()
    image.unlink()
    os.mkfifo(image)
    return image, content


def _put_back(image: Path, content: bytes) -> None:
    """The real file again at the image's path (the open FIFO keeps serving its reader)."""
    fresh = image.with_suffix(".restored")
    fresh.write_bytes(content)
    os.replace(fresh, image)


def _start_resuming(runs: Path, scratch: Path, *extra: str) -> subprocess.Popen:
    with open(scratch / "first.log", "w") as log:  # the process keeps its own descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "main_train.py",
                "--resume",
                "latest",
                "--runs-dir",
                str(runs),
                *extra,
            ],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


@pytest.mark.slow
def test_resume_latest_never_attaches_to_a_run_that_is_training(finished_run, tmp_path):
    """Deterministic, no sleeps: the first process resumes the run and blocks reading one of
    its images, which is a FIFO; while it holds the run there, a second `--resume latest`
    (the same run) is refused naming the first process and writes nothing; a new run started
    meanwhile gets a folder of its own. Then the image is written and the first finishes."""
    voc, runs, run_dir = _copy_run(finished_run, tmp_path)
    elsewhere = TinyVoc(tmp_path / "another" / "VOC2012", voc.ids, voc.labels)
    shutil.copytree(voc.root, elsewhere.root)  # for the new run: its images are all files
    image, content = _image_on_a_fifo(voc)
    first = _start_resuming(runs, tmp_path, "--epochs", "2")
    with _writing_to_reader(image, first) as pipe:
        # The first process has the run (its lock is taken before any image is read).
        before = snapshot(run_dir)
        result = _run("main_train.py", "--resume", "latest", "--runs-dir", str(runs))
        busy_words = (str(run_dir), f"is being trained by pid {first.pid} on host", "since")
        assert_refused(result, *busy_words)
        assert snapshot(run_dir) == before
        busy = json.loads((run_dir / "run.lock").read_text())
        assert busy["pid"] == first.pid

        new_run = _run(*_train_args(elsewhere, tmp_path, "--epochs", "1", "--run-name", "other"))
        assert new_run.returncode == 0, new_run.stderr
        assert snapshot(run_dir) == before and (runs / "other" / "model_best.pt").is_file()

        pipe.write(content)
        _put_back(image, content)
    assert first.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "first.log").read_text()
    assert [r["epoch"] for r in _history(run_dir)] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2
    assert not (run_dir / "run.lock").exists()  # given up when the run ended


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_is_taken_over_and_its_temporaries_cleared(
    finished_run, tmp_path
):
    """kill -9 leaves run.lock (naming a dead pid) and maybe a temporary being written: the
    kernel has dropped the lock, so the next resume takes the run over and clears the
    temporary, while a live writer's temporary (locked) would be left alone."""
    voc, runs, run_dir = _copy_run(finished_run, tmp_path)
    image, content = _image_on_a_fifo(voc)
    first = _start_resuming(runs, tmp_path, "--epochs", "2")
    with _writing_to_reader(image, first):
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    _put_back(image, content)
    left = json.loads((run_dir / "run.lock").read_text())
    assert left["pid"] == first.pid  # the file stays; the lock does not
    abandoned = run_dir / ".checkpoint_last.pt.x1y2z3.tmp"
    abandoned.write_bytes(b"half a checkpoint")
    os.utime(abandoned, (1_000_000_000, 1_000_000_000))  # long ago

    result = _run("main_train.py", "--resume", "latest", "--runs-dir", str(runs), "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in _history(run_dir)] == [1, 2]
    assert not abandoned.exists() and not list(run_dir.glob(".*.tmp"))
    assert not (run_dir / "run.lock").exists()


def test_a_new_run_folder_is_locked_before_resume_latest_can_find_it(tmp_path):
    """create_run_dir locks the folder before it writes the last-started pointer, so there
    is no moment when `--resume latest` could take a run that has just started."""
    config = TrainConfig(runs_dir=str(tmp_path / "runs"), run_name="new", weights="none")
    run_dir, lock = create_run_dir(config)
    assert (tmp_path / "runs" / "last-started").read_text().strip() == "new"
    with pytest.raises(RunBusyError, match=f"pid {os.getpid()} on host"):
        RunLock(run_dir).acquire()
    lock.release()
    RunLock(run_dir).acquire().release()


def test_a_k_fold_run_is_locked_at_its_top_folder(tiny_voc, tmp_path, caplog):
    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--folds", "2", "--epochs", "1")
    assert main_train.main([*args, "--stop-after", "1", "--run-name", "cv"]) == 0
    run_dir = tmp_path / "runs" / "cv"
    holder = RunLock(run_dir).acquire()  # this test process plays the one training it
    before = snapshot(run_dir)
    caplog.clear()
    assert main_train.main(["--resume", str(run_dir)]) == 2
    assert f"is being trained by pid {os.getpid()}" in errors_of(caplog)
    assert snapshot(run_dir) == before
    holder.release()


# -- 7. options given again on resume ------------------------------------------------------------
def test_every_option_is_fixed_or_may_change_on_resume():
    """A new option must be placed in one of the two lists (the README lists the second)."""
    names = set(TrainConfig.__dataclass_fields__)
    fixed, changeable = set(FIXED_ON_RESUME), set(CHANGEABLE_ON_RESUME)
    assert not fixed & changeable
    assert fixed | changeable | {"resume"} == names


REFUSED_ON_RESUME = [
    ("--lr-head", "0.5"),
    ("--lr-backbone", "0.01"),
    ("--weight-decay", "0"),
    ("--warmup-epochs", "0"),
    ("--batch-size", "4"),
    ("--image-size", "64"),
    ("--difficult", "positive"),
    ("--seed", "7"),
    ("--tta", "none"),
    ("--optimizer", "sgd"),
    ("--folds", "3"),
    ("--weights", "imagenet"),
    ("--run-name", "elsewhere"),
]


def test_options_that_change_what_the_checkpoint_means_are_refused_on_resume(
    finished_run, tmp_path, caplog
):
    _voc, runs, run_dir = _copy_run(finished_run, tmp_path)
    before = snapshot(run_dir)
    failures = []
    for flag, value in REFUSED_ON_RESUME:
        caplog.clear()
        code = main_train.main(["--resume", "latest", "--runs-dir", str(runs), flag, value])
        message = errors_of(caplog)
        if code != 2 or f"{flag} {value}" not in message or f"Drop {flag}" not in message:
            failures.append(f"{flag} {value}: exit {code}, {message!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(run_dir) == before  # config.json keeps the run's own values
    # The same value as the run's own is no change (the run was made with --lr-head 0.001).
    result = _run(
        "main_train.py", "--resume", "latest", "--runs-dir", str(runs), "--lr-head", "0.5"
    )
    assert_refused(result, "--lr-head 0.5 differs from the run's own --lr-head 0.001", "--epochs")
    assert snapshot(run_dir) == before


def test_a_larger_epochs_on_resume_lays_the_schedule_out_again(tiny_voc, tmp_path):
    """--epochs may change: the scheduler follows the new total from the step it reached, so
    the resumed epochs train at the rates of a run started with that total (with no warm-up:
    one epoch of a 1-epoch run decays to 0, the resumed epoch 2 of 3 is back at 25 %)."""
    options = ("--warmup-epochs", "0", "--lr-head", "0.01")
    assert (
        main_train.main(
            tiny_run_args(
                tiny_voc.root, tmp_path / "runs", *options, "--epochs", "1", "--run-name", "grown"
            )
        )
        == 0
    )
    grown = tmp_path / "runs" / "grown"
    assert main_train.main(["--resume", str(grown), "--epochs", "3"]) == 0
    assert (
        main_train.main(
            tiny_run_args(
                tiny_voc.root, tmp_path / "runs", *options, "--epochs", "3", "--run-name", "whole"
            )
        )
        == 0
    )
    resumed = [r["lr_head"] for r in _history(grown)]
    whole = [r["lr_head"] for r in _history(tmp_path / "runs" / "whole")]
    assert resumed[0] == pytest.approx(0.0, abs=1e-12)  # the end of a 1-epoch cosine
    assert whole[0] == pytest.approx(0.01 * 0.75)  # a third of the way down a 3-epoch one
    assert resumed[1:] == pytest.approx(whole[1:])
    assert resumed[1] == pytest.approx(0.01 * 0.25)
    assert json.loads((grown / "config.json").read_text())["epochs"] == 3


def test_machine_and_bookkeeping_options_may_change_on_resume(finished_run, tmp_path):
    _voc, runs, run_dir = _copy_run(finished_run, tmp_path)
    other_cache = tmp_path / "other-cache"
    result = _run(
        "main_train.py",
        *("--resume", "latest", "--runs-dir", str(runs), "--epochs", "2"),
        *("--cache-dir", str(other_cache), "--no-channels-last", "--stop-after", "1"),
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["channels_last"] is False and saved["stop_after"] == 1
    assert Path(os.path.normpath(PROJECT_ROOT / saved["cache_dir"])) == other_cache
    assert any(other_cache.iterdir())  # the new cache folder was used, not only recorded
    assert [r["epoch"] for r in _history(run_dir)] == [1, 2]


def test_a_checkpoint_saved_without_loss_scaling_resumes_with_it(tmp_path):
    """--device may change: a run saved on the CPU (no fp16 loss scaling, an empty scaler
    state) resumed on a GPU with fp16 starts its scaler fresh instead of failing to load."""
    from training.checkpoint import TrainState, load_training_state, save_training_state

    model = torch.nn.Linear(3, 2)

    def parts(scaling: bool):
        optimizer = torch.optim.AdamW(model.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=scaling)

    path = tmp_path / "checkpoint_last.pt"
    optimizer, scheduler, scaler = parts(False)
    config = TrainConfig(weights="none")
    save_training_state(path, model, optimizer, scheduler, scaler, TrainState(epoch=2), config)
    optimizer, scheduler, scaler = parts(True)
    assert load_training_state(path, model, optimizer, scheduler, scaler).epoch == 2
    assert scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()


# -- 8. wsconv runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wsconv_run(tmp_path_factory) -> tuple[TinyVoc, Path]:
    """(voc, run folder) of a tiny `python -m wsconv --train A` run."""
    base = tmp_path_factory.mktemp("wsconv")
    voc = write_tiny_voc(base / "VOCdevkit" / "VOC2012")
    result = _run(
        "-m",
        "wsconv",
        *("--skip-check", "--train", "A", "--epochs", "3", "--arch", "resnet18"),
        *("--weights", "none", "--voc-root", str(voc.root), "--out", str(base / "out")),
        *("--image-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress"),
        *("--no-download", "--cache-dir", str(base / "cache")),
    )
    assert result.returncode == 0, result.stderr
    return voc, base / "out" / "runs" / "A"


def test_python_m_predictions_scores_a_wsconv_run_as_it_was_trained(wsconv_run, tmp_path):
    voc, run_dir = wsconv_run
    saved = torch.load(run_dir / "model_best.pt", map_location="cpu", weights_only=True)
    assert saved["model_variant"] == "wsconv-A"
    out = tmp_path / "rescored.npz"
    result = _run(
        "-m",
        "predictions",
        *("--model", str(run_dir), "--voc-root", str(voc.root), "--out", str(out)),
        *("--workers", "0", "--device", "cpu", "--no-progress"),
    )
    assert result.returncode == 0, result.stderr
    rescored, trained = load_predictions(out), load_predictions(run_dir / "val_predictions.npz")
    assert rescored.files == trained.files
    np.testing.assert_allclose(rescored.scores, trained.scores, atol=1e-6, rtol=0)


def test_a_wsconv_model_is_never_loaded_as_a_plain_network(wsconv_run, tmp_path):
    from gui.cam import CamProvider, ModelRefusedError
    from gui.camsource import CamSource
    from wsconv import model_hooks

    voc, run_dir = wsconv_run
    path = run_dir / "model_best.pt"
    with pytest.raises(ModelVariantError, match="'wsconv-A' network") as info:
        load_model(path)
    assert "python -m predictions" in str(info.value)
    model, saved = load_model(path, model_hooks())
    assert saved["model_variant"] == "wsconv-A"
    assert any(type(m).__name__ == "WSConv2d" for m in model.modules())

    # A file saved before the key existed: its provenance names the variant.
    older = dict(saved)
    del older["model_variant"]
    torch.save(older, tmp_path / "older.pt")
    with pytest.raises(ModelVariantError, match="wsconv-A"):
        load_model(tmp_path / "older.pt")

    # The browser's activation map: refused with the reason, and off from then on.
    provider = CamProvider(CamSource((path,), origin="test"), voc.root)
    assert provider.available
    outcome = []
    image = f"JPEGImages/{voc.ids['val'][0]}.jpg"
    done = provider.request(image, 3, lambda key, error: outcome.append(error))
    done.result(timeout=TIMEOUT_S)
    provider.shutdown()
    assert outcome and "'wsconv-A' network" in outcome[0] and "cannot rebuild" in outcome[0]
    assert not outcome[0].startswith(ModelRefusedError.__name__)
    assert not provider.available and provider.source.tooltip() == provider.reason
    assert "wsconv-A" in provider.source.tooltip()


# -- 11. a full disk ----------------------------------------------------------------------------
def _file_size_limit(limit: int):
    """For a subprocess: files may grow to `limit` bytes, then write() fails with EFBIG (the
    signal that would kill the process is ignored, as a full disk's ENOSPC would not kill)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.parametrize(
    ("limit_mb", "file", "kept"),
    [
        (50, "checkpoint_last.pt", "last complete checkpoint (epoch 1) is kept"),
        (10, "model_best.pt", "last complete checkpoint (epoch 1) is kept"),
    ],
)
def test_a_write_that_fails_mid_run_is_one_message_and_the_run_resumes(
    finished_run, tmp_path, limit_mb, file, kept
):
    """The kernel refuses to let a file grow past the limit (RLIMIT_FSIZE: a real OSError from
    every writer, torch's C++ one included): ResNet-18's 45 MB model fits under 50 MB, its
    134 MB checkpoint does not; under 10 MB the model fails first (epoch 2 improves on 1)."""
    _voc, runs, run_dir = _copy_run(finished_run, tmp_path)
    checkpoint = (run_dir / "checkpoint_last.pt").read_bytes()
    result = _run(
        "main_train.py",
        *("--resume", "latest", "--runs-dir", str(runs), "--epochs", "2"),
        preexec_fn=_file_size_limit(limit_mb * 10**6),
    )
    message = assert_refused(result, f"Cannot write {run_dir / file}", "File too large", "MB", kept)
    assert f"--resume {run_dir}" in message
    assert "inline_container" not in result.stderr
    assert (run_dir / "checkpoint_last.pt").read_bytes() == checkpoint
    assert not list(run_dir.glob(".*.tmp"))
    assert not (run_dir / "run.lock").exists()

    result = _run("main_train.py", "--resume", "latest", "--runs-dir", str(runs))
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in _history(run_dir)] == [1, 2]


def test_no_room_for_a_checkpoint_is_said_before_anything_is_written(tmp_path, monkeypatch):
    """A disk with less free space than the file needs: refused before the first byte."""
    import shutil as shutil_module

    real = shutil_module.disk_usage

    def nearly_full(path):
        return real(path)._replace(free=1_000_000)

    monkeypatch.setattr("vocdata.atomic.shutil.disk_usage", nearly_full)
    target = tmp_path / "checkpoint_last.pt"
    with pytest.raises(RunWriteError) as info:
        save_atomic({"w": torch.zeros(1_000_000)}, target)
    assert str(target) in str(info.value) and "needs 4.0 MB" in str(info.value)
    assert "1.0 MB are free" in str(info.value)
    assert not any(tmp_path.iterdir())


# -- 13. nothing to choose an epoch on -----------------------------------------------------------
def test_a_val_split_without_a_counted_positive_is_refused_before_training(tiny_voc, tmp_path):
    """Every val positive is marked difficult: with --difficult ignore no class has a positive
    that counts, no epoch could be chosen, and no model would be saved."""
    labels = tiny_voc.labels["val"].copy()
    labels[labels == 1] = 0
    _relabel(tiny_voc, "val", labels)
    result = _run(*_train_args(tiny_voc, tmp_path, "--epochs", "1"))
    assert_refused(result, "val split", "no counted positive", "--difficult positive", "no model")
    assert not (tmp_path / "runs").exists()


def test_a_fold_whose_held_out_part_has_no_positive_is_named(tiny_voc, tmp_path, caplog):
    labels = np.full_like(tiny_voc.labels["train"], -1)
    labels[0, 4] = 1  # one positive in the whole train split: one fold holds it out
    _relabel(tiny_voc, "train", labels)
    args = tiny_run_args(tiny_voc.root, tmp_path / "runs", "--folds", "2", "--epochs", "1")
    assert main_train.main(args) == 2
    message = errors_of(caplog)
    assert "of 2: its held-out part (12 of the 24 train images)" in message
    assert "no counted positive" in message and "fewer --folds" in message
    assert not (tmp_path / "runs").exists()


# -- 14. smaller ones ----------------------------------------------------------------------------
def test_two_runs_that_pick_the_same_name_get_separate_folders(tiny_voc, tmp_path, monkeypatch):
    """The race: another run creates the folder between this run's choice and its mkdir. It
    takes the next suffix instead of blaming permissions."""
    runs = tmp_path / "runs"
    real_mkdir = Path.mkdir
    raced = []

    def mkdir(self, *args, **kwargs):
        if self == runs / "same" and not raced:
            raced.append(self)
            real_mkdir(self)  # the other process wins the race
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    args = tiny_run_args(tiny_voc.root, runs, "--epochs", "1", "--run-name", "same")
    assert main_train.main(args) == 0
    assert raced and not any((runs / "same").iterdir())  # the other run's folder: untouched
    assert (runs / "same-2" / "model_best.pt").is_file()


def test_a_checkpoint_or_model_holding_code_is_refused_without_torchs_advice(
    finished_run, tmp_path
):
    """--resume, --weights and python -m predictions --model on files that hold a pickled
    object: refused, no code run, and torch's advice (load with weights_only=False) never
    reaches the user."""
    voc, runs, run_dir = _copy_run(finished_run, tmp_path)
    marker = tmp_path / "code-ran"
    _evil_torch_file(run_dir / "checkpoint_last.pt", marker)
    result = _run("main_train.py", "--resume", "latest", "--runs-dir", str(runs))
    assert_refused(result, "Cannot resume", "pickled Python objects", "io.open")

    evil_weights = _evil_torch_file(tmp_path / "weights.pth", marker)
    result = _run(*_train_args(voc, tmp_path / "w", "--weights", str(evil_weights)))
    assert_refused(result, str(evil_weights), "pickled Python objects")

    evil_model = _evil_torch_file(tmp_path / "model" / "model_best.pt", marker)
    result = _run("-m", "predictions", "--model", str(evil_model), "--voc-root", str(voc.root))
    assert_refused(result, "not a model saved by main_train.py", "pickled Python objects")
    assert not marker.exists()
    assert not (tmp_path / "model" / "predictions").exists()


def test_every_torch_load_of_the_project_reads_tensors_only():
    """No file is ever unpickled: every `torch.load` call in the project's code (tests aside)
    passes `weights_only=True` literally, so a new call without it fails here."""
    calls = []
    for relative in tracked_python_files():
        if relative.startswith("tests/"):
            continue
        tree = ast.parse((PROJECT_ROOT / relative).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                keywords = {k.arg: k.value for k in node.keywords}
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and (
                    keywords["weights_only"].value is True
                )
                calls.append((f"{relative}:{node.lineno}", safe))
    assert len(calls) >= 2, calls  # the checkpoint reader and the feature cache at least
    assert [where for where, safe in calls if not safe] == []

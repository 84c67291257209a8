"""Files from elsewhere are data, not instructions: a crafted or damaged predictions file, run
folder or JSON file is refused in one line (never a traceback), never makes a program read or
write outside the folders the user named, and never leaves a half-written report.

Each case is met as a user meets it: `python -m evaluation` / `python -m predictions` in a
subprocess, or their `main` in-process where a fault (a full disk) has to be injected.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.__main__ import main as evaluation_main
from predictions import Predictions, PredictionsFormatError, image_root_of, save_predictions
from predictions.__main__ import main as predict_main
from predictions.format import MAX_ARRAY_BYTES
from tests.conftest import PROVENANCE, errors_of, snapshot
from tests.refusals import assert_refused
from tests.test_evaluation import make_run
from vocdata import VOC_CLASSES, read_split
from vocdata.paths import PROJECT_ROOT, UnsafePathError

TIMEOUT_S = 300


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _raw_npz(path: Path, **arrays: np.ndarray) -> Path:
    """An archive written without the Predictions checks, as a crafted file would be."""
    np.savez(path, **arrays)
    return path


def _unlabelled_arrays(class_names: tuple[str, ...], files: tuple[str, ...]) -> dict:
    provenance = {"format_version": 2, **PROVENANCE}
    rng = np.random.default_rng(0)
    return {
        "scores": rng.random((len(files), len(class_names)), dtype=np.float32),
        "files": np.array(files),
        "class_names": np.array(class_names),
        "provenance": np.array(json.dumps(provenance)),
    }


# -- 2. class names that are paths ---------------------------------------------------------------
@pytest.mark.parametrize("evil", ["../../../escaped", "ABSOLUTE", "sub/escaped", "..", "a\\b"])
def test_a_class_name_that_is_a_path_is_refused_and_nothing_is_written(tmp_path, evil):
    if evil == "ABSOLUTE":
        evil = str(tmp_path / "escaped")
    work = tmp_path / "deep" / "er" / "work"
    work.mkdir(parents=True)
    evil_file = _raw_npz(work / "evil.npz", **_unlabelled_arrays(("cat", evil), ("a.jpg", "b.jpg")))
    before = snapshot(tmp_path)
    result = _command("evaluation", "--predictions", str(evil_file), "--k", "1")
    assert_refused(result, str(evil_file), "not a plain name")
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.rglob("escaped*"))


def test_class_names_are_checked_when_built_and_report_names_when_written(tmp_path):
    with pytest.raises(PredictionsFormatError, match="not a plain name"):
        Predictions(np.zeros((1, 1), np.float32), None, ("a.jpg",), ("../x",), {})
    from matplotlib.figure import Figure

    from evaluation.report import save_figure

    written: list[str] = []
    with pytest.raises(UnsafePathError):
        save_figure(Figure(), tmp_path / "report", "grid_../../x", written)
    assert written == [] and not list(tmp_path.rglob("*.png"))


# -- 3. reads outside the dataset root -----------------------------------------------------------
BLUE, GREEN = (0, 0, 255), (0, 255, 0)


def _share_of(colour: tuple[int, int, int], png: Path) -> float:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    close = (np.abs(pixels - np.array(colour)) < 40).all(axis=-1)
    return float(close.mean())


def test_a_file_naming_its_own_root_is_said_and_links_out_of_it_are_never_read(tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), BLUE).save(secret)
    claimed = tmp_path / "claimed-root"
    (claimed / "JPEGImages").mkdir(parents=True)
    Image.new("RGB", (64, 64), GREEN).save(claimed / "JPEGImages" / "inside.png")
    (claimed / "JPEGImages" / "link.png").symlink_to(secret)  # inside by name only
    files = ("JPEGImages/inside.png", "JPEGImages/link.png")
    scores = np.array([[0.9, 0.1], [0.8, 0.2]], np.float32)
    provenance = PROVENANCE | {"voc_root": str(claimed)}
    predictions = Predictions(scores, None, files, ("cat", "dog"), provenance)
    path = save_predictions(tmp_path / "photos.npz", predictions)

    result = _command("evaluation", "--predictions", str(path), "--classes", "cat", "--k", "2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "outside the dataset root" in result.stderr
    note = image_root_of(predictions).note
    assert note == f"images from {claimed}, named by the file"
    assert note in result.stderr  # said when the report is made
    report = tmp_path / "photos-report"
    assert note in (report / "report.md").read_text()
    grid = report / "grid_cat.png"
    assert _share_of(GREEN, grid) > 0.01  # the image inside the root is shown
    assert _share_of(BLUE, grid) == 0.0  # the linked file outside it never is


def test_the_labelled_report_states_where_its_images_come_from(tiny_voc, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    make_run(run_dir, read_split(tiny_voc.root, "val"))
    path = run_dir / "val_predictions.npz"
    from predictions import load_predictions

    stored = load_predictions(path)
    provenance = stored.provenance | {"voc_root": str(tiny_voc.root)}
    save_predictions(path, Predictions(**(stored.__dict__ | {"provenance": provenance})))

    pages: list[str] = []
    from evaluation import report as report_module

    original = report_module.text_page

    def recording(title, blocks):
        pages.extend(body for _, body in blocks)
        return original(title, blocks)

    monkeypatch.setattr(report_module, "text_page", recording)
    assert evaluation_main(["--run", str(run_dir), "--classes", "dog", "--k", "2"]) == 0
    named = f"images from {tiny_voc.root}, named by the file"
    assert named in (run_dir / "report" / "report.md").read_text()
    assert any(named in body for body in pages)  # the PDF's text pages say it too

    pages.clear()
    given = ["--voc-root", str(tiny_voc.root)]
    assert evaluation_main(["--run", str(run_dir), "--classes", "dog", "--k", "2", *given]) == 0
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "named by the file" not in markdown and "(--voc-root)" in markdown


# -- 5. unbounded input --------------------------------------------------------------------------
def _deflated(raw: bytes, final: bool = True) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush(
        zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH
    )


def _zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """A zip archive of deflated members (name, raw deflate stream, CRC-32, size)."""
    body, directory = b"", b""
    for name, data, crc, size in members:
        encoded = name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0, crc, len(data), size)
        directory += (
            struct.pack("<IH", 0x02014B50, 20)
            + fields
            + struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, len(body))
            + encoded
        )
        body += struct.pack("<I", 0x04034B50) + fields + struct.pack("<HH", len(encoded), 0)
        body += encoded + data
    count = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), len(body), 0)
    path.write_bytes(body + directory + end)


def _member(name: str, array: np.ndarray) -> tuple[str, bytes, int, int]:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    raw = buffer.getvalue()
    return name, _deflated(raw), zlib.crc32(raw), len(raw)


ZERO_CHUNK = 15_625_000  # 2e9 bytes are 128 of these


def _bomb(path: Path, rows: int, columns: int) -> None:
    """A valid predictions archive whose `scores` really unpack to rows x columns float32
    zeros, in a file of about 2 MB (one deflated chunk of zeros, repeated: a zip bomb)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (rows, columns)}
    )
    head, count = header.getvalue(), rows * columns * 4
    assert count % ZERO_CHUNK == 0
    crc = zlib.crc32(head)
    zeros = bytes(ZERO_CHUNK)
    for _ in range(count // ZERO_CHUNK):
        crc = zlib.crc32(zeros, crc)
    # Each segment ends in a full flush: independent of what precedes it, so repeatable.
    stream = _deflated(head, final=False) + _deflated(zeros, final=False) * (count // ZERO_CHUNK)
    stream += zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final, empty block
    small = _unlabelled_arrays(VOC_CLASSES, ("a.jpg",))
    others = [_member(f"{key}.npy", small[key]) for key in ("files", "class_names", "provenance")]
    _zip(path, [("scores.npy", stream, crc, len(head) + count), *others])


# The peak resident memory of this process image: VmHWM starts afresh at exec, unlike
# getrusage's ru_maxrss, which keeps the (forked) parent's peak across an exec.
PEAK_MEMORY = (
    "import re, runpy, sys\n"
    "sys.argv = ['evaluation', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('evaluation', run_name='__main__')\n"
    "finally:\n"
    "    status = open('/proc/self/status').read()\n"
    "    peak = int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
    "    print(f'peak-kb {peak}', file=sys.stderr)\n"
)


def test_a_small_archive_that_unpacks_to_gigabytes_is_refused_from_its_headers(tmp_path):
    bomb = tmp_path / "bomb.npz"
    _bomb(bomb, 25_000_000, 20)
    assert bomb.stat().st_size < 3e6
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, "--predictions", str(bomb)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert_refused(result, str(bomb), "1.9 GiB", f"{MAX_ARRAY_BYTES / 2**30:.0f} GiB")
    peak_mb = int(result.stderr.split("peak-kb ")[1].split()[0]) / 1024
    assert peak_mb < 600, f"{peak_mb:.0f} MB: the array was read"  # it holds 2,000 MB

    # The headers are honest here: the same archive at a size within the cap is read whole.
    fine = tmp_path / "fine.npz"
    _bomb(fine, 390_625, 20)  # 31 MB of scores, all zero
    result = _command("evaluation", "--predictions", str(fine))
    assert_refused(result, "scores have shape (390625, 20), expected (1, 20)")


def test_an_archive_whose_sizes_disagree_or_that_holds_objects_is_refused(tmp_path):
    arrays = _unlabelled_arrays(("cat", "dog"), ("a.jpg", "b.jpg"))
    name, data, crc, size = _member("scores.npy", arrays["scores"])
    others = [_member(f"{k}.npy", arrays[k]) for k in ("files", "class_names", "provenance")]
    lying = tmp_path / "lying.npz"
    _zip(lying, [(name, data, crc, size + 4_000_000), *others])
    assert_refused(_command("evaluation", "--predictions", str(lying)), "is damaged", "scores")

    marker = tmp_path / "code-ran"
    objects = np.empty(2, dtype=object)
    objects[:] = [_Touch(marker), "b.jpg"]
    evil = tmp_path / "evil.npz"
    np.savez(evil, **(arrays | {"files": objects}))  # needs pickle to load
    pickle.loads(pickle.dumps(_Touch(tmp_path / "proof"))).close()  # unpickled, it runs
    assert (tmp_path / "proof").exists()
    result = _command("evaluation", "--predictions", str(evil))
    assert_refused(result, "Python objects", "never loaded")
    assert not marker.exists()


class _Touch:
    """Unpickling this creates `path`: the proof that code in a file ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# -- damaged or crafted JSON and provenance values -----------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def _deep_npz_provenance(run_dir: Path) -> None:
    path = run_dir / "val_predictions.npz"
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["provenance"] = np.array(DEEP)
    np.savez(path, **arrays)


JSON_CASES = [
    ("deep history.json", lambda run: (run / "history.json").write_text(DEEP), "history.json"),
    ("deep config.json", lambda run: (run / "config.json").write_text(DEEP), "config.json"),
    (
        "deep provenance.json",
        lambda run: (run / "provenance.json").write_text(DEEP),
        "provenance.json",
    ),
    (
        "history.json not UTF-8",
        lambda run: (run / "history.json").write_bytes(b"\xff\xfe[{]"),
        "not UTF-8",
    ),
    ("deep provenance in the npz", _deep_npz_provenance, "val_predictions.npz"),
]


@pytest.mark.parametrize(("name", "damage", "named"), JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_damaged_json_is_one_line_naming_the_file(tiny_voc, tmp_path, name, damage, named):
    run_dir = tmp_path / "run"
    make_run(run_dir, read_split(tiny_voc.root, "val"))
    damage(run_dir)
    before = snapshot(run_dir)
    line = assert_refused(_command("evaluation", "--run", str(run_dir)), named)
    assert "nested too deeply" in line or "not UTF-8" in line
    assert snapshot(run_dir) == before  # no report, no temporary folder


PROVENANCE_CASES = [
    ({"val_map": "high"}, "val_map"),
    ({"difficult": "sideways"}, "difficult"),
    ({"train_positives": [1, 2]}, "train_positives"),
    ({"folds": "five"}, "folds"),
    ({"folds": 3, "fold_epochs": [1, 2]}, "fold_epochs"),
    ({"folds": 2, "fold_epochs": [1, 2], "fold_heldout_map": ["a", 0.5]}, "fold_heldout_map"),
]


@pytest.mark.parametrize(("change", "key"), PROVENANCE_CASES)
def test_provenance_values_of_the_wrong_type_are_refused(tiny_voc, tmp_path, caplog, change, key):
    run_dir = tmp_path / "run"
    predictions = make_run(run_dir, read_split(tiny_voc.root, "val"))
    # Written as a colleague's program could, past our own writer's checks.
    provenance = {**PROVENANCE, "format_version": 2, **change}
    _raw_npz(
        run_dir / "val_predictions.npz",
        scores=predictions.scores,
        labels=predictions.labels,
        files=np.array(predictions.files),
        class_names=np.array(predictions.class_names),
        provenance=np.array(json.dumps(provenance)),
    )
    before = snapshot(run_dir)
    assert evaluation_main(["--run", str(run_dir)]) == 2
    message = errors_of(caplog)
    assert key in message and "val_predictions.npz" in message
    assert snapshot(run_dir) == before


# -- 11. the report is swapped in whole ----------------------------------------------------------
def test_a_report_that_fails_half_way_leaves_the_old_one_intact(
    tiny_voc, tmp_path, monkeypatch, caplog
):
    run_dir = tmp_path / "run"
    make_run(run_dir, read_split(tiny_voc.root, "val"))
    assert evaluation_main(["--run", str(run_dir), "--classes", "dog,cat", "--k", "2"]) == 0
    old = snapshot(run_dir)
    assert "grid_dog.png" in {Path(name).name for name in old}

    def disk_full(path, *args, **kwargs):  # after every figure is written
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("evaluation.report.write_grids_json", disk_full)
    assert evaluation_main(["--run", str(run_dir), "--classes", "cat", "--k", "3"]) == 2
    message = errors_of(caplog)
    assert "No space left on device" in message and "unchanged" in message
    assert str(run_dir / "report") in message
    assert snapshot(run_dir) == old  # the old report whole, and no temporary folder
    monkeypatch.undo()

    assert evaluation_main(["--run", str(run_dir), "--classes", "cat", "--k", "3"]) == 0
    names = {p.name for p in (run_dir / "report").iterdir()}
    assert "grid_cat.png" in names and "grid_dog.png" not in names  # replaced, never mixed
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["val_predictions.npz", "history.json", "config.json", "provenance.json", "report"]
    )


def test_a_report_never_replaces_a_folder_that_is_not_a_report(tiny_voc, tmp_path, caplog):
    run_dir = tmp_path / "run"
    make_run(run_dir, read_split(tiny_voc.root, "val"))
    desktop = tmp_path / "desktop"
    desktop.mkdir()
    (desktop / "notes.txt").write_text("mine")
    (desktop / "photos").mkdir()
    before = snapshot(tmp_path)
    assert evaluation_main(["--run", str(run_dir), "--out", str(desktop)]) == 2
    assert "not part of a report" in errors_of(caplog) and "--out" in errors_of(caplog)
    assert snapshot(tmp_path) == before


def test_a_killed_report_leaves_nothing_behind_for_long(tiny_voc, tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir, read_split(tiny_voc.root, "val"))
    abandoned = run_dir / ".report.x1y2.partial"  # what kill -9 during a report leaves
    abandoned.mkdir()
    (abandoned / "curves.png").write_bytes(b"half")
    an_hour_ago = os.path.getmtime(abandoned) - 3600
    os.utime(abandoned, (an_hour_ago, an_hour_ago))
    assert evaluation_main(["--run", str(run_dir), "--k", "2"]) == 0
    assert not abandoned.exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


# -- 13. no score above 0.5 ----------------------------------------------------------------------
def test_a_report_with_no_score_above_half_says_so_instead_of_nan(tiny_voc, tmp_path):
    run_dir = tmp_path / "run"
    predictions = make_run(run_dir, read_split(tiny_voc.root, "val"))
    low = Predictions(**(predictions.__dict__ | {"scores": predictions.scores * 0.4}))
    save_predictions(run_dir / "val_predictions.npz", low)
    result = _command("evaluation", "--run", str(run_dir), "--k", "2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Tailacc undefined (no image scored above 0.5" in result.stdout
    assert "nan" not in result.stdout.lower()
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "Tailacc is undefined here: no image" in markdown
    assert "Tailacc is nan" not in markdown and "the more often the classifier" not in markdown

    def no_nan(text: str) -> None:
        raise AssertionError(f"summary.json holds {text}")

    summary = json.loads((run_dir / "report" / "summary.json").read_text(), parse_constant=no_nan)
    assert summary["tailacc_mean_first"] is None and summary["tailacc_classes"] == 0


def test_an_unlabelled_report_with_no_score_above_half_says_so(tmp_path):
    arrays = _unlabelled_arrays(("cat", "dog"), ("a.jpg", "b.jpg", "c.jpg"))
    predictions = Predictions(
        arrays["scores"] * 0.4, None, ("a.jpg", "b.jpg", "c.jpg"), ("cat", "dog"), PROVENANCE
    )
    path = save_predictions(tmp_path / "dark.npz", predictions)
    result = _command("evaluation", "--predictions", str(path), "--k", "1")
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "dark-report" / "report.md").read_text()
    assert "No image is scored above 0.5 for any class" in markdown


# -- 11. python -m predictions --out: checked before the scoring pass -----------------------------
def _score(runs: Path, *args: str) -> int:
    return predict_main(["--runs-dir", str(runs), "--workers", "0", "--no-progress", *args])


def test_an_output_folder_that_cannot_be_written_is_refused_before_scoring(
    tiny_model_run, tmp_path
):
    _, runs, _ = tiny_model_run
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    out = blocker / "scores.npz"
    result = _command("predictions", "--runs-dir", str(runs), "--model", "m", "--out", str(out))
    assert_refused(result, str(blocker), "not a writable folder")
    assert "scoring" not in result.stderr and "images/s" not in result.stderr


def test_too_little_room_is_said_before_scoring_and_a_full_disk_names_path_and_size(
    tiny_model_run, tmp_path, monkeypatch, caplog
):
    voc, runs, _ = tiny_model_run
    out = tmp_path / "out" / "scores.npz"
    import shutil

    from predictions.format import file_size_bound

    val_files = tuple(read_split(voc.root, "val").relative_paths)
    needed_mb = f"{file_size_bound(val_files, len(VOC_CLASSES), labelled=True) / 1e6:,.1f} MB"
    assert needed_mb == "1.1 MB"  # scores, labels and names of 16 images, the provenance

    import training.scoring

    def never(*args, **kwargs):
        raise AssertionError("the scoring pass ran")

    real_usage = shutil.disk_usage
    monkeypatch.setattr(training.scoring, "score", never)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000))
    assert _score(runs, "--model", "m", "--out", str(out)) == 2
    message = errors_of(caplog)
    assert "Not enough space for" in message and str(out) in message
    assert f"needs up to {needed_mb}" in message and "0.0 MB free" in message
    monkeypatch.undo()

    def disk_full(path, predictions):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("predictions.__main__.save_predictions", disk_full)
    caplog.clear()
    assert _score(runs, "--model", "m", "--out", str(out)) == 2
    message = errors_of(caplog)
    assert f"Cannot write {out}" in message and "No space left on device" in message
    assert f"needs up to {needed_mb}" in message and "nothing was written" in message
    assert not list(out.parent.iterdir())


# -- the caps and the root's origin, as the library states them ----------------------------------
@pytest.mark.parametrize(
    ("classes", "file_name", "words"),
    [
        (tuple(f"c{i}" for i in range(1001)), "a.jpg", "1,001 classes, more than the 1,000"),
        (("cat",), "x" * 2000 + ".jpg", "2,004 characters in a file name"),
        (("c" * 150,), "a.jpg", "150 characters in a class name"),
    ],
)
def test_the_documented_caps_are_checked_from_the_headers(tmp_path, classes, file_name, words):
    from predictions import load_predictions

    path = _raw_npz(tmp_path / "big.npz", **_unlabelled_arrays(classes, (file_name,)))
    with pytest.raises(PredictionsFormatError, match=words.replace("(", r"\(")):
        load_predictions(path)


def test_image_root_of_says_where_the_root_comes_from(tmp_path, monkeypatch):
    stored, configured = tmp_path / "stored", tmp_path / "configured"
    stored.mkdir()
    configured.mkdir()
    predictions = Predictions(
        np.zeros((1, 1), np.float32), None, ("a.jpg",), ("cat",), {"voc_root": str(stored)}
    )
    by_file = image_root_of(predictions)
    assert by_file.path == stored and by_file.named_by_file
    assert by_file.note == f"images from {stored}, named by the file"

    given = image_root_of(predictions, str(configured))
    assert given.path == configured and not given.named_by_file
    assert given.source == "--voc-root" and given.note.endswith("(--voc-root)")

    monkeypatch.setenv("VOC_ROOT", str(stored))  # the file names the user's own root
    same = image_root_of(predictions)
    assert same.path == stored and same.source == "$VOC_ROOT" and not same.named_by_file

    missing = Predictions(
        np.zeros((1, 1), np.float32), None, ("a.jpg",), ("cat",), {"voc_root": "/no/such"}
    )
    monkeypatch.setenv("VOC_ROOT", str(configured))
    fallback = image_root_of(missing)
    assert fallback.path == configured and fallback.note.endswith("($VOC_ROOT)")
    monkeypatch.delenv("VOC_ROOT")
    assert image_root_of(missing).source == "default"

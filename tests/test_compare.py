"""`python -m evaluation --compare`: the grid of differing options and metrics, refusal of runs
that cannot be compared, the written files, and how runs are named. Run folders are made by
hand (config.json, history.json, val_predictions.npz), no training needed."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluation.__main__ import main as evaluation_main
from evaluation.compare import ComparisonError, compare_runs, resolve_runs
from evaluation.compare_table import (
    GridRow,
    comparison_table,
    differing_columns,
    flatten_options,
)
from predictions import Predictions, save_predictions, write_latest_pointer
from tests.conftest import PROVENANCE, errors_of, snapshot
from tests.test_evaluation import pdf_pages
from vocdata.atomic import atomic_folder
from vocdata.classes import VOC_CLASSES
from vocdata.paths import PROJECT_ROOT

VAL_IMAGES = 40
# A typical config.json of today's trainer (flat); tests change single options.
CONFIG: dict[str, Any] = {
    "arch": "efficientnet_lite0",
    "weights": "imagenet",
    "head": "auto",
    "freeze_backbone": True,
    "lp_ft": False,
    "epochs": 3,
    "lr_head": 0.001,
    "weight_decay": 0.0001,
    "tta": "hflip",
    "folds": 1,
    "seed": 0,
    "difficult": "ignore",
    "device": "auto",
    "workers": 2,
    "progress": False,
    "run_name": None,
    "runs_dir": "runs",
    "voc_root": "data/VOCdevkit/VOC2012",
    "cache_dir": "cache",
    "resume": None,
}


def val_labels(seed: int = 0) -> np.ndarray:
    """VOC labels of VAL_IMAGES images: 1-3 classes each, some difficult; aeroplane never."""
    rng = np.random.default_rng(seed)
    labels = np.full((VAL_IMAGES, len(VOC_CLASSES)), -1, np.int8)
    for row in labels:
        row[rng.choice(np.arange(1, len(VOC_CLASSES)), size=3, replace=False)] = 1
        if rng.random() < 0.3:
            row[rng.integers(1, len(VOC_CLASSES))] = 0
    return labels


def make_run(
    run_dir: Path,
    config: dict[str, Any] | None = None,
    *,
    quality: float = 2.0,
    seed: int = 0,
    labels: np.ndarray | None = None,
    files: tuple[str, ...] | None = None,
    class_names: tuple[str, ...] = VOC_CLASSES,
    provenance: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    crossval: dict[str, Any] | None = None,
    predictions: bool = True,
) -> Path:
    """A run folder as the trainer leaves it; `quality` sets how well scores rank labels."""
    labels = val_labels() if labels is None else labels
    labels = labels[:, : len(class_names)]
    files = files or tuple(f"JPEGImages/2008_{i:06d}.jpg" for i in range(len(labels)))
    rng = np.random.default_rng(seed)
    logits = quality * (labels >= 0) - 1.0 + rng.normal(0, 1.0, labels.shape)
    scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config or CONFIG))
    if history is None:
        history = [
            {
                "epoch": e,
                "train_loss": 1 / e,
                "val_loss": 1.1 / e,
                "val_map": 0.2 + quality * e / 20,
                "val_map_classes": 19,
                "seconds": 2.0 * e,
                "train_images_per_second": 100.0 * quality,
                "peak_gpu_memory_mb": None,
            }
            for e in (1, 2, 3)
        ]
    (run_dir / "history.json").write_text(json.dumps(history))
    if crossval is not None:
        (run_dir / "crossval.json").write_text(json.dumps(crossval))
    if predictions:
        positives = dict.fromkeys(class_names, 5) | {"person": 300, "dog": 40}
        recorded = PROVENANCE | {"epoch": 3, "train_positives": positives} | (provenance or {})
        save_predictions(
            run_dir / "val_predictions.npz",
            Predictions(scores, labels, files, class_names, recorded),
        )
    return run_dir


def pdf_text(path: Path) -> str:
    """The text drawn on the pages of a matplotlib PDF (its strings joined per text object)."""
    data = path.read_bytes()
    streams = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        with contextlib.suppress(zlib.error):  # a stream that is not compressed text
            streams.append(zlib.decompress(match.group(1)))
    pieces = []
    for match in re.finditer(
        rb"\[(.*?)\]\s*TJ|\(((?:\\.|[^\\)])*)\)\s*Tj", b"\n".join(streams), re.S
    ):
        if match.group(1) is not None:
            pieces.append(b"".join(re.findall(rb"\(((?:\\.|[^\\)])*)\)", match.group(1))))
        else:
            pieces.append(match.group(2))
    return b"\n".join(pieces).decode("latin-1")


def grid_of(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "comparison.json").read_text())["grid"]


# -- the grid -----------------------------------------------------------------------------------


def test_identical_options_are_not_columns(tmp_path):
    """Two runs with the same recipe, different names, paths and machines: no option column;
    the machine difference is said in a note."""
    runs = tmp_path / "runs"
    make_run(runs / "a", CONFIG | {"run_name": "a", "workers": 2}, seed=1)
    make_run(
        runs / "b",
        CONFIG | {"run_name": "b", "workers": 8, "runs_dir": "/elsewhere", "device": "cuda"},
        seed=2,
    )
    result = compare_runs(["a", "b"], str(runs), str(tmp_path / "out"))
    header = grid_of(tmp_path / "out")["header"]
    assert header[0] == "run" and header[1].startswith("val mAP")
    assert not {"run_name", "workers", "runs_dir", "device", "lr_head"} & set(header)
    assert "Every hyper-parameter is the same in all rows." in result.grid.notes
    assert any("Machine options differ (device, workers)" in n for n in result.grid.notes)


def test_a_difference_in_one_nested_option_is_a_column(tmp_path):
    runs = tmp_path / "runs"
    nested = {"kind": "prior", "damping": 0.5, "scale": {"init": 1.0}}
    make_run(runs / "a", CONFIG | {"head": nested})
    make_run(runs / "b", CONFIG | {"head": nested | {"damping": 0.7}})
    make_run(runs / "c", CONFIG | {"head": nested | {"scale": {"init": 2}}})
    compare_runs(["a", "b", "c"], str(runs), str(tmp_path / "out"))
    grid = grid_of(tmp_path / "out")
    assert grid["header"][:3] == ["run", "head.damping", "head.scale.init"]
    assert [row[1:3] for row in grid["cells"]] == [["0.5", "1"], ["0.7", "1"], ["0.5", "2"]]


def test_differing_columns_on_plain_option_dicts():
    """The pure API a sweep uses: 1 and 1.0 are one value, a missing option differs, recipe
    options come first, bookkeeping and machine options never count."""
    dicts = [
        {"seed": 1, "lr_head": 1, "weight_decay": 0.1, "zeta": "x", "resume": "r1"},
        {"seed": 2, "lr_head": 1.0, "weight_decay": 0.2, "resume": "r2", "amp": "off"},
    ]
    assert differing_columns(dicts) == ["weight_decay", "seed", "zeta"]
    assert flatten_options({"a": {"b": {"c": 1}, "d": []}, "e": {}}) == {
        "a.b.c": 1,
        "a.d": [],
        "e": {},
    }


def test_best_value_per_column_is_marked():
    rows = [
        GridRow("a", {"lr_head": 1e-3}, {"val_map": 0.50, "wall_seconds": 30.0}),
        GridRow("b", {"lr_head": 3e-3}, {"val_map": 0.55, "wall_seconds": 30.0}),
        GridRow("c", {"lr_head": 1e-2}, {"val_map": None, "wall_seconds": 45.0}),
        GridRow("d", {"lr_head": 3e-2}, {"val_map": float("nan"), "cv_map_mean": 0.4}),
    ]
    same = [GridRow(n, {}, {"val_map": 0.5}) for n in "xy"]
    assert comparison_table(same).best == frozenset()  # all equal: nobody is best
    table = comparison_table(rows)
    assert table.header == ["run", "lr_head", "val mAP", "CV mAP ± std", "wall s"]
    # highest val mAP; lowest wall time, both tied rows; one CV value alone is not "best"
    assert table.best == {(1, 2), (0, 4), (1, 4)}
    assert table.cells[2][2] == "n/a" and table.cells[3][4] == "n/a"
    lines = table.markdown().splitlines()
    assert lines[3] == "| b | 0.003 | **0.5500** | n/a | **30.0** |"
    assert "Best per column in bold: highest val mAP, CV mAP ± std; lowest wall s." in lines


def test_fold_runs_show_the_cv_estimate_and_their_epochs(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "single", CONFIG)
    history = [
        {"fold": f, "epoch": e, "val_map": 0.3 + e / 10, "seconds": 1.0}
        for f in (1, 2)
        for e in (1, 2)
    ]
    crossval = {"folds": 2, "cv_map_mean": 0.45, "cv_map_std": 0.02, "fold_epochs": [2, 1]}
    make_run(runs / "folds", CONFIG | {"folds": 2}, history=history, crossval=crossval)
    compare_runs(["single", "folds"], str(runs), str(tmp_path / "out"))
    grid = grid_of(tmp_path / "out")
    row = dict(zip(grid["header"], grid["cells"][1], strict=True))
    assert row["folds"] == "2"
    assert row["CV mAP ± std"] == "0.4500 ± 0.0200"
    assert row["best epoch"] == "2/1"
    assert row["wall s"] == "4.0"


def test_text_and_numbers_from_files_are_shown_as_they_are(tmp_path):
    """A `$` in a run name or option is drawn, not parsed as math; NaN read from a damaged
    crossval.json becomes null in comparison.json (strict JSON), n/a in the grid."""
    runs = tmp_path / "runs"
    make_run(
        runs / "cost$1$",
        CONFIG | {"head": "$\\frac{$", "folds": 2},
        crossval={
            "cv_map_mean": float("nan"),
            "cv_map_std": None,
            "fold_epochs": [1, {"x": float("nan")}],
        },
    )
    make_run(runs / "plain", CONFIG)
    compare_runs(["cost$1$", "plain"], str(runs), str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert summary["runs"][0]["metrics"]["cv_map_mean"] is None
    assert summary["runs"][0]["options"]["head"] == "$\\frac{$"
    row = dict(zip(summary["grid"]["header"], summary["grid"]["cells"][0], strict=True))
    assert row["CV mAP ± std"] == "n/a" and row["head"] == "$\\frac{$"
    text = pdf_text(tmp_path / "out" / "comparison.pdf")
    assert "\ncost$1$\n" in text and "frac{$" in text


# -- refusals -----------------------------------------------------------------------------------


def _other_files() -> tuple[str, ...]:
    files = [f"JPEGImages/2008_{i:06d}.jpg" for i in range(VAL_IMAGES)]
    files[7] = "JPEGImages/2009_999999.jpg"
    return tuple(files)


@pytest.mark.parametrize(
    ("difference", "expected"),
    [
        ({"files": _other_files()}, ("different val sets", "a: 40 images", "2009_999999")),
        ({"class_names": VOC_CLASSES[:19]}, ("different class lists", "b: 19 classes")),
        ({"provenance": {"difficult": "positive"}}, ("difficult modes", "b: positive")),
        ({"labels": val_labels(seed=5)}, ("different labels", "a and b")),
    ],
    ids=["val-files", "classes", "difficult", "labels"],
)
def test_incomparable_runs_are_refused(tmp_path, caplog, capsys, difference, expected):
    runs = tmp_path / "runs"
    make_run(runs / "a")
    make_run(runs / "b", **difference)
    before = snapshot(runs)
    code = evaluation_main(["--compare", "a", "b", "--runs-dir", str(runs)])
    assert code == 2
    message = errors_of(caplog)
    for words in expected:
        assert words in message
    assert "cannot compare" in message
    assert snapshot(runs) == before  # no comparisons folder, nothing written
    assert capsys.readouterr().out == ""


def test_a_run_without_predictions_is_refused_by_name(tmp_path, caplog):
    runs = tmp_path / "runs"
    make_run(runs / "done")
    make_run(runs / "still-training", predictions=False)
    assert evaluation_main(["--compare", "done", "still-training", "--runs-dir", str(runs)]) == 2
    assert "run still-training" in errors_of(caplog)
    assert "val_predictions.npz yet" in errors_of(caplog)


def test_out_must_not_replace_a_run_folder(tmp_path, caplog):
    runs = tmp_path / "runs"
    make_run(runs / "a")
    make_run(runs / "b", quality=1.0)
    before = snapshot(runs)
    code = evaluation_main(
        ["--compare", "a", "b", "--runs-dir", str(runs), "--out", str(runs / "a")]
    )
    assert code == 2
    assert "holds other files" in errors_of(caplog)
    assert snapshot(runs) == before


# -- what is written ----------------------------------------------------------------------------


def test_pdf_and_markdown_name_every_run_and_mark_the_best(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, quality in (("weak", 0.5), ("strong", 3.0), ("middle", 1.5)):
        make_run(runs / name, CONFIG | {"lr_head": quality / 1000}, quality=quality, seed=3)
    assert evaluation_main(["--compare", "weak", "strong", "middle", "--runs-dir", str(runs)]) == 0
    (out_dir,) = (runs / "comparisons").iterdir()  # the default: a new dated folder
    assert re.fullmatch(r"\d{8}-\d{6}", out_dir.name)
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "comparison.json",
        "comparison.md",
        "comparison.pdf",
        "map_curves.png",
        "per_class_ap.png",
        "tailacc.png",
    ]
    markdown = (out_dir / "comparison.md").read_text()
    text = pdf_text(out_dir / "comparison.pdf")
    assert pdf_pages(out_dir / "comparison.pdf") == 5
    for name in ("weak", "strong", "middle"):
        assert f"| {name} |" in markdown and f"\n{name}\n" in text
    summary = json.loads((out_dir / "comparison.json").read_text())
    maps = {run["name"]: run["metrics"]["val_map"] for run in summary["runs"]}
    assert maps["strong"] > maps["middle"] > maps["weak"]  # the hand-made runs differ as meant
    assert f"| strong | 0.003 | **{maps['strong']:.4f}** |" in markdown
    assert f"| weak | 0.0005 | {maps['weak']:.4f} |" in markdown
    # the mean over classes with >= 20 train images: person and dog in these runs
    frequent = {run["name"]: run["metrics"]["val_map_frequent"] for run in summary["runs"]}
    ap = summary["runs"][0]["ap"]
    assert frequent["weak"] == pytest.approx((ap["person"] + ap["dog"]) / 2)
    assert "mAP ≥20 train (2 classes)" in summary["grid"]["header"]
    assert "comparisons/" in capsys.readouterr().out


def test_a_second_comparison_into_the_same_out_replaces_it_whole(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "a")
    make_run(runs / "b", quality=1.0)
    make_run(runs / "c", quality=3.0)
    out = tmp_path / "cmp"
    compare_runs(["a", "b", "c"], str(runs), str(out))
    (out / "comparison.md").write_text("edited")
    compare_runs(["a", "b"], str(runs), str(out))
    assert "| c |" not in (out / "comparison.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_folder_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target) as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(OSError), atomic_folder(target) as staging:
        (staging / "new.txt").write_text("half")
        raise OSError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]


# -- naming runs --------------------------------------------------------------------------------


def test_globs_latest_and_names_resolve_each_run_once(tmp_path):
    runs = tmp_path / "runs"
    for name in ("lr-1", "lr-2", "other"):
        make_run(runs / name)
    (runs / "comparisons" / "20260101-000000").mkdir(parents=True)
    write_latest_pointer(runs, runs / "other")
    assert resolve_runs(["lr-*", "latest", "lr-1"], str(runs)) == [
        runs / "lr-1",
        runs / "lr-2",
        runs / "other",
    ]
    # a path glob; the comparisons folder matches '*' but is not a run
    assert resolve_runs([str(runs / "*")], str(runs)) == [
        runs / "lr-1",
        runs / "lr-2",
        runs / "other",
    ]
    with pytest.raises(ComparisonError, match="no run folder matches 'nothing-\\*'"):
        resolve_runs(["nothing-*", "lr-1"], str(runs))
    with pytest.raises(ComparisonError, match="at least two runs"):
        resolve_runs(["lr-1", str(runs / "lr-1")], str(runs))


def test_a_broken_config_is_one_error_line_as_a_user_meets_it(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "good")
    make_run(runs / "broken")
    (runs / "broken" / "config.json").write_text('{"arch": "resnet18", ')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation",
            "--compare",
            "good",
            "broken",
            "--runs-dir",
            str(runs),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "broken/config.json" in errors[0] and "not valid JSON" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (runs / "comparisons").exists()

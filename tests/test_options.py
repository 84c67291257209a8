"""The command lines: one parse, resume from the saved config, the shared option spellings."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from evaluation.__main__ import build_parser as evaluation_parser
from gui.options import build_parser as gui_parser
from training.backbones import BACKBONES
from training.bench import build_parser as bench_parser
from training.config import CONFIG_FILENAME, TrainConfig, build_parser, config_from_argv


def _saved_run(tmp_path, **changes) -> tuple[str, TrainConfig]:
    runs = tmp_path / "runs"
    run_dir = runs / "interrupted"
    run_dir.mkdir(parents=True)
    saved = TrainConfig(workers=3, **changes)
    (run_dir / CONFIG_FILENAME).write_text(saved.to_json())
    return str(runs), saved


def test_the_other_programs_need_no_arguments_either():
    for parser in (gui_parser(), evaluation_parser(), bench_parser()):
        parser.parse_args([])  # argparse exits (SystemExit) if an option were required


def test_resume_keeps_the_saved_config_and_applies_options_given_again(tmp_path):
    runs, saved = _saved_run(tmp_path, epochs=3, lr_head=0.5, cache_dir=None, arch="resnet18")
    config = config_from_argv(["--resume", "interrupted", "--runs-dir", runs, "--epochs", "7"])
    expected = asdict(saved) | {
        "epochs": 7,
        "runs_dir": runs,
        "resume": str(tmp_path / "runs" / "interrupted"),
        "run_name": "interrupted",
    }
    assert asdict(config) == expected


def test_resume_ignores_keys_this_version_does_not_know(tmp_path):
    runs, _ = _saved_run(tmp_path)
    path = tmp_path / "runs" / "interrupted" / CONFIG_FILENAME
    path.write_text(json.dumps(json.loads(path.read_text()) | {"retired_option": 1}))
    config = config_from_argv(["--resume", "interrupted", "--runs-dir", runs])
    assert not hasattr(config, "retired_option")


def test_resume_of_a_folder_without_config_names_it(tmp_path):
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        config_from_argv(["--resume", "empty", "--runs-dir", str(tmp_path / "runs")])


@pytest.mark.parametrize("spelling", ["none", "None", ""])
def test_cache_dir_is_switched_off_the_same_way_everywhere(spelling):
    assert config_from_argv(["--cache-dir", spelling]).cache_dir is None
    assert bench_parser().parse_args(["--cache-dir", spelling]).cache_dir is None


def test_arch_choices_come_from_the_backbone_registry():
    for parser in (build_parser(), bench_parser()):
        arch = next(a for a in parser._actions if a.dest == "arch")
        assert list(arch.choices) == list(BACKBONES)

"""House rules that can be checked mechanically."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import tracked_python_files
from vocdata.paths import PROJECT_ROOT


def test_ruff_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_absolute_paths_in_code():
    pattern = re.compile(r"""["'](/home/|/tmp/|/root/|/Users/|/work/|[A-Z]:\\)""")
    offenders = [
        f"{name}:{number}"
        for name in tracked_python_files()
        if not name.startswith("tests/")
        for number, line in enumerate((PROJECT_ROOT / name).read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_entry_points_need_no_arguments():
    """Every option of main_train.py and main_gui.py has a default: parsing nothing works
    (argparse would exit with a usage error if an option were required)."""
    import main_gui
    from training.config import TrainConfig, build_parser, config_from_argv

    assert build_parser().parse_args([]) is not None
    assert config_from_argv([]) == TrainConfig()  # main_train.py's path: all the defaults
    assert main_gui.build_parser().parse_args([]).predictions is None  # the latest run

"""House rules that can be checked mechanically."""

from __future__ import annotations

import re
import subprocess
import sys

from vocdata.files import PROJECT_ROOT

# Virtual environments people keep in the project folder: never project code.
VENV_FOLDERS = {"venv", ".venv", "env", ".env", "virtualenv"}


def _tracked_python_files() -> list[str]:
    """The project's own Python files: tracked by git only (never a venv, never scratch)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "-z", "--", "*.py"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        name
        for name in listed.stdout.split("\0")
        if name and name.split("/")[0] not in VENV_FOLDERS
    ]


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
        for name in _tracked_python_files()
        if not name.startswith("tests/")
        for number, line in enumerate((PROJECT_ROOT / name).read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_entry_points_need_no_arguments():
    for name in ("main_train.py", "main_gui.py"):
        path = PROJECT_ROOT / name
        if path.exists():
            assert "required=True" not in path.read_text(), name

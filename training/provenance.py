"""What produced a run, saved into its folder so that a report on it never asks today's checkout.

`provenance.json` holds the code that computed the loss (the functions' own source, read
with `inspect` when the run started), the versions of the packages `requirements.txt` names
as they were installed, the Python version, and the git commit of the checkout if there is
one. `python -m evaluation` quotes this file; an older run without it is reported as "not
recorded" rather than described with whatever code is checked out now.
"""

from __future__ import annotations

import ast
import inspect
import platform
import re
import subprocess
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

from training.loss import masked_bce_terms, masked_bce_with_logits
from vocdata.paths import PROJECT_ROOT

LOSS_FUNCTIONS = (masked_bce_terms, masked_bce_with_logits)
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def code_without_docstring(function) -> str:
    """`function`'s source as written, minus its docstring (the report shows the maths)."""
    source = textwrap.dedent(inspect.getsource(function))
    body = ast.parse(source).body[0].body
    lines = source.splitlines()
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        del lines[first.lineno - 1 : first.end_lineno]
    return "\n".join(lines)


def package_versions(requirements: Path = PROJECT_ROOT / "requirements.txt") -> dict[str, str]:
    """Installed version of every package `requirements` names ('not installed' if absent)."""
    if not requirements.is_file():
        return {}
    versions = {}
    for line in requirements.read_text().splitlines():
        match = REQUIREMENT_NAME.match(line.split("#", 1)[0])
        if match:
            try:
                versions[match.group(1)] = metadata.version(match.group(1))
            except metadata.PackageNotFoundError:
                versions[match.group(1)] = "not installed"
    return versions


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any] | None:
    """The checkout's commit and whether it had uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def collect_run_provenance() -> dict[str, Any]:
    """Everything `provenance.json` holds (see the module docstring)."""
    return {
        "loss_code": "\n\n".join(code_without_docstring(f) for f in LOSS_FUNCTIONS),
        "loss_module": LOSS_FUNCTIONS[0].__module__,
        "python": platform.python_version(),
        "packages": package_versions(),
        "git": git_state(),
    }

"""File conventions shared by every package: project-relative paths and atomic writes.

They live in `vocdata` because it is the one package all others already depend on
(data flows vocdata -> training -> predictions -> evaluation / gui).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent


def resolve_project_path(path: str | os.PathLike[str]) -> Path:
    """Absolute path for `path`; a relative path is taken relative to the project root.

    Resolving against the project root (not the current directory) makes every default work
    the same whichever directory the user starts a program from.
    """
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = PROJECT_ROOT / candidate
    return Path(os.path.normpath(candidate))


def project_relative(path: str | os.PathLike[str]) -> str:
    """`path` written relative to the project root, with forward slashes, for storing in files.

    Paths on another drive (Windows) cannot be made relative; they are returned unchanged.
    """
    absolute = resolve_project_path(path)
    try:
        relative = os.path.relpath(absolute, PROJECT_ROOT)
    except ValueError:
        return absolute.as_posix()
    return Path(relative).as_posix()


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` as a person should type it: relative inside the project, else absolute (a
    relative path out of the project, like ../../tmp/x, is hard to read and to copy)."""
    absolute = resolve_project_path(path)
    relative = project_relative(absolute)
    return absolute.as_posix() if relative.startswith("..") else relative


def _new_file_mode(target: Path) -> int:
    """The mode a plainly created file would get: the target's own if it exists (a rewrite
    keeps it), else 0o666 minus the umask (a temporary file alone would be 0o600)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    A crash, Ctrl-C or exception while writing never leaves a half-written `path` behind:
    readers see either the old complete file or the new complete one. The file gets the
    permissions the umask gives (others may read reports on a shared machine).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.chmod(tmp_path, _new_file_mode(target))
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)

"""Project-relative paths: where the project lives, and how paths are resolved and stored.

Ground floor of the house (no dependency on any other package of the project), so every
package resolves and writes paths the same way: relative to the project root, never to the
current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_DIR = "runs"  # where run folders go, relative to the project root


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


class UnsafePathError(ValueError):
    """A name read from a file would lead outside the folder it must stay in."""


SAFE_NAME_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
)


def is_plain_name(name: str) -> bool:
    """Letters, digits, `_ - .` only, and not `.` or `..`: safe as one path component on
    every file system (what class names and other names read from files must be)."""
    return bool(name) and name not in (".", "..") and set(name) <= SAFE_NAME_CHARACTERS


def child_path(folder: str | os.PathLike[str], name: str) -> Path:
    """`folder / name` for a file name built from names read from files (a class name, a
    view): refused unless `name` is one plain component that stays inside `folder`."""
    folder = Path(folder)
    if not is_plain_name(name):
        raise UnsafePathError(
            f"refusing to write {name!r} into {folder}: a file name may hold letters, digits "
            f"and _ - . only"
        )
    candidate = folder / name
    if Path(os.path.normpath(candidate)).parent != Path(os.path.normpath(folder)):
        raise UnsafePathError(f"refusing to write outside {folder}: {name!r}")
    return candidate


def resolve_inside(root: str | os.PathLike[str], relative: str) -> Path | None:
    """`root / relative` with symbolic links resolved, or None when it would lead outside
    `root` (a `..`, an absolute name, or a link pointing elsewhere): files named by a
    predictions file are read only from inside the dataset root actually used."""
    base = Path(root).resolve()
    if Path(relative).is_absolute():
        return None
    candidate = (base / relative).resolve()
    return candidate if candidate.is_relative_to(base) else None

"""Compatibility re-export: the helpers now live in `vocdata.paths` and `vocdata.atomic`.

Kept so that code written against the old name keeps importing; new code imports from the
module that says what the helper is.
"""

from vocdata.atomic import atomic_write
from vocdata.paths import PROJECT_ROOT, project_relative, resolve_project_path

__all__ = ["PROJECT_ROOT", "atomic_write", "project_relative", "resolve_project_path"]

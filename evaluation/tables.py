"""Markdown tables: the one writer for every table this project prints or saves.

Pure text, no dependencies: the report, `python -m wsconv` and anything else that writes a
summary use it, so every table has the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; cells are written with `str`."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells, like the header {list(header)}")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def format_number(value: float | None, digits: int = 4, missing: str = "n/a") -> str:
    """`value` with `digits` decimals, or `missing` for None and NaN (an undefined AP, a
    metric a run did not record)."""
    if value is None or value != value:
        return missing
    return f"{value:.{digits}f}"

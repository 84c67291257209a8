"""JSON files read as untrusted input and written atomically.

Every JSON file the programs read (a run's `config.json`, `history.json`, `provenance.json`,
the GUI's marks, a predictions file's provenance) may be damaged or crafted: cut short, not
UTF-8, not JSON, nested deeply enough to exhaust the parser's recursion. `read_json` turns
every such failure into one `JsonFileError` that names the file and what it should have been,
so each caller shows one line instead of a traceback.

Ground floor of the house (no dependency on any other package of the project).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vocdata.atomic import atomic_write

# A file larger than this is not one of ours (the largest, folds.json of full VOC, is ~0.2 MB).
MAX_JSON_BYTES = 64 * 2**20


class JsonFileError(ValueError):
    """A JSON file cannot be used; the message names it and says what it should be."""


def parse_json_text(text: str, what: str) -> Any:
    """`text` parsed as JSON, or a JsonFileError saying it is not `what` (e.g. "a run's
    config.json"). Deep nesting (RecursionError) counts as not JSON we wrote."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise JsonFileError(f"not {what}: it is not valid JSON ({reason[:120]})") from None


def read_json(
    path: str | os.PathLike[str], what: str, expect: type | tuple[type, ...] | None = None
) -> Any:
    """The parsed content of `path`; a JsonFileError naming the file for anything else.

    `what` describes the file for the message ("the run's history.json"); `expect` the type
    the top-level value must have (dict or list).
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise JsonFileError(
                f"{path} is not {what}: it is {path.stat().st_size / 2**20:.0f} MB, far larger "
                f"than such a file can be"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JsonFileError(f"{path} is not {what}: it is not UTF-8 text") from None
    except OSError as error:
        raise JsonFileError(f"cannot read {path} ({what}): {error.strerror or error}") from None
    try:
        data = parse_json_text(text, what)
    except JsonFileError as error:
        raise JsonFileError(f"{path} is {error}") from None
    if expect is not None and not isinstance(data, expect):
        kinds = (expect,) if isinstance(expect, type) else expect
        names = "/".join(kind.__name__ for kind in kinds)
        raise JsonFileError(f"{path} is not {what}: its top level is not a JSON {names}")
    return data


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """`data` as indented JSON (NaN refused: it is not JSON), written atomically."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

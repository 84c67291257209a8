"""Reading torch files (.pt, .pth) as data: tensors and plain containers only, never code.

`torch.load(weights_only=True)` refuses a pickle that names any other Python object, and its
error then suggests loading the file again with the guard off, which would run whatever code
the file names. Every message that reports a failed load goes through `load_error_reason`,
which says what the file holds instead and never repeats that suggestion.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

# The start of torch's message when the weights-only unpickler meets a Python object.
_OBJECTS_REFUSED = "Weights only load failed"
_BLOCKED_NAME = re.compile(r"GLOBAL ([\w.]+)")


class UnreadableTorchFileError(ValueError):
    """A file torch cannot read as tensors and plain data (damaged, another kind of file, or
    holding pickled Python objects); `reason` says which, in words for a message."""

    def __init__(self, path: str | os.PathLike[str], error: BaseException) -> None:
        self.path = path
        self.reason = load_error_reason(error)
        self.holds_objects = holds_python_objects(error)
        super().__init__(f"{path} cannot be read as a torch file: {self.reason}")


def load_weights_only(path: str | os.PathLike[str]) -> Any:
    """The content of a torch file, on the CPU, read without running any code it names. A
    file that cannot be read so is an UnreadableTorchFileError (an OSError stays one)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # torch raises anything from KeyError to RuntimeError here
        raise UnreadableTorchFileError(path, error) from None


def holds_python_objects(error: BaseException) -> bool:
    """Whether a failed load was refused because the file names Python objects (code)."""
    if isinstance(error, UnreadableTorchFileError):
        return error.holds_objects
    return _OBJECTS_REFUSED in str(error)


def load_error_reason(error: BaseException) -> str:
    """Why a torch file could not be read, in a few words for a message (torch's advice to
    turn the weights-only guard off is never passed on)."""
    if isinstance(error, UnreadableTorchFileError):
        return error.reason
    text = str(error)
    if holds_python_objects(error):
        blocked = _BLOCKED_NAME.search(text)
        named = f", e.g. {blocked.group(1)}" if blocked else ""
        return f"it holds pickled Python objects, not only tensors{named}; none was loaded"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first or "weights_only" in first:
        return type(error).__name__
    return f"{type(error).__name__}: {first[:200]}"

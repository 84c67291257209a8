"""What every program must do with a bad file: refuse it in one line, never advise unpickling."""

from __future__ import annotations

import subprocess

# Words of torch's and numpy's advice to load a file by unpickling it, which must never reach a
# user: a hostile file would run code.
UNPICKLE_ADVICE = (
    "allow_pickle",
    "pickle=True",
    "weights_only",
    "can still be loaded",
    "trusted source",
    "safe_globals",
)


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 with one ERROR line holding `words`, no traceback, no advice to unpickle; returns
    that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    for advice in UNPICKLE_ADVICE:
        assert advice not in result.stderr, result.stderr
    return errors[0]

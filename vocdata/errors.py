"""Errors meant for people: each message names the path involved and what to do about it."""


class VocDataError(Exception):
    """The VOC tree is missing, incomplete or inconsistent."""


class VocRootNotFoundError(VocDataError):
    """The configured dataset root does not hold a VOC tree (and it was not downloaded)."""


class ImageReadError(VocDataError):
    """A listed image is missing or cannot be decoded."""


class CacheError(VocDataError):
    """A cache cannot be written or used; the message names the cache's path."""


def describe_error(error: Exception) -> str:
    """One line for a person about an error a program refuses with: our own errors (some
    subclass OSError, like a missing run) keep their message; a system error from a failed file
    operation names its path."""
    if not isinstance(error, OSError) or error.filename is None:
        return str(error)
    if type(error).__module__ != "builtins":
        return str(error)
    return (
        f"cannot use {error.filename}: {error.strerror or error}. Check that the path exists "
        f"and is writable, or choose another one"
    )

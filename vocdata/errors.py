"""Errors meant for people: each message names the path involved and what to do about it."""


class VocDataError(Exception):
    """The VOC tree is missing, incomplete or inconsistent."""


class VocRootNotFoundError(VocDataError):
    """The configured dataset root does not hold a VOC tree (and it was not downloaded)."""


class ImageReadError(VocDataError):
    """A listed image is missing or cannot be decoded."""


class CacheError(VocDataError):
    """A cache cannot be written or used; the message names the cache's path."""


def describe_os_error(error: OSError) -> str:
    """One line for a person about a failed file operation: our own errors (which subclass
    OSError, like a missing run) keep their message; a system error names its path."""
    if error.filename is None or type(error).__module__ != "builtins":
        return str(error)
    return (
        f"cannot use {error.filename}: {error.strerror or error}. Check that the path exists "
        f"and is writable, or choose another one"
    )

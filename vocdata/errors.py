"""Errors meant for people: each message names the path involved and what to do about it."""


class VocDataError(Exception):
    """The VOC tree is missing, incomplete or inconsistent."""


class VocRootNotFoundError(VocDataError):
    """The configured dataset root does not hold a VOC tree (and it was not downloaded)."""


class ImageReadError(VocDataError):
    """A listed image is missing or cannot be decoded."""

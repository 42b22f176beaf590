"""Errors of ``funcgrad.data``: each message names the file or URL, what was wrong, and the fix."""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "DownloadError",
    "IDXFormatError",
]


class DatasetError(ValueError):
    """Base class of every data-loading error in funcgrad."""


class IDXFormatError(DatasetError):
    """An IDX file is malformed: bad magic number, bad dimensions, truncated, or bad gzip data."""


class ChecksumError(DatasetError):
    """A file's SHA-256 digest is not the published one."""


class DownloadError(DatasetError):
    """No mirror delivered a file (every mirror's failure is listed in the message)."""


class DatasetNotFoundError(DatasetError):
    """The data set's files are not on this machine and downloading is off."""

"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Shared by downloads (``funcgrad.data``) and checkpoints (``funcgrad.checkpoint``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "temp_prefix"]

# Read once: the permissions a plain open() would give a new file (mkstemp would give 0o600).
_UMASK = os.umask(0)
os.umask(_UMASK)


def temp_prefix(path: str | os.PathLike[str]) -> str:
    """Return the name prefix of the temporary files ``atomic_write(path)`` creates."""
    return f".{Path(path).name}."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the ``with`` block succeeds.

    The data goes to a hidden temporary file in the same directory (so the final rename cannot
    cross file systems), is flushed and fsync'ed, then ``os.replace``'d onto ``path``. If the block
    raises (including KeyboardInterrupt), the temporary file is removed and ``path`` is untouched:
    an existing file keeps its old contents, and a missing one stays missing. Parent directories
    are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable across a power cut; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

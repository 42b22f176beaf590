"""Download a file from a list of mirrors: verified by SHA-256, written atomically.

The bytes stream into a temporary file next to the destination while being hashed; only a file
whose size and digest match is renamed into place. A failing mirror (refused connection, HTTP
error, timeout, short transfer, wrong digest) is reported and the next one is tried.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from funcgrad.data.atomic import atomic_write
from funcgrad.data.errors import ChecksumError, DownloadError

__all__ = ["download"]

_CHUNK = 1 << 20
_USER_AGENT = "funcgrad (+https://github.com/funcgrad)"


def download(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    *,
    sha256: str,
    size: int | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> Path:
    """Fetch the first of ``urls`` that delivers the expected bytes into ``dest``; return ``dest``.

    Args:
      urls: full URLs of the same file, tried in order.
      dest: where to put it; written atomically (temporary file in the same directory + fsync +
        rename), so ``dest`` is either absent or complete and verified.
      sha256: the expected hex digest of the file's bytes.
      size: the expected size in bytes, if known: a mirror announcing another size is skipped
        without downloading, and a transfer cannot run past it.
      timeout: seconds to wait for each connection or read before giving up on a mirror.
      progress: draw a byte count with ``tqdm.auto`` (a widget in Jupyter, a text line on
        stderr elsewhere), out of the expected size when ``size`` is given or the server sends
        Content-Length. Default (None): in a Jupyter kernel or when stderr is a terminal, never
        into a log or a pipe.

    Raises:
      ChecksumError: if every mirror failed and at least one delivered bytes with the wrong digest
        or size (the message lists every mirror's failure).
      DownloadError: if every mirror failed otherwise (unreachable, HTTP errors, ...).
    Nothing is left at ``dest`` or next to it when an error is raised.
    """
    dest = Path(dest)
    if not urls:
        raise DownloadError(f"no mirror to download {dest.name} from: the URL list is empty.")
    failures: list[str] = []
    digest_failed = False
    for url in urls:
        try:
            _fetch(url, dest, sha256=sha256, size=size, timeout=timeout, progress=progress)
        except ChecksumError as e:
            digest_failed = True
            failures.append(f"  {url}: {e}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"  {url}: {_describe(e)}")
        else:
            return dest
    error = ChecksumError if digest_failed else DownloadError
    raise error(f"could not download {dest.name}; every mirror failed:\n" + "\n".join(failures))


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"unreachable ({e.reason})"
    if isinstance(e, ConnectionError) and e.errno is None:  # raised by _fetch itself
        return str(e)
    if isinstance(e, http.client.IncompleteRead):
        return (
            f"connection closed after {len(e.partial)} bytes, "
            f"{e.expected} more were announced (transfer cut short)"
        )
    return f"{type(e).__name__}: {e}"


def _fetch(
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None,
    timeout: float,
    progress: bool | None,
) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        announced = int(announced) if announced and announced.isdigit() else None
        if size is not None and announced is not None and announced != size:
            raise ChecksumError(f"the server announces {announced} bytes, expected {size}")
        host = urllib.parse.urlsplit(url).hostname or url
        digest = hashlib.sha256()
        received = 0
        with (
            atomic_write(dest) as f,
            tqdm(
                total=size if size is not None else announced,
                desc=dest.name,
                unit="B",
                unit_scale=True,
                postfix=f"from {host}",
                disable=None if progress is None else not progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if size is not None and received > size:
                    raise ChecksumError(f"the server sent more than the expected {size} bytes")
                digest.update(chunk)
                f.write(chunk)
                bar.update(len(chunk))
            if announced is not None and received < announced:
                raise ConnectionError(
                    f"connection closed after {received} of the {announced} bytes announced "
                    "(transfer cut short)"
                )
            if size is not None and received != size:
                raise ChecksumError(f"received {received} bytes, expected {size}")
            if digest.hexdigest() != sha256:
                raise ChecksumError(
                    f"SHA-256 {digest.hexdigest()} of the {received} bytes received, "
                    f"expected {sha256} (corrupt transfer or a different file)"
                )

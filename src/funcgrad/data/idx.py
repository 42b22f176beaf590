"""The IDX file format of MNIST-family data sets: a reader that checks everything, and a writer.

An IDX file is a big-endian header followed by the array's bytes in C order::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte  3     number of dimensions
    then        one uint32 per dimension, then the data (big-endian elements)

So the 32-bit "magic number" is ``type << 8 | ndim``: 2051 (0x0803) for uint8 images of shape
``(count, rows, cols)`` and 2049 (0x0801) for uint8 labels of shape ``(count,)``. Files are
usually gzip-compressed; the reader recognises gzip by its first two bytes, not by the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from funcgrad.data.atomic import atomic_write
from funcgrad.data.errors import IDXFormatError

__all__ = [
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "decode_idx",
    "encode_idx",
    "maybe_decompress",
    "read_idx",
    "write_idx",
]

IMAGES_MAGIC = 2051  # uint8, 3 dimensions
LABELS_MAGIC = 2049  # uint8, 1 dimension

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}

_FIX = "delete it and download it again"


def _describe_magic(magic: int) -> str:
    code, ndim = magic >> 8 & 0xFF, magic & 0xFF
    dtype = _DTYPES.get(code)
    kind = dtype.newbyteorder("=").name if dtype is not None else f"unknown type 0x{code:02X}"
    return f"{magic} (0x{magic:08X}: {kind}, {ndim} dims)"


def maybe_decompress(data: bytes, *, name: str = "<bytes>") -> bytes:
    """Return ``data`` gunzipped if it starts with the gzip magic bytes, else unchanged.

    Raises IDXFormatError naming ``name`` if the gzip stream is truncated or corrupt.
    """
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except EOFError as e:
        raise IDXFormatError(
            f"{name}: the gzip data is truncated ({len(data)} bytes, ends before the end-of-stream "
            f"marker); the file is incomplete: {_FIX}."
        ) from e
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise IDXFormatError(f"{name}: the gzip data is corrupt ({e}); {_FIX}.") from e


def decode_idx(
    data: bytes,
    *,
    name: str = "<bytes>",
    magic: int | None = None,
) -> np.ndarray:
    """Return the array held by uncompressed IDX bytes, after checking header and length.

    Args:
      data: the IDX bytes (already decompressed).
      name: how to name the source in error messages (a file path or URL).
      magic: if given, the magic number the file must have (``IMAGES_MAGIC`` or ``LABELS_MAGIC``).

    Returns a writable native-endian array of the header's shape and element type.

    Raises IDXFormatError naming ``name`` and what is wrong: a bad magic number, an unknown element
    type, a header shorter than its dimensions, or a payload that is shorter (truncated) or longer
    than the dimensions promise.
    """
    if len(data) < 4:
        raise IDXFormatError(
            f"{name}: {len(data)} bytes is too short for an IDX header (at least 4 bytes); "
            f"the file is truncated or not an IDX file: {_FIX}."
        )
    (found,) = struct.unpack(">I", data[:4])
    if found >> 16 != 0 or (found >> 8 & 0xFF) not in _DTYPES or found & 0xFF == 0:
        raise IDXFormatError(
            f"{name}: bad IDX magic number {found} (0x{found:08X}); an IDX file starts with "
            f"0x0000, a known element type and at least one dimension (images: {IMAGES_MAGIC}, "
            f"labels: {LABELS_MAGIC}). The file is corrupt or not an IDX file: {_FIX}."
        )
    if magic is not None and found != magic:
        raise IDXFormatError(
            f"{name}: magic number {_describe_magic(found)}, expected {_describe_magic(magic)}. "
            "Images and labels files may have been swapped or renamed."
        )
    ndim = found & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IDXFormatError(
            f"{name}: the header declares {ndim} dimensions ({header_size} header bytes) but the "
            f"file has only {len(data)} bytes; it is truncated: {_FIX}."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _DTYPES[found >> 8 & 0xFF]
    expected = math.prod(shape) * dtype.itemsize
    found_size = len(data) - header_size
    if found_size != expected:
        what = "truncated" if found_size < expected else "longer than its header says"
        dims = "×".join(map(str, shape))
        raise IDXFormatError(
            f"{name}: the header promises {dims} {dtype.newbyteorder('=').name} values "
            f"({expected} bytes after the {header_size}-byte header) but there are {found_size}: "
            f"the file is {what}; {_FIX}."
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_size)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> np.ndarray:
    """Return the array stored in an IDX file (gzip-compressed or raw), after checking it.

    Args:
      path: the file.
      magic: if given, the magic number the file must have (``IMAGES_MAGIC`` = 2051 for images,
        ``LABELS_MAGIC`` = 2049 for labels).

    Raises IDXFormatError naming the file and what is wrong (see ``decode_idx``), and
    FileNotFoundError if it does not exist.
    """
    path = Path(path)
    data = maybe_decompress(path.read_bytes(), name=str(path))
    return decode_idx(data, name=str(path), magic=magic)


def encode_idx(array: np.ndarray, *, compress: bool = False) -> bytes:
    """Return the IDX bytes of ``array`` (gzip-compressed if ``compress``), reproducibly.

    The element type must be one IDX can hold: uint8, int8, int16, int32, float32 or float64.
    The gzip header carries no file name or time, so equal arrays give equal bytes.
    """
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        valid = ", ".join(sorted(d.name for d in _CODES))
        raise ValueError(f"IDX cannot hold dtype {array.dtype}; use one of: {valid}.")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX holds arrays of 1 to 255 dimensions, got shape {array.shape}.")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    return gzip.compress(data, mtime=0) if compress else data


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``, atomically."""
    data = encode_idx(array, compress=str(path).endswith(".gz"))
    with atomic_write(path) as f:
        f.write(data)

"""The IDX reader checks magic numbers, dimensions and lengths, and names the file when it fails."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from funcgrad.data import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    IDXFormatError,
    decode_idx,
    encode_idx,
    read_idx,
    write_idx,
)
from funcgrad.data.atomic import atomic_write


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


def test_header_is_the_published_layout(images):
    data = encode_idx(images)
    assert struct.unpack(">IIII", data[:16]) == (IMAGES_MAGIC, 7, 28, 28)
    assert data[16:] == images.tobytes()
    labels = encode_idx(np.arange(5, dtype=np.uint8))
    assert struct.unpack(">II", labels[:8]) == (LABELS_MAGIC, 5)


@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_round_trip_through_a_file(tmp_path, images, name):
    path = tmp_path / name
    write_idx(path, images)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    out = read_idx(path, magic=IMAGES_MAGIC)
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)
    out[0, 0, 0] = 1  # the result is an ordinary writable array


def test_gzip_is_recognised_by_content_not_by_name(tmp_path, images):
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(encode_idx(images)))
    np.testing.assert_array_equal(read_idx(path), images)


def test_compressed_bytes_are_reproducible(images):
    assert encode_idx(images, compress=True) == encode_idx(images.copy(), compress=True)


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(["u1", "i1", ">i2", "<i4", "f4", ">f8"]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_every_idx_type_round_trips_bit_exactly(array):
    out = decode_idx(encode_idx(array))
    assert out.shape == array.shape
    assert out.dtype == array.dtype.newbyteorder("=")
    assert out.tobytes() == array.astype(out.dtype).tobytes()


def test_truncated_payload_names_file_and_sizes(tmp_path, images):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(encode_idx(images)[:-100])
    with pytest.raises(IDXFormatError, match="truncated") as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "7×28×28" in message and str(7 * 28 * 28) in message
    assert "download it again" in message


def test_trailing_bytes_are_an_error(tmp_path, images):
    path = tmp_path / "x.idx"
    path.write_bytes(encode_idx(images) + b"\0\0\0")
    with pytest.raises(IDXFormatError, match="longer than its header says"):
        read_idx(path)


def test_truncated_gzip_names_file(tmp_path, images):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(encode_idx(images, compress=True)[:-20])
    with pytest.raises(IDXFormatError, match=r"gzip data is truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_names_file(tmp_path, images):
    data = bytearray(encode_idx(images, compress=True))
    data[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(IDXFormatError, match="gzip data is corrupt") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"\x00\x00", "too short for an IDX header"),
        (b"PK\x03\x04" + bytes(20), "bad IDX magic number"),  # a zip file, not IDX
        (b"\x00\x00\x07\x01" + bytes(8), "bad IDX magic number"),  # unknown type 0x07
        (b"\x00\x00\x08\x00", "bad IDX magic number"),  # zero dimensions
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "declares 3 dimensions"),  # header cut short
    ],
)
def test_malformed_headers(tmp_path, header, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(header)
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_expected_magic_catches_swapped_files(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.arange(10, dtype=np.uint8))  # actually a labels file
    with pytest.raises(IDXFormatError, match=r"2049 .* expected 2051 .*swapped") as info:
        read_idx(path, magic=IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_writer_rejects_what_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="IDX cannot hold dtype uint16"):
        encode_idx(np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        encode_idx(np.uint8(3))


def test_a_write_failing_midway_leaves_the_previous_file(tmp_path, images):
    path = tmp_path / "images.idx.gz"
    write_idx(path, images)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write(b"half of a new file")
        f.flush()
        assert len(list(tmp_path.iterdir())) == 2  # the new bytes go to a temporary file
        raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["images.idx.gz"]


def test_atomic_write_creates_parents_with_normal_permissions(tmp_path):
    path = tmp_path / "a" / "b" / "file"
    with atomic_write(path) as f:
        f.write(b"data")
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o644 == 0o644  # not mkstemp's 0o600

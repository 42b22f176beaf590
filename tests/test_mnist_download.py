"""load_mnist finds, verifies, downloads and caches IDX files; never touches the network.

Downloads are served by an HTTP server on 127.0.0.1 in a thread; the data set registry is pointed
at small generated IDX files whose digests the tests compute.
"""

import dataclasses
import gzip
import hashlib
import http.server
import io
import socket
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tqdm import tqdm

import funcgrad as fg
from funcgrad.data import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    IDXFormatError,
    encode_idx,
    load_mnist,
    normalize,
)
from funcgrad.data import mnist as mnist_module
from funcgrad.data.download import download
from funcgrad.data.mnist import DatasetSpec, IDXFileSpec

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SIZES = {"train": 50, "test": 20}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def published_gzip(payload: bytes, name: str) -> bytes:
    """Gzip as the data set authors did: the header carries the original file name."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(payload)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    for var in ("FUNCGRAD_DATA", "FUNCGRAD_MIRRORS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def tiny(monkeypatch):
    """Register a small generated data set as "mnist"; return its arrays and published bytes."""
    rng = np.random.default_rng(0)
    arrays, gz, idx, files = {}, {}, {}, {}
    for split, n in SIZES.items():
        prefix = "train" if split == "train" else "t10k"
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        arrays[split] = (images, labels)
        specs = []
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            idx[name] = encode_idx(array)
            gz[name] = published_gzip(idx[name], name[:-3])
            specs.append(IDXFileSpec(name, len(gz[name]), sha256(gz[name])))
        files[split] = tuple(specs)
    spec = DatasetSpec(
        name="mnist",
        title="Tiny-MNIST",
        files=files,
        num_examples=dict(SIZES),
    )
    monkeypatch.setitem(mnist_module.DATASETS, "mnist", spec)
    # Nothing found by accident, and never the real mirrors (port 9 refuses connections).
    monkeypatch.setitem(mnist_module.KNOWN_DIRS, "mnist", ())
    monkeypatch.setitem(mnist_module.MIRRORS, "mnist", ("http://127.0.0.1:9/never-used/",))
    return dataclasses.make_dataclass("Tiny", ["spec", "arrays", "gz", "idx"])(
        spec, arrays, gz, idx
    )


class Server:
    """An HTTP server on 127.0.0.1 serving ``routes`` (path -> bytes); records requested paths."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.cut_short: set[str] = set()  # announce the full length, send half, hang up
        self.no_length: set[str] = set()  # send no Content-Length (HTTP/1.0: the end is EOF)
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if self.path not in server.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.cut_short else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def mirror(self, prefix: str, files: dict[str, bytes]) -> str:
        for name, body in files.items():
            self.routes[f"/{prefix}/{name}"] = body
        return f"{self.base}/{prefix}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def dead_mirror():
    """A URL on a port where nothing listens: the connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def cache_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_split(result, expected):
    images, labels = result
    assert images.dtype == np.uint8 and images.shape == expected[0].shape
    assert labels.dtype == np.int32 and labels.shape == expected[1].shape
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


# --- downloads ---------------------------------------------------------------------------------


def test_good_download_is_cached_and_reused(tiny, server, tmp_path):
    mirror = server.mirror("mnist", tiny.gz)
    result = load_mnist("mnist", "train", data_dir=tmp_path, mirrors=[mirror])
    assert_split(result, tiny.arrays["train"])
    assert cache_files(tmp_path) == [
        "mnist/.train-images-idx3-ubyte.gz.verified",
        "mnist/.train-labels-idx1-ubyte.gz.verified",
        "mnist/train-images-idx3-ubyte.gz",
        "mnist/train-labels-idx1-ubyte.gz",
    ]
    assert (tmp_path / "mnist/train-images-idx3-ubyte.gz").read_bytes() == tiny.gz[
        "train-images-idx3-ubyte.gz"
    ]
    assert server.requests == [
        "/mnist/train-images-idx3-ubyte.gz",
        "/mnist/train-labels-idx1-ubyte.gz",
    ]
    # Second time: from the cache, no request.
    assert_split(
        load_mnist("mnist", "train", data_dir=tmp_path, download=False), tiny.arrays["train"]
    )
    assert_split(
        load_mnist("mnist", "train", data_dir=tmp_path, mirrors=[mirror]), tiny.arrays["train"]
    )
    assert len(server.requests) == 2


def test_hash_mismatch_is_an_error_and_leaves_nothing_in_the_cache(tiny, server, tmp_path):
    tampered = dict(tiny.gz)
    body = bytearray(tampered["train-images-idx3-ubyte.gz"])
    body[100] ^= 0x01  # same size, one bit different
    tampered["train-images-idx3-ubyte.gz"] = bytes(body)
    mirror = server.mirror("evil", tampered)
    with pytest.raises(ChecksumError) as info:
        load_mnist("mnist", "train", data_dir=tmp_path, mirrors=[mirror])
    message = str(info.value)
    assert f"{mirror}train-images-idx3-ubyte.gz" in message
    assert tiny.spec.files["train"][0].sha256 in message and sha256(bytes(body)) in message
    assert "It needs this file:" in message  # and how to get it by hand
    assert cache_files(tmp_path) == []


def test_dead_mirrors_fall_back_to_the_next(tiny, server, tmp_path, dead_mirror):
    missing = f"{server.base}/gone/"  # answers 404
    good = server.mirror("mnist", tiny.gz)
    result = load_mnist("mnist", "test", data_dir=tmp_path, mirrors=[dead_mirror, missing, good])
    assert_split(result, tiny.arrays["test"])
    assert server.requests == [
        "/gone/t10k-images-idx3-ubyte.gz",
        "/mnist/t10k-images-idx3-ubyte.gz",
        "/gone/t10k-labels-idx1-ubyte.gz",
        "/mnist/t10k-labels-idx1-ubyte.gz",
    ]


def test_a_corrupt_mirror_falls_back_to_the_next(tiny, server, tmp_path):
    bad = server.mirror("bad", {name: body[::-1] for name, body in tiny.gz.items()})
    good = server.mirror("good", tiny.gz)
    assert_split(load_mnist("mnist", data_dir=tmp_path, mirrors=[bad, good]), tiny.arrays["train"])


def test_every_mirror_dead_lists_each_failure(tiny, server, tmp_path, dead_mirror):
    missing = f"{server.base}/gone/"
    with pytest.raises(DownloadError) as info:
        load_mnist("mnist", data_dir=tmp_path, mirrors=[dead_mirror, missing])
    message = str(info.value)
    assert f"{dead_mirror}train-images-idx3-ubyte.gz: unreachable" in message
    assert f"{missing}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert str(tmp_path / "mnist") in message  # where to put the files by hand
    assert cache_files(tmp_path) == []


def test_truncated_transfer_is_an_error(tiny, server, tmp_path):
    mirror = server.mirror("mnist", tiny.gz)
    server.cut_short.add("/mnist/train-images-idx3-ubyte.gz")
    with pytest.raises(DownloadError, match="cut short"):
        load_mnist("mnist", data_dir=tmp_path, mirrors=[mirror])
    assert cache_files(tmp_path) == []


def test_truncated_file_on_the_mirror_is_an_error(tiny, server, tmp_path):
    short = dict(tiny.gz)
    short["train-images-idx3-ubyte.gz"] = short["train-images-idx3-ubyte.gz"][:-50]
    mirror = server.mirror("mnist", short)
    with pytest.raises(ChecksumError, match=r"announces .* bytes, expected"):
        load_mnist("mnist", data_dir=tmp_path, mirrors=[mirror])
    assert cache_files(tmp_path) == []


def test_mirrors_from_the_environment(tiny, server, tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCGRAD_MIRRORS", server.mirror("env", tiny.gz).rstrip("/"))
    monkeypatch.setenv("FUNCGRAD_DATA", str(tmp_path))
    assert_split(load_mnist("mnist", "test"), tiny.arrays["test"])
    assert server.requests[0] == "/env/t10k-images-idx3-ubyte.gz"
    assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


class FakeTerminal(io.StringIO):
    """What tqdm sees on a terminal: a tty that takes UTF-8."""

    encoding = "utf-8"

    def isatty(self):
        return True


def test_download_draws_a_byte_bar_with_the_announced_size_on_terminals(
    tiny, server, tmp_path, monkeypatch
):
    mirror = server.mirror("mnist", tiny.gz)
    name = "t10k-images-idx3-ubyte.gz"
    size, digest = len(tiny.gz[name]), sha256(tiny.gz[name])
    total = tqdm.format_sizeof(size)  # as tqdm writes it: "15.7k"
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    # Default progress on a terminal; the size is not given, so the total is Content-Length's.
    download([mirror + name], tmp_path / "a" / name, sha256=digest)
    lines = terminal.getvalue().split("\r")
    assert lines[0] == ""  # every draw starts at the beginning of the line
    assert lines[1].startswith(f"{name}:   0%|          | 0.00/{total} [00:00<?, ?B/s, from ")
    assert lines[-1].startswith(f"{name}: 100%|██████████| {total}/{total} [")
    assert lines[-1].endswith("B/s, from 127.0.0.1]\n")
    # Asked not to: nothing, even on a terminal.
    before = terminal.getvalue()
    download([mirror + name], tmp_path / "b" / name, sha256=digest, size=size, progress=False)
    assert terminal.getvalue() == before


def test_download_without_content_length_counts_bytes(tiny, server, tmp_path, capsys):
    mirror = server.mirror("mnist", tiny.gz)
    name = "t10k-images-idx3-ubyte.gz"
    server.no_length.add(f"/mnist/{name}")
    digest = sha256(tiny.gz[name])
    download([mirror + name], tmp_path / name, sha256=digest, progress=True)  # a pipe, but asked
    err = capsys.readouterr().err
    last = err.split("\r")[-1]
    assert last.startswith(f"{name}: {tqdm.format_sizeof(len(tiny.gz[name]))}B [")
    assert "%" not in err and "|" not in err  # no total: no percentage, no bar
    assert last.endswith("B/s, from 127.0.0.1]\n")


def test_download_draws_nothing_into_logs(tiny, server, tmp_path, capsys):
    mirror = server.mirror("mnist", tiny.gz)
    name = "t10k-images-idx3-ubyte.gz"
    size, digest = len(tiny.gz[name]), sha256(tiny.gz[name])
    download([mirror + name], tmp_path / name, sha256=digest, size=size)  # not a terminal
    load_mnist("mnist", "test", data_dir=tmp_path / "cache", mirrors=[mirror])
    assert capsys.readouterr() == ("", "")


# --- local files -------------------------------------------------------------------------------


def test_offline_with_nothing_names_files_dirs_and_fixes(tmp_path, monkeypatch):
    monkeypatch.setitem(mnist_module.KNOWN_DIRS, "fashion-mnist", (str(tmp_path / "usr-share"),))
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("fashion_mnist", "test", data_dir=tmp_path / "cache", download=False)
    message = str(info.value)
    for needed in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert needed in message
    assert str(tmp_path / "cache" / "fashion-mnist") in message
    assert str(tmp_path / "usr-share") in message
    assert "FUNCGRAD_DATA" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not (tmp_path / "cache").exists()


def test_truncated_local_file_is_rejected_and_kept(tiny, tmp_path, server):
    cache = tmp_path / "mnist"
    cache.mkdir()
    for name, body in tiny.gz.items():
        (cache / name).write_bytes(body)
    truncated = tiny.gz["train-images-idx3-ubyte.gz"][:-300]
    (cache / "train-images-idx3-ubyte.gz").write_bytes(truncated)
    with pytest.raises(
        DatasetNotFoundError, match=r"Rejected:\n.*train-images.*is not valid gzip data"
    ):
        load_mnist("mnist", data_dir=tmp_path, download=False)
    # Downloading would replace the user's file: refuse, say why and what to do.
    with pytest.raises(ChecksumError, match="Delete it"):
        load_mnist("mnist", data_dir=tmp_path, mirrors=[server.mirror("m", tiny.gz)])
    assert (cache / "train-images-idx3-ubyte.gz").read_bytes() == truncated
    # verify=False uses it anyway; the IDX reader then names the file and the problem.
    with pytest.warns(UserWarning, match="verify=False"), pytest.raises(IDXFormatError) as info:
        load_mnist("mnist", data_dir=tmp_path, download=False, verify=False)
    assert str(cache / "train-images-idx3-ubyte.gz") in str(info.value)
    assert "truncated" in str(info.value)


def test_recompressed_copy_is_accepted_by_its_idx_digest(tiny, tmp_path, monkeypatch):
    # Like Debian's Fashion-MNIST: same IDX bytes, gzip header without the file name.
    files = {
        split: tuple(dataclasses.replace(f, idx_sha256=sha256(tiny.idx[f.filename])) for f in fs)
        for split, fs in tiny.spec.files.items()
    }
    known = tmp_path / "usr-share"
    spec = dataclasses.replace(tiny.spec, files=files)
    monkeypatch.setitem(mnist_module.DATASETS, "mnist", spec)
    monkeypatch.setitem(mnist_module.KNOWN_DIRS, "mnist", (str(known),))
    known.mkdir()
    (known / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(tiny.idx["t10k-images-idx3-ubyte.gz"], mtime=0)
    )
    (known / "t10k-labels-idx1-ubyte").write_bytes(tiny.idx["t10k-labels-idx1-ubyte.gz"])  # raw
    assert sha256((known / "t10k-images-idx3-ubyte.gz").read_bytes()) != sha256(
        tiny.gz["t10k-images-idx3-ubyte.gz"]
    )
    result = load_mnist("mnist", "test", data_dir=tmp_path / "cache", download=False)
    assert_split(result, tiny.arrays["test"])
    assert not (tmp_path / "cache").exists()  # nothing copied or written


def test_recompressed_copy_without_known_idx_digest_needs_verify_false(tiny, tmp_path):
    cache = tmp_path / "mnist"
    cache.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (cache / name).write_bytes(gzip.compress(tiny.idx[name], mtime=0))
    with pytest.raises(DatasetNotFoundError, match="pass verify=False to use it anyway"):
        load_mnist("mnist", data_dir=tmp_path, download=False)
    with pytest.warns(UserWarning, match=r"using .*ubyte\.gz although .* \(verify=False\)"):
        result = load_mnist("mnist", data_dir=tmp_path, download=False, verify=False)
    assert_split(result, tiny.arrays["train"])


def test_verified_marker_skips_rehashing_until_the_file_changes(
    tiny, server, tmp_path, monkeypatch
):
    load_mnist("mnist", data_dir=tmp_path, mirrors=[server.mirror("m", tiny.gz)])
    monkeypatch.setattr(mnist_module, "_VERIFIED", set())  # as in a new process

    def no_hashing(data):
        raise AssertionError("hashed a file already verified")

    monkeypatch.setattr(mnist_module, "_sha256", no_hashing)
    assert_split(load_mnist("mnist", data_dir=tmp_path, download=False), tiny.arrays["train"])

    # A changed file (new size and mtime) is hashed again, and rejected.
    monkeypatch.undo()
    monkeypatch.setattr(mnist_module, "_VERIFIED", set())
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(tiny.idx["train-labels-idx1-ubyte.gz"]))
    with pytest.raises(DatasetNotFoundError, match=r"train-labels-idx1-ubyte\.gz: its SHA-256"):
        load_mnist("mnist", data_dir=tmp_path, download=False)


def test_files_of_the_wrong_split_are_caught(tiny, tmp_path, monkeypatch):
    # Test files put under training names (digests matched to them, as with verify=False).
    cache = tmp_path / "mnist"
    cache.mkdir()
    (cache / "train-images-idx3-ubyte.gz").write_bytes(tiny.gz["t10k-images-idx3-ubyte.gz"])
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(tiny.gz["t10k-labels-idx1-ubyte.gz"])
    with pytest.warns(UserWarning), pytest.raises(IDXFormatError, match=r"expected \(50, 28, 28\)"):
        load_mnist("mnist", data_dir=tmp_path, download=False, verify=False)


@pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(),
    reason=f"{DEBIAN_DIR} is absent: apt-get install dataset-fashion-mnist (CI installs it)",
)
def test_debian_fashion_mnist_is_found_and_accepted(tmp_path):
    images, labels = fg.data.load_mnist("fashion-mnist", "train", data_dir=tmp_path, download=False)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
    images, labels = fg.data.load_mnist("FashionMNIST", "test", data_dir=tmp_path, download=False)
    assert images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
    assert 0 < images.mean() < 255
    assert list(tmp_path.iterdir()) == []  # used in place, nothing copied


# --- names, normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("mnist", "mnist"),
        ("MNIST", "mnist"),
        ("fashion_mnist", "fashion-mnist"),
        ("Fashion-MNIST", "fashion-mnist"),
        ("FashionMNIST", "fashion-mnist"),
    ],
)
def test_name_aliases(name, canonical):
    assert mnist_module._dataset_spec(name).name == canonical


def test_bad_name_or_split_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'kmnist'; valid names: 'mnist', 'fash"):
        load_mnist("kmnist", data_dir=tmp_path)
    with pytest.raises(
        ValueError, match="unknown split 'validation'; valid splits: 'train', 'test'"
    ):
        load_mnist("mnist", "validation", data_dir=tmp_path)


def test_normalize():
    images = np.array([[0, 51, 255]], dtype=np.uint8)
    x = normalize(images)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.0, 0.2, 1.0]])
    z = normalize(images, mean=0.2, std=0.5)
    np.testing.assert_allclose(z, [[-0.4, 0.0, 1.6]], rtol=1e-6)
    mean, std = fg.data.NORMALIZATION["fashion-mnist"]
    np.testing.assert_allclose(normalize(images, mean="fashion_mnist"), (x - mean) / std)
    assert isinstance(normalize(jnp.asarray(images)), jax.Array)
    with pytest.raises(ValueError, match="both mean and std"):
        normalize(images, mean=0.5)

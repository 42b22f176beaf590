"""MNIST and Fashion-MNIST: find the IDX files on this machine or download them, verify, load.

Where a split's two files (images, labels) are looked for, in order:

1. the cache: ``<data_dir>/<name>/``, where ``data_dir`` is the argument, else ``$FUNCGRAD_DATA``,
   else ``$XDG_CACHE_HOME/funcgrad`` (``~/.cache/funcgrad``);
2. known folders where packages put them (``KNOWN_DIRS``): Debian's ``dataset-fashion-mnist``
   installs Fashion-MNIST under /usr/share/datasets/fashion-mnist, Keras caches it under
   ~/.keras/datasets/fashion-mnist;
3. the mirrors (``MIRRORS``, or ``$FUNCGRAD_MIRRORS``, or the ``mirrors=`` argument), in order,
   downloading into the cache.

Each file may be gzip-compressed (``train-images-idx3-ubyte.gz``) or not
(``train-images-idx3-ubyte``). A download is accepted only if its SHA-256 is the published digest of
the .gz file. A local file is accepted if its SHA-256 is that published digest, or if the digest of
its decompressed IDX bytes is the known one: Debian recompressed its copy of Fashion-MNIST (the .gz
lost its file-name field, so its digest differs) but the IDX data inside is the same. For MNIST the
decompressed digests are not recorded here, so a recompressed or uncompressed MNIST copy is
rejected; to use it anyway pass ``verify=False`` (a warning names the file; the IDX reader still
checks magic numbers, shapes, lengths and label range), or delete it and let ``load_mnist``
download the published files.

Verifying costs one SHA-256 pass over the file (~0.1 s for the 26 MB Fashion-MNIST training
images). It is done once: the result is remembered for the process, and for files in the cache
also in a small marker file next to it (``.<file>.verified``) keyed by size and modification
time, so later runs skip it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from funcgrad.data.atomic import atomic_write
from funcgrad.data.download import download as download_file
from funcgrad.data.errors import (
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    IDXFormatError,
)
from funcgrad.data.idx import IMAGES_MAGIC, LABELS_MAGIC, decode_idx, maybe_decompress

__all__ = [
    "DATASETS",
    "KNOWN_DIRS",
    "MIRRORS",
    "NORMALIZATION",
    "DatasetSpec",
    "IDXFileSpec",
    "default_data_dir",
    "load_mnist",
    "normalize",
]

# Base URLs, tried in order; a file's URL is the base followed by its file name. These are the
# mirrors the major loaders use (PyTorch's S3 mirror; Google's CVDF bucket used by TFDS and JAX's
# examples; the Fashion-MNIST authors' S3 site; Keras's bucket). The original
# http://yann.lecun.com/exdb/mnist/ is left out: it answers 403/404 to scripts since 2024.
# ``$FUNCGRAD_MIRRORS`` (whitespace-separated base URLs) replaces these for every data set.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
}

# Folders where other software installs the files, searched after the cache.
KNOWN_DIRS: dict[str, tuple[str, ...]] = {
    "mnist": (),
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist"),
}

# Mean and standard deviation of the training pixels scaled to [0, 1], for ``normalize``.
NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}


@dataclasses.dataclass(frozen=True)
class IDXFileSpec:
    """One published file: its name, and the size and SHA-256 of the published .gz."""

    filename: str
    size: int
    sha256: str
    # SHA-256 of the decompressed IDX bytes, where known: accepts recompressed local copies.
    idx_sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a data set's files are and what they must contain (mirrors: ``MIRRORS[name]``)."""

    name: str
    title: str
    files: dict[str, tuple[IDXFileSpec, IDXFileSpec]]  # split -> (images, labels)
    num_examples: dict[str, int]  # split -> count
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10
    install_hint: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        files={
            "train": (
                IDXFileSpec(
                    "train-images-idx3-ubyte.gz",
                    9912422,
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                ),
                IDXFileSpec(
                    "train-labels-idx1-ubyte.gz",
                    28881,
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                ),
            ),
            "test": (
                IDXFileSpec(
                    "t10k-images-idx3-ubyte.gz",
                    1648877,
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                ),
                IDXFileSpec(
                    "t10k-labels-idx1-ubyte.gz",
                    4542,
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
            ),
        },
        num_examples={"train": 60000, "test": 10000},
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        files={
            "train": (
                IDXFileSpec(
                    "train-images-idx3-ubyte.gz",
                    26421880,
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                ),
                IDXFileSpec(
                    "train-labels-idx1-ubyte.gz",
                    29515,
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                ),
            ),
            "test": (
                IDXFileSpec(
                    "t10k-images-idx3-ubyte.gz",
                    4422102,
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                ),
                IDXFileSpec(
                    "t10k-labels-idx1-ubyte.gz",
                    5148,
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                ),
            ),
        },
        num_examples={"train": 60000, "test": 10000},
        install_hint="on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist",
    ),
}

_NAME_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fashion": "fashion-mnist",
}
_SPLIT_ALIASES = {"train": "train", "test": "test", "t10k": "test"}

# Files verified in this process: (resolved path, size, mtime_ns, published digest).
_VERIFIED: set[tuple[str, int, int, str]] = set()


def default_data_dir() -> Path:
    """Return the cache root: ``$FUNCGRAD_DATA``, else ``$XDG_CACHE_HOME/funcgrad`` (~/.cache)."""
    if env := os.environ.get("FUNCGRAD_DATA"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "funcgrad"


def load_mnist(
    name: str = "mnist",
    split: Literal["train", "test"] = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of an MNIST-family split: uint8 ``(N, 28, 28)``, int32 ``(N,)``.

    Args:
      name: ``"mnist"`` or ``"fashion-mnist"`` (also ``"fashion_mnist"``, ``"FashionMNIST"``,
        ``"fashion"``).
      split: ``"train"`` (60000 examples) or ``"test"`` (10000).
      data_dir: the cache root; files live in ``<data_dir>/<name>/``. Default: ``$FUNCGRAD_DATA``,
        else ``~/.cache/funcgrad``.
      download: fetch missing files from the mirrors into the cache. If False and the files are
        not on this machine, raise DatasetNotFoundError saying which files to put where.
      mirrors: base URLs to download from, in order (default ``$FUNCGRAD_MIRRORS`` if set, else
        ``MIRRORS[name]``).
      verify: if False, a local file whose digest is not the published one is used anyway, with a
        warning (for a recompressed or uncompressed MNIST copy). Downloads are always verified.

    Images are pixel intensities 0..255 (0 is background); labels are class indices 0..9. See
    ``normalize`` to get float32 inputs. The search order, verification and caching are described
    in this module's docstring.

    Raises:
      ValueError: unknown ``name`` or ``split`` (the message lists the valid ones).
      DatasetNotFoundError: files missing and ``download=False``.
      DownloadError / ChecksumError: every mirror failed, or a cached file is not the published
        one (the message says how to fix it).
      IDXFormatError: a file is truncated or malformed (named in the message).
    """
    spec = _dataset_spec(name)
    split = _split_name(split)
    cache_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    cache_dir = cache_dir / spec.name
    search_dirs = [cache_dir, *(Path(d).expanduser() for d in KNOWN_DIRS.get(spec.name, ()))]

    payloads: dict[str, tuple[Path, bytes]] = {}
    rejected: list[str] = []
    for role, fspec in zip(("images", "labels"), spec.files[split]):
        found = _find_local(fspec, search_dirs, cache_dir, verify=verify, rejected=rejected)
        if found is not None:
            payloads[role] = found
    missing = [
        fspec
        for role, fspec in zip(("images", "labels"), spec.files[split])
        if role not in payloads
    ]
    if missing and not download:
        raise DatasetNotFoundError(
            f"{spec.title} ({split} split) is not on this machine and download=False.\n"
            + _where_to_put(spec, missing, search_dirs, cache_dir, rejected)
        )
    for fspec in missing:
        path = _download(spec, fspec, cache_dir, mirrors, search_dirs, rejected)
        role = "images" if fspec is spec.files[split][0] else "labels"
        payloads[role] = (path, maybe_decompress(path.read_bytes(), name=str(path)))
    return _decode_split(spec, split, payloads["images"], payloads["labels"])


def normalize(
    images: np.ndarray,
    *,
    mean: float | str | None = None,
    std: float | None = None,
) -> np.ndarray:
    """Return uint8 pixels as float32 in [0, 1], or standardised ``(x/255 - mean)/std``.

    ``mean`` may name a data set (``"mnist"``, ``"fashion-mnist"``) to use its training-set pixel
    mean and standard deviation (``NORMALIZATION``); then ``std`` must be omitted. NumPy input gives
    NumPy output, a ``jax.Array`` gives a ``jax.Array``.
    """
    if isinstance(mean, str):
        if std is not None:
            raise ValueError(f"normalize(mean={mean!r}) takes the std from the data set: omit std.")
        mean, std = NORMALIZATION[_dataset_spec(mean).name]
    if (mean is None) != (std is None):
        raise ValueError("normalize needs both mean and std, or neither (scale to [0, 1] only).")
    if isinstance(images, np.ndarray):
        x = images.astype(np.float32) / np.float32(255)
    else:
        import jax.numpy as jnp

        x = jnp.asarray(images).astype(jnp.float32) / 255
    if mean is not None:
        if std <= 0:
            raise ValueError(f"normalize: std must be positive, got {std}.")
        x = (x - np.float32(mean)) / np.float32(std)
    return x


def _dataset_spec(name: str) -> DatasetSpec:
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    canonical = _NAME_ALIASES.get(key) or _NAME_ALIASES.get(key.replace("-", ""))
    if canonical is None or canonical not in DATASETS:
        valid = ", ".join(repr(n) for n in DATASETS)
        raise ValueError(f"unknown data set {name!r}; valid names: {valid}.")
    return DATASETS[canonical]


def _split_name(split: str) -> str:
    canonical = _SPLIT_ALIASES.get(str(split).strip().lower())
    if canonical is None:
        raise ValueError(f"unknown split {split!r}; valid splits: 'train', 'test'.")
    return canonical


def _candidates(fspec: IDXFileSpec, directory: Path) -> list[Path]:
    names = [fspec.filename]
    if fspec.filename.endswith(".gz"):
        names.append(fspec.filename[: -len(".gz")])
    return [directory / n for n in names]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _verified_before(path: Path, stat: os.stat_result, fspec: IDXFileSpec) -> bool:
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, fspec.sha256)
    if key in _VERIFIED:
        return True
    try:
        marker = json.loads(_marker_path(path).read_text())
    except (OSError, ValueError):
        return False
    ok = marker == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": fspec.sha256}
    if ok:
        _VERIFIED.add(key)
    return ok


def _remember_verified(path: Path, fspec: IDXFileSpec, *, marker: bool) -> None:
    stat = path.stat()
    _VERIFIED.add((str(path.resolve()), stat.st_size, stat.st_mtime_ns, fspec.sha256))
    if not marker:
        return
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": fspec.sha256}
    try:
        with atomic_write(_marker_path(path)) as f:
            f.write(json.dumps(record).encode())
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _find_local(
    fspec: IDXFileSpec,
    search_dirs: Sequence[Path],
    cache_dir: Path,
    *,
    verify: bool,
    rejected: list[str],
) -> tuple[Path, bytes] | None:
    """Return (path, decompressed IDX bytes) of the first acceptable local copy, or None."""
    for directory in search_dirs:
        for path in _candidates(fspec, directory):
            try:
                stat = path.stat()
                raw = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            except PermissionError as e:
                rejected.append(f"{path}: cannot be read ({e.strerror})")
                continue
            if _verified_before(path, stat, fspec):
                return path, maybe_decompress(raw, name=str(path))
            problem, payload = _check_digest(path, raw, fspec)
            if problem is None:
                _remember_verified(path, fspec, marker=directory == cache_dir)
                return path, payload
            if not verify:
                warnings.warn(
                    f"using {path} although {problem} (verify=False); the IDX structure is "
                    "still checked.",
                    stacklevel=3,
                )
                if payload is None:  # not valid gzip: let the reader say so
                    payload = maybe_decompress(raw, name=str(path))
                return path, payload
            hint = ""
            if fspec.idx_sha256 is None and payload is not None:
                hint = " (a recompressed or uncompressed copy: pass verify=False to use it anyway)"
            rejected.append(f"{path}: {problem}{hint}")
    return None


def _check_digest(path: Path, raw: bytes, fspec: IDXFileSpec) -> tuple[str | None, bytes | None]:
    """Return (None, payload) if ``raw`` is the published file or its IDX data, else (why, ...)."""
    file_digest = _sha256(raw)
    if file_digest == fspec.sha256:
        return None, maybe_decompress(raw, name=str(path))
    try:
        payload = maybe_decompress(raw, name=str(path))
    except IDXFormatError:
        return "it is not valid gzip data (truncated or corrupt)", None
    if fspec.idx_sha256 is not None:
        idx_digest = file_digest if payload is raw else _sha256(payload)
        if idx_digest == fspec.idx_sha256:
            return None, payload
        return (
            f"its SHA-256 {file_digest} is not the published {fspec.sha256}, and the digest of "
            f"its IDX data {idx_digest} is not the known {fspec.idx_sha256}",
            payload,
        )
    return f"its SHA-256 {file_digest} is not the published {fspec.sha256}", payload


def _resolve_mirrors(spec: DatasetSpec, mirrors: Sequence[str] | None) -> list[str]:
    if mirrors is None:
        env = os.environ.get("FUNCGRAD_MIRRORS", "").split()
        mirrors = env or MIRRORS.get(spec.name, ())
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _download(
    spec: DatasetSpec,
    fspec: IDXFileSpec,
    cache_dir: Path,
    mirrors: Sequence[str] | None,
    search_dirs: Sequence[Path],
    rejected: list[str],
) -> Path:
    dest = cache_dir / fspec.filename
    if dest.exists():
        # Never overwrite what the user put there: it was found and rejected above.
        raise ChecksumError(
            f"{dest} is not the published {spec.title} file: "
            + "; ".join(r for r in rejected if r.startswith(str(dest)))
            + ". Delete it (or move it away) to download a fresh copy, or pass verify=False to "
            "use it as it is."
        )
    urls = [base + fspec.filename for base in _resolve_mirrors(spec, mirrors)]
    try:
        download_file(urls, dest, sha256=fspec.sha256, size=fspec.size)
    except DatasetError as e:
        raise type(e)(
            f"{spec.title}: {e}\n" + _where_to_put(spec, [fspec], search_dirs, cache_dir, rejected)
        ) from e
    _remember_verified(dest, fspec, marker=True)
    return dest


def _where_to_put(
    spec: DatasetSpec,
    missing: Sequence[IDXFileSpec],
    search_dirs: Sequence[Path],
    cache_dir: Path,
    rejected: Sequence[str],
) -> str:
    lines = [f"It needs {'this file' if len(missing) == 1 else f'these {len(missing)} files'}:"]
    lines += [f"  {f.filename}  ({f.size} bytes, sha256 {f.sha256})" for f in missing]
    lines.append("Searched (each file also without .gz):")
    lines += [f"  {d}" for d in search_dirs]
    if rejected:
        lines.append("Rejected:")
        lines += [f"  {r}" for r in rejected]
    lines.append("To fix it, one of:")
    if spec.install_hint:
        lines.append(f"  - {spec.install_hint}")
    lines.append(
        f"  - download the files (e.g. from {MIRRORS[spec.name][0]}) and put them in {cache_dir}, "
        f"or in <dir>/{spec.name}/ and set FUNCGRAD_DATA=<dir>"
    )
    lines.append("  - call with download=True on a machine with internet access")
    return "\n".join(lines)


def _decode_split(
    spec: DatasetSpec,
    split: str,
    images_file: tuple[Path, bytes],
    labels_file: tuple[Path, bytes],
) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = images_file[0], labels_file[0]
    images = decode_idx(images_file[1], name=str(images_path), magic=IMAGES_MAGIC)
    labels = decode_idx(labels_file[1], name=str(labels_path), magic=LABELS_MAGIC)
    expected = (spec.num_examples[split], *spec.image_shape)
    if images.shape != expected:
        raise IDXFormatError(
            f"{images_path}: images of shape {images.shape}, expected {expected} for the "
            f"{spec.title} {split} split; the file belongs to another data set or split."
        )
    if labels.shape != expected[:1]:
        raise IDXFormatError(
            f"{labels_path}: {labels.shape[0]} labels, expected {expected[0]} for the "
            f"{spec.title} {split} split; the file belongs to another data set or split."
        )
    if labels.size and labels.max() >= spec.num_classes:
        raise IDXFormatError(
            f"{labels_path}: label {labels.max()} is out of range 0..{spec.num_classes - 1}; "
            "the file is corrupt: delete it and download it again."
        )
    return images, labels.astype(np.int32)

"""Data for funcgrad: MNIST-family loaders, synthetic 2-D sets, splits and minibatches.

Real data::

    images, labels = fg.data.load_mnist("fashion-mnist", "train")  # uint8 (60000, 28, 28), int32
    x = fg.data.normalize(images).reshape(len(images), -1)          # float32 in [0, 1]

Synthetic data and batches, all from explicit ``jax.random`` keys::

    x, y = fg.data.two_moons(jax.random.key(0), 500, noise=0.1)
    (x_tr, y_tr), (x_val, y_val) = fg.data.train_val_split(jax.random.key(1), x, y, 0.2)
    xb, yb = fg.data.batches(jax.random.key(2), x_tr, y_tr, 32)     # (num_batches, 32, ...)

``read_idx``/``write_idx`` read and write the IDX format itself.
"""

from __future__ import annotations

from funcgrad.data.batching import (
    batches,
    iter_batches,
    num_batches,
    permutation,
    train_val_split,
)
from funcgrad.data.errors import (
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    DownloadError,
    IDXFormatError,
)
from funcgrad.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    decode_idx,
    encode_idx,
    read_idx,
    write_idx,
)
from funcgrad.data.mnist import (
    DATASETS,
    KNOWN_DIRS,
    MIRRORS,
    NORMALIZATION,
    default_data_dir,
    load_mnist,
    normalize,
)
from funcgrad.data.synthetic import circles, linear_regression, spirals, two_moons, xor

__all__ = [
    "DATASETS",
    "IMAGES_MAGIC",
    "KNOWN_DIRS",
    "LABELS_MAGIC",
    "MIRRORS",
    "NORMALIZATION",
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "DownloadError",
    "IDXFormatError",
    "batches",
    "circles",
    "decode_idx",
    "default_data_dir",
    "encode_idx",
    "iter_batches",
    "linear_regression",
    "load_mnist",
    "normalize",
    "num_batches",
    "permutation",
    "read_idx",
    "spirals",
    "train_val_split",
    "two_moons",
    "write_idx",
    "xor",
]

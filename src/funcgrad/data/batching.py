"""Train/validation splits and shuffled minibatches, driven by an explicit ``jax.random`` key.

The same key gives the same split and the same batches, so a run can be reproduced (or resumed
from a checkpoint) exactly: fold the epoch number into the key (``jax.random.fold_in(key, epoch)``)
for a new order each epoch. NumPy inputs give NumPy outputs (the data stays on the host until you
move it); ``jax.Array`` inputs give ``jax.Array`` outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["batches", "iter_batches", "num_batches", "permutation", "train_val_split"]

A = TypeVar("A", np.ndarray, jax.Array)


def _check_pair(x: A, y: A) -> int:
    if np.ndim(x) == 0 or np.ndim(y) == 0:
        raise ValueError(
            f"x and y must have a leading example axis, got shapes {np.shape(x)} and {np.shape(y)}."
        )
    n = np.shape(x)[0]
    if np.shape(y)[0] != n:
        raise ValueError(
            f"x and y must hold the same number of examples, got {n} and {np.shape(y)[0]} "
            f"(shapes {np.shape(x)} and {np.shape(y)})."
        )
    return n


def _take(a: A, index: np.ndarray | jax.Array) -> A:
    if isinstance(a, np.ndarray) and isinstance(index, np.ndarray):
        return a[index]
    return jnp.take(jnp.asarray(a), index, axis=0)


def _shuffle_rounds(n: int) -> int:
    # jax.random.permutation's static round count: enough 32-bit sort keys per element that all
    # n elements almost surely get distinct key strings, ceil(3 ln n / ln(2^32 - 1)).
    return int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sort_keys(key: jax.Array, n: int, rounds: int) -> jax.Array:
    """The random 32-bit sort keys of ``jax.random.permutation(key, n)``, one row per round."""
    rows = []
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        rows.append(jax.random.bits(subkey, (n,), jnp.uint32))
    return jnp.stack(rows) if rows else jnp.zeros((0, n), jnp.uint32)


def permutation(key: jax.Array, n: int) -> np.ndarray:
    """Return ``jax.random.permutation(key, n)`` as a NumPy array, sorting on the host.

    ``jax.random.permutation`` draws one row of random 32-bit sort keys per round (two rounds
    for 2,049 to about 1.7 million elements) and stable-sorts the indices by each row in turn.
    This draws the same keys with JAX and does the stable sorts with NumPy (two 16-bit radix
    passes per row, O(n)): the same indices, the same dtype, faster than XLA's CPU sort, a
    comparison sort (``scripts/bench_permutation.py``). ``key`` must be concrete; under
    ``jax.jit`` use ``jax.random.permutation``.
    """
    n = int(n)
    if not 0 <= n < 2**32:
        raise ValueError(f"permutation: n must be in [0, 2**32), got {n}.")
    order = np.arange(n, dtype=jax.dtypes.canonicalize_dtype(np.int64))
    for row in np.asarray(_sort_keys(key, n, _shuffle_rounds(n))):
        order = order[_stable_argsort_uint32(row)]
    return order


def _stable_argsort_uint32(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for uint32 keys, as two least-significant-digit
    radix passes: a stable sort by the low 16 bits, then by the high 16 bits. NumPy's stable
    sort of 16-bit integers is a radix sort, O(n); of 32-bit ones a merge sort, O(n log n)."""
    low = (keys & 0xFFFF).astype(np.uint16)
    high = (keys >> 16).astype(np.uint16)
    by_low = np.argsort(low, kind="stable")
    return by_low[np.argsort(high[by_low], kind="stable")]


def _permutation(key: jax.Array, n: int, *, host: bool) -> np.ndarray | jax.Array:
    if host:
        try:
            return permutation(key, n)
        except jax.errors.TracerArrayConversionError:
            pass  # a traced key, under jit: shuffle and index on the device
    return jax.random.permutation(key, n)


def train_val_split(
    key: jax.Array,
    x: A,
    y: A,
    val_fraction: float = 0.2,
    *,
    stratify: bool = True,
) -> tuple[tuple[A, A], tuple[A, A]]:
    """Return ``((x_train, y_train), (x_val, y_val))``: a shuffled split keeping class ratios.

    Args:
      key: decides which examples go where (same key, same split).
      x, y: examples and their integer class labels (``y`` of shape ``(n,)``); must be concrete
        (not traced), as the split sizes depend on the label counts.
      val_fraction: the share of examples in the validation set, in (0, 1). The validation set
        has ``round(n * val_fraction)`` examples.
      stratify: give each class the same share in both sets (up to rounding: class counts are
        apportioned by largest remainder so they add up exactly). With False, the split ignores
        labels and ``y`` may be anything with a leading axis of ``n`` (one-hot, regression
        targets).

    Both sets come out shuffled in the order of ``jax.random.permutation(key, n)``.
    """
    n = _check_pair(x, y)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} examples leaves an empty "
            f"{'validation' if n_val == 0 else 'training'} set; use more data or another fraction."
        )
    perm = permutation(key, n)
    if not stratify:
        is_val = np.arange(n) < n_val
    else:
        labels = np.asarray(y)
        if labels.ndim != 1 or not (
            np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
        ):
            raise ValueError(
                f"stratify=True needs integer class labels of shape (n,), got {labels.dtype} "
                f"of shape {labels.shape}; pass y.argmax(-1) for one-hot labels, or "
                "stratify=False."
            )
        labels = labels[perm]  # label of each position in the shuffled order
        classes, counts = np.unique(labels, return_counts=True)
        quotas = counts * (n_val / n)
        per_class = np.floor(quotas).astype(np.int64)
        # Largest remainder: the classes closest to their next example get the leftover slots.
        leftover = n_val - per_class.sum()
        per_class[np.argsort(-(quotas - per_class), kind="stable")[:leftover]] += 1
        is_val = np.zeros(n, dtype=bool)
        for c, k in zip(classes, per_class):
            is_val[np.flatnonzero(labels == c)[:k]] = True
    val, train = perm[is_val], perm[~is_val]
    return (_take(x, train), _take(y, train)), (_take(x, val), _take(y, val))


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Return how many batches of ``batch_size`` one pass over ``n`` examples gives."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(
    key: jax.Array,
    x: A,
    y: A,
    batch_size: int,
    *,
    drop_remainder: bool = True,
) -> tuple[A, A]:
    """Return one shuffled epoch stacked as ``(num_batches, batch_size, ...)``, for ``lax.scan``.

    ``xb[i], yb[i]`` is batch ``i``; every example appears at most once. With
    ``drop_remainder=True`` the last ``n % batch_size`` examples of the shuffled order are left
    out (different ones each epoch when the key changes). Stacked arrays cannot hold a short last
    batch, so ``drop_remainder=False`` is accepted only when ``batch_size`` divides ``n``; use
    ``iter_batches`` to get a short last batch. Works under ``jax.jit`` (the key may be traced;
    shapes depend only on ``n`` and ``batch_size``).
    """
    n = _check_pair(x, y)
    count = num_batches(n, batch_size)
    if count == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} examples: not one full batch."
        )
    if not drop_remainder and n % batch_size:
        raise ValueError(
            f"{n} examples do not fill batches of {batch_size} (remainder {n % batch_size}), and "
            "stacked batches cannot hold a short one: pass drop_remainder=True, a batch size "
            "that divides n, or use iter_batches for a short last batch."
        )
    host = isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    index = _permutation(key, n, host=host)[: count * batch_size]
    xb, yb = _take(x, index), _take(y, index)
    return (
        xb.reshape(count, batch_size, *xb.shape[1:]),
        yb.reshape(count, batch_size, *yb.shape[1:]),
    )


def iter_batches(
    key: jax.Array,
    x: A,
    y: A,
    batch_size: int,
    *,
    drop_remainder: bool = False,
) -> Iterator[tuple[A, A]]:
    """Yield one shuffled epoch as ``(x_batch, y_batch)`` pairs; the last may be short.

    The same order as ``batches`` with the same key. With ``drop_remainder=True`` a short last
    batch is skipped (then it yields exactly what ``batches`` stacks).
    """
    n = _check_pair(x, y)
    count = num_batches(n, batch_size, drop_remainder=drop_remainder)
    host = isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    perm = _permutation(key, n, host=host)
    for i in range(count):
        index = perm[i * batch_size : (i + 1) * batch_size]
        yield _take(x, index), _take(y, index)

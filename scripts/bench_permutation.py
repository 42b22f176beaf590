"""Benchmark: an epoch's shuffle, ``jax.random.permutation(key, n)``, three ways.

``fit`` shuffles the training set on the host each epoch with ``fg.data.permutation``: the same
indices as ``jax.random.permutation`` (the same sort keys, drawn by JAX), sorted by NumPy. This
times, for n examples (median of ``--repeats`` calls, the variants taking turns):

- XLA: ``jax.jit(jax.random.permutation)``, the sort on the device (a comparison sort on CPU);
- packed sort: each round's keys packed with positions into uint64 and sorted with NumPy's
  default sort (``fg.data.permutation`` until stop 11);
- radix: ``fg.data.permutation`` now, two 16-bit stable (radix) argsorts per round.

All three are checked to give the same indices.

    .venv/bin/python scripts/bench_permutation.py [--n 60000] [--repeats 31]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from funcgrad import data
from funcgrad.data.batching import _shuffle_rounds, _sort_keys


def packed_sort_permutation(key: jax.Array, n: int) -> np.ndarray:
    """The earlier host shuffle: per round, sort ``key << 32 | position`` as uint64."""
    order = np.arange(n, dtype=jax.dtypes.canonicalize_dtype(np.int64))
    positions = np.arange(n, dtype=np.uint64)
    for row in np.asarray(_sort_keys(key, n, _shuffle_rounds(n))):
        packed = (row.astype(np.uint64) << np.uint64(32)) | positions
        packed.sort()
        order = order[(packed & np.uint64(0xFFFFFFFF)).astype(np.intp)]
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args()
    n = args.n
    xla = jax.jit(jax.random.permutation, static_argnums=1)
    variants: dict[str, Callable[[jax.Array], np.ndarray]] = {
        "XLA (jax.random.permutation, jitted)": lambda k: np.asarray(xla(k, n)),
        "packed uint64 sort (NumPy)": lambda k: packed_sort_permutation(k, n),
        "radix, fg.data.permutation": lambda k: data.permutation(k, n),
    }
    keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(args.repeats + 1)]
    results = [f(keys[0]) for f in variants.values()]  # also compiles the JAX parts for this n
    assert all(np.array_equal(r, results[0]) for r in results), "variants disagree"
    times: dict[str, list[float]] = {name: [] for name in variants}
    for k in keys[1:]:
        for name, f in variants.items():
            start = time.perf_counter()
            f(k)
            times[name].append(time.perf_counter() - start)
    print(f"shuffle of n = {n}, median of {args.repeats} calls (ms)")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1e3:.2f} |")


if __name__ == "__main__":
    main()

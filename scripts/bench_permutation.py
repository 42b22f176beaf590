"""Benchmark: an epoch's shuffle of n examples, ``jax.random.permutation(key, n)``, on the host.

``fit`` shuffles the training set each epoch with ``fg.data.permutation``: the same indices as
``jax.random.permutation`` (the same sort keys, drawn by JAX), sorted by NumPy. Rows (median of
``--rounds`` interleaved calls, warm-up excluded, ``scripts/_timing.py``):

- XLA: ``jax.jit(jax.random.permutation)``, the sort on JAX's device;
- ``fg.data.permutation``: the keys drawn by JAX, two 16-bit radix argsorts per round by NumPy;
- NumPy's own ``Generator.permutation`` (other indices: what a shuffle costs in NumPy alone).

The first two are checked to give the same indices.

    python scripts/bench_permutation.py [--quick] [--n 60000] [--rounds 31]
"""

from __future__ import annotations

import _timing as T
import jax
import numpy as np

from funcgrad import data


def main() -> None:
    parser = T.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--rounds", type=int, default=None, help="default 31 (--quick: 11)")
    args = parser.parse_args()
    n, rounds = args.n, args.rounds or (11 if args.quick else 31)
    report = T.Report(f"Shuffling n = {n:,} examples (scripts/bench_permutation.py)", args)

    keys = iter(jax.random.split(jax.random.key(0), 4 * (rounds + 2)))
    xla = jax.jit(jax.random.permutation, static_argnums=1)
    rng = np.random.default_rng(0)
    variants = {
        "XLA: jax.random.permutation, jitted": lambda: np.asarray(xla(next(keys), n)),
        "fg.data.permutation (NumPy radix sorts)": lambda: data.permutation(next(keys), n),
        "NumPy Generator.permutation (other indices)": lambda: rng.permutation(n),
    }
    key = jax.random.key(1)
    if not np.array_equal(np.asarray(xla(key, n)), data.permutation(key, n)):
        raise SystemExit("fg.data.permutation disagrees with jax.random.permutation")
    timings = T.interleaved(variants, rounds=rounds, wait=lambda r: r)
    report.table(
        ["shuffle", "median (ms)", "min (ms)"],
        [[name, f"{t.median * 1e3:.2f}", f"{t.best * 1e3:.2f}"] for name, t in timings.items()],
    )
    report.finish(f"bench_permutation-{T.device_tag()}")


if __name__ == "__main__":
    main()

"""Benchmark: fit's compiled epoch with 1, 2, 4 or 8 training steps per loop iteration.

``fit`` runs an epoch as ``lax.scan(step, ..., unroll=train._SCAN_UNROLL)``. This compiles the
epoch of the MNIST-shaped MLP 784-64-10 (Adam; random data of Fashion-MNIST's size, 60,000
examples) once per unroll value and engine, with fit's default compiler options, then runs
the variants in turn for ``--rounds`` rounds; it prints compile time and the median and
minimum epoch time (compilation excluded).

    .venv/bin/python scripts/bench_unroll.py [--batch 128] [--rounds 11] [--unrolls 1 2 4 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import numpy as np
import optax

from funcgrad import train
from funcgrad.models import mlp

N = 60000


def compiled_epoch(engine: str, unroll: int, batch: int, x: Any, y: Any) -> tuple:
    """(compiled epoch, its arguments, seconds to compile) with ``unroll`` steps per iteration."""
    train._SCAN_UNROLL = unroll  # read when the epoch is traced, just below
    programs = train._Programs(
        train.classifier_loss(mlp.apply),
        optax.adam(1e-3),
        grad_engine=engine,
        has_aux=True,
        eval_fn=None,
        batch_size=batch,
        mesh=None,
        data_axis="data",
        with_progress=False,
        compiler_options=tuple(train.default_compiler_options().items()),  # as fit compiles
    )
    params = mlp.init(jax.random.key(0), [784, 64, 10])
    order = programs.order(jax.random.key(1), N)
    args = (params, optax.adam(1e-3).init(params), jax.random.key(2), order, x, y)
    start = time.perf_counter()
    compiled = programs.compiled_epoch(args)
    seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    return compiled, args, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--unrolls", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((N, 784), dtype=np.float32))
    y = jax.device_put(rng.integers(0, 10, N).astype(np.int32))
    default = train._SCAN_UNROLL
    variants = {}
    try:
        for engine in train.GRAD_ENGINES:
            for unroll in args.unrolls:
                variants[(engine, unroll)] = compiled_epoch(engine, unroll, args.batch, x, y)
    finally:
        train._SCAN_UNROLL = default
    times: dict[tuple, list[float]] = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key, (compiled, epoch_args, _) in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*epoch_args))
            times[key].append(time.perf_counter() - start)
    print(f"MLP 784-64-10, batch {args.batch}, {args.rounds} rounds")
    print("| engine | unroll | compile (s) | epoch median (ms) | epoch min (ms) |")
    print("|---|---:|---:|---:|---:|")
    for (engine, unroll), values in times.items():
        compile_s = variants[(engine, unroll)][2]
        median, best = statistics.median(values) * 1e3, min(values) * 1e3
        print(f"| {engine} | {unroll} | {compile_s:.2f} | {median:.1f} | {best:.1f} |")


if __name__ == "__main__":
    main()

"""Benchmark: fit's compiled epoch across scan unroll values and XLA compiler options.

``fit`` runs an epoch as ``lax.scan(step, ..., unroll=SCAN_UNROLL)`` and compiles it with
``train.default_compiler_options()`` unless told otherwise. This compiles the epoch of one
model once per (engine, unroll, option set), then runs the variants in turn, back to back, for
``--rounds`` rounds (so that this shared machine's slow spells fall on all of them alike); it
prints compile time and the median and minimum epoch time (compilation excluded).

Models (Adam, random data of Fashion-MNIST's shapes): ``mlp``, the MLP 784-64-10 on 60,000
examples; ``cnn``, funcgrad's CNN with ``conv_impl="im2col_vjp"`` on 40 batches (its epoch would
take minutes). Option sets: ``fit`` (fit's defaults; on CPU, matmuls on Eigen) and ``xla``
(``compiler_options={}``: XLA's own, matmuls on YNNPACK).

    .venv/bin/python scripts/bench_epoch.py [--model mlp] [--batch 128] [--rounds 11]
        [--unrolls 4] [--options fit xla] [--engines jax funcgrad]
    .venv/bin/python scripts/bench_epoch.py --unrolls 1 2 4 8 --options fit    # the unroll study
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
from funcgrad.models import cnn, mlp
from funcgrad.train.programs import SCAN_UNROLL, Programs, ProgramSettings

OPTION_SETS = {"fit": train.default_compiler_options(), "xla": {}}


def model(name: str, batch: int) -> tuple[Any, Any, Any, Any]:
    """(loss_fn, params, x, y) for the model on random data."""
    rng = np.random.default_rng(0)
    if name == "mlp":
        n, shape = 60000, (784,)
        loss_fn = train.classifier_loss(mlp.apply)
        params = mlp.init(jax.random.key(0), [784, 64, 10])
    else:
        n, shape = 40 * batch, (28, 28, 1)
        loss_fn = train.classifier_loss(cnn.apply, conv_impl="im2col_vjp")
        params = cnn.init(jax.random.key(0))
    x = jax.device_put(rng.standard_normal((n, *shape), dtype=np.float32))
    y = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
    return loss_fn, params, x, y


def compiled_epoch(
    loss_fn: Any,
    params: Any,
    engine: str,
    unroll: int,
    options: dict[str, Any],
    batch: int,
    x: Any,
    y: Any,
) -> tuple:
    """(compiled epoch, its arguments, seconds to compile) with ``unroll`` steps per iteration."""
    settings = ProgramSettings(
        grad_engine=engine,
        has_aux=True,
        eval_fn=None,
        batch_size=batch,
        compiler_options=tuple(sorted(options.items())),
        scan_unroll=unroll,
    )
    programs = Programs(loss_fn, optax.adam(1e-3), settings)
    order = programs.order(jax.random.key(1), len(x))
    opt_state = optax.adam(1e-3).init(params)
    args = programs.epoch_args(params, opt_state, jax.random.key(2), order, (x, y))
    start = time.perf_counter()
    compiled = programs.compiled_epoch(args)
    seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    return compiled, args, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--unrolls", type=int, nargs="+", default=[SCAN_UNROLL])
    parser.add_argument("--options", nargs="+", choices=tuple(OPTION_SETS), default=["fit", "xla"])
    parser.add_argument(
        "--engines", nargs="+", choices=train.GRAD_ENGINES, default=list(train.GRAD_ENGINES)
    )
    args = parser.parse_args()
    loss_fn, params, x, y = model(args.model, args.batch)
    variants = {
        (engine, unroll, name): compiled_epoch(
            loss_fn, params, engine, unroll, OPTION_SETS[name], args.batch, x, y
        )
        for engine in args.engines
        for unroll in args.unrolls
        for name in args.options
    }
    times: dict[tuple, list[float]] = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key, (compiled, epoch_args, _) in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*epoch_args))
            times[key].append(time.perf_counter() - start)
    steps = len(x) // args.batch
    print(f"{args.model}, batch {args.batch}, {steps} steps per epoch, {args.rounds} rounds")
    print("| engine | unroll | options | compile (s) | epoch median (ms) | epoch min (ms) |")
    print("|---|---:|---|---:|---:|---:|")
    for (engine, unroll, name), values in times.items():
        compile_s = variants[(engine, unroll, name)][2]
        median, best = statistics.median(values) * 1e3, min(values) * 1e3
        print(f"| {engine} | {unroll} | {name} | {compile_s:.2f} | {median:.1f} | {best:.1f} |")


if __name__ == "__main__":
    main()

"""Benchmark: a compiled training epoch across scan unroll values and XLA compiler options.

``fit`` runs an epoch as one jitted ``lax.scan`` whose steps gather their batch from the
device-resident training set and apply an optax step; it unrolls the scan 4 steps per loop
iteration and compiles with ``train.default_compiler_options()``. This builds the same kind of
epoch from public pieces (``fg.value_and_grad`` or ``jax.value_and_grad``, optax Adam,
``jax.jit(..., compiler_options=)``), once per (engine, unroll, option set, gather), and times
the variants in interleaved rounds (``scripts/_timing.py``): compile time, median and minimum
epoch. Gathers: ``step`` (fit's: each step takes its batch from the whole set) and ``epoch`` (a
hand-written loop's: the epoch's batches gathered into one array before the scan).

Models (random data of Fashion-MNIST's shapes): ``mlp``, 784-64-10 on 60,000 examples; ``cnn``,
funcgrad's CNN (``cnn.FAST``) on 40 batches; ``transformer``, the patch classifier of
``bench_train.py`` on 60,000 examples. Option sets: ``fit`` (fit's defaults; on CPU, matmuls on
Eigen) and ``xla`` (XLA's own; matmuls on YNNPACK).

    python scripts/bench_epoch.py [--quick] [--model mlp] [--batch 128] [--rounds 11]
        [--unrolls 1 2 4 8] [--options fit xla] [--engines jax funcgrad] [--gathers step epoch]
"""

from __future__ import annotations

import functools
import time
from typing import Any

import _timing as T
import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import train
from funcgrad.models import cnn, mlp, transformer

OPTION_SETS = {"fit": train.default_compiler_options(), "xla": {}}


def model(name: str, batch: int, steps: int | None) -> tuple[Any, Any, Any, Any]:
    """(loss_fn, params, x, y) for the model on random data."""
    rng = np.random.default_rng(0)
    if name == "mlp":
        n, shape = (steps * batch if steps else 60000), (784,)
        loss_fn = train.classifier_loss(mlp.apply)
        params = mlp.init(jax.random.key(0), [784, 64, 10])
    elif name == "cnn":
        n, shape = (steps or 40) * batch, (28, 28, 1)
        loss_fn = train.classifier_loss(cnn.apply, **cnn.FAST)
        params = cnn.init(jax.random.key(0))
    else:
        n, shape = (steps * batch if steps else 60000), (16, 49)
        loss_fn = train.classifier_loss(transformer.apply, num_heads=4)
        params = transformer.init(
            jax.random.key(0), patch_dim=49, num_classes=10, max_len=16, d_model=64, d_ff=256
        )
    x = jax.device_put(rng.standard_normal((n, *shape), dtype=np.float32))
    y = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
    return loss_fn, params, x, y


def epoch_program(
    loss_fn: Any, engine: str, unroll: int, options: dict[str, Any], gather: str = "step"
) -> Any:
    """A jitted epoch as fit runs one: scan over index rows, gather, Adam step (``gather="epoch"``:
    the batches gathered before the scan instead)."""
    optimizer = optax.adam(1e-3)
    grad_of = fg.value_and_grad if engine == "funcgrad" else jax.value_and_grad
    value_and_grad = grad_of(loss_fn, has_aux=True)

    def epoch(params, opt_state, order, x, y):
        def step(carry, batch):
            params, opt_state = carry
            if gather == "step":
                xb, yb = jnp.take(x, batch, axis=0), jnp.take(y, batch, axis=0)
            else:
                xb, yb = batch
            (loss, _), grads = value_and_grad(params, xb, yb)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        if gather == "step":
            batches = order
        else:
            rows = order.reshape(-1)
            batches = (
                jnp.take(x, rows, axis=0).reshape(*order.shape, *x.shape[1:]),
                jnp.take(y, rows, axis=0).reshape(order.shape),
            )
        return jax.lax.scan(step, (params, opt_state), batches, unroll=unroll)

    return jax.jit(epoch, compiler_options=options or None), optimizer


def main() -> None:
    parser = T.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("mlp", "cnn", "transformer"), default="mlp")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None, help="default 11 (--quick: 5)")
    parser.add_argument("--unrolls", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--options", nargs="+", choices=tuple(OPTION_SETS), default=["fit", "xla"])
    parser.add_argument("--engines", nargs="+", choices=train.GRAD_ENGINES,
                        default=list(train.GRAD_ENGINES))  # fmt: skip
    parser.add_argument("--gathers", nargs="+", choices=("step", "epoch"), default=["step"])
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 11)
    steps = (10 if args.model == "cnn" else 100) if args.quick else None
    report = T.Report(f"Compiled epoch, {args.model} (scripts/bench_epoch.py)", args)

    loss_fn, params, x, y = model(args.model, args.batch, steps)
    num_steps = len(x) // args.batch
    shuffled = np.random.default_rng(1).permutation(len(x))[: num_steps * args.batch]
    order = jax.device_put(shuffled.reshape(num_steps, args.batch))
    calls, compile_s = {}, {}
    for engine in args.engines:
        for unroll in args.unrolls:
            for name in args.options:
                for gather in args.gathers:
                    key = (engine, unroll, name, gather)
                    program, optimizer = epoch_program(
                        loss_fn, engine, unroll, OPTION_SETS[name], gather
                    )
                    epoch_args = (params, optimizer.init(params), order, x, y)
                    start = time.perf_counter()
                    compiled = program.lower(*epoch_args).compile()
                    compile_s[key] = time.perf_counter() - start
                    calls[key] = functools.partial(compiled, *epoch_args)
    timings = T.interleaved(calls, rounds=rounds)
    report.table(
        ["engine", "unroll", "options", "gather", "compile (s)", "median (ms)", "min (ms)"],
        [
            [*key, f"{compile_s[key]:.2f}", f"{t.median * 1e3:.1f}", f"{t.best * 1e3:.1f}"]
            for key, t in timings.items()
        ],
        title=f"{args.model}, batch {args.batch}, {num_steps} steps per epoch, {rounds} rounds",
        align="lrllrrr",
    )
    report.finish(f"bench_epoch-{args.model}-{T.device_tag()}")


if __name__ == "__main__":
    main()

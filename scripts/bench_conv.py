"""Benchmark: the MNIST CNN's jitted training step with each conv2d formulation, and the pieces
of ``conv_impl="im2col_vjp"``'s backward pass, on this machine's CPU.

Rows (ms per training step: Adam, batch 128, funcgrad engine unless said; median over rounds in
which the variants take turns; each timed call is an 8-step ``lax.scan`` so buffers are reused
as in ``fit``):

- ``im2col`` (the default): forward as patches @ W, backward derived by the VJP rules of its
  primitives (patch gradient dY·Wᵀ, then summed back into the image);
- ``im2col_vjp``: the same forward, the hand-written backward of ``layers._im2col_conv_bwd``
  (dX as one convolution of dY with the flipped kernel, dW as two half-batch matmuls);
- ``im2col_vjp, dW unsplit``: the hand-written dX with dW as one matmul over the whole batch;
- ``im2col_vjp, jax engine``: the same program built with ``jax.value_and_grad``.

    .venv/bin/python scripts/bench_conv.py [--rounds 11]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax import lax

import funcgrad as fg
from funcgrad.models import cnn, layers

BATCH, STEPS = 128, 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_unsplit(x: jax.Array, w: jax.Array, padding: str) -> jax.Array:
    return layers._conv2d_im2col(x, w, (1, 1), padding)


def _unsplit_fwd(x: jax.Array, w: jax.Array, padding: str) -> tuple:
    return layers._im2col_conv_fwd(x, w, padding)


def _unsplit_bwd(padding: str, residuals: tuple, dy: jax.Array) -> tuple:
    """im2col_vjp's backward with dW as one dot_general over (example, row, column)."""
    patches, w = residuals
    dx = layers._input_grad_as_conv(dy, w, padding)
    dw = lax.dot_general(dy, patches, (((0, 1, 2), (0, 1, 2)), ((), ()))).T
    return dx, dw.reshape(w.shape)


_conv_unsplit.defvjp(_unsplit_fwd, _unsplit_bwd)


def _unsplit_conv2d(params: Any, x: jax.Array, *, stride: Any, padding: str, impl: str) -> Any:
    del impl
    assert stride in (1, (1, 1))
    return _conv_unsplit(x, params["W"], padding) + params["b"]


def step_program(engine: str, conv_impl: str) -> Callable[..., Any]:
    """A jitted 8-step scan of Adam steps on the CNN."""
    optimizer = optax.adam(1e-3)

    def loss(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = cnn.apply(p, xb, conv_impl=conv_impl)
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    value_and_grad = jax.value_and_grad(loss) if engine == "jax" else fg.value_and_grad(loss)

    @jax.jit
    def run(params: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
        def body(carry: tuple, batch: tuple) -> tuple:
            params, state = carry
            value, grads = value_and_grad(params, *batch)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        xs = x.reshape(STEPS, BATCH, *x.shape[1:])
        return lax.scan(body, (params, state), (xs, y.reshape(STEPS, BATCH)))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    x = jax.random.normal(jax.random.key(0), (BATCH * STEPS, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (BATCH * STEPS,), 0, 10)
    params = cnn.init(jax.random.key(2))
    state = optax.adam(1e-3).init(params)

    variants: dict[str, Callable[..., Any]] = {}
    for name, engine, impl in [
        ("im2col (default, derived backward)", "funcgrad", "im2col"),
        ("im2col_vjp", "funcgrad", "im2col_vjp"),
        ("im2col_vjp, jax engine", "jax", "im2col_vjp"),
    ]:
        variants[name] = step_program(engine, impl)
        jax.block_until_ready(variants[name](params, state, x, y))  # compile outside the timing
    original = layers.conv2d
    layers.conv2d = _unsplit_conv2d  # traced once, here; the compiled program keeps it
    try:
        unsplit = step_program("funcgrad", "im2col_vjp")
        jax.block_until_ready(unsplit(params, state, x, y))
    finally:
        layers.conv2d = original
    variants["im2col_vjp, dW unsplit"] = unsplit

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(run(params, state, x, y))
            times[name].append((time.perf_counter() - start) / STEPS * 1e3)
    print("| CNN training step, batch 128 | median ms/step | min ms/step |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} |")


if __name__ == "__main__":
    main()

"""Benchmark: funcgrad's hand-written VJP interpreter against jax.grad, in one run.

For each model (MLP 784-64-10 at batch 128, the default MNIST-style CNN, a 2-block transformer
classifier) it measures, for ``fg.grad(loss)`` and ``jax.grad(loss)``:

- jitted step: steady-state time of ``jax.jit(grad(loss))(params, x, y)`` (median of repeats);
- first result: trace + compile + first call of a fresh ``jax.jit(grad(loss))`` after
  ``jax.clear_caches()`` (median of a few cold starts);
- eager: an un-jitted ``grad(loss)(params, x, y)`` call (median of repeats, the two engines
  called in turn; both re-trace).

Ratios are funcgrad / JAX, measured in the same run; < 1 means funcgrad is faster.

    .venv/bin/python scripts/bench_grad.py [--repeats 50] [--cold 5] [--models mlp,cnn,transformer]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import funcgrad as fg
from funcgrad import losses
from funcgrad.models import cnn, mlp, transformer


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        _block(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cold_start_time(make_grad: Callable[[], Callable], args: tuple, repeats: int) -> float:
    """Trace + compile + first call of a freshly built jitted gradient, caches cleared."""
    times = []
    for _ in range(repeats):
        jax.clear_caches()
        step = jax.jit(make_grad())
        t0 = time.perf_counter()
        _block(step(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_models(key: jax.Array) -> dict[str, tuple[Callable, tuple]]:
    """name -> (loss(params, x, y), (params, x, y))."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    out = {}

    mlp_params = mlp.init(k1, [784, 64, 10])
    x = jax.random.normal(k2, (128, 784))
    y = jax.random.randint(k3, (128,), 0, 10)

    def mlp_loss(params, x, y):
        return losses.softmax_cross_entropy(mlp.apply(params, x), y)

    out["mlp"] = (mlp_loss, (mlp_params, x, y))

    cnn_params = cnn.init(k1)
    xi = jax.random.normal(k2, (128, 28, 28, 1))

    def cnn_loss(params, x, y):
        return losses.softmax_cross_entropy(cnn.apply(params, x), y)

    out["cnn"] = (cnn_loss, (cnn_params, xi, y))

    tr_params = transformer.init(k4, 100, num_classes=10, d_model=64, num_layers=2, max_len=32)
    tokens = jax.random.randint(k2, (32, 32), 0, 100)
    yt = jax.random.randint(k3, (32,), 0, 10)

    def tr_loss(params, x, y):
        return losses.softmax_cross_entropy(transformer.apply(params, x), y)

    out["transformer"] = (tr_loss, (tr_params, tokens, yt))
    return out


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median time of each of ``fns``, called in turn (fg, jax, fg, jax, ...).

    Alternating spreads slow spells of a shared machine evenly over both engines, where timing
    one engine's repeats and then the other's would hand the whole spell to one of them.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            _block(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_model(loss: Callable, args: tuple, repeats: int, cold: int) -> dict[str, float]:
    row: dict[str, float] = {}
    engines = {"fg": fg.grad, "jax": jax.grad}
    for name, grad in engines.items():
        step = jax.jit(grad(loss))
        row[f"{name}_jit"] = median_time(lambda step=step: step(*args), repeats)
    firsts: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(cold):  # cold starts in turn too
        for name, grad in engines.items():
            firsts[name].append(cold_start_time(lambda grad=grad: grad(loss), args, 1))
    for name in engines:
        row[f"{name}_first"] = statistics.median(firsts[name])
    grads = {name: grad(loss) for name, grad in engines.items()}
    eager = {name: functools.partial(g, *args) for name, g in grads.items()}
    for fn in eager.values():  # warm up: per-shape compiles of single primitives
        _block(fn())
        _block(fn())
    for name, t in interleaved_medians(eager, max(10, repeats // 2)).items():
        row[f"{name}_eager"] = t
    # second pass of the jitted steady state, interleaved, to reduce drift between engines
    fg_step, jax_step = jax.jit(fg.grad(loss)), jax.jit(jax.grad(loss))
    fg_times, jax_times = [], []
    for _ in range(3):
        fg_times.append(median_time(lambda: fg_step(*args), repeats))
        jax_times.append(median_time(lambda: jax_step(*args), repeats))
    row["fg_jit"] = min(row["fg_jit"], *fg_times)
    row["jax_jit"] = min(row["jax_jit"], *jax_times)
    return row


def check_agreement(loss: Callable, args: tuple) -> float:
    got = jax.jit(fg.grad(loss))(*args)
    want = jax.jit(jax.grad(loss))(*args)
    diffs = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b) / (jnp.abs(b) + 1e-6)), got, want)
    return float(max(jax.tree.leaves(diffs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--models", default="mlp,cnn,transformer")
    opts = parser.parse_args()

    models = build_models(jax.random.PRNGKey(0))
    print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    header = (
        "| model | jitted step fg / jax (ms) | ratio | first result fg / jax (s) | ratio "
        "| eager fg / jax (ms) | ratio | max rel diff |"
    )
    print(header)
    print("|" + "---|" * 8)
    for name in opts.models.split(","):
        loss, args = models[name]
        row = bench_model(loss, args, opts.repeats, opts.cold)
        rel = check_agreement(loss, args)
        print(
            f"| {name} "
            f"| {row['fg_jit'] * 1e3:.3f} / {row['jax_jit'] * 1e3:.3f} "
            f"| {row['fg_jit'] / row['jax_jit']:.2f} "
            f"| {row['fg_first']:.3f} / {row['jax_first']:.3f} "
            f"| {row['fg_first'] / row['jax_first']:.2f} "
            f"| {row['fg_eager'] * 1e3:.2f} / {row['jax_eager'] * 1e3:.2f} "
            f"| {row['fg_eager'] / row['jax_eager']:.2f} "
            f"| {rel:.1e} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: funcgrad's hand-written VJP interpreter against jax.grad, in one run.

For each model it measures, for ``fg.grad(loss)`` and ``jax.grad(loss)``:

- jitted step: steady-state time of ``jax.jit(grad(loss))(params, x, y)``;
- first result: trace + compile + first call of a fresh ``jax.jit(grad(loss))`` with JAX's caches
  cleared (median of ``--cold`` cold starts, the engines taking turns);
- eager: an un-jitted ``grad(loss)(params, x, y)`` call (both engines re-trace each call).

Models: the MLP 784-64-10 at batch 128, the default MNIST CNN (``conv_impl="im2col"``) at batch
128, a 2-block transformer classifier on 32x32 tokens, and two linear-algebra rows in float32: a
batched Gaussian log-likelihood through a Cholesky factor (64 covariances of 32x32) and a layer
that solves a linear system (``jnp.linalg.solve``, 64x64 with 256 right-hand sides). A row whose
primitives ``fg.supported_primitives()`` lacks is skipped with a message naming them.

Timing (``scripts/_timing.py``): warm-up calls excluded, engines interleaved round by round,
medians. Ratios are funcgrad / JAX from the same run: < 1 means funcgrad is faster.

    python scripts/bench_grad.py [--quick] [--rounds 50] [--cold 5] [--models mlp,cnn,...]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import _timing as T
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

import funcgrad as fg
from funcgrad import losses
from funcgrad.models import cnn, mlp, transformer

MODELS = ("mlp", "cnn", "transformer", "gauss_cholesky", "solve_layer")
TITLES = {
    "mlp": "MLP 784-64-10, batch 128",
    "cnn": "CNN (default, im2col), batch 128",
    "transformer": "transformer, 2 blocks, 32×32 tokens",
    "gauss_cholesky": "Gaussian log-lik., Cholesky, 64 × 32×32",
    "solve_layer": "solve layer, 64×64, 256 right-hand sides",
}


def build_models(key: jax.Array) -> dict[str, tuple[Callable, tuple]]:
    """name -> (loss(params, x, y), (params, x, y))."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    y = jax.random.randint(k3, (128,), 0, 10)

    def mlp_loss(params, x, y):
        return losses.softmax_cross_entropy(mlp.apply(params, x), y)

    def cnn_loss(params, x, y):
        return losses.softmax_cross_entropy(cnn.apply(params, x), y)

    def transformer_loss(params, x, y):
        return losses.softmax_cross_entropy(transformer.apply(params, x), y)

    tr_params = transformer.init(k4, 100, num_classes=10, d_model=64, num_layers=2, max_len=32)
    return {
        "mlp": (mlp_loss, (mlp.init(k1, [784, 64, 10]), jax.random.normal(k2, (128, 784)), y)),
        "cnn": (cnn_loss, (cnn.init(k1), jax.random.normal(k2, (128, 28, 28, 1)), y)),
        "transformer": (
            transformer_loss,
            (tr_params, jax.random.randint(k2, (32, 32), 0, 100), y[:32]),
        ),
        "gauss_cholesky": gaussian_cholesky(k1),
        "solve_layer": solve_layer(k2),
    }


def gaussian_cholesky(key: jax.Array, batch: int = 64, n: int = 32, rank: int = 8) -> tuple:
    """Mean negative log-likelihood of ``batch`` vectors y_b ~ N(0, Σ_b), Σ_b = W_b W_bᵀ +
    diag(exp(d_b)), through the Cholesky factor Σ_b = L_b L_bᵀ:
    -log N(y; 0, Σ) = ½ |L⁻¹y|² + Σ_i log L_ii + (n/2) log 2π."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "W": jax.random.normal(k1, (batch, n, rank)) / jnp.sqrt(rank),
        "log_diag": 0.1 * jax.random.normal(k2, (batch, n)),
    }
    y = jax.random.normal(k3, (batch, n))

    def loss(params, y, unused):
        del unused
        w = params["W"]
        cov = w @ jnp.swapaxes(w, -1, -2) + jax.vmap(jnp.diag)(jnp.exp(params["log_diag"]))
        chol = jnp.linalg.cholesky(cov)
        z = jsl.solve_triangular(chol, y[..., None], lower=True)[..., 0]
        log_det = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        nll = 0.5 * jnp.sum(z * z, axis=-1) + log_det + 0.5 * n * jnp.log(2 * jnp.pi)
        return jnp.mean(nll)

    return loss, (params, y, jnp.zeros(()))


def solve_layer(key: jax.Array, d: int = 64, batch: int = 256) -> tuple:
    """A layer z = A⁻¹x with A = I + W Wᵀ / d (well conditioned), then a tanh readout:
    loss = mean(tanh(z V)²), for ``batch`` inputs x solved as one multi-right-hand-side
    ``jnp.linalg.solve``."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"W": jax.random.normal(k1, (d, d)), "V": jax.random.normal(k2, (d, 10)) / d**0.5}
    x = jax.random.normal(k3, (batch, d))

    def loss(params, x, unused):
        del unused
        a = jnp.eye(d) + params["W"] @ params["W"].T / d
        z = jnp.linalg.solve(a, x.T).T
        return jnp.mean(jnp.tanh(z @ params["V"]) ** 2)

    return loss, (params, x, jnp.zeros(()))


def _sub_jaxprs(value: Any) -> Iterator[Any]:
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def primitives(fn: Callable, *args: Any) -> set[str]:
    """Names of every primitive in ``fn``'s jaxpr, inside calls, loops and custom rules too."""
    names: set[str] = set()
    stack = [jax.make_jaxpr(fn)(*args).jaxpr]
    while stack:
        jaxpr = stack.pop()
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                stack.extend(_sub_jaxprs(value))
    return names


def missing_rules(loss: Callable, args: tuple) -> list[str]:
    """The primitives of ``loss`` (forward pass) that funcgrad has no VJP rule for."""
    supported = {str(p) for p in fg.supported_primitives()}
    return sorted(primitives(loss, *args) - supported)


def fresh_jit(grad: Callable, loss: Callable, args: tuple) -> Callable[[], Any]:
    """A newly built ``jax.jit(grad(loss))`` bound to ``args``."""
    return functools.partial(jax.jit(grad(loss)), *args)


def bench_model(loss: Callable, args: tuple, rounds: int, cold: int) -> dict[str, float]:
    engines = {"fg": fg.grad, "jax": jax.grad}
    row: dict[str, float] = {}
    jitted = {name: jax.jit(grad(loss)) for name, grad in engines.items()}
    calls = {name: functools.partial(step, *args) for name, step in jitted.items()}
    for name, timing in T.interleaved(calls, rounds=rounds, warmup=2).items():
        row[f"{name}_jit"] = timing.median
    firsts: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(cold):  # cold starts take turns too
        for name, grad in engines.items():
            make = functools.partial(fresh_jit, grad, loss, args)
            firsts[name].append(T.first_call_seconds(make))
    for name, times in firsts.items():
        row[f"{name}_first"] = T.Timing(times).median
    # Eager: warm-up compiles each primitive once per shape, in both engines.
    eager = {name: functools.partial(grad(loss), *args) for name, grad in engines.items()}
    for name, timing in T.interleaved(eager, rounds=max(5, rounds // 3), warmup=2).items():
        row[f"{name}_eager"] = timing.median
    return row


def max_relative_difference(loss: Callable, args: tuple) -> float:
    got = jax.jit(fg.grad(loss))(*args)
    want = jax.jit(jax.grad(loss))(*args)
    diffs = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b) / (jnp.abs(b) + 1e-6)), got, want)
    return float(max(jax.tree.leaves(diffs)))


def main() -> None:
    parser = T.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 50 (--quick: 15)")
    parser.add_argument("--cold", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    rounds = args.rounds or (15 if args.quick else 50)
    cold = args.cold or (2 if args.quick else 5)

    report = T.Report("funcgrad's interpreter against jax.grad (scripts/bench_grad.py)", args)
    models = build_models(jax.random.key(0))
    rows, skipped = [], []
    for name in args.models.split(","):
        loss, model_args = models[name]
        missing = missing_rules(loss, model_args)
        if missing:
            skipped.append(f"- {TITLES[name]}: skipped, no funcgrad rule for {', '.join(missing)}")
            T.log(skipped[-1])
            continue
        T.log(f"{name} ...")
        r = bench_model(loss, model_args, rounds, cold)
        rows.append(
            [
                TITLES[name],
                f"{r['fg_jit'] * 1e3:.3f} / {r['jax_jit'] * 1e3:.3f}",
                f"{r['fg_jit'] / r['jax_jit']:.2f}",
                f"{r['fg_first']:.3f} / {r['jax_first']:.3f}",
                f"{r['fg_first'] / r['jax_first']:.2f}",
                f"{r['fg_eager'] * 1e3:.2f} / {r['jax_eager'] * 1e3:.2f}",
                f"{r['fg_eager'] / r['jax_eager']:.2f}",
                f"{max_relative_difference(loss, model_args):.1e}",
            ]
        )
    report.table(
        [
            "model",
            "jitted step fg / jax (ms)",
            "ratio",
            "first result fg / jax (s)",
            "ratio",
            "eager fg / jax (ms)",
            "ratio",
            "max rel diff",
        ],
        rows,
        align="lrrrrrrr",
    )
    report.add(
        "",
        f"Medians of {rounds} interleaved rounds (eager: {max(5, rounds // 3)}), "
        f"first result: median of {cold} cold starts.",
        *skipped,
    )
    report.finish(f"bench_grad-{T.device_tag()}")


if __name__ == "__main__":
    main()

"""Property-based tests: random compositions of primitives on random shapes, fg.grad == jax.grad.

Hypothesis builds a small random program: a few float64 inputs of random (broadcast-compatible)
shapes, then a random sequence of operations drawn from a catalogue of unary, binary, reducing,
shape-changing and indexing ops, each applied to values produced so far, custom derivatives
(a safe log whose JVP rule has a ``jnp.where`` in it, a gradient clip), ``vmap`` and ``lax.map``
among them. The program's scalar output is the sum of everything it computed, so every
intermediate gets a cotangent. Run in float64 so that agreement can be tight (rtol 1e-9):
differences there would be formula bugs, not rounding. ``fg.grad`` (eager, residuals only) is
compared with ``jax.grad`` and with ``fg.trace`` (every value kept).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from gradcheck import assert_trees_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import funcgrad as fg


@jax.custom_jvp
def safe_log(x):
    """log(max(x, 1e-3)), with a JVP rule that is zero below the floor."""
    return jnp.log(jnp.maximum(x, 1e-3))


@safe_log.defjvp
def _safe_log_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    floored = jnp.maximum(x, 1e-3)
    return safe_log(x), jnp.where(x > 1e-3, t / floored, 0.0)


@jax.custom_vjp
def clip_gradient(x):
    """The identity, whose backward pass clips the cotangent to [-0.5, 0.5]."""
    return x


clip_gradient.defvjp(lambda x: (x, None), lambda _, ct: (jnp.clip(ct, -0.5, 0.5),))


def _vmapped(x):
    row = lambda r: jnp.tanh(r) * jnp.sum(clip_gradient(r))  # noqa: E731
    return row(x) if x.ndim == 0 else jax.vmap(row)(x)


def _mapped(x):
    row = lambda r: safe_log(r) + jnp.sin(r) * r  # noqa: E731
    return row(x) if x.ndim == 0 else lax.map(row, x)


# Unary ops, each safe on all reals (domains are folded in so there are no NaNs to compare).
UNARY = {
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "exp_scaled": lambda x: jnp.exp(0.3 * x),
    "log1p_abs": lambda x: jnp.log1p(jnp.abs(x) + 0.1),
    "sqrt": lambda x: jnp.sqrt(x * x + 0.5),
    "square": jnp.square,
    "logistic": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "neg": jnp.negative,
    "erf": jax.scipy.special.erf,
    "atan": jnp.arctan,
    "cbrt_shift": lambda x: jnp.cbrt(x * x + 1.0),
    "pow": lambda x: (x * x + 1.0) ** 1.5,
    "rsqrt": lambda x: lax.rsqrt(x * x + 1.0),
    "safe_log": safe_log,
    "clip_gradient": lambda x: clip_gradient(x) * jnp.cos(x),
    "vmap": _vmapped,
    "lax_map": _mapped,
}

BINARY = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "div": lambda a, b: a / (1.0 + b * b),
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
    "where": lambda a, b: jnp.where(a > b, a * 2.0, b),
    "atan2": lambda a, b: jnp.arctan2(a, b * b + 1.0),
}


def _reduce(name: str, x: jax.Array, axis: int) -> jax.Array:
    return {
        "sum": lambda: jnp.sum(x, axis=axis, keepdims=True),
        "mean": lambda: jnp.mean(x, axis=axis),
        "max": lambda: jnp.max(x, axis=axis),
        "min": lambda: jnp.min(x, axis=axis, keepdims=True),
        "prod": lambda: jnp.prod(jnp.tanh(x) + 1.5, axis=axis),
        "logsumexp": lambda: jax.nn.logsumexp(x, axis=axis),
        "softmax": lambda: jax.nn.softmax(x, axis=axis),
        "log_softmax": lambda: jax.nn.log_softmax(x, axis=axis),
        "cumsum": lambda: jnp.cumsum(x, axis=axis),
        "cumprod": lambda: jnp.cumprod(jnp.tanh(x) + 1.5, axis=axis),
        "cummax": lambda: lax.cummax(x, axis=axis),
        "sort": lambda: jnp.sort(x, axis=axis),
        "flip": lambda: jnp.flip(x, axis=axis),
        "norm": lambda: jnp.sqrt(jnp.sum(x * x, axis=axis) + 1e-3),
    }[name]()


REDUCE = [
    "sum", "mean", "max", "min", "prod", "logsumexp", "softmax", "log_softmax", "cumsum",
    "cumprod", "cummax", "sort", "flip", "norm",
]


def _shape_op(name: str, x: jax.Array, data) -> jax.Array:
    if name == "transpose":
        perm = data.draw(st.permutations(range(x.ndim)))
        return jnp.transpose(x, perm)
    if name == "reshape_flat":
        return x.reshape(-1)
    if name == "expand":
        return x[None]
    if name == "slice":
        n = x.shape[0]
        start = data.draw(st.integers(0, max(n - 1, 0)))
        stop = data.draw(st.integers(start + 1, n)) if n else 0
        step = data.draw(st.integers(1, 2))
        return x[start:stop:step]
    if name == "gather":
        n = x.shape[0]
        idx = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5))
        return x[jnp.array(idx)]
    if name == "concat_self":
        return jnp.concatenate([x, jnp.tanh(x)], axis=0)
    if name == "pad":
        return jnp.pad(x, [(1, 0)] + [(0, 0)] * (x.ndim - 1))
    if name == "scatter_add":
        n = x.shape[0]
        idx = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4))
        return x.at[jnp.array(idx)].add(x[0] * 2.0)
    if name == "dynamic_slice":
        return lax.dynamic_slice_in_dim(x, x.shape[0] // 2, max(1, x.shape[0] // 2), axis=0)
    raise ValueError(name)


SHAPE_OPS = ["transpose", "reshape_flat", "expand", "slice", "gather", "concat_self", "pad",
             "scatter_add", "dynamic_slice"]

dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)


@st.composite
def programs(draw):
    """(inputs, build) where build(data) replays the drawn ops on jax values."""
    base = draw(shapes)
    n_inputs = draw(st.integers(1, 3))
    in_shapes = []
    for _ in range(n_inputs):
        # broadcast-compatible with base: some dims set to 1, or a suffix of it
        s = tuple(d if draw(st.booleans()) else 1 for d in base)
        if s and draw(st.booleans()):
            s = s[draw(st.integers(0, len(s))):]
        in_shapes.append(s)
    seed = draw(st.integers(0, 2**31 - 1))
    n_ops = draw(st.integers(1, 6))
    ops = []
    for _ in range(n_ops):
        kind = draw(st.sampled_from(["unary", "binary", "reduce", "shape", "matmul"]))
        ops.append(kind)
    return in_shapes, seed, ops


def _run(ops, values, data):
    """Apply the drawn ops; returns every value computed (inputs included)."""
    for kind in ops:
        x = data.draw(st.sampled_from(range(len(values))), label="operand")
        x = values[x]
        if kind == "unary":
            name = data.draw(st.sampled_from(sorted(UNARY)), label="unary")
            values.append(UNARY[name](x))
        elif kind == "binary":
            y = values[data.draw(st.sampled_from(range(len(values))), label="operand2")]
            try:
                jnp.broadcast_shapes(x.shape, y.shape)
            except ValueError:
                y = jnp.sum(y)
            name = data.draw(st.sampled_from(sorted(BINARY)), label="binary")
            values.append(BINARY[name](x, y))
        elif kind == "reduce" and x.ndim > 0:
            name = data.draw(st.sampled_from(REDUCE), label="reduce")
            axis = data.draw(st.integers(0, x.ndim - 1), label="axis")
            values.append(_reduce(name, x, axis))
        elif kind == "shape" and x.ndim > 0 and x.shape[0] > 0:
            name = data.draw(st.sampled_from(SHAPE_OPS), label="shape op")
            values.append(_shape_op(name, x, data))
        elif kind == "matmul" and x.ndim >= 1:
            k = x.shape[-1]
            w = jnp.tanh(jnp.arange(k * 3, dtype=x.dtype).reshape(k, 3) / 7.0)
            values.append(jnp.tanh(x @ w))
    return values


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_random_programs_match_jax(program, data):
    in_shapes, seed, ops = program
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        inputs = [jnp.asarray(rng.standard_normal(s)) for s in in_shapes]
        # Draw the op choices once, then replay the same choices for every engine.
        choices: list = []

        class Recorder:
            def draw(self, strategy, label=None):
                value = data.draw(strategy, label=label)
                choices.append(value)
                return value

        class Replayer:
            def __init__(self):
                self.it = iter(choices)

            def draw(self, strategy, label=None):
                return next(self.it)

        _run(ops, list(inputs), Recorder())

        def program_fn(*xs):
            return sum(jnp.sum(v) for v in _run(ops, list(xs), Replayer()))

        argnums = tuple(range(len(inputs)))
        want = jax.grad(program_fn, argnums)(*inputs)
        got = fg.grad(program_fn, argnums)(*inputs)  # eager: residuals only
        assert_trees_close(got, want, rtol=1e-9, atol=1e-11)
        kept = fg.trace(program_fn, *inputs, argnums=argnums).grads  # every value kept
        assert_trees_close(got, kept, rtol=1e-12, atol=1e-14)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(dims, min_size=1, max_size=3).map(tuple), st.integers(0, 2**31 - 1))
def test_random_shapes_second_order(shape, seed):
    """Hessian-vector products through fg.grad twice agree with JAX on random shapes."""
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal(shape))
        v = jnp.asarray(rng.standard_normal(shape))

        def f(x):
            return jnp.sum(jnp.tanh(x) * jax.nn.softmax(x, axis=-1)) + jnp.max(x * x)

        def hvp(grad):
            return grad(lambda x: jnp.vdot(grad(f)(x), v))(x)

        assert_trees_close(hvp(fg.grad), hvp(jax.grad), rtol=1e-9, atol=1e-11)

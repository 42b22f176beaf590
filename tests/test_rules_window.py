"""Window-reduction rules (reduce_window_sum/max/min, the generic reduce_window,
select_and_scatter_add, select_and_gather_add) held against jax.grad.

Pooling is checked with ties (small-integer inputs and cotangents, so the comparison is exact):
each window's cotangent goes to its *first* maximal element, as XLA's select-and-scatter does for
jax.grad. select_and_scatter_add and select_and_gather_add appear in jax.grad and jax.jvp programs
of a max-pool, and in funcgrad's own backward pass for large windows; fg.grad differentiates them.
Second order: hessians of max- and average-pooling. CASES holds user code reaching each
primitive; test_rules_table.py checks them all against jax.grad.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import (
    Case,
    assert_exactly,
    assert_grads_match,
    assert_trees_close,
    assert_uses,
    randint,
    randn,
    weighted_sum,
)
from jax import lax

import funcgrad as fg
from funcgrad.interpret.rules import window as window_rules
from funcgrad.models import layers

# ---- window reductions: pooling ------------------------------------------------------------
REDUCERS = {"max": (-jnp.inf, lax.max), "min": (jnp.inf, lax.min), "sum": (0.0, lax.add)}
WINDOW_CASES = {
    # id: (operand shape, window, strides, padding, base dilation, window dilation)
    "2x2-stride2": ((2, 6, 6, 3), (1, 2, 2, 1), (1, 2, 2, 1), "VALID", None, None),
    "3x3-stride1-same": ((2, 6, 6, 3), (1, 3, 3, 1), (1, 1, 1, 1), "SAME", None, None),
    "3x3-stride2-same": ((2, 7, 6, 3), (1, 3, 3, 1), (1, 2, 2, 1), "SAME", None, None),
    "2x3-stride(3,4)-gaps": ((2, 8, 9, 3), (1, 2, 3, 1), (1, 3, 4, 1), "VALID", None, None),
    "asymmetric-padding": ((2, 7, 6), (1, 3, 2), (1, 2, 1), ((0, 0), (2, 1), (0, 3)), None, None),
    "base-dilation": ((2, 5, 6), (1, 3, 2), (1, 2, 1), ((0, 0), (1, 1), (0, 1)), (1, 2, 3), None),
    "1d": ((9,), (3,), (2,), ((1, 1),), None, None),
    "batch-and-channel-windows": ((4, 5, 3), (2, 2, 3), (2, 1, 1), "VALID", None, None),
}
SUM_ONLY_CASES = {  # jax.grad cannot differentiate max/min pooling with these
    "negative-padding": ((2, 7, 6), (1, 3, 2), (1, 2, 1), ((0, 0), (-1, 1), (1, -2)), None, None),
    "window-dilation": ((2, 9, 8), (1, 3, 2), (1, 2, 1), ((0, 0), (1, 1), (0, 1)), None,
                        (1, 2, 3)),
}


def window_fn(reducer: str, case: tuple) -> Callable:
    _, dims, strides, padding, base, dil = case
    init, op = REDUCERS[reducer]
    return lambda x: lax.reduce_window(x, init, op, dims, strides, padding, base, dil)


WINDOW_PARAMS = [(r, n) for r in REDUCERS for n in WINDOW_CASES] + [
    ("sum", n) for n in SUM_ONLY_CASES
]


# ---- the cases: user code reaching each primitive ------------------------------------------
def generic_window_case(reducer: str) -> Case:
    """A non-identity init gives the generic reduce_window. jax.grad cannot differentiate it, so
    the reference is the same function written as op(init, identity-initialised window reduce)."""
    identity, op = REDUCERS[reducer]
    dims, strides, padding, base = (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2)

    def f(x, init):
        return lax.reduce_window(x, init, op, dims, strides, padding, base)

    def reference(x, init):
        return op(lax.reduce_window(x, identity, op, dims, strides, padding, base), init)

    return Case(f"reduce_window-{reducer}-with-init", "reduce_window", f,
                lambda: (randn(17, 7, 6), jnp.float32(0.3)), argnums=(0, 1), reference=reference)


GENERIC = {reducer: generic_window_case(reducer) for reducer in REDUCERS}


def max_pool_3x3(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")


POOL_CT = randn(32, 2, 3, 3, 2)  # a cotangent of max_pool_3x3 on (2, 6, 6, 2)

# The table (test_rules_table.py) checks every case against jax.grad; eager=False where op-by-op
# jax.grad of the pooling takes seconds.
CASES = [
    Case("max_pool-2", "reduce_window_max", lambda x: layers.max_pool(x, impl="xla") ** 2,
         lambda: (randn(16, 2, 8, 8, 3),)),
    Case("max_pool-3-stride2-same", "reduce_window_max",
         lambda x: layers.max_pool(x, 3, 2, "SAME") ** 2, lambda: (randn(16, 2, 8, 8, 3),),
         eager=False),
    Case("min-asymmetric-padding", "reduce_window_min",
         window_fn("min", WINDOW_CASES["asymmetric-padding"]), lambda: (randn(33, 2, 7, 6),),
         eager=False),
    Case("avg_pool-2", "reduce_window_sum", lambda x: layers.avg_pool(x) ** 2,
         lambda: (randn(16, 2, 8, 8, 3),)),
    Case("avg_pool-3-stride2-same", "reduce_window_sum",
         lambda x: layers.avg_pool(x, 3, 2, "SAME") ** 2, lambda: (randn(16, 2, 8, 8, 3),),
         eager=False),
    Case("sum-base-dilation", "reduce_window_sum", window_fn("sum", WINDOW_CASES["base-dilation"]),
         lambda: (randn(34, 2, 5, 6),)),
    *GENERIC.values(),
    # jax.grad of a max-pool scatters with select_and_scatter_add, its jvp gathers with
    # select_and_gather_add: fg.grad differentiates JAX's own derivative programs
    Case("jax.grad(max_pool)", "select_and_scatter_add",
         lambda s, x: jax.grad(lambda x: jnp.sum(max_pool_3x3(x * s) * POOL_CT))(x),
         lambda: (jnp.float32(1.5), randn(35, 2, 6, 6, 2)), argnums=(0, 1), eager=False),
    Case("jax.jvp(max_pool)", "select_and_gather_add",
         lambda x, t: jax.jvp(max_pool_3x3, (x,), (t,))[1],
         lambda: (randn(36, 2, 6, 6, 2), randn(37, 2, 6, 6, 2)), argnums=(0, 1), eager=False),
]


# ---- pooling: ties, NaNs, float64 ----------------------------------------------------------
@pytest.mark.parametrize("reducer,name", WINDOW_PARAMS, ids=[f"{r}-{n}" for r, n in WINDOW_PARAMS])
def test_pooling_with_ties_matches_jax_exactly(reducer, name):
    """Small-integer inputs (ties in most windows) and cotangents: the routing must be JAX's."""
    case = {**WINDOW_CASES, **SUM_ONLY_CASES}[name]
    f = window_fn(reducer, case)
    x = randint(11, *case[0])
    assert_uses(f"reduce_window_{reducer}", f, x)
    loss = weighted_sum(f, integer_weights=True)
    assert_exactly(jax.jit(fg.grad(loss))(x), jax.jit(jax.grad(loss))(x))


@pytest.mark.parametrize("reducer", REDUCERS)
def test_pooling_in_float64(reducer):
    with jax.enable_x64(True):
        f = window_fn(reducer, WINDOW_CASES["3x3-stride1-same"])
        x = randn(13, *WINDOW_CASES["3x3-stride1-same"][0], dtype=np.float64)
        assert_grads_match(weighted_sum(f), x, eager=False)


def first_choice_reference(x, ct, dims, strides, padding, window_dilation, select=np.greater):
    """NumPy: each window's ct to its first element that no later element strictly beats."""
    pad = [(lo, hi) for lo, hi in padding]
    xp = np.pad(np.asarray(x, np.float64), pad, constant_values=-np.inf)
    grad = np.zeros_like(xp)
    for out in itertools.product(*(range(n) for n in ct.shape)):
        best, where = None, None
        for k in itertools.product(*(range(w) for w in dims)):
            pos = tuple(o * s + j * d for o, s, j, d in zip(out, strides, k, window_dilation))
            if best is None or select(xp[pos], best):
                best, where = xp[pos], pos
        grad[where] += ct[out]
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, x.shape))
    return grad[crop]


def test_max_pool_with_window_dilation_first_max():
    """JAX has no VJP for dilated max-pooling windows: check the convention against NumPy."""
    dims, strides, padding, dil = (3, 2), (2, 1), ((1, 1), (0, 2)), (2, 3)
    x = randint(14, 9, 8, high=4)

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, padding, None, dil)

    ct = np.asarray(randint(15, *pool(x).shape, high=5))
    got = fg.vjp(pool, x)[1](jnp.asarray(ct))[0]
    np.testing.assert_array_equal(got, first_choice_reference(x, ct, dims, strides, padding, dil))


@pytest.mark.parametrize("x", [[-np.inf, -np.inf, 1.0, np.nan, 2.0, 3.0],
                               [np.nan, np.nan, 1.0, 1.0, -np.inf, np.inf],
                               [-np.inf] * 6],
                         ids=["nan-and-minus-inf", "nans-and-ties", "all-minus-inf"])
def test_max_pool_nan_and_inf_as_jax(x):
    def f(x):
        return jnp.sum(lax.reduce_window(x, -jnp.inf, lax.max, (3,), (1,), ((1, 1),)))

    x = jnp.array(x)
    assert_exactly(fg.grad(f)(x), jax.grad(f)(x))


def test_max_pool_first_max_wins():
    x = jnp.array([[3.0, 3.0], [1.0, 3.0]])[None, :, :, None]
    got = fg.grad(lambda x: jnp.sum(layers.max_pool(x, impl="xla")))(x)
    assert_exactly(got[0, :, :, 0], np.array([[1.0, 0.0], [0.0, 0.0]], np.float32))


# ---- the generic reduce_window, select_and_scatter_add, select_and_gather_add --------------
@pytest.mark.parametrize("reducer", GENERIC)
def test_generic_reduce_window_reference_is_the_same_function(reducer):
    """The reference its Case's gradient is compared with computes the same values."""
    case = GENERIC[reducer]
    x, init = case.args()
    np.testing.assert_allclose(case.f(x, init), case.reference(x, init), rtol=1e-6, atol=1e-6)


def test_generic_reduce_window_other_computations_raise():
    def windowed_product(x):
        return jnp.sum(lax.reduce_window(x, 1.0, lax.mul, (2,), (1,), "VALID"))

    with pytest.raises(fg.UnsupportedPrimitiveError, match=r"reduce_window.*add, max or min"):
        fg.grad(windowed_product)(jnp.arange(1.0, 5.0))


MAXPOOL_GEOMETRIES = {
    "2x2-stride2": ((1, 2, 2, 1), (1, 2, 2, 1), "VALID"),
    "3x3-stride1-same": ((1, 3, 3, 1), (1, 1, 1, 1), "SAME"),
    "3x3-stride2-same": ((1, 3, 3, 1), (1, 2, 2, 1), "SAME"),
}


@pytest.mark.parametrize("name", MAXPOOL_GEOMETRIES)
def test_grad_of_jax_grad_of_max_pool(name):
    """jax.grad of a max-pool emits select_and_scatter_add, its jvp select_and_gather_add:
    fg.grad differentiates both (each is linear in its first operand)."""
    dims, strides, padding = MAXPOOL_GEOMETRIES[name]
    x = randint(18, 2, 6, 6, 2)

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, padding)

    c = randint(19, *pool(x).shape, high=4)
    c2 = randint(20, *x.shape, high=4)

    def inner(x, s):
        return jnp.sum(pool(x * s) * c)

    def grad_pairing(s, x):  # d/ds <jax.grad(inner), c2>
        return jnp.sum(jax.grad(inner)(x, s) * c2)

    assert_uses("select_and_scatter_add", grad_pairing, 1.5, x)
    assert_exactly(jax.jit(fg.grad(grad_pairing, (0, 1)))(1.5, x),
                   jax.jit(jax.grad(grad_pairing, (0, 1)))(1.5, x))

    def tangent_pairing(t):
        return jnp.sum(jax.jvp(pool, (x,), (t,))[1] * c)

    assert_uses("select_and_gather_add", tangent_pairing, c2)
    assert_exactly(jax.jit(fg.grad(tangent_pairing))(c2), jax.jit(jax.grad(tangent_pairing))(c2))


def test_grad_of_jvp_of_max_pool_with_base_dilation():
    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (3, 2), (2, 1), ((1, 1), (0, 1)), (2, 3))

    x = randint(21, 5, 6)
    c = randint(22, *pool(x).shape, high=4)

    def tangent_pairing(t):
        return jnp.sum(jax.jvp(pool, (x,), (t,))[1] * c)

    assert_exactly(jax.jit(fg.grad(tangent_pairing))(x), jax.jit(jax.grad(tangent_pairing))(x))


@pytest.mark.parametrize("window,stride,padding", [((2,), (2,), ((0, 0),)), ((3,), (1,), ((1, 1),)),
                                                   ((3,), (2,), ((2, 1),))],
                         ids=["2-stride2", "3-stride1-padded", "3-stride2-padded"])
def test_select_and_star_with_all_minus_inf_windows_as_jax(window, stride, padding):
    """Where every element of a window is -inf, select-and-scatter routes to the first one but
    JAX's transpose (select_and_gather_add, a reduction from the init -inf) gathers 0 there;
    funcgrad follows JAX in both directions."""
    x = jnp.array([-np.inf, -np.inf, 1.0, np.nan, -np.inf, -np.inf, 2.0, 2.0])

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, window, stride, padding)

    c, c2 = jnp.arange(1.0, 1.0 + pool(x).shape[0]), jnp.arange(1.0, 9.0)

    def grad_pairing(s):
        return jnp.sum(jax.grad(lambda x: jnp.sum(pool(x) * c * s))(x) * c2)

    def tangent_pairing(t):
        return jnp.sum(jax.jvp(pool, (x,), (t,))[1] * c)

    assert_exactly(fg.grad(grad_pairing)(1.5), jax.grad(grad_pairing)(1.5))
    assert_exactly(fg.grad(tangent_pairing)(c2), jax.grad(tangent_pairing)(c2))


@pytest.mark.parametrize("reducer", ["max", "min"])
def test_large_windows_use_select_and_scatter(reducer):
    """Windows of more than MAX_UNROLLED_WINDOW cells (global pooling) emit XLA's
    select-and-scatter, as jax.grad does, instead of one slice per cell: same gradients,
    first and second order."""
    init, op = REDUCERS[reducer]
    dims, strides, padding, base = (1, 9, 8, 1), (1, 2, 3, 1), ((0, 0), (2, 1), (1, 2), (0, 0)), (
        1, 2, 2, 1)
    assert np.prod(dims) > window_rules.MAX_UNROLLED_WINDOW

    def pool(x):
        return lax.reduce_window(x, init, op, dims, strides, padding, base)

    x = randint(30, 1, 6, 7, 2)
    loss = weighted_sum(pool, integer_weights=True)
    assert_uses("select_and_scatter_add", fg.grad(loss), x)
    assert_exactly(jax.jit(fg.grad(loss))(x), jax.jit(jax.grad(loss))(x))
    c2 = randint(31, *x.shape)

    def second(s):  # fg.grad through the select_and_scatter_add rule
        return jnp.sum(fg.grad(lambda x: loss(x * s))(x) * c2)

    def second_jax(s):
        return jnp.sum(jax.grad(lambda x: loss(x * s))(x) * c2)

    assert_exactly(jax.jit(fg.grad(second))(1.5), jax.jit(jax.grad(second_jax))(1.5))


# ---- second order --------------------------------------------------------------------------
HESSIANS = {
    "max-pool": (lambda x: jnp.sum(layers.max_pool(x * x, 2, 1, "SAME") * x),
                 lambda: randn(28, 1, 3, 3, 1)),
    "avg-pool": (lambda x: jnp.sum(layers.avg_pool(x, 2, 1) ** 3), lambda: randn(29, 1, 3, 3, 1)),
}


@pytest.mark.parametrize("name", HESSIANS)
def test_hessian_matches_jax(name):
    f, make_x = HESSIANS[name]
    x = make_x()
    want = jax.jit(jax.hessian(f))(x)
    assert_trees_close(jax.jit(fg.hessian(f))(x), want, rtol=1e-5, atol=1e-5)

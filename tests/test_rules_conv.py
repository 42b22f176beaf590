"""Convolution and window-reduction rules (conv_general_dilated, reduce_window_sum/max/min, the
generic reduce_window, select_and_scatter_add, select_and_gather_add) held against jax.grad.

Convolutions are checked in every configuration the primitive has: strides, explicit and
asymmetric and negative padding, lhs dilation (transposed convolution), rhs dilation (atrous),
feature groups (grouped and depthwise), batch groups, NCHW/NHWC/odd layouts, 1-D and 3-D,
precision and preferred_element_type. Pooling is checked with ties (small-integer inputs and
cotangents, so the comparison is exact): each window's cotangent goes to its *first* maximal
element, as XLA's select-and-scatter does for jax.grad. Second order: hessians and
fg.grad(fg.grad(...)) of a small conv net, and fg.grad of jax.grad of a max-pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import (
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
from funcgrad.models import cnn, layers

# ---- helpers -------------------------------------------------------------------------------
# ---- conv_general_dilated ------------------------------------------------------------------
NHWC = ("NHWC", "HWIO", "NHWC")
CONV_CASES = {
    # id: (lhs shape, rhs shape, conv_general_dilated kwargs)
    "nchw-valid": ((2, 3, 7, 6), (4, 3, 3, 2), dict(window_strides=(1, 1), padding="VALID")),
    "nchw-same-stride2": ((2, 3, 7, 6), (4, 3, 3, 2), dict(window_strides=(2, 2), padding="SAME")),
    "nhwc-same": ((2, 7, 6, 3), (3, 3, 3, 4),
                  dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)),
    "asymmetric-padding": ((2, 9, 8, 3), (3, 2, 3, 4),
                           dict(window_strides=(2, 3), padding=((1, 2), (0, 3)),
                                dimension_numbers=NHWC)),
    "negative-padding": ((2, 3, 9, 8), (4, 3, 3, 2),
                         dict(window_strides=(1, 2), padding=((-1, 2), (2, -1)))),
    "stride-beyond-kernel": ((2, 3, 9, 9), (4, 3, 2, 2),
                             dict(window_strides=(3, 4), padding="VALID")),
    "lhs-dilation": ((2, 3, 5, 4), (4, 3, 3, 2),
                     dict(window_strides=(1, 1), padding=((2, 2), (1, 1)), lhs_dilation=(2, 3))),
    "rhs-dilation": ((2, 3, 9, 8), (4, 3, 3, 2),
                     dict(window_strides=(2, 1), padding=((2, 1), (1, 1)), rhs_dilation=(2, 3))),
    "all-dilations-strided": ((2, 3, 9, 8), (4, 3, 3, 2),
                              dict(window_strides=(2, 3), padding=((2, 1), (1, 3)),
                                   lhs_dilation=(2, 1), rhs_dilation=(1, 2))),
    "feature-groups-2": ((2, 4, 7, 6), (6, 2, 3, 2),
                         dict(window_strides=(1, 1), padding="SAME", feature_group_count=2)),
    "feature-groups-2-nhwc-strided": ((2, 7, 6, 4), (3, 3, 2, 6),
                                      dict(window_strides=(2, 2), padding="SAME",
                                           feature_group_count=2, dimension_numbers=NHWC)),
    "feature-groups-dilated": ((2, 4, 7, 6), (6, 2, 3, 2),
                               dict(window_strides=(2, 1), padding=((1, 2), (0, 1)),
                                    lhs_dilation=(1, 2), rhs_dilation=(2, 1),
                                    feature_group_count=2)),
    "depthwise": ((2, 7, 6, 4), (3, 3, 1, 4),
                  dict(window_strides=(1, 1), padding="SAME", feature_group_count=4,
                       dimension_numbers=NHWC)),
    "depthwise-multiplier-2": ((2, 7, 6, 4), (3, 3, 1, 8),
                               dict(window_strides=(2, 1), padding="SAME", feature_group_count=4,
                                    dimension_numbers=NHWC)),
    "batch-groups-2": ((4, 3, 7, 6), (6, 3, 3, 2),
                       dict(window_strides=(1, 1), padding="SAME", batch_group_count=2)),
    "batch-groups-2-nhwc-strided": ((4, 7, 6, 3), (3, 3, 3, 6),
                                    dict(window_strides=(2, 1), padding=((1, 0), (2, 1)),
                                         batch_group_count=2, dimension_numbers=NHWC)),
    "batch-groups-3-dilated": ((6, 3, 9, 8), (6, 3, 2, 2),
                               dict(window_strides=(1, 2), padding=((0, 0), (1, 0)),
                                    batch_group_count=3, rhs_dilation=(2, 1),
                                    lhs_dilation=(1, 2))),
    "1d-nwc": ((2, 10, 3), (3, 3, 5),
               dict(window_strides=(2,), padding="SAME", dimension_numbers=("NWC", "WIO", "NWC"))),
    "1d-ncw-dilated": ((2, 3, 10), (5, 3, 3),
                       dict(window_strides=(1,), padding=((2, 0),), rhs_dilation=(2,),
                            lhs_dilation=(2,))),
    "3d-ncdhw": ((1, 2, 5, 6, 4), (3, 2, 2, 3, 2), dict(window_strides=(1, 2, 1), padding="SAME")),
    "3d-ndhwc": ((1, 5, 6, 4, 2), (2, 3, 2, 2, 3),
                 dict(window_strides=(2, 1, 1), padding="SAME",
                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
    "odd-layout": ((7, 2, 6, 3), (3, 4, 3, 2),
                   dict(window_strides=(1, 1), padding="SAME",
                        dimension_numbers=("HNWC", "OHIW", "CWNH"))),
    "kernel-1x1-strided": ((2, 3, 5, 5), (4, 3, 1, 1),
                           dict(window_strides=(2, 2), padding="VALID")),
    "kernel-covers-input": ((1, 3, 5, 5), (4, 3, 5, 5),
                            dict(window_strides=(1, 1), padding="VALID")),
    "precision-highest": ((2, 3, 6, 6), (4, 3, 3, 3),
                          dict(window_strides=(1, 1), padding="SAME",
                               precision=lax.Precision.HIGHEST)),
}


def conv_fn(kwargs: dict) -> Callable:
    return lambda x, w: lax.conv_general_dilated(x, w, **kwargs)


def conv_args(name: str, dtype=np.float32) -> tuple:
    lhs, rhs, _ = CONV_CASES[name]
    return randn(1, *lhs, dtype=dtype), randn(2, *rhs, dtype=dtype)


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_matches_jax(name):
    f = conv_fn(CONV_CASES[name][2])
    args = conv_args(name)
    assert_uses("conv_general_dilated", f, *args)
    assert_grads_match(weighted_sum(f), *args, argnums=(0, 1), eager=False)


@pytest.mark.parametrize("name", ["all-dilations-strided", "depthwise", "batch-groups-2"])
def test_conv_matches_jax_eagerly(name):
    assert_grads_match(weighted_sum(conv_fn(CONV_CASES[name][2])), *conv_args(name),
                       argnums=(0, 1), eager=True)


@pytest.mark.parametrize("name", ["nchw-same-stride2", "feature-groups-dilated",
                                  "batch-groups-3-dilated", "3d-ndhwc"])
def test_conv_matches_jax_in_float64(name):
    with jax.enable_x64(True):
        args = conv_args(name, np.float64)
        loss = weighted_sum(conv_fn(CONV_CASES[name][2]))
        assert_grads_match(loss, *args, argnums=(0, 1), eager=False)


def test_conv_transpose_and_convolve():
    """User-level transposed convolution and jnp.convolve reach the same primitive."""
    x, w = randn(3, 2, 5, 5, 3), randn(4, 3, 3, 3, 4)

    def transposed(x, w):
        return lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=NHWC)

    assert_uses("conv_general_dilated", transposed, x, w)
    assert_grads_match(weighted_sum(transposed), x, w, argnums=(0, 1), eager=True)
    a, v = randn(5, 11), randn(6, 4)
    assert_grads_match(weighted_sum(lambda a, v: jnp.convolve(a, v, mode="full")), a, v,
                       argnums=(0, 1), eager=False)


def test_conv_bf16_with_preferred_element_type():
    x, w = randn(7, 2, 6, 6, 3, dtype=jnp.bfloat16), randn(8, 3, 3, 3, 4, dtype=jnp.bfloat16)

    def f(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                        preferred_element_type=jnp.float32)

    assert f(x, w).dtype == jnp.float32
    grads = fg.grad(weighted_sum(f), (0, 1))(x, w)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
    assert_exactly(grads, jax.jit(jax.grad(weighted_sum(f), (0, 1)))(x, w))


CONV_ZERO_SIZE = {
    "empty-batch": ((0, 3, 5, 5), (4, 3, 3, 3), "SAME"),
    "no-output-channels": ((2, 3, 5, 5), (0, 3, 3, 3), "SAME"),
    "no-input-channels": ((2, 0, 5, 5), (4, 0, 3, 3), "SAME"),
    "empty-output-window": ((2, 3, 2, 5), (4, 3, 3, 3), "VALID"),
}


@pytest.mark.parametrize("name", CONV_ZERO_SIZE)
def test_conv_zero_size(name):
    lhs, rhs, padding = CONV_ZERO_SIZE[name]
    x, w = randn(9, *lhs), randn(10, *rhs)

    def f(x, w):
        return jnp.sum(lax.conv_general_dilated(x, w, (1, 1), padding) ** 2) + jnp.sum(w)

    got = fg.grad(f, (0, 1))(x, w)
    assert [g.shape for g in got] == [lhs, rhs]
    assert_trees_close(got, jax.grad(f, (0, 1))(x, w))


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


@pytest.mark.parametrize("pool,eager", [
    (lambda x: layers.max_pool(x, impl="xla"), True),
    (lambda x: layers.max_pool(x, 3, 2, "SAME"), False),
    (lambda x: layers.avg_pool(x), True),
    (lambda x: layers.avg_pool(x, 3, 2, "SAME"), False),
], ids=["max_pool-2", "max_pool-3-stride2-same", "avg_pool-2", "avg_pool-3-stride2-same"])
def test_model_pooling_layers(pool, eager):
    x = randn(16, 2, 8, 8, 3)
    assert_grads_match(lambda x: jnp.sum(pool(x) ** 2), x, eager=eager)


# ---- the generic reduce_window, select_and_scatter_add, select_and_gather_add --------------
@pytest.mark.parametrize("reducer", ["sum", "max", "min"])
def test_generic_reduce_window_with_an_init(reducer):
    """A non-identity init gives the generic primitive; JAX cannot differentiate it, so the
    reference is the same function written as op(init, identity-initialised window reduce)."""
    identity, op = REDUCERS[reducer]
    dims, strides, padding, base = (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2)

    def f(x, init):
        return lax.reduce_window(x, init, op, dims, strides, padding, base)

    def reference(x, init):
        return op(lax.reduce_window(x, identity, op, dims, strides, padding, base), init)

    x, init = randn(17, 7, 6), jnp.float32(0.3)
    assert_uses("reduce_window", f, x, init)
    np.testing.assert_allclose(f(x, init), reference(x, init), rtol=1e-6, atol=1e-6)
    got = jax.jit(fg.grad(weighted_sum(f), (0, 1)))(x, init)
    assert_trees_close(got, jax.jit(jax.grad(weighted_sum(reference), (0, 1)))(x, init))


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


# ---- models, vmap, second order ------------------------------------------------------------
def small_cnn(conv_impl="xla", pool_impl="xla"):
    params = cnn.init(jax.random.key(0), (8, 8, 1), conv_channels=(3, 4), dense_sizes=(5, 3))
    images = randn(23, 4, 8, 8, 1)
    labels = jnp.array([0, 2, 1, 2])

    def loss(params, images=images):
        logits = cnn.apply(params, images, conv_impl=conv_impl, pool_impl=pool_impl)
        return fg.losses.softmax_cross_entropy(logits, labels)

    return params, loss


@pytest.mark.parametrize("impl", ["xla", "default"])
def test_cnn_model_gradient(impl):
    params, loss = small_cnn() if impl == "xla" else small_cnn("im2col", "reshape")
    if impl == "xla":
        assert_uses("conv_general_dilated", loss, params)
        assert_uses("reduce_window_max", loss, params)
    assert_grads_match(loss, params, rtol=1e-5, atol=1e-6, eager=False)


def test_vmap_of_grad():
    w = randn(24, 3, 3, 2, 4)

    def f(x):
        y = lax.conv_general_dilated(x[None], w, (1, 1), "SAME", dimension_numbers=NHWC)
        return jnp.sum(layers.max_pool(jnp.tanh(y), 3, 2, "SAME") ** 2)

    xs = randn(25, 5, 6, 6, 2)
    want = jax.jit(jax.vmap(jax.grad(f)))(xs)
    assert_trees_close(jax.vmap(fg.grad(f))(xs), want)
    assert_trees_close(jax.jit(jax.vmap(fg.grad(f)))(xs), want)


HESSIANS = {
    "conv-input": (lambda x: jnp.sum(jnp.tanh(lax.conv_general_dilated(
        x, jnp.linspace(-1.0, 1.0, 8).reshape(2, 1, 2, 2), (2, 1), ((1, 0), (0, 1)),
        rhs_dilation=(1, 2)))), lambda: randn(26, 1, 1, 4, 4)),
    "conv-kernel-grouped": (lambda w: jnp.sum(lax.conv_general_dilated(
        jnp.linspace(-1.0, 1.0, 32).reshape(1, 2, 4, 4), w, (1, 1), "SAME",
        feature_group_count=2) ** 3), lambda: randn(27, 2, 1, 2, 2)),
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


def test_grad_of_grad_of_conv_net_loss_in_a_scale():
    """fg.grad(fg.grad(.)) of a small conv net's loss as a function of a weight scale."""
    params, loss = small_cnn()

    def scaled(s):
        return loss(jax.tree_util.tree_map(lambda p: p * s, params))

    want = jax.jit(jax.grad(jax.grad(scaled)))(1.3)
    assert_trees_close(jax.jit(fg.grad(fg.grad(scaled)))(1.3), want, rtol=2e-5, atol=1e-6)

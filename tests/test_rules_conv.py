"""The convolution rule (conv_general_dilated) held against jax.grad.

Convolutions are checked in every configuration the primitive has: strides, explicit and
asymmetric and negative padding, lhs dilation (transposed convolution), rhs dilation (atrous),
feature groups (grouped and depthwise), batch groups, NCHW/NHWC/odd layouts, 1-D and 3-D,
precision and preferred_element_type: the CASES, which test_rules_table.py checks. Then a small
conv net (with its max-pool; the pooling rules are test_rules_window.py's): its gradient, vmap,
hessians and fg.grad(fg.grad(...)).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

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
    randn,
    weighted_sum,
)
from jax import lax

import funcgrad as fg
from funcgrad.models import cnn, layers

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


# Eager jax.grad of a convolution takes a second or more; the table (test_rules_table.py) checks
# these three eagerly and under jit, the others under jit only.
EAGER = {"all-dilations-strided", "depthwise", "batch-groups-2"}
CASES = [
    Case(name, "conv_general_dilated", conv_fn(kwargs), partial(conv_args, name), argnums=(0, 1),
         eager=name in EAGER)
    for name, (_, _, kwargs) in CONV_CASES.items()
]


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

"""Shape and layout rules (broadcast, reshape, transpose, concatenate, split, pad, slice, ...)
held against jax.grad and jax.vjp.

Every case of CASES is written as user code (``x[:, None]``, ``jnp.split``, ``jnp.pad``, ...) and
names the primitive it must reach, so a case that stops exercising its rule fails instead of
passing vacuously; test_rules_table.py checks each against jax.grad, eagerly and under jit. These
rules only move values, so the gradients agree exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import (
    Case,
    assert_grads_match,
    assert_trees_close,
    assert_uses,
    assert_vjp_matches,
    primitives_of,
    randn,
    weighted_sum,
)
from jax import lax

import funcgrad as fg

# ---- the cases: user code reaching each primitive ------------------------------------------
CASES = [
    # broadcast_in_dim: new dims, size-1 dims that grow, rank-0 operands
    Case("broadcast-scalar", "broadcast_in_dim", lambda x: jnp.broadcast_to(x, (3, 4)),
         lambda: (randn(0),)),
    Case("broadcast-size1-dims", "broadcast_in_dim", lambda x: jnp.broadcast_to(x, (2, 3, 5)),
         lambda: (randn(1, 3, 1),)),
    Case("broadcast-size1-kept", "broadcast_in_dim",
         lambda x: lax.broadcast_in_dim(x, (4, 1, 3), (1, 2)), lambda: (randn(2, 1, 3),)),
    Case("x[:, None]", "broadcast_in_dim", lambda x: x[:, None] * x[None, :],
         lambda: (randn(3, 4),)),
    Case("expand_dims", "broadcast_in_dim", lambda x: jnp.expand_dims(x, (0, 2)),
         lambda: (randn(4, 2, 3),)),
    Case("repeat", "broadcast_in_dim", lambda x: jnp.repeat(x, 3, axis=1),
         lambda: (randn(5, 2, 3),)),
    # reshape, squeeze
    Case("reshape", "reshape", lambda x: x.reshape(6, 4), lambda: (randn(6, 2, 3, 4),)),
    Case("reshape-scalar", "reshape", lambda x: jnp.reshape(x, (1, 1)), lambda: (randn(7),)),
    Case("ravel", "reshape", jnp.ravel, lambda: (randn(8, 3, 2),)),
    Case("lax.reshape-dimensions", "reshape",
         lambda x: lax.reshape(x, (4, 6), dimensions=(2, 0, 1)), lambda: (randn(42, 2, 3, 4),)),
    Case("lax.reshape-dimensions-2d", "reshape",
         lambda x: lax.reshape(x, (15,), dimensions=(1, 0)), lambda: (randn(43, 3, 5),)),
    Case("squeeze", "squeeze", jnp.squeeze, lambda: (randn(9, 1, 3, 1, 2),)),
    Case("squeeze-axis", "squeeze", lambda x: jnp.squeeze(x, axis=2),
         lambda: (randn(10, 2, 3, 1),)),
    # transpose
    Case("transpose", "transpose", lambda x: jnp.transpose(x, (2, 0, 1)),
         lambda: (randn(11, 2, 3, 4),)),
    Case("x.T", "transpose", lambda x: x.T @ x, lambda: (randn(12, 3, 2),)),
    Case("moveaxis", "transpose", lambda x: jnp.moveaxis(x, 0, -1), lambda: (randn(13, 2, 3, 4),)),
    Case("swapaxes", "transpose", lambda x: jnp.swapaxes(x, 1, 2), lambda: (randn(14, 2, 3, 4),)),
    # rev
    Case("flip", "rev", lambda x: jnp.flip(x, (0, 2)), lambda: (randn(15, 2, 3, 4),)),
    Case("x[::-1]", "rev", lambda x: x[::-1], lambda: (randn(16, 5),)),
    # concatenate
    Case("concatenate", "concatenate", lambda x, y: jnp.concatenate([x, y, x], axis=1),
         lambda: (randn(17, 2, 3), randn(18, 2, 1)), argnums=(0, 1)),
    Case("concatenate-with-constant", "concatenate",
         lambda x: jnp.concatenate([jnp.ones((1, 3)), x * 2.0], axis=0),
         lambda: (randn(19, 2, 3),)),
    Case("roll", "concatenate", lambda x: jnp.roll(x, 2, axis=1), lambda: (randn(20, 3, 5),)),
    # split: unused pieces get zero cotangents
    Case("split", "split", lambda x: jnp.split(x, 3, axis=0), lambda: (randn(21, 6, 2),)),
    Case("split-some-unused", "split", lambda x: jnp.split(x, [1, 3], axis=1)[1],
         lambda: (randn(22, 2, 5),)),
    Case("lax.split-uneven", "split", lambda x: lax.split(x, (1, 0, 3), axis=0)[::2],
         lambda: (randn(23, 4, 2),)),
    # stack / unstack
    Case("stack", "stack", lambda x, y: jnp.stack([x, y, x], axis=1),
         lambda: (randn(24, 2, 3), randn(25, 2, 3)), argnums=(0, 1)),
    Case("unstack", "unstack", lambda x: jnp.unstack(x, axis=1)[2], lambda: (randn(26, 2, 4),)),
    Case("unstack-all", "unstack", lambda x: jnp.unstack(x, axis=0), lambda: (randn(27, 3, 2),)),
    # tile
    Case("tile", "tile", lambda x: jnp.tile(x, (2, 1, 3)), lambda: (randn(28, 2, 3, 2),)),
    Case("tile-more-reps-than-rank", "tile", lambda x: jnp.tile(x, (3, 2)),
         lambda: (randn(29, 4),)),
    # slice, with and without strides
    Case("x[1:5:2]", "slice", lambda x: x[1:5:2], lambda: (randn(30, 7),)),
    Case("x[:, 1:3]", "slice", lambda x: x[:, 1:3], lambda: (randn(31, 3, 5),)),
    Case("x[::3] (stride past the end)", "slice", lambda x: x[::3, 1::2],
         lambda: (randn(32, 8, 6),)),
    Case("lax.slice-strided", "slice", lambda x: lax.slice(x, (1, 0), (6, 4), (2, 3)),
         lambda: (randn(33, 7, 4),)),
    # pad: negative lo/hi, interior, gradient of the padding value
    Case("jnp.pad-constant", "pad", lambda x: jnp.pad(x, ((1, 2), (0, 3))),
         lambda: (randn(34, 2, 3),)),
    Case("jnp.pad-reflect", "rev", lambda x: jnp.pad(x, ((2, 1), (1, 2)), mode="reflect"),
         lambda: (randn(41, 4, 3),)),
    Case("lax.pad-negative-interior", "pad",
         lambda x, v: lax.pad(x, v, ((1, -1, 1), (-2, 2, 2), (0, 0, 0))),
         lambda: (randn(35, 3, 4, 2), randn(36)), argnums=(0, 1)),
    # convert_element_type: float -> float casts back
    Case("astype-f16", "convert_element_type", lambda x: x.astype(jnp.float16) * 2,
         lambda: (randn(39, 3),)),
    Case("astype-bf16-and-back", "convert_element_type",
         lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), lambda: (randn(40, 4),)),
]

BY_ID = {c.id: c for c in CASES}


FLOAT64 = ["broadcast-size1-dims", "lax.reshape-dimensions", "transpose", "concatenate", "split",
           "stack", "tile", "x[::3] (stride past the end)", "lax.pad-negative-interior"]


@pytest.mark.parametrize("name", FLOAT64)
def test_rule_matches_jax_in_float64(name):
    case = BY_ID[name]
    with jax.enable_x64(True):
        args = case.args(np.float64)
        assert all(a.dtype == np.float64 for a in args)
        assert_grads_match(weighted_sum(case.f), *args, argnums=case.argnums, jit=False)


# ---- zero-size arrays ----------------------------------------------------------------------
ZERO_SIZE = [
    ("transpose", lambda x: jnp.transpose(x, (1, 2, 0)), (2, 0, 3)),
    ("reshape", lambda x: x.reshape(0, 6), (2, 0, 3)),
    ("squeeze", lambda x: jnp.squeeze(x, 1), (0, 1)),
    ("rev", lambda x: x[::-1], (0,)),
    ("broadcast_in_dim", lambda x: jnp.broadcast_to(x, (4, 0)), (0,)),
    ("broadcast_in_dim", lambda x: jnp.broadcast_to(x, (2, 0, 3)), (1, 3)),
    ("concatenate", lambda x: jnp.concatenate([x, jnp.ones((2, 1, 3))], axis=1), (2, 0, 3)),
    ("split", lambda x: jnp.split(x, 2, axis=0), (2, 0, 3)),
    ("stack", lambda x: jnp.stack([x, x]), (0,)),
    ("unstack", lambda x: jnp.unstack(x), (2, 0, 3)),
    ("tile", lambda x: jnp.tile(x, (3,)), (0,)),
    ("slice", lambda x: x[:, :, 1::2], (2, 0, 3)),
    ("slice", lambda x: x[3:3], (5,)),
    ("pad", lambda x: jnp.pad(x, (1, 2)), (0,)),
    ("pad", lambda x: lax.pad(x, 1.5, ((0, 0, 0), (1, 1, 3), (0, -1, 0))), (2, 0, 3)),
]


@pytest.mark.parametrize(
    "primitive, f, shape", ZERO_SIZE, ids=[f"{p}-{s}" for p, _, s in ZERO_SIZE]
)
def test_zero_size(primitive, f, shape):
    x = jnp.zeros(shape, jnp.float32)
    assert_uses(primitive, f, x)
    assert_grads_match(weighted_sum(f), x, jit=False)
    assert_vjp_matches(f, x)


# ---- conventions, spelled out ---------------------------------------------------------------
def test_pad_gradient_values():
    """Cropped elements (negative lo/hi) get 0; every padded slot credits the padding value."""
    x = jnp.arange(1.0, 6.0)  # [x0..x4]

    def f(x, v):  # interior 1 then crop 1 on the left: [v, x1, v, x2, v, x3, v, x4, v, v]
        return lax.pad(x, v, ((-1, 2, 1),))

    ct = jnp.arange(1.0, 11.0)
    _, pull = fg.vjp(f, x, jnp.float32(0.0))
    gx, gv = pull(ct)
    np.testing.assert_array_equal(gx, [0.0, 2.0, 4.0, 6.0, 8.0])
    assert float(gv) == 1.0 + 3.0 + 5.0 + 7.0 + 9.0 + 10.0
    assert_trees_close((gx, gv), jax.vjp(f, x, jnp.float32(0.0))[1](ct))


def test_pad_value_alone_where_jax_grad_raises():
    """A known difference: jax.grad with respect to the padding value only (operand held fixed)
    raises a TypeError inside JAX 0.10.2's pad transpose (it sums the operand cotangent it did not
    compute). funcgrad returns the gradient, which equals jax.grad's with respect to both."""

    def loss(v, x):
        return weighted_sum(lambda v, x: lax.pad(x, v, ((2, 1, 1),)))(v, x)

    v, x = randn(37), randn(38, 3)
    want = jax.grad(loss, argnums=(0, 1))(v, x)[0]
    assert_trees_close(fg.grad(loss)(v, x), want)
    assert_trees_close(jax.jit(fg.grad(loss))(v, x), want)
    with pytest.raises(TypeError):
        jax.grad(loss)(v, x)


def test_strided_slice_puts_cotangent_at_the_taken_positions():
    x = jnp.zeros(7)
    _, pull = fg.vjp(lambda x: x[1::3], x)  # takes x[1], x[4]
    np.testing.assert_array_equal(pull(jnp.array([2.0, 3.0]))[0], [0, 2, 0, 0, 3, 0, 0])


@pytest.mark.parametrize("name", ["split", "unstack-all", "concatenate", "stack"])
def test_vjp_with_random_cotangents(name):
    case = BY_ID[name]
    assert_vjp_matches(case.f, *case.args())


def test_unused_split_pieces_get_zero():
    g = fg.grad(lambda x: jnp.sum(jnp.split(x, 3)[1]))(jnp.ones(6))
    np.testing.assert_array_equal(g, [0, 0, 1, 1, 0, 0])


def test_convert_from_int_gets_no_cotangent():
    def f(x, n):
        return x * n.astype(jnp.float32)

    x, n = randn(50, 3), jnp.array([1, -2, 3])
    assert_grads_match(weighted_sum(f), x, n, jit=False)
    assert_vjp_matches(f, x, n)  # the int input's cotangent is float0, as jax.vjp's


def test_convert_weak_type_only_is_identity():
    def f(x):  # a Python float is weakly typed; asarray makes it strong: same dtype, new type
        return jnp.asarray(x, jnp.float32) * 3.0

    assert_uses("convert_element_type", f, 2.0)
    got, want = fg.grad(f)(2.0), jax.grad(f)(2.0)
    assert_trees_close(got, want)
    assert float(got) == 3.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_gets_low_precision_gradient(dtype):
    def f(x):
        return jnp.sum(jnp.tile(x.astype(jnp.float32), (2,)) * jnp.arange(6.0))

    x = randn(51, 3, dtype=dtype)
    assert fg.grad(f)(x).dtype == dtype
    assert_grads_match(f, x, jit=False)


def test_float64_to_float32_cast_back():
    with jax.enable_x64(True):
        def f(x):
            return jnp.sum(jnp.sin(x.astype(jnp.float32)) * 2)

        x = randn(52, 4, dtype=np.float64)
        assert fg.grad(f)(x).dtype == np.float64
        assert_grads_match(f, x, jit=False)


# ---- composition: vmap, second order, closure -----------------------------------------------
def layout_soup(x):
    """Every shape primitive of this family in one smooth function of a (4, 3) input."""
    a = jnp.concatenate([x, jnp.flip(x, 0)], axis=1)  # (4, 6)
    b, c = jnp.split(a, [2], axis=0)  # (2, 6), (2, 6)
    d = jnp.stack([b, c * b], axis=-1).transpose(2, 0, 1)  # (2, 2, 6)
    e = lax.reshape(jnp.tile(d[:, :, 1::2], (1, 2, 1)), (2, 12), dimensions=(0, 2, 1))
    f = lax.pad(e, 0.5, ((1, -1, 0), (-2, 1, 1)))  # (2, 22)
    g = jnp.unstack(f[:, :, None], axis=0)[0].squeeze(1)  # (22,)
    return jnp.sum(jnp.tanh(g) * jnp.arange(g.shape[0], dtype=g.dtype)) + jnp.sum(x[:, None] ** 3)


def test_layout_soup_uses_every_primitive():
    used = primitives_of(jax.make_jaxpr(layout_soup)(jnp.ones((4, 3))).jaxpr)
    family = {"concatenate", "rev", "split", "stack", "transpose", "tile", "slice", "reshape",
              "pad", "unstack", "squeeze", "broadcast_in_dim"}
    assert family <= used, sorted(family - used)


def test_vmap_of_grad():
    xs = randn(60, 5, 4, 3)
    got = jax.jit(jax.vmap(fg.grad(layout_soup)))(xs)
    want = jax.jit(jax.vmap(jax.grad(layout_soup)))(xs)
    assert_trees_close(got, want)


def test_hessian_matches_jax():
    x = randn(61, 4, 3) * 0.5
    got = jax.jit(fg.hessian(layout_soup))(x)  # jitted: eager reverse-over-reverse is slow
    assert_trees_close(got, jax.jit(jax.hessian(layout_soup))(x), 1e-5, 1e-5)


def test_grad_of_grad_under_jit():
    x = randn(62, 4, 3) * 0.5
    v = randn(63, 4, 3)

    def hvp(grad):
        return lambda x: jnp.vdot(grad(layout_soup)(x), v)

    got = jax.jit(fg.grad(hvp(fg.grad)))(x)
    assert_trees_close(got, jax.jit(jax.grad(hvp(jax.grad)))(x), 1e-5, 1e-5)


def test_closure_backward_pass_uses_only_supported_primitives():
    """fg.grad's own backward pass must be differentiable by funcgrad: every primitive the shape
    rules emit has a rule."""
    supported = fg.supported_primitives()
    for case in CASES:
        grad_jaxpr = jax.make_jaxpr(fg.grad(weighted_sum(case.f), case.argnums))(*case.args())
        missing = primitives_of(grad_jaxpr.jaxpr) - supported
        assert not missing, f"{case.id}: no rule for {sorted(missing)}"

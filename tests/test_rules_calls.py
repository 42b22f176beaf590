"""The composite and custom_vmap_call rules: the derivative of the body, which defines the value.

``jax.grad`` refuses both primitives (composite's JVP rule raises; custom_vmap's JVP cannot be
linearized), so funcgrad's gradients are compared with ``jax.grad`` of the body called directly
(``CASES`` carry it as their ``reference``) and, for custom_vmap, with ``jax.jacfwd`` of the
wrapped function (JAX's forward mode does differentiate it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import Case, assert_trees_close, assert_uses, primitives_of, randn, weighted_sum
from jax import lax
from jax.custom_batching import custom_vmap, sequential_vmap

import funcgrad as fg

SCALE = jnp.array([0.5, -1.5, 2.0], jnp.float32)  # closed over: a constant of the body


def body(x, y):
    """A smooth function of two arrays (and a closed-over constant) with two outputs."""
    return jnp.sin(x) * y + jnp.exp(-x * x) * SCALE, jnp.tanh(x * y)


@custom_vmap
def with_rule(x, y):
    return body(x, y)


@with_rule.def_vmap
def with_rule_batched(axis_size, in_batched, x, y):
    out = body(x, y)
    batched = in_batched[0] or in_batched[1]
    return out, (batched, batched)


one_by_one = sequential_vmap(body)


def named_body(x, y, *, power):
    out, aux = body(x, y)
    return out**power, aux


def composite(x, y):
    return lax.composite(named_body, name="funcgrad.test.body")(x, y, power=3)


def decomposed(x, y):
    return named_body(x, y, power=3)


WRAPPED = {  # name -> (function reaching the primitive, primitive, the plain body)
    "custom_vmap": (with_rule, "custom_vmap_call", body),
    "sequential_vmap": (one_by_one, "custom_vmap_call", body),
    "composite": (composite, "composite", decomposed),
}


CASES = [
    Case(name, primitive, wrapped, lambda: xy(), argnums=(0, 1), reference=plain)
    for name, (wrapped, primitive, plain) in WRAPPED.items()
]


def xy(dtype=np.float32):
    return randn(0, 3, dtype=dtype), jnp.abs(randn(1, 3, dtype=dtype)) + 0.5


@pytest.mark.parametrize("name", WRAPPED)
def test_jax_grad_refuses(name):
    wrapped, primitive, _ = WRAPPED[name]
    loss = weighted_sum(wrapped)
    assert_uses(primitive, loss, *xy())
    with pytest.raises(ValueError, match=r"Linearization failed|JVP rule for composite"):
        jax.grad(loss)(*xy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", WRAPPED)
def test_gradient_is_the_body_gradient(name, dtype):
    wrapped, _, plain = WRAPPED[name]
    with jax.enable_x64(dtype == np.float64):
        x, y = xy(dtype)
        loss, plain_loss = weighted_sum(wrapped), weighted_sum(plain)
        want = jax.grad(plain_loss, (0, 1))(x, y)
        assert_trees_close(fg.grad(loss, (0, 1))(x, y), want)
        assert_trees_close(jax.jit(fg.grad(loss, (0, 1)))(x, y), want)
        value, _ = fg.value_and_grad(loss)(x, y)
        assert_trees_close(value, plain_loss(x, y), what="value")
        if name == "custom_vmap":  # JAX's forward mode does differentiate custom_vmap
            assert_trees_close(fg.grad(loss, (0, 1))(x, y), jax.jacfwd(loss, (0, 1))(x, y))


@pytest.mark.parametrize("name", WRAPPED)
def test_vmap_of_grad(name):
    wrapped, _, plain = WRAPPED[name]
    xs, ys = randn(2, 4, 3), jnp.abs(randn(3, 4, 3)) + 0.5
    want = jax.vmap(jax.grad(weighted_sum(plain), (0, 1)))(xs, ys)
    got = jax.jit(jax.vmap(fg.grad(weighted_sum(wrapped), (0, 1))))(xs, ys)
    assert_trees_close(got, want)


@pytest.mark.parametrize("name", WRAPPED)
def test_second_order(name):
    wrapped, _, plain = WRAPPED[name]
    with jax.enable_x64(True):
        x, y = xy(np.float64)
        loss, plain_loss = weighted_sum(wrapped), weighted_sum(plain)
        assert_trees_close(jax.jit(fg.hessian(loss))(x, y), jax.jit(jax.hessian(plain_loss))(x, y))

        def slope(y, grad, f):
            return jnp.sum(jnp.cos(grad(f)(x, y)))

        want = jax.grad(slope)(y, jax.grad, plain_loss)
        assert_trees_close(fg.grad(slope)(y, fg.grad, loss), want)


def test_inactive_composite_stays_a_composite():
    """Only a composite a gradient flows through is opened up; the others are bound as they
    were, for the compiler to recognise."""

    def loss(x, w):
        return jnp.sum(composite(x, x)[0] * w)

    x, w = xy()
    grad_w = jax.make_jaxpr(fg.grad(loss, 1))(x, w)
    assert "composite" in primitives_of(grad_w.jaxpr)
    assert_trees_close(fg.grad(loss, 1)(x, w), composite(x, x)[0])
    grad_x = jax.make_jaxpr(fg.grad(loss, 0))(x, w)
    assert "composite" not in primitives_of(grad_x.jaxpr)


def test_custom_vmap_rule_still_batches_the_undifferentiated_forward():
    """Under vmap, a custom_vmap call no gradient flows through keeps its own batching rule."""
    calls = []

    @custom_vmap
    def double(x):
        return 2.0 * x

    @double.def_vmap
    def double_batched(axis_size, in_batched, x):
        calls.append(axis_size)
        return 2.0 * x, in_batched[0]

    def loss(x, w):
        return jnp.sum(double(x) * w)

    xs, w = randn(4, 5, 3), randn(5, 3)
    got = jax.vmap(fg.grad(loss, 1), (0, None))(xs, w)
    assert_trees_close(got, 2.0 * xs)
    assert calls == [5]

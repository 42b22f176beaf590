"""Higher-order rules (calls, custom_jvp/custom_vjp, remat, cond/switch, scan/fori_loop, while)
held against jax.grad: the rules that recurse into the interpreter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import assert_grads_match, assert_trees_close
from jax import lax

import funcgrad as fg

KEY = jax.random.PRNGKey(0)
W = jax.random.normal(KEY, (3, 3)) * 0.5
XS = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
X = jnp.linspace(-1.0, 1.0, 5)


# ---- custom derivatives ----------------------------------------------------------------------
def test_custom_jvp_rule_is_honoured_not_the_body():
    @jax.custom_jvp
    def f(x):
        return jnp.tanh(x)

    @f.defjvp
    def f_jvp(primals, tangents):  # a deliberately different rule
        (x,), (t,) = primals, tangents
        return f(x), 3.0 * t * x

    g = lambda x: jnp.sum(f(x) * x)  # noqa: E731
    got = assert_grads_match(g, X)
    assert not np.allclose(got, jax.grad(lambda x: jnp.sum(jnp.tanh(x) * x))(X))


def test_custom_jvp_with_primal_work_and_several_tangents():
    # the rule's tangent part is transposed without evaluating it; primal values it multiplies
    # by (cos x here) must still be computed, and unused primal outputs may be skipped
    @jax.custom_jvp
    def f(x, y):
        return jnp.sin(x) * y

    @f.defjvp
    def f_jvp(primals, tangents):
        (x, y), (tx, ty) = primals, tangents
        unused = jnp.exp(x) * 3.0  # noqa: F841
        return f(x, y), jnp.cos(x) * y * tx + jnp.sin(x) * ty

    assert_grads_match(lambda x, y: jnp.sum(f(x, y) ** 2), X, X + 2.0, argnums=(0, 1))


def test_custom_vjp_calls_user_bwd():
    @jax.custom_vjp
    def h(x, y):
        return jnp.tanh(x) * y

    def h_fwd(x, y):
        return h(x, y), (x, y)

    def h_bwd(res, ct):
        _, y = res
        return ct * 2.0 * y, None

    h.defvjp(h_fwd, h_bwd)
    assert_grads_match(lambda x, y: jnp.sum(h(x, y) * x), X, X + 1, argnums=(0, 1))


# ---- scan and fori_loop ----------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_rnn(reverse):
    def rnn(w, xs):
        def step(h, x):
            h = jnp.tanh(h @ w + x)
            return h, h * 2.0

        h_last, ys = lax.scan(step, jnp.zeros(3), xs, reverse=reverse)
        return jnp.sum(h_last) + jnp.sum(ys * ys)

    assert_grads_match(rnn, W, XS, argnums=(0, 1))


def test_scan_with_integer_carry_and_inactive_carry():
    def f(w, xs):
        def step(carry, x):
            i, h, unrelated = carry
            return (i + 1, jnp.tanh(h @ w + x), unrelated * 2.0), None

        (_, h, u), _ = lax.scan(step, (0, jnp.ones(3), jnp.ones(2)), xs)
        return jnp.sum(h) + jnp.sum(u)

    assert_grads_match(f, W, XS, argnums=(0, 1))


def test_second_order_through_scan():
    # the backward scan's body sees per-iteration values: zero cotangents of xs there must have
    # the per-iteration shape, not the stacked one
    def f(x):
        def body(c, row):
            s = jnp.sin(row * c)
            return c + jnp.sum(s) * 0.1, s

        c, ys = lax.scan(body, 1.0, x)
        return c + jnp.sum(ys**2)

    x = jax.random.normal(KEY, (2, 5))
    v = jnp.ones((2, 5))
    got = fg.grad(lambda x: jnp.vdot(fg.grad(f)(x), v))(x)
    assert_trees_close(got, jax.grad(lambda x: jnp.vdot(jax.grad(f)(x), v))(x))
    assert_trees_close(fg.hessian(f)(x), jax.hessian(f)(x), 1e-5, 1e-5)


def test_fori_loop_with_static_bounds_is_a_scan():
    def f(w):
        return jnp.sum(lax.fori_loop(0, 4, lambda i, h: jnp.tanh(h @ w), jnp.ones(3)))

    assert "scan" in str(jax.make_jaxpr(f)(W))
    assert_grads_match(f, W)


def test_nested_scan():
    def f(w, xs):
        def outer(h, x):
            def inner(g, _):
                return jnp.tanh(g @ w + x), None

            h, _ = lax.scan(inner, h, None, length=2)
            return h, jnp.sum(h)

        h, ys = lax.scan(outer, jnp.zeros(3), xs)
        return jnp.sum(h) + jnp.sum(ys)

    assert_grads_match(f, W, XS, argnums=(0, 1))


# ---- cond and switch -------------------------------------------------------------------------
@pytest.mark.parametrize("pred", [1.0, -1.0])
def test_cond_takes_the_branch_taken(pred):
    def f(x, p):
        return lax.cond(
            p > 0, lambda x: jnp.sum(jnp.tanh(x)), lambda x: jnp.sum(jnp.exp(x) * x), x
        )

    assert_grads_match(f, X, pred)


def test_switch_with_three_branches():
    def f(x, i):
        branches = [lambda x: jnp.sum(x * x), lambda x: jnp.sum(jnp.tanh(x)), lambda x: x[0] * 3.0]
        return lax.switch(i, branches, x)

    for i in range(3):
        assert_grads_match(f, X, i)


# ---- remat (jax.checkpoint) ------------------------------------------------------------------
def test_checkpoint_recomputes_under_jit_and_matches():
    def f(w, x):
        block = jax.checkpoint(lambda h: jnp.tanh(h @ w))
        return jnp.sum(block(block(x)))

    assert_grads_match(f, W, XS)
    # under jit the forward values of the block are recomputed inside the backward pass
    jaxpr = str(jax.make_jaxpr(fg.grad(f))(W, XS))
    assert "optimization_barrier" in jaxpr


# ---- while -----------------------------------------------------------------------------------
def test_while_loop_with_dynamic_trip_count_refuses_like_jax():
    def f(x, n):
        return jnp.sum(lax.fori_loop(0, n, lambda i, h: jnp.tanh(h), x))

    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.jit(jax.grad(f))(X, 3)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.jit(fg.grad(f))(X, 3)


def test_while_loop_on_data_only_is_fine():
    def f(w, n):
        steps = lax.while_loop(lambda c: c < n, lambda c: c + 1, 0)
        return jnp.sum(jnp.tanh(w)) * steps

    assert_grads_match(f, X, 3, jit=False)

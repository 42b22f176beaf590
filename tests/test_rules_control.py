"""Higher-order rules (calls, custom_jvp/custom_vjp, remat, cond/switch, scan/fori_loop, while)
held against jax.grad: the rules that recurse into the interpreter.

CASES holds user code reaching each of them (jax.jit, jax.nn.relu, jax.checkpoint, lax.scan, ...);
test_rules_table.py checks every case against jax.grad, eagerly and under jit. The tests here say
what a case cannot: a custom rule wins over the body, second order through a scan, remat under
jit, and refusing to reverse a while loop as JAX does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import Case, assert_grads_match, assert_trees_close
from jax import lax
from jax.custom_derivatives import linear_call
from jax.extend.core import DebugInfo
from jax.extend.core.primitives import call_p
from jax.extend.linear_util import wrap_init

import funcgrad as fg

KEY = jax.random.PRNGKey(0)
W = jax.random.normal(KEY, (3, 3)) * 0.5
XS = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
X = jnp.linspace(-1.0, 1.0, 5)


# ---- calls ---------------------------------------------------------------------------------
@jax.jit
def jitted_layer(x, w):
    return jnp.tanh(x @ w)


def core_call(x):
    """``call``: no jnp/lax function binds it in JAX 0.10.2; jax.extend (JAX's API for library
    authors) can, with the body wrapped by its linear_util."""
    debug_info = DebugInfo("call", "core_call", None, None)
    body = wrap_init(lambda x: [jnp.sin(x) * x], debug_info=debug_info)
    return call_p.bind(x, subfuns=(body,))[0]


def scan_with_invariant(w, xs):
    """A scan whose body uses sin(w), the same at every step."""

    def body(c, row):
        return jnp.tanh(c * jnp.sin(w) + row), None

    return jnp.sum(lax.scan(body, jnp.ones(3), xs)[0])


def grad_of_checkpointed_scan(w, xs):
    """jax.grad of a checkpointed scan: JAX's partial evaluation wraps the scan's known part,
    sin(w) hoisted out of the loop, in a ``closed_call``."""
    return jax.grad(jax.checkpoint(scan_with_invariant), (0, 1))(w, xs)


# ---- custom derivatives --------------------------------------------------------------------
@jax.custom_jvp
def sin_times(x, y):
    return jnp.sin(x) * y


@sin_times.defjvp
def sin_times_jvp(primals, tangents):
    # the rule's tangent part is transposed without evaluating it; primal values it multiplies
    # by (cos x here) must still be computed, and unused primal outputs may be skipped
    (x, y), (tx, ty) = primals, tangents
    unused = jnp.exp(x) * 3.0  # noqa: F841
    return sin_times(x, y), jnp.cos(x) * y * tx + jnp.sin(x) * ty


@jax.custom_vjp
def tanh_times(x, y):
    return jnp.tanh(x) * y


def tanh_times_fwd(x, y):
    return tanh_times(x, y), (x, y)


def tanh_times_bwd(res, ct):  # a deliberately different rule: funcgrad must call it
    _, y = res
    return ct * 2.0 * y, None


tanh_times.defvjp(tanh_times_fwd, tanh_times_bwd)


# ---- scan, cond, remat, while --------------------------------------------------------------
def rnn(reverse):
    def loss(w, xs):
        def step(h, x):
            h = jnp.tanh(h @ w + x)
            return h, h * 2.0

        h_last, ys = lax.scan(step, jnp.zeros(3), xs, reverse=reverse)
        return jnp.sum(h_last) + jnp.sum(ys * ys)

    return loss


def scan_with_integer_and_inactive_carry(w, xs):
    def step(carry, x):
        i, h, unrelated = carry
        return (i + 1, jnp.tanh(h @ w + x), unrelated * 2.0), None

    (_, h, u), _ = lax.scan(step, (0, jnp.ones(3), jnp.ones(2)), xs)
    return jnp.sum(h) + jnp.sum(u)


def nested_scan(w, xs):
    def outer(h, x):
        def inner(g, _):
            return jnp.tanh(g @ w + x), None

        h, _ = lax.scan(inner, h, None, length=2)
        return h, jnp.sum(h)

    h, ys = lax.scan(outer, jnp.zeros(3), xs)
    return jnp.sum(h) + jnp.sum(ys)


def cond_on_p(x, p):
    return lax.cond(p > 0, lambda x: jnp.sum(jnp.tanh(x)), lambda x: jnp.sum(jnp.exp(x) * x), x)


def switch_on_i(x, i):
    branches = [lambda x: jnp.sum(x * x), lambda x: jnp.sum(jnp.tanh(x)), lambda x: x[0] * 3.0]
    return lax.switch(i, branches, x)


def checkpointed_blocks(w, x):
    block = jax.checkpoint(lambda h: jnp.tanh(h @ w))
    return jnp.sum(block(block(x)))


def while_on_data_only(w, n):
    steps = lax.while_loop(lambda c: c < n, lambda c: c + 1, 0)
    return jnp.sum(jnp.tanh(w)) * steps


# ---- the cases: user code reaching each primitive ------------------------------------------
def scaled_by_linear_call(x, r):
    """A linear map of x given by linear_call, with its transpose, residual r fixed."""
    def scale(r, v):
        return r * v

    def scale_transpose(r, ct):
        return r * ct

    return jnp.sin(linear_call(scale, scale_transpose, lax.stop_gradient(r), x)) * x


def _sin_times_x(optimize_remat):
    f = jax.custom_vjp(lambda x: jnp.sin(x) * x)
    f.defvjp(lambda x: (jnp.sin(x) * x, (jnp.cos(x), x)),
             lambda res, ct: (ct * (res[0] * res[1] + jnp.sin(res[1])),),
             optimize_remat=optimize_remat)
    return f


def grad_of(f):
    return lambda x: jax.grad(lambda y: jnp.sum(jnp.tanh(f(y))))(x)


CASES = [
    Case("jax.jit", "jit", lambda w, x: jitted_layer(x, w) * x[:, :1], lambda: (W, XS),
         argnums=(0, 1)),
    Case("jax.nn.log_softmax", "jit", lambda x: jax.nn.log_softmax(x, axis=0), lambda: (XS,)),
    Case("jax.grad(checkpoint(scan))", "closed_call", grad_of_checkpointed_scan,
         lambda: (W[0], XS), argnums=(0, 1)),
    Case("call_p (jax.extend)", "call", core_call, lambda: (X,)),
    Case("jax.nn.relu", "custom_jvp_call", lambda x: jax.nn.relu(x) * x, lambda: (XS,)),
    Case("custom_jvp with primal work", "custom_jvp_call",
         lambda x, y: jnp.sum(sin_times(x, y) ** 2), lambda: (X, X + 2.0), argnums=(0, 1)),
    Case("custom_vjp user bwd", "custom_vjp_call", lambda x, y: jnp.sum(tanh_times(x, y) * x),
         lambda: (X, X + 1), argnums=(0, 1)),
    Case("jax.checkpoint", "remat2", checkpointed_blocks, lambda: (W, XS)),
    Case("scan rnn", "scan", rnn(reverse=False), lambda: (W, XS), argnums=(0, 1)),
    Case("scan rnn reverse", "scan", rnn(reverse=True), lambda: (W, XS), argnums=(0, 1)),
    Case("scan integer and inactive carry", "scan", scan_with_integer_and_inactive_carry,
         lambda: (W, XS), argnums=(0, 1)),
    Case("fori_loop static bounds", "scan",
         lambda w: jnp.sum(lax.fori_loop(0, 4, lambda i, h: jnp.tanh(h @ w), jnp.ones(3))),
         lambda: (W,)),
    Case("nested scan", "scan", nested_scan, lambda: (W, XS), argnums=(0, 1)),
    Case("cond true branch", "cond", cond_on_p, lambda: (X, jnp.float32(1.0))),
    Case("cond false branch", "cond", cond_on_p, lambda: (X, jnp.float32(-1.0))),
    *(Case(f"switch branch {i}", "cond", switch_on_i, lambda i=i: (X, jnp.int32(i)))
      for i in range(3)),
    Case("while_loop on data only", "while", while_on_data_only, lambda: (X, jnp.int32(3))),
    Case("linear_call", "linear_call", scaled_by_linear_call, lambda: (X, X + 2.0),
         argnums=(0, 1)),
    # remat_opt lives in the forward pass of a custom_vjp(optimize_remat=True): reached through
    # a jax.grad program; jax.grad cannot take a second derivative of it, so the reference is
    # the same custom_vjp without optimize_remat.
    Case("jax.grad of custom_vjp(optimize_remat=True)", "remat_opt",
         grad_of(_sin_times_x(optimize_remat=True)), lambda: (X,),
         reference=grad_of(_sin_times_x(optimize_remat=False))),
]


# ---- what a case cannot say ----------------------------------------------------------------
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


def test_checkpoint_recomputes_under_jit():
    # under jit the forward values of the block are recomputed inside the backward pass
    jaxpr = str(jax.make_jaxpr(fg.grad(checkpointed_blocks))(W, XS))
    assert "optimization_barrier" in jaxpr


def test_while_loop_with_dynamic_trip_count_refuses_like_jax():
    def f(x, n):
        return jnp.sum(lax.fori_loop(0, n, lambda i, h: jnp.tanh(h), x))

    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.jit(jax.grad(f))(X, 3)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.jit(fg.grad(f))(X, 3)

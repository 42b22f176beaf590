"""Eager work the interpreter saves (``funcgrad.interpret.eager``): residuals only, compiled
rules and call bodies, lazy padded sums.

Each saving must leave the gradient unchanged and fail loudly if a rule reads what was dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import all_eqns
from jax import lax
from jax.extend.core import DropVar, Primitive

import funcgrad as fg
from funcgrad.interpret import api
from funcgrad.interpret.backward import backward
from funcgrad.interpret.eager import EAGER, padded
from funcgrad.interpret.eager.compiled_rules import compiled_rule
from funcgrad.interpret.errors import RuleError
from funcgrad.interpret.registry import _VJP_RULES, lookup_vjp, vjp_rule

X = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
W = jax.random.normal(jax.random.PRNGKey(1), (6, 3))


def conv_like(w, x):
    """Slices, a concatenate, a pad, a reshape and a matmul: most intermediates are dead."""
    p = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (1, 1, 0)])
    cols = jnp.concatenate([p[:, 0:6], p[:, 1:7], p[:, 2:8]], axis=0)
    h = jax.nn.relu(cols @ w)
    return jnp.sum(jnp.tanh(h).reshape(-1) ** 2)


def _traced(fun, *args):
    return api._Traced(fun, args, {}, (0,), False)


def test_pruned_evaluation_keeps_only_residuals_and_gives_the_same_gradient():
    traced = _traced(conv_like, W, X)
    full = traced.evaluate()
    pruned = traced.evaluate(EAGER)
    assert len(pruned.values) < len(full.values)
    prims = {v: e.primitive.name for e in traced.closed.jaxpr.eqns for v in e.outvars}
    dropped = {prims[v] for v in full.values if v not in pruned.values}
    assert {"pad", "slice"} <= dropped  # shape-only rules: their inputs need not stay
    kept = {prims[v] for v in pruned.values if v in prims}
    assert "concatenate" in kept  # the matmul's rule reads its operand
    seed = [np.ones((), np.float32)]
    g_full = backward(full, seed)[0]
    g_pruned = backward(pruned, seed)[0]
    np.testing.assert_array_equal(g_full, g_pruned)
    np.testing.assert_array_equal(fg.grad(conv_like)(W, X), jax.grad(conv_like)(W, X))


def test_a_releasing_backward_pass_frees_every_intermediate_and_gives_the_same_gradient():
    """fg.grad uses its trace once: the walk drops each equation's outputs once past it."""
    traced = _traced(conv_like, W, X)
    kept, released = traced.evaluate(EAGER), traced.evaluate(EAGER)
    seed = [np.ones((), np.float32)]
    want = backward(kept, seed)[0]
    got = backward(released, seed, release=True)[0]
    np.testing.assert_array_equal(got, want)
    inputs = {*traced.closed.jaxpr.invars, *traced.closed.jaxpr.constvars}
    assert set(released.values) <= inputs and not released.records
    assert len(kept.values) > len(inputs)  # without release the residuals stay
    # Keeping cotangents (fg.trace, graphs) keeps the values too, even if asked to release.
    both = traced.evaluate()
    backward(both, seed, keep=True, release=True)
    outs = [v for e in both.jaxpr.eqns for v in e.outvars if not isinstance(v, DropVar)]
    assert all(v in both.values for v in outs)


def shifted_windows(w, x):
    """Three overlapping slices of tanh(x @ w), so three padded cotangents meet on one value."""
    h = jnp.tanh(x @ w)
    return jnp.sum(h[:, 0:2] * h[:, 1:3] + jnp.sin(h[1:, :]).sum() + h[:-1, ::2].sum())


@pytest.mark.parametrize(
    ("fun", "argnums"), [(shifted_windows, 0), (conv_like, 1)], ids=["slices", "im2col"]
)
def test_slice_cotangents_are_summed_in_one_program_bit_for_bit(monkeypatch, fun, argnums):
    """Eagerly the slices' padded cotangents (and, for im2col, the concatenate's split before
    them and the pad's crop after) are computed as one sum in one compiled program; the result
    is what step-by-step pad-and-add gives (and jax.grad), and no other rule sees the lazy sum."""
    plans = []
    real = padded._sum_of_terms

    def counted(pieces, *, plan):
        plans.append(plan)
        return real(pieces, plan=plan)

    monkeypatch.setattr(padded, "_sum_of_terms", counted)
    got = fg.grad(fun, argnums)(W, X)
    assert plans and max(len(p) for p in plans) >= 3  # three slice cotangents, one program
    np.testing.assert_array_equal(got, jax.grad(fun, argnums)(W, X))
    np.testing.assert_array_equal(  # compiled, XLA may round differently: compare with JAX's
        jax.jit(fg.grad(fun, argnums))(W, X), jax.jit(jax.grad(fun, argnums))(W, X)
    )
    tr = fg.trace(fun, W, X)
    assert not any(isinstance(c, padded.PaddedSum) for c in tr.cotangents.values())
    # Under a trace nothing is deferred: the jaxpr has the pads and adds JAX's transposes have.
    jaxpr = jax.make_jaxpr(fg.grad(fun, argnums))(W, X).jaxpr
    assert "pad" in {e.primitive.name for e in all_eqns(jaxpr)}


def test_the_lazy_im2col_cotangent_reads_the_patches_cotangent_once():
    plans = []
    real = padded._sum_of_terms

    def counted(pieces, *, plan):
        plans.append((len(pieces), plan))
        return real(pieces, plan=plan)

    padded._sum_of_terms = counted
    try:
        fg.grad(conv_like, argnums=1)(W, X)  # the input's gradient goes through the im2col
    finally:
        padded._sum_of_terms = real
    n_pieces, plan = max(plans, key=lambda p: len(p[1]))
    assert n_pieces == 1 and len(plan) == 3  # one array (the concat's ct), three windows
    assert all(window is not None and padding is not None for _, window, padding in plan)
    # The pad's crop is folded in: conv_like pads x by one column each side.
    np.testing.assert_array_equal(
        fg.grad(conv_like, argnums=1)(W, X), jax.grad(conv_like, argnums=1)(W, X)
    )


def test_fg_trace_still_keeps_every_value():
    tr = fg.trace(conv_like, W, X)
    outs = [v for e in tr.jaxpr.eqns for v in e.outvars if not isinstance(v, DropVar)]
    assert all(v in tr.values for v in [*tr.jaxpr.invars, *outs])


def test_a_rule_that_reads_a_dropped_value_fails_loudly():
    prim = Primitive("funcgrad_test_liar")
    prim.def_impl(lambda x: x * 1.0)
    prim.def_abstract_eval(lambda x: x)

    @vjp_rule(prim, reads=())  # a false promise: the rule reads x
    def liar_vjp(ct, x):
        return (lax.mul(ct, x),)

    try:

        def f(w):
            return jnp.sum(prim.bind(jnp.sin(w)))

        with pytest.raises(RuleError, match="funcgrad_test_liar") as caught:
            fg.grad(f)(jnp.ones(3))
        assert isinstance(caught.value.__cause__, TypeError)  # a stand-in, not a number
    finally:
        del _VJP_RULES["funcgrad_test_liar"]


def test_a_compiled_rule_is_one_program_eagerly_and_plain_primitives_under_a_trace():
    select_n = compiled_rule(lookup_vjp("select_n"))
    pred = jnp.array([True, False, True])
    ct = jnp.arange(3.0)
    case = jax.ShapeDtypeStruct((3,), jnp.float32)  # select_n's rule reads only the selector
    got = select_n.fn(ct, pred, case, case, needs=(False, True, True))
    np.testing.assert_array_equal(got[1], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(got[2], [0.0, 0.0, 2.0])
    jaxpr = jax.make_jaxpr(lambda p, c: select_n.fn(c, p, c, c, needs=(False, True, True)))(
        pred, ct
    )
    names = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert "select_n" in names and "jit" not in names and "pjit" not in names


def test_relu_backward_under_a_trace_is_a_plain_top_level_select_n():
    jaxpr = jax.make_jaxpr(fg.grad(lambda x: jnp.sum(jax.nn.relu(x))))(X)
    names = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert "select_n" in names


@pytest.mark.parametrize("shape", [(3,), (2, 5), ()])
def test_custom_jvp_rules_on_changing_shapes(shape):
    f = lambda x: jnp.sum(jax.nn.relu(x) * jax.nn.softplus(x))  # noqa: E731
    for s in [shape, (7,), shape]:  # a cached trace must not leak into another shape
        x = jnp.linspace(-1.0, 1.0, int(np.prod(s))).reshape(s)
        np.testing.assert_allclose(fg.grad(f)(x), jax.grad(f)(x), rtol=1e-6)


def test_custom_jvp_rules_follow_x64():
    f = lambda x: jnp.sum(jax.nn.relu(x))  # noqa: E731
    x32 = jnp.array([-1.0, 0.0, 2.0])
    assert fg.grad(f)(x32).dtype == jnp.float32
    with jax.enable_x64(True):
        x64 = jnp.array([-1.0, 0.0, 2.0], dtype=jnp.float64)
        g = fg.grad(f)(x64)
        assert g.dtype == jnp.float64
        np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])


def test_pruned_vjp_can_be_called_twice():
    out, vjp_fn = fg.vjp(conv_like, W, X)
    np.testing.assert_allclose(out, conv_like(W, X), rtol=1e-6)
    a = vjp_fn(jnp.ones(()))
    b = vjp_fn(jnp.ones(()))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], jax.grad(conv_like)(W, X))


def test_evaluate_prune_under_jit_matches():
    g = jax.jit(fg.grad(conv_like))(W, X)
    np.testing.assert_allclose(g, jax.grad(conv_like)(W, X), rtol=1e-6)

"""Indexing rules (dynamic slices, gather, the scatters, sort, top_k, approx_top_k) held against
jax.grad.

Every case is user code (``x[i]``, ``x[jnp.arange(n), y]``, ``take_along_axis``, ``x.at[i].set``,
``jnp.sort``, ...) and names the primitive it must reach; test_rules_table.py checks every case of
CASES against jax.grad, eagerly and under jit. The edge cases that matter for training are spelled
out: out-of-bounds labels, repeated indices, clamped starts, ties.
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
    randint,
    randn,
    weighted_sum,
)
from jax import lax
from jax.extend.core import ClosedJaxpr

import funcgrad as fg
from funcgrad.models import layers

MODES = lax.GatherScatterMode


# ---- helpers -------------------------------------------------------------------------------
def i32(*values) -> jax.Array:
    return jnp.asarray(values, jnp.int32)


def x54():
    return randn(0, 5, 4)


LABELS = i32(0, 3, 1, 3, 2)  # repeated labels on purpose


def dnums(offset, collapsed, start_map, operand_batching=(), indices_batching=()):
    return lax.GatherDimensionNumbers(
        offset_dims=offset,
        collapsed_slice_dims=collapsed,
        start_index_map=start_map,
        operand_batching_dims=operand_batching,
        start_indices_batching_dims=indices_batching,
    )


def sdnums(window, inserted, to_operand, operand_batching=(), indices_batching=()):
    return lax.ScatterDimensionNumbers(
        update_window_dims=window,
        inserted_window_dims=inserted,
        scatter_dims_to_operand_dims=to_operand,
        operand_batching_dims=operand_batching,
        scatter_indices_batching_dims=indices_batching,
    )


# ---- the cases: user code reaching each primitive ------------------------------------------
CASES = [
    # dynamic_slice: traced starts, clamped when out of range (also for negative ones)
    Case("x[i] traced", "dynamic_slice", lambda x, i: x[i], lambda: (x54(), jnp.int32(3))),
    Case("x[i, 1:3] traced", "dynamic_slice", lambda x, i: x[i, 1:3],
         lambda: (x54(), jnp.int32(-1))),
    Case("dynamic_slice", "dynamic_slice",
         lambda x, i, j: lax.dynamic_slice(x, (i, j), (2, 3)),
         lambda: (x54(), jnp.int32(1), jnp.int32(0))),
    Case("dynamic_slice-clamped-high", "dynamic_slice",
         lambda x, i: lax.dynamic_slice(x, (i, i), (3, 2)), lambda: (x54(), jnp.int32(9))),
    Case("dynamic_slice-clamped-negative", "dynamic_slice",
         lambda x: lax.dynamic_slice(x, (-17, 2), (2, 2)), lambda: (x54(),)),
    Case("dynamic_slice_in_dim", "dynamic_slice",
         lambda x, i: lax.dynamic_slice_in_dim(x, i, 2, axis=1), lambda: (x54(), jnp.int32(1))),
    # dynamic_update_slice: both the operand and the update, clamped starts
    Case("dynamic_update_slice", "dynamic_update_slice",
         lambda x, u, i: lax.dynamic_update_slice(x, u, (i, jnp.ones_like(i))),
         lambda: (x54(), randn(1, 2, 3), jnp.int32(2)), argnums=(0, 1)),
    Case("dynamic_update_slice-clamped", "dynamic_update_slice",
         lambda x, u, i: lax.dynamic_update_slice(x, u, (i, -3)),
         lambda: (x54(), randn(2, 3, 2), jnp.int32(4)), argnums=(0, 1)),
    Case("dynamic_update_slice-update-only", "dynamic_update_slice",
         lambda u, x: lax.dynamic_update_slice(x, u * 2.0, (1, 1)),
         lambda: (randn(3, 2, 2), x54())),
    # gather, as users write it
    Case("x[idx_array] repeated", "gather", lambda x: x[i32(0, 4, 0, 2)], lambda: (x54(),)),
    Case("x[:, idx_array]", "gather", lambda x: x[:, i32(3, 3, 1)], lambda: (x54(),)),
    Case("x[arange(n), y] (NLL)", "gather", lambda x, y: x[jnp.arange(5), y],
         lambda: (x54(), LABELS)),
    Case("take_along_axis", "gather",
         lambda x, y: jnp.take_along_axis(x, y[:, None], axis=1), lambda: (x54(), LABELS)),
    Case("take_along_axis-axis0", "gather",
         lambda x: jnp.take_along_axis(x, i32([4, 0, 0, 1], [2, 2, 3, 1]), axis=0),
         lambda: (x54(),)),
    Case("embedding E[tokens]", "gather", lambda e, t: e[t],
         lambda: (randn(4, 7, 3), i32([1, 6, 1], [0, 2, 6]))),
    Case("jnp.take-clip", "gather", lambda x: jnp.take(x, i32(1, 7, -9), axis=1, mode="clip"),
         lambda: (x54(),)),
    Case("jnp.take-fill", "gather", lambda x: jnp.take(x, i32(1, 7, 2), axis=0, mode="fill"),
         lambda: (x54(),)),
    # gather, general form: windows, batching dims, every mode, out-of-bounds starts
    Case("gather-windows-clip", "gather",
         lambda x: lax.gather(x, i32([0, 1], [3, 2], [9, 9]), dnums((1, 2), (), (0, 1)), (2, 3),
                              mode=MODES.CLIP),
         lambda: (x54(),)),
    Case("gather-windows-fill", "gather",
         lambda x: lax.gather(x, i32([0, 1], [3, 2], [4, 0]), dnums((1,), (0,), (0, 1)), (1, 3),
                              mode=MODES.FILL_OR_DROP, fill_value=-1.0),
         lambda: (x54(),)),
    Case("gather-promise-in-bounds", "gather",
         lambda x: lax.gather(x, i32([1], [1], [3]), dnums((1,), (0,), (0,)), (1, 4),
                              mode=MODES.PROMISE_IN_BOUNDS),
         lambda: (x54(),)),
    Case("gather-batching-dims", "gather",
         lambda x: lax.gather(x, i32([[1], [0]], [[2], [2]], [[0], [1]]),
                              dnums((2,), (1,), (1,), (0,), (0,)), (1, 1, 2), mode=MODES.CLIP),
         lambda: (randn(5, 3, 4, 2),)),
    # scatter-add and scatter-sub
    Case("x.at[i].add(u)", "scatter-add", lambda x, u: x.at[i32(0, 4, 0)].add(u),
         lambda: (x54(), randn(6, 3, 4)), argnums=(0, 1)),
    Case("x.at[i].add(u)-out-of-bounds-dropped", "scatter-add",
         lambda x, u: x.at[i32(1, 5, 1)].add(u), lambda: (x54(), randn(7, 3, 4)), argnums=(0, 1)),
    Case("x.at[i, j].add(u) scalars", "scatter-add",
         lambda x, u: x.at[i32(1, 1, 2), i32(0, 0, 3)].add(u), lambda: (x54(), randn(8, 3)),
         argnums=(0, 1)),
    Case("lax.scatter_add-windows-clip", "scatter-add",
         lambda x, u: lax.scatter_add(x, i32([0, 1], [4, 3]), u, sdnums((1, 2), (), (0, 1)),
                                      mode=MODES.CLIP),
         lambda: (x54(), randn(9, 2, 2, 2)), argnums=(0, 1)),
    Case("lax.scatter_add-batching-dims", "scatter-add",
         lambda x, u: lax.scatter_add(x, i32([[1], [0]], [[2], [2]]), u,
                                      sdnums((2,), (1,), (1,), (0,), (0,))),
         lambda: (randn(10, 2, 3, 4), randn(11, 2, 2, 4)), argnums=(0, 1)),
    Case("x.at[i].subtract(u)", "scatter-sub", lambda x, u: x.at[i32(2, 2)].subtract(u),
         lambda: (x54(), randn(12, 2, 4)), argnums=(0, 1)),
    # scatter (overwrite): repeated indices credit only the winning update
    Case("x.at[i].set(u) repeated", "scatter", lambda x, u: x.at[i32(0, 3, 0, 0)].set(u),
         lambda: (x54(), randn(13, 4, 4)), argnums=(0, 1)),
    Case("x.at[i].set(u) unique", "scatter",
         lambda x, u: x.at[i32(4, 0, 2)].set(u, unique_indices=True),
         lambda: (x54(), randn(14, 3, 4)), argnums=(0, 1)),
    Case("x.at[i].set(u) out-of-bounds", "scatter", lambda x, u: x.at[i32(1, 5, 1)].set(u),
         lambda: (x54(), randn(15, 3, 4)), argnums=(0, 1)),
    Case("x.at[i].set(u, mode=clip) out-of-bounds", "scatter",
         lambda x, u: x.at[i32(4, 7, 2)].set(u, mode="clip"),
         lambda: (x54(), randn(16, 3, 4)), argnums=(0, 1)),
    Case("x.at[i, j].set(u) scalars", "scatter",
         lambda x, u: x.at[i32(1, 1, 2), i32(0, 0, 3)].set(u), lambda: (x54(), randn(17, 3)),
         argnums=(0, 1)),
    # scatter-mul: operand always; updates only with unique indices (as in JAX)
    Case("x.at[i].multiply(u) operand", "scatter-mul",
         lambda x, u: x.at[i32(0, 4, 0)].multiply(u), lambda: (x54(), randn(18, 3, 4))),
    Case("x.at[i].multiply(u) unique", "scatter-mul",
         lambda x, u: x.at[i32(0, 4, 2)].multiply(u, unique_indices=True),
         lambda: (x54(), randn(19, 3, 4)), argnums=(0, 1)),
    # scatter-min / scatter-max (ties with the operand and between updates share equally)
    Case("x.at[i].max(u)", "scatter-max", lambda x, u: x.at[i32(0, 4, 0)].max(u),
         lambda: (x54(), randn(20, 3, 4)), argnums=(0, 1)),
    Case("x.at[i].min(u)", "scatter-min", lambda x, u: x.at[i32(3, 3, 1)].min(u),
         lambda: (x54(), randn(21, 3, 4)), argnums=(0, 1)),
    # sort, argsort, top_k
    Case("jnp.sort", "sort", lambda x: jnp.sort(x, axis=1), lambda: (x54(),)),
    Case("jnp.sort-axis0-descending", "sort", lambda x: jnp.sort(x, axis=0)[::-1],
         lambda: (x54(),)),
    Case("lax.sort-key-and-payload", "sort",
         lambda k, v: lax.sort((k, v), num_keys=1), lambda: (randn(22, 6), randn(23, 6)),
         argnums=(0, 1)),
    Case("lax.sort-two-keys", "sort",
         lambda k, v: lax.sort((jnp.round(k), v, k * 2), num_keys=2)[1:],
         lambda: (randn(24, 3, 6), randn(25, 3, 6)), argnums=(1,)),
    Case("x[argsort(x)]", "sort", lambda x: x[jnp.argsort(x)], lambda: (randn(26, 7),)),
    Case("take_along_axis(argsort)", "sort",
         lambda x, y: jnp.take_along_axis(x, jnp.argsort(y, axis=1), axis=1),
         lambda: (x54(), randn(27, 5, 4)), argnums=(0, 1)),
    Case("top_k", "top_k", lambda x: lax.top_k(x, 2)[0], lambda: (x54(),)),
    Case("top_k-axis0-with-indices", "top_k", lambda x: lax.top_k(x, 3, axis=0),
         lambda: (x54(),)),
    Case("top_k-all", "top_k", lambda x: lax.top_k(x, 4)[0] * 2.0, lambda: (x54(),)),
    # approx_max_k / approx_min_k (exact on CPU)
    Case("approx_max_k", "approx_top_k", lambda x: lax.approx_max_k(x, 2)[0], lambda: (x54(),)),
    Case("approx_min_k-axis0-with-indices", "approx_top_k",
         lambda x: lax.approx_min_k(x, 3, reduction_dimension=0), lambda: (randn(44, 6, 3),)),
    Case("approx_max_k-ties", "approx_top_k", lambda x: lax.approx_max_k(x, 3)[0],
         lambda: (randint(45, 4, 7),)),
    Case("approx_max_k-not-aggregated", "approx_top_k",
         lambda x: lax.approx_max_k(x, 2, aggregate_to_topk=False)[0], lambda: (randn(46, 3, 8),)),
]

BY_ID = {c.id: c for c in CASES}


FLOAT64 = ["dynamic_update_slice", "take_along_axis", "gather-windows-fill", "x.at[i].add(u)",
           "x.at[i].set(u) repeated", "x.at[i].max(u)", "jnp.sort", "top_k",
           "approx_min_k-axis0-with-indices"]


@pytest.mark.parametrize("name", FLOAT64)
def test_rule_matches_jax_in_float64(name):
    case = BY_ID[name]
    with jax.enable_x64(True):
        args = case.args(np.float64)
        assert all(a.dtype == np.float64 for a in args if jnp.issubdtype(a.dtype, jnp.floating))
        assert_grads_match(weighted_sum(case.f), *args, argnums=case.argnums, jit=False)


@pytest.mark.parametrize("name", ["top_k-axis0-with-indices", "approx_min_k-axis0-with-indices",
                                  "lax.sort-key-and-payload",
                                  "dynamic_update_slice", "x[arange(n), y] (NLL)"])
def test_vjp_with_random_cotangents(name):
    """jax.vjp's contract, int outputs and int inputs (float0 cotangents) included."""
    case = BY_ID[name]
    assert_vjp_matches(case.f, *case.args())


# ---- zero-size arrays ----------------------------------------------------------------------
ZERO_SIZE = [
    # (lax directly: jnp's indexing skips the gather when the result is empty)
    ("gather", lambda x: lax.gather(x, jnp.zeros((0, 1), jnp.int32), dnums((), (0,), (0,)), (1,)),
     (5,)),
    ("gather", lambda x: lax.gather(x, i32([1], [0]), dnums((1, 2), (0,), (0,)), (1, 0, 3)),
     (2, 0, 3)),
    ("scatter-add", lambda x: lax.scatter_add(x, i32([1], [1]), jnp.ones((2, 0, 3)),
                                              sdnums((1, 2), (0,), (0,))), (2, 0, 3)),
    ("scatter-add", lambda x: lax.scatter_add(x, jnp.zeros((0, 1), jnp.int32), jnp.ones((0,)),
                                              sdnums((), (0,), (0,))), (4,)),
    ("scatter", lambda x: lax.scatter(x, i32([1], [1]), jnp.ones((2, 0, 3)),
                                      sdnums((1, 2), (0,), (0,))), (2, 0, 3)),
    ("dynamic_slice", lambda x: lax.dynamic_slice(x, (1, 0, 1), (1, 0, 2)), (2, 0, 3)),
    ("dynamic_update_slice", lambda x: lax.dynamic_update_slice(x, jnp.ones((0,)), (2,)), (4,)),
    ("sort", jnp.sort, (0,)),
    ("sort", lambda x: jnp.sort(x, axis=2), (2, 0, 3)),
    ("top_k", lambda x: lax.top_k(x, 2)[0], (2, 0, 3)),
]


@pytest.mark.parametrize(
    "primitive, f, shape", ZERO_SIZE, ids=[f"{p}-{s}" for p, _, s in ZERO_SIZE]
)
def test_zero_size(primitive, f, shape):
    x = jnp.zeros(shape, jnp.float32)
    assert_uses(primitive, f, x)
    assert_grads_match(weighted_sum(f), x, jit=False)


# ---- conventions, spelled out ---------------------------------------------------------------
def test_out_of_bounds_label_gets_zero_cotangent():
    """take_along_axis fills an out-of-bounds label's row with NaN, and its gradient is 0."""
    logp = randn(30, 3, 4)
    labels = i32(1, 4, 2)  # row 1's label is out of range

    def nll(logp, labels):
        picked = jnp.take_along_axis(logp, labels[:, None], axis=1)
        return jnp.sum(jnp.where(jnp.isnan(picked), 0.0, picked))

    g = fg.grad(nll)(logp, labels)
    np.testing.assert_array_equal(g, [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    assert_grads_match(nll, logp, labels)


def test_repeated_gather_indices_accumulate():
    g = fg.grad(lambda x: jnp.sum(x[i32(2, 0, 2, 2)]))(jnp.zeros(4))
    np.testing.assert_array_equal(g, [1, 0, 3, 0])


def test_set_with_repeated_indices_credits_only_the_winner():
    """JAX's scatter makes one of the colliding updates win; jax.grad credits exactly that one
    (it scatters update ids the same way), and so does funcgrad, slot by slot."""
    x, u = jnp.zeros(3), jnp.array([10.0, 20.0, 30.0, 40.0])
    idx = i32(1, 1, 2, 1)

    def f(x, u):
        return x.at[idx].set(u)

    out = f(x, u)
    gx, gu = fg.grad(lambda x, u: jnp.sum(f(x, u) * jnp.arange(1.0, 4.0)), (0, 1))(x, u)
    np.testing.assert_array_equal(gx, [1, 0, 0])  # overwritten slots pass nothing to x
    winner = int(np.flatnonzero(np.asarray(u) == float(out[1]))[0])
    want_gu = np.zeros(4)
    want_gu[winner], want_gu[2] = 2.0, 3.0
    np.testing.assert_array_equal(gu, want_gu)
    assert_grads_match(weighted_sum(f), x, u, argnums=(0, 1))


def test_dynamic_slice_clamps_like_the_forward_pass():
    """A start past the end is clamped so that the window fits; the cotangent goes there too."""

    def f(x, i):
        return lax.dynamic_slice(x, (i,), (2,))

    g = fg.vjp(f, jnp.zeros(5), jnp.int32(7))[1](jnp.array([1.0, 2.0]))[0]
    np.testing.assert_array_equal(g, [0, 0, 0, 1, 2])
    g = fg.vjp(f, jnp.zeros(5), jnp.int32(-9))[1](jnp.array([1.0, 2.0]))[0]
    np.testing.assert_array_equal(g, [1, 2, 0, 0, 0])


def test_sort_ties_follow_the_stable_order():
    x = jnp.array([2.0, 1.0, 2.0, 1.0])
    ct = jnp.array([1.0, 2.0, 3.0, 4.0])  # sorted: x[1], x[3], x[0], x[2]
    g = fg.vjp(jnp.sort, x)[1](ct)[0]
    np.testing.assert_array_equal(g, [3.0, 1.0, 4.0, 2.0])
    assert_trees_close(g, jax.vjp(jnp.sort, x)[1](ct)[0])


def test_sort_with_nan_and_inf():
    x = jnp.array([jnp.nan, 1.0, -jnp.inf, 0.5, jnp.inf])
    assert_vjp_matches(jnp.sort, x)


def test_top_k_ties_go_to_the_returned_indices():
    x = jnp.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert_grads_match(lambda x: jnp.sum(lax.top_k(x, 2)[0] * jnp.array([1.0, 10.0])), x)


def test_scatter_max_ties_share_equally():
    x = jnp.array([5.0, 1.0])
    u = jnp.array([5.0, 5.0, 2.0])

    def f(x, u):
        return jnp.sum(x.at[i32(0, 0, 1)].max(u) * jnp.array([3.0, 1.0]))

    gx, gu = fg.grad(f, (0, 1))(x, u)
    np.testing.assert_allclose(gx, [1.0, 0.0], rtol=1e-6)  # three-way tie at slot 0: 3/3 each
    np.testing.assert_allclose(gu, [1.0, 1.0, 1.0], rtol=1e-6)
    assert_grads_match(f, x, u, argnums=(0, 1))


def test_scatter_mul_updates_need_unique_indices_like_jax():
    def f(x, u):
        return jnp.sum(x.at[i32(0, 2)].multiply(u))

    x, u = randn(31, 4), randn(32, 2)
    with pytest.raises(NotImplementedError):
        jax.grad(f, argnums=1)(x, u)
    with pytest.raises(NotImplementedError, match="unique_indices"):
        fg.grad(f, argnums=1)(x, u)
    assert_grads_match(f, x, u, argnums=0)  # the operand's cotangent is always defined


def test_scatter_apply_is_refused_like_jax():
    def f(x):
        return jnp.sum(x.at[i32(0, 2)].apply(jnp.sin))

    with pytest.raises(NotImplementedError):
        jax.grad(f)(jnp.ones(3))
    with pytest.raises(NotImplementedError):
        fg.grad(f)(jnp.ones(3))


def sort_in_scan(x):
    def body(c, row):
        s = jnp.sort(row * c)
        return c + jnp.sum(s * jnp.arange(5.0)) * 0.1, s

    c, ys = lax.scan(body, 1.0, x)
    return c + jnp.sum(ys**2)


def sort_in_cond(x):
    return lax.cond(x[0, 0] > 0, lambda x: jnp.sum(jnp.sort(x, axis=0) * x), jnp.sum, x)


def sort_in_checkpoint(x):
    return jnp.sum(jax.checkpoint(lambda x: jnp.sort(jnp.sin(x)) * jnp.arange(5.0))(x))


@pytest.mark.parametrize("f", [sort_in_scan, sort_in_cond, sort_in_checkpoint],
                         ids=["scan", "cond", "checkpoint"])
def test_sort_permutation_survives_control_flow(f):
    """The sort rule keeps its permutation as a residual: it must be carried through a scan's
    stacked residuals, a cond's branches and a checkpoint's recomputation."""
    x = randn(34, 4, 5)
    assert_grads_match(f, x)
    assert_grads_match(f, -x, jit=False)  # the other cond branch


def test_sort_forward_pass_sorts_once():
    """The sort rule keeps the forward permutation: value_and_grad sorts once, as JAX does."""
    def f(x):
        return jnp.sum(jnp.sort(x) * jnp.arange(6.0))

    jaxpr = jax.make_jaxpr(fg.value_and_grad(f))(randn(33, 6))

    def count(jaxpr):
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == "sort"
            for p in eqn.params.values():
                if isinstance(p, ClosedJaxpr):
                    n += count(p.jaxpr)
        return n

    assert count(jaxpr.jaxpr) == 1


# ---- a transformer's embedding and loss -----------------------------------------------------
def test_transformer_embedding_and_nll_gradients():
    """The transformer's input path, E[tokens] + positions[:seq] (``layers.embed``: a gather in
    "fill" mode), and its loss, an NLL picked by logp[arange, labels]; repeated tokens add up.
    (The full model is checked in test_model_grads.py.)"""
    params = {"tokens": randn(43, 11, 6), "positions": randn(44, 8, 6), "head": randn(45, 6, 11)}
    ids = i32([1, 4, 10, 4, 0], [3, 3, 2, 9, 3])

    def loss(params, ids):
        x = layers.embed(params["tokens"], ids) + params["positions"][: ids.shape[1]]
        logp = jax.nn.log_softmax(jnp.tanh(x[:, :-1]) @ params["head"])
        b, t = jnp.arange(2)[:, None], jnp.arange(4)[None, :]
        return -jnp.mean(logp[b, t, ids[:, 1:]])

    assert_uses("gather", loss, params, ids)
    # jitted (one compile each) rather than eager: op-by-op dispatch of a model is slow
    got = jax.jit(fg.grad(loss))(params, ids)
    assert_trees_close(got, jax.jit(jax.grad(loss))(params, ids))


# ---- composition: vmap, second order, closure -----------------------------------------------
def indexing_soup(x, i):
    """Every indexing primitive of this family in one smooth function of a (5, 4) input."""
    rows = x[jnp.array([0, 3, 3])] + jnp.take_along_axis(x, (i + jnp.arange(5))[:, None] % 4, 1)[:3]
    window = lax.dynamic_slice(x, (i, i), (3, 2))
    y = lax.dynamic_update_slice(x, window * rows[:, :2], (i + 1, 1))
    y = y.at[jnp.array([1, 1, 4])].add(rows).at[jnp.array([2, 0, 2])].set(rows * x[4])
    y = y.at[jnp.array([0, 3])].multiply(x[1:3] + 2.0, unique_indices=True)
    y = y.at[jnp.array([4, 4])].max(x[:2] * 0.5)
    s = jnp.sort(y, axis=1) + lax.top_k(y, 4)[0] + lax.approx_min_k(y, 4)[0]
    return jnp.sum(jnp.tanh(s) * jnp.arange(20.0).reshape(5, 4))


SOUP_X = randn(40, 5, 4)


def test_indexing_soup_uses_every_primitive():
    used = primitives_of(jax.make_jaxpr(indexing_soup)(SOUP_X, jnp.int32(1)).jaxpr)
    family = {"gather", "dynamic_slice", "dynamic_update_slice", "scatter-add", "scatter",
              "scatter-mul", "scatter-max", "sort", "top_k", "approx_top_k"}
    assert family <= used, sorted(family - used)


def test_indexing_soup_matches_jax_under_jit():
    got = jax.jit(fg.grad(indexing_soup))(SOUP_X, jnp.int32(2))
    assert_trees_close(got, jax.jit(jax.grad(indexing_soup))(SOUP_X, jnp.int32(2)))


def test_vmap_of_grad_batches_gathers_and_scatters():
    """Under vmap, the rules' gathers and scatters become batched ones: per-example indices."""
    xs = randn(41, 3, 5, 4)
    starts = i32(0, 2, 1)
    got = jax.jit(jax.vmap(fg.grad(indexing_soup)))(xs, starts)
    want = jax.jit(jax.vmap(jax.grad(indexing_soup)))(xs, starts)
    assert_trees_close(got, want)


def test_vmap_of_grad_of_nll_with_per_example_labels():
    def nll(logits, label):
        return -jax.nn.log_softmax(logits)[label]

    logits, labels = randn(42, 6, 4), i32(0, 3, 3, 1, 2, 0)
    got = jax.jit(jax.vmap(fg.grad(nll)))(logits, labels)
    assert_trees_close(got, jax.jit(jax.vmap(jax.grad(nll)))(logits, labels))


def test_hessian_matches_jax():
    got = jax.jit(fg.hessian(indexing_soup))(SOUP_X, jnp.int32(1))  # jitted: eager is slow
    want = jax.jit(jax.hessian(indexing_soup))(SOUP_X, jnp.int32(1))
    assert_trees_close(got, want, 1e-5, 1e-5)


def test_closure_backward_pass_uses_only_supported_primitives():
    """fg.grad's own backward pass must be differentiable by funcgrad: every primitive the
    indexing rules emit has a rule."""
    supported = fg.supported_primitives()
    for case in CASES:
        grad_jaxpr = jax.make_jaxpr(fg.grad(weighted_sum(case.f), case.argnums))(*case.args())
        missing = primitives_of(grad_jaxpr.jaxpr) - supported
        assert not missing, f"{case.id}: no rule for {sorted(missing)}"

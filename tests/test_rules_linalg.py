"""The dot_general and ragged_dot_general rules held against jax.grad: every contraction layout
users write, and grouped matmuls in each of their modes.

Vectors, matrix-vector, matmul, batched and multi-batch matmuls, several contracting dims,
contracting dims out of order, outer products, zero-size contractions, float64, and mixed
precision (bf16 operands with ``preferred_element_type=float32``, and an f32 product rounded to
bf16), written as ``jnp.einsum``/``@``/``jnp.dot``/``lax.dot_general`` and checked to reach
``dot_general``. The contraction layouts are CASES, which test_rules_table.py checks.
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
    check,
    randn,
    weighted_sum,
)
from jax import lax

import funcgrad as fg

EINSUMS = [
    ("i,i->", (5,), (5,)),
    ("ij,j->i", (3, 5), (5,)),
    ("i,ij->j", (3,), (3, 5)),
    ("ij,jk->ik", (3, 4), (4, 5)),
    ("ij,kj->ik", (3, 4), (5, 4)),
    ("ji,jk->ik", (4, 3), (4, 5)),
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    ("bij,bkj->bki", (2, 3, 4), (2, 5, 4)),
    ("ijb,bjk->bki", (3, 4, 2), (2, 4, 5)),
    ("bhqd,bhkd->bhqk", (2, 3, 4, 5), (2, 3, 6, 5)),
    ("bhqk,bhkd->bqhd", (2, 3, 4, 6), (2, 3, 6, 5)),
    ("ijk,jkl->il", (2, 3, 4), (3, 4, 5)),
    ("abcd,cdbe->ae", (2, 3, 4, 5), (4, 5, 3, 6)),
    ("jbi,bjk->kbi", (4, 2, 3), (2, 4, 5)),
    ("ij,kl->ijkl", (2, 3), (4, 5)),
    ("ij,ij->", (3, 4), (3, 4)),
    ("bi,bi->b", (3, 4), (3, 4)),
]

DOT_GENERAL_NUMBERS = [
    # (lhs shape, rhs shape, ((lhs contracting, rhs contracting), (lhs batch, rhs batch)))
    ((3, 4), (4, 5), (((1,), (0,)), ((), ()))),
    ((4, 3), (5, 4), (((0,), (1,)), ((), ()))),
    ((2, 3, 4), (4, 2, 5), (((2,), (0,)), ((0,), (1,)))),             # batch dims not leading
    ((2, 3, 4, 5), (5, 4, 2, 6), (((3, 2), (0, 1)), ((0,), (2,)))),   # contracting order swapped
    ((6, 2, 3), (3, 6, 2), (((2,), (0,)), ((0, 1), (1, 2)))),         # two batch dims
    ((3,), (3,), (((0,), (0,)), ((), ()))),
    ((3, 4), (5,), (((), ()), ((), ()))),                             # outer product
]


def einsum_case(spec: str, a_shape: tuple, b_shape: tuple) -> Case:
    return Case(f"einsum {spec}", "dot_general", lambda a, b: jnp.einsum(spec, a, b),
                lambda: (randn(1, *a_shape), randn(2, *b_shape)), argnums=(0, 1))


def dot_general_case(lhs: tuple, rhs: tuple, dims: tuple) -> Case:
    return Case(f"dot_general {dims}", "dot_general", lambda a, b: lax.dot_general(a, b, dims),
                lambda: (randn(5, *lhs), randn(6, *rhs)), argnums=(0, 1))


# the table (test_rules_table.py) checks every case against jax.grad, eagerly and under jit
CASES = [einsum_case(*e) for e in EINSUMS] + [dot_general_case(*d) for d in DOT_GENERAL_NUMBERS]


def test_matmul_operators_and_one_sided_grads():
    x, w, v = randn(7, 4, 3), randn(8, 3, 5), randn(9, 3)
    assert_grads_match(lambda w: jnp.sum(jnp.tanh(x @ w)), w)
    assert_grads_match(lambda x: jnp.sum((x @ v) ** 2), x)
    assert_grads_match(lambda x, w: jnp.vdot(x @ w, x @ w), x, w, argnums=(0, 1))


@pytest.mark.parametrize("a_shape,b_shape",
                         [((3, 0), (0, 5)), ((0, 4), (4, 5)), ((2, 0, 3), (2, 3, 4))],
                         ids=["empty-contraction", "empty-rows", "empty-batch-rows"])
def test_zero_size(a_shape, b_shape):
    a, b = randn(10, *a_shape), randn(11, *b_shape)
    f = lambda a, b: jnp.sum(jnp.matmul(a, b) ** 2) + jnp.sum(a) + jnp.sum(b)  # noqa: E731
    got = fg.grad(f, (0, 1))(a, b)
    assert [g.shape for g in got] == [a_shape, b_shape]
    assert_trees_close(got, jax.grad(f, (0, 1))(a, b))


def test_float64():
    with jax.enable_x64(True):
        a, b = randn(12, 2, 3, 4, dtype=np.float64), randn(13, 2, 4, 5, dtype=np.float64)
        got = assert_grads_match(weighted_sum(jnp.matmul), a, b, argnums=(0, 1))
        assert all(g.dtype == np.float64 for g in got)


def assert_same_bits_eager_and_jitted(f, *args):
    """fg.grad == jax.grad bit for bit, eagerly and under jit (XLA may fuse a bf16 product's
    rounding differently once compiled, so each mode is compared with its own reference)."""
    nums = tuple(range(len(args)))
    for wrap in (lambda g: g, jax.jit):
        got, want = wrap(fg.grad(f, nums))(*args), wrap(jax.grad(f, nums))(*args)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    return got


def test_bf16_operands_with_float32_accumulation():
    a, b = randn(14, 16, 32, dtype=jnp.bfloat16), randn(15, 32, 8, dtype=jnp.bfloat16)

    def f(a, b):
        return jnp.dot(a, b, preferred_element_type=jnp.float32)

    assert f(a, b).dtype == jnp.float32
    got = assert_same_bits_eager_and_jitted(weighted_sum(f), a, b)
    assert [g.dtype for g in got] == [jnp.bfloat16, jnp.bfloat16]


def test_float32_product_rounded_to_bf16():
    """preferred_element_type=bf16 on f32 operands: JAX rounds the transposed products to bf16
    too, and so must funcgrad (the interpreter then casts the cotangents back to f32)."""
    a, b = randn(16, 16, 32), randn(17, 32, 8)

    def f(a, b):
        return jnp.dot(a, b, preferred_element_type=jnp.bfloat16).astype(jnp.float32)

    got = assert_same_bits_eager_and_jitted(weighted_sum(f), a, b)
    assert [g.dtype for g in got] == [jnp.float32, jnp.float32]


def test_precision_is_kept():
    a, b = randn(18, 5, 6), randn(19, 6, 7)

    def f(a, b):
        return jnp.dot(a, b, precision=lax.Precision.HIGHEST)

    backward = jax.make_jaxpr(fg.grad(weighted_sum(f), (0, 1)))(a, b)
    precisions = [e.params["precision"] for e in backward.jaxpr.eqns
                  if e.primitive.name == "dot_general"]
    assert len(precisions) == 3  # the forward product and both transposes
    assert all(p == precisions[0] and "HIGHEST" in str(p) for p in precisions), precisions
    assert_grads_match(weighted_sum(f), a, b, argnums=(0, 1), jit=False)


def test_vmap_of_grad():
    w = randn(20, 4, 3)

    def f(x):
        return jnp.sum(jnp.tanh(jnp.einsum("ij,jk->ik", x, w)) ** 2)

    xs = randn(21, 5, 2, 4)
    assert_trees_close(jax.vmap(fg.grad(f))(xs), jax.vmap(jax.grad(f))(xs))


def test_hessian_and_grad_of_grad():
    a, b = randn(22, 3, 4), randn(23, 4, 2)

    def f(a):
        return jnp.sum(jnp.einsum("ij,jk->ik", a, b) ** 3)

    assert_trees_close(fg.hessian(f)(a), jax.hessian(f)(a), rtol=1e-5, atol=1e-5)

    def g(s):
        return jnp.sum(jnp.tanh((a * s) @ b) @ b.T)

    assert_trees_close(fg.grad(fg.grad(g))(0.7), jax.grad(jax.grad(g))(0.7))


# ---- ragged_dot_general: grouped matmuls --------------------------------------------------------
def group_sizes(*sizes: int) -> jax.Array:
    return jnp.array(sizes, jnp.int32)


def group_masks(sizes: jax.Array, n: int) -> jax.Array:
    """masks[g, i] = 1 if index i belongs to group g (groups are consecutive runs; the indices
    after the last group belong to none)."""
    ends = jnp.cumsum(sizes)
    i = jnp.arange(n)
    return ((i >= (ends - sizes)[:, None]) & (i < ends[:, None])).astype(jnp.float32)


ROW_GROUPS = np.array([2, 0, 3], np.int32)  # rows 0-1, none, rows 2-4; row 5 in no group
K_GROUPS = np.array([1, 3, 2], np.int32)


# Ragged non-contracting dim (lax.ragged_dot: rows of x, one matrix of y per group of rows)
def ragged_rows(x, y, sizes=ROW_GROUPS):
    return lax.ragged_dot(x, y, sizes)


def ragged_rows_dense(x, y, sizes=ROW_GROUPS):
    """ragged_rows as a dense einsum: out[m, n] = sum_g mask[g, m] sum_k x[m, k] y[g, k, n]."""
    return jnp.einsum("gm,mk,gkn->mn", group_masks(sizes, x.shape[0]).astype(x.dtype), x, y)


# Ragged batched: x [b, m, k], y [g, b, k, n], per-batch group sizes [b, g]
BATCHED = lax.RaggedDotDimensionNumbers((([2], [2]), ([0], [1])), [1], [0])


def ragged_rows_batched(x, y):
    return lax.ragged_dot_general(x, y, jnp.array([[1, 2, 2], [4, 0, 1]], jnp.int32), BATCHED)


# Ragged contracting dim: x [m, k], y [k, n] -> out [g, m, n], one partial product per group of k
CONTRACTING = lax.RaggedDotDimensionNumbers((([1], [0]), ([], [])), [1], [])


def ragged_sum(x, y, sizes=K_GROUPS):
    return lax.ragged_dot_general(x, y, sizes, CONTRACTING)


def ragged_sum_dense(x, y, sizes=K_GROUPS):
    """ragged_sum as a dense einsum: out[g, m, n] = sum_k mask[g, k] x[m, k] y[k, n]."""
    return jnp.einsum("gk,mk,kn->gmn", group_masks(sizes, x.shape[1]).astype(x.dtype), x, y)


# ... with a batch dim and per-batch group sizes: x [b, m, k], y [b, k, n] -> out [g, b, m, n]
CONTRACTING_BATCHED = lax.RaggedDotDimensionNumbers((([2], [1]), ([0], [0])), [2], [])
BATCH_K_GROUPS = np.array([[1, 3, 2], [4, 0, 1]], np.int32)


def ragged_sum_batched(x, y):
    return lax.ragged_dot_general(x, y, BATCH_K_GROUPS, CONTRACTING_BATCHED)


def ragged_sum_batched_dense(x, y):
    masks = jnp.stack([group_masks(s, x.shape[2]) for s in BATCH_K_GROUPS]).astype(x.dtype)
    return jnp.einsum("bgk,bmk,bkn->gbmn", masks, x, y)


RAGGED_CASES = [
    Case("ragged_dot", "ragged_dot_general", ragged_rows,
         lambda: (randn(72, 6, 4), randn(73, 3, 4, 5)), (0, 1)),
    Case("ragged_dot-rows-left-over", "ragged_dot_general",
         lambda x, y: lax.ragged_dot(x, y, group_sizes(1, 2)),
         lambda: (randn(74, 5, 3), randn(75, 2, 3, 2)), (0, 1)),
    Case("ragged_dot_general-batched", "ragged_dot_general", ragged_rows_batched,
         lambda: (randn(76, 2, 5, 3), randn(77, 3, 2, 3, 4)), (0, 1)),
]


CASES += RAGGED_CASES


@pytest.mark.parametrize("case", RAGGED_CASES, ids=[c.id for c in RAGGED_CASES])
def test_ragged_cases_in_float64(case):  # float32, eagerly and under jit: test_rules_table.py
    with jax.enable_x64(True):
        check(case, np.float64, eager=False, jit=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ragged, dense, shapes", [
    (ragged_sum, ragged_sum_dense, ((3, 6), (6, 4))),
    (ragged_sum_batched, ragged_sum_batched_dense, ((2, 3, 6), (2, 6, 4))),
], ids=["plain", "batched"])
def test_ragged_contracting_dim_against_dense(ragged, dense, shapes, dtype):
    """jax.grad cannot transpose a ragged contracting dim; funcgrad equals the dense einsum's."""
    with jax.enable_x64(dtype == np.float64):
        x, y = randn(78, *shapes[0], dtype=dtype), randn(79, *shapes[1], dtype=dtype)
        np.testing.assert_allclose(ragged(x, y), dense(x, y), rtol=1e-5, atol=1e-6)
        want = jax.grad(weighted_sum(dense), (0, 1))(x, y)
        assert_trees_close(fg.grad(weighted_sum(ragged), (0, 1))(x, y), want)
        assert_trees_close(jax.jit(fg.grad(weighted_sum(ragged), (0, 1)))(x, y), want)
        with pytest.raises(NotImplementedError, match="RAGGED_CONTRACTING"):
            jax.grad(weighted_sum(ragged))(x, y)


@pytest.mark.parametrize("ragged, dense, shapes", [
    (ragged_rows, ragged_rows_dense, ((6, 4), (3, 4, 5))),
    (ragged_sum, ragged_sum_dense, ((3, 6), (6, 4))),
    (ragged_sum_batched, ragged_sum_batched_dense, ((2, 3, 6), (2, 6, 4))),
], ids=["rows", "contracting", "contracting-batched"])
def test_ragged_second_order_against_dense(ragged, dense, shapes):
    """Each mode's cotangents are grouped matmuls of both modes: the second derivatives close.
    (JAX's own fails: it cannot transpose the contracting mode its first derivative emits.)"""
    with jax.enable_x64(True):
        x, y = randn(80, *shapes[0], dtype=np.float64), randn(81, *shapes[1], dtype=np.float64)
        for first, second in [(0, 0), (0, 1), (1, 0), (1, 1)]:

            def slope(x, y, grad, f, first=first):
                return jnp.sum(jnp.cos(grad(weighted_sum(f), first)(x, y)))

            got = fg.grad(slope, second)(x, y, fg.grad, ragged)
            want = jax.grad(slope, second)(x, y, jax.grad, dense)
            assert_trees_close(got, want)


def test_ragged_vmap_of_grad():
    """JAX batches ragged_dot only when every operand, group sizes too, is batched at dim 0."""
    xs, ys = randn(82, 2, 6, 4), randn(83, 2, 3, 4, 5)
    sizes = jnp.array([[2, 0, 3], [1, 4, 1]], jnp.int32)
    def loss(x, y, sizes):  # (JAX cannot batch this with a weighted sum's unbatched weights)
        return jnp.sum(jnp.sin(ragged_rows(x, y, sizes)))

    want = jax.vmap(jax.grad(loss, (0, 1)))(xs, ys, sizes)
    assert_trees_close(jax.vmap(fg.grad(loss, (0, 1)))(xs, ys, sizes), want)
    assert_trees_close(jax.jit(jax.vmap(fg.grad(loss, (0, 1))))(xs, ys, sizes), want)


def test_ragged_batch_dim_refused_like_jax():
    ragged_batch = lax.RaggedDotDimensionNumbers((([2], [1]), ([0], [0])), [0], [])
    x, y = randn(84, 5, 2, 3), randn(85, 5, 3, 4)

    def f(x):
        return jnp.sum(lax.ragged_dot_general(x, y, group_sizes(2, 0, 3), ragged_batch))

    with pytest.raises(NotImplementedError, match="RAGGED_BATCH"):
        jax.grad(f)(x)
    with pytest.raises(NotImplementedError, match="ragged batch dimension"):
        fg.grad(f)(x)

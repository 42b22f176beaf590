"""The dot_general rule held against jax.grad: every contraction layout users write.

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

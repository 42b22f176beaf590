"""Reduction and cumulative-scan rules (reduce_sum/max/min/prod, cumsum, cumprod, cummax,
cummin, cumlogsumexp) held against jax.grad.

Each case of CASES is user code (``jnp.max``, ``jnp.cumprod``, ``lax.cummax``, ...) and names the
primitive it must reach; test_rules_table.py checks them all against jax.grad. The conventions JAX
picks are tested exactly: reduce_max ties share the cotangent equally, a product with one or two
zeros, cummax/cummin ties split the way JAX's associative-scan tree splits them (checked for every
length 1..13), and the NaN/-inf behaviour of each rule.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import (
    Case,
    assert_exactly,
    assert_trees_close,
    check,
    randint,
    randn,
    weighted_sum,
)
from jax import lax

import funcgrad as fg


# ---- helpers -------------------------------------------------------------------------------
def max_with_index(a, b):
    """The argmax pair reduction: the larger value and its index (the first on a tie)."""
    (a_value, a_index), (b_value, b_index) = a, b
    first = a_value >= b_value
    return jnp.where(first, a_value, b_value), jnp.where(first, a_index, b_index)


def max_and_argmax(x, axis=1, index_dtype=None):
    """lax.reduce over (x, its index along ``axis``) with :func:`max_with_index`.

    A float index is ``iota + 0 * x``: JAX's JVP of reduce fails on an operand whose tangent is
    a symbolic zero (a constant iota, or any integer operand), so the comparisons with jax.grad
    carry a float index that depends on x; funcgrad takes either.
    """
    if index_dtype is None:
        index = lax.broadcasted_iota(x.dtype, x.shape, axis) + 0 * x
    else:
        index = lax.broadcasted_iota(index_dtype, x.shape, axis)
    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(0, index.dtype))
    return lax.reduce((x, index), init, max_with_index, (axis,))


def smooth_fold(x):
    """A single-operand reduce whose computation is no monoid lax recognises."""
    return lax.reduce(x, jnp.array(0.0, x.dtype), lambda a, b: a * 0.5 + jnp.sin(b), (0,))


def weighted_pair_sum(x, y):
    """Two operands reduced together over two axes: (sum of x*y-products, product of y)."""
    init = (jnp.array(0.0, x.dtype), jnp.array(1.0, y.dtype))
    return lax.reduce((x, y), init, lambda p, q: (p[0] + q[0] * q[1], p[1] * q[1]), (0, 2))


# ---- the cases -----------------------------------------------------------------------------
CASES = [
    # reduce_sum
    Case("sum-all", "reduce_sum", jnp.sum, lambda: (randn(0, 3, 4),)),
    Case("sum-axis", "reduce_sum", lambda x: jnp.sum(x, axis=1), lambda: (randn(1, 2, 3, 4),)),
    Case("sum-axes", "reduce_sum", lambda x: jnp.sum(x, axis=(0, 2)), lambda: (randn(2, 2, 3, 4),)),
    Case("sum-keepdims", "reduce_sum", lambda x: jnp.sum(x, 1, keepdims=True) * x,
         lambda: (randn(3, 3, 4),)),
    Case("mean", "reduce_sum", lambda x: jnp.mean(x, axis=-1), lambda: (randn(4, 5, 6),)),
    # reduce_max / reduce_min
    Case("max-all", "reduce_max", jnp.max, lambda: (randn(5, 3, 4),)),
    Case("max-axis", "reduce_max", lambda x: jnp.max(x, axis=0), lambda: (randn(6, 4, 3),)),
    Case("max-axes", "reduce_max", lambda x: jnp.max(x, axis=(0, 2)), lambda: (randn(7, 2, 3, 4),)),
    Case("max-ties", "reduce_max", lambda x: jnp.max(x, axis=1), lambda: (randint(8, 4, 6),)),
    Case("min-axis", "reduce_min", lambda x: jnp.min(x, axis=1), lambda: (randn(9, 3, 5),)),
    Case("min-ties", "reduce_min", lambda x: jnp.min(x, axis=(0, 1)),
         lambda: (randint(10, 3, 4, 2),)),
    Case("amax-1d", "reduce_max", jnp.amax, lambda: (randn(11, 7),)),
    Case("logsumexp", "reduce_max", lambda x: jax.nn.logsumexp(x, axis=1),
         lambda: (randn(12, 3, 5),)),
    # reduce_prod
    Case("prod-all", "reduce_prod", jnp.prod, lambda: (randn(13, 3, 4),)),
    Case("prod-axis", "reduce_prod", lambda x: jnp.prod(x, axis=1), lambda: (randn(14, 3, 5),)),
    Case("prod-axes", "reduce_prod", lambda x: jnp.prod(x, axis=(0, 2)),
         lambda: (randn(15, 2, 3, 4),)),
    Case("prod-with-zeros", "reduce_prod", lambda x: jnp.prod(x, axis=1),
         lambda: (randn(16, 4, 5) * (randint(17, 4, 5, high=4) > 0),)),
    # cumulative sums, products, extrema, log-sum-exps; both directions, any axis
    Case("cumsum", "cumsum", lambda x: jnp.cumsum(x, axis=1), lambda: (randn(18, 3, 5),)),
    Case("cumsum-reverse", "cumsum", lambda x: lax.cumsum(x, 0, reverse=True),
         lambda: (randn(19, 6, 2),)),
    Case("cumprod", "cumprod", lambda x: jnp.cumprod(x, axis=1), lambda: (randn(20, 3, 6),)),
    Case("cumprod-reverse", "cumprod", lambda x: lax.cumprod(x, 0, reverse=True),
         lambda: (randn(21, 7, 2),)),
    Case("cumprod-with-zeros", "cumprod", lambda x: jnp.cumprod(x, axis=0),
         lambda: (randn(22, 9, 3) * (randint(23, 9, 3) > 0),)),
    Case("cumprod-with-zeros-reverse", "cumprod", lambda x: lax.cumprod(x, 1, reverse=True),
         lambda: (randn(24, 3, 9) * (randint(25, 3, 9) > 0),)),
    Case("cummax", "cummax", lambda x: lax.cummax(x, 1), lambda: (randn(26, 3, 7),)),
    Case("cummax-reverse", "cummax", lambda x: lax.cummax(x, 0, reverse=True),
         lambda: (randn(27, 6, 2),)),
    Case("cummin", "cummin", lambda x: lax.cummin(x, 0), lambda: (randn(28, 5, 3),)),
    Case("cummin-reverse", "cummin", lambda x: lax.cummin(x, 1, reverse=True),
         lambda: (randn(29, 2, 8),)),
    Case("cumlogsumexp", "cumlogsumexp", lambda x: lax.cumlogsumexp(x, 1),
         lambda: (randn(30, 3, 6),)),
    Case("cumlogsumexp-reverse", "cumlogsumexp", lambda x: lax.cumlogsumexp(x, 0, reverse=True),
         lambda: (randn(31, 7, 2),)),
    Case("cumlogsumexp-wide-range", "cumlogsumexp", lambda x: lax.cumlogsumexp(x, 0),
         lambda: (jnp.array([-80.0, 0.0, 60.0, 59.0, -90.0, 60.5]),)),
    # general reduce: custom computations, several operands
    Case("reduce-max-with-index", "reduce", max_and_argmax, lambda: (randn(32, 3, 7),)),
    Case("reduce-max-with-index-ties", "reduce", lambda x: max_and_argmax(x, axis=0),
         lambda: (randint(33, 6, 4),)),
    Case("reduce-custom-computation", "reduce", smooth_fold, lambda: (randn(34, 5, 3),)),
    Case("reduce-two-operands-two-axes", "reduce", weighted_pair_sum,
         lambda: (randn(35, 3, 2, 5), randn(36, 3, 2, 5)), (0, 1)),
]
# Eager jax.grad of a cumulative scan compiles dozens of small programs (seconds per case): the
# table (test_rules_table.py) checks these cases eagerly and under jit, the others under jit only.
EAGER = {"sum-axes", "max-ties", "prod-with-zeros", "cumsum-reverse", "cumprod-with-zeros",
         "cummin-reverse", "cumlogsumexp", "reduce-max-with-index-ties",
         "reduce-two-operands-two-axes"}
CASES = [replace(case, eager=case.id in EAGER) for case in CASES]
BY_ID = {c.id: c for c in CASES}


FLOAT64 = ["sum-axes", "max-axes", "min-ties", "prod-axes", "prod-with-zeros", "cumsum",
           "cumprod-with-zeros-reverse", "cummax-reverse", "cummin", "cumlogsumexp-reverse",
           "reduce-max-with-index", "reduce-custom-computation", "reduce-two-operands-two-axes"]


@pytest.mark.parametrize("name", FLOAT64)
def test_rule_matches_jax_in_float64(name):
    with jax.enable_x64(True):
        case = BY_ID[name]
        assert all(a.dtype == np.float64 for a in case.args(np.float64))
        check(case, np.float64, eager=False, jit=True)


# ---- scalars and zero-size arrays ----------------------------------------------------------
EDGE_SHAPES = [
    ("sum-scalar", lambda x: jnp.sum(x) * x, ()),
    ("max-scalar", lambda x: lax.reduce_max(x, ()), ()),
    ("prod-length-1", lambda x: jnp.prod(x), (1,)),
    ("sum-empty", lambda x: jnp.sum(x), (0,)),
    ("sum-empty-axis", lambda x: jnp.sum(x, axis=1), (2, 0, 3)),
    ("max-over-nonempty-axis", lambda x: jnp.max(x, axis=0), (2, 0, 3)),
    ("max-over-empty-axis", lambda x: lax.reduce_max(x, (1,)), (2, 0, 3)),
    ("prod-empty", lambda x: jnp.prod(x, axis=1), (2, 0, 3)),
    ("prod-empty-kept", lambda x: jnp.prod(x, axis=0), (2, 0, 3)),
    ("cumsum-empty", lambda x: jnp.cumsum(x, axis=1), (2, 0, 3)),
    ("cumprod-empty", lambda x: jnp.cumprod(x, axis=0), (0,)),
    ("cummax-empty", lambda x: lax.cummax(x, 1), (2, 0, 3)),
    ("cumlogsumexp-empty", lambda x: lax.cumlogsumexp(x, 0), (0, 2)),
    ("cumprod-length-1", lambda x: jnp.cumprod(x, axis=1), (3, 1)),
    ("cummax-length-1", lambda x: lax.cummax(x, 0), (1,)),
    ("cumlogsumexp-length-1", lambda x: lax.cumlogsumexp(x, 0, reverse=True), (1, 2)),
]


@pytest.mark.parametrize("name,f,shape", EDGE_SHAPES, ids=[e[0] for e in EDGE_SHAPES])
def test_scalars_and_zero_size(name, f, shape):
    x = randn(40, *shape)
    got = fg.grad(weighted_sum(f))(x)
    assert got.shape == shape
    assert_trees_close(got, jax.jit(jax.grad(weighted_sum(f)))(x))


# ---- JAX's conventions, exactly ------------------------------------------------------------
def test_reduce_max_ties_share_equally():
    x = jnp.array([1.0, 3.0, 3.0, -2.0, 3.0])
    third = np.float32(1) / np.float32(3)
    assert_exactly(fg.grad(jnp.max)(x), np.array([0, third, third, 0, third], np.float32))
    assert_exactly(fg.grad(jnp.min)(jnp.array([1.0, 1.0, 2.0])), [0.5, 0.5, 0])
    assert_exactly(fg.grad(jnp.max)(x), jax.grad(jnp.max)(x))


@pytest.mark.parametrize("x", [[1.0, np.nan, 2.0], [np.inf, 1.0, np.inf], [-np.inf, -np.inf]],
                         ids=["nan", "inf-ties", "all-minus-inf"])
@pytest.mark.parametrize("reduce", [jnp.max, jnp.min], ids=["max", "min"])
def test_reduce_chooser_nan_and_inf_as_jax(x, reduce):
    x = jnp.array(x)
    want = jax.grad(reduce)(x)
    np.testing.assert_array_equal(fg.grad(reduce)(x), want)
    # Compiled too: JAX's own compiled gradient gives 0 instead of NaN here (XLA turns its
    # product by a 0/1 mask into a select); funcgrad keeps the eager answer.
    np.testing.assert_array_equal(jax.jit(fg.grad(reduce))(x), want)


@pytest.mark.parametrize("x,want", [
    ([2.0, 0.0, 3.0, 4.0], [0.0, 24.0, 0.0, 0.0]),   # one zero: only its slot is nonzero
    ([2.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]),    # two zeros: all zero
    ([0.0], [1.0]),
    ([-1.5, 2.0, -4.0], [-8.0, 6.0, -3.0]),
], ids=["one-zero", "two-zeros", "single-zero", "no-zero"])
def test_reduce_prod_with_zeros_exact(x, want):
    x = jnp.array(x)
    assert_exactly(fg.grad(jnp.prod)(x), want)
    assert_exactly(fg.grad(jnp.prod)(x), jax.grad(jnp.prod)(x))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cumprod_with_zeros_exact(reverse):
    x = jnp.array([2.0, 0.0, 3.0, 0.0, 5.0, 1.5, 0.5, -2.0])
    loss = weighted_sum(lambda x: lax.cumprod(x, 0, reverse=reverse), integer_weights=True)
    assert_exactly(fg.grad(loss)(x), jax.jit(jax.grad(loss))(x))


@pytest.mark.parametrize("prim,reverse", [(lax.cummax, False), (lax.cummax, True),
                                          (lax.cummin, False)],
                         ids=["cummax", "cummax-reverse", "cummin"])
def test_cumulative_extremum_ties_split_like_jax(prim, reverse):
    """Ties split by powers of 1/2 along JAX's scan tree: the exact shares, for lengths whose
    odd/even halvings take every branch of the tree (1..8, and 11 = odd-odd-odd)."""
    xs = [randint(n, 2, n, high=3) for n in (1, 2, 3, 4, 5, 6, 7, 8, 11)]

    def loss(xs):
        return sum(weighted_sum(lambda x: prim(x, 1, reverse=reverse), True)(x) for x in xs)

    got, want = jax.jit(fg.grad(loss))(xs), jax.jit(jax.grad(loss))(xs)
    for g, w in zip(got, want):
        assert_exactly(g, w)


def test_cummax_all_equal_and_nan():
    loss = weighted_sum(lambda x: lax.cummax(x, 0), integer_weights=True)
    for x in (jnp.ones(9), jnp.array([1.0, np.nan, 2.0, 0.5, np.nan, 3.0])):
        np.testing.assert_array_equal(fg.grad(loss)(x), jax.jit(jax.grad(loss))(x))


@pytest.mark.parametrize("x", [[-np.inf, 1.0, 2.0], [1.0, -np.inf, 2.0], [-np.inf, -np.inf, 1.0],
                               [1.0, -np.inf, -np.inf], [80.0, 90.0, -90.0]],
                         ids=["leading-ninf", "middle-ninf", "two-leading-ninf",
                              "trailing-ninf", "large"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cumlogsumexp_infinities_as_jax(x, reverse):
    """-inf inputs: slope 1 for the scan's first element, NaN where JAX gets -inf - -inf."""
    x = jnp.array(x)

    def loss(x):
        return jnp.sum(lax.cumlogsumexp(x, reverse=reverse) * jnp.array([1.0, -2.0, 3.0]))

    np.testing.assert_allclose(fg.grad(loss)(x), jax.jit(jax.grad(loss))(x), rtol=1e-6, atol=1e-6)


# ---- general reduce: JAX's combination tree, exactly ---------------------------------------
def test_general_reduce_ties_follow_jax_tree():
    """Ties in a pair reduction: which element wins is decided by the order of combination,
    JAX's halving tree, for every length 1..9 (odd lengths pad with the init value)."""
    xs = [randint(n, 2, n, high=2) for n in range(1, 10)]

    def loss(xs):
        return sum(weighted_sum(max_and_argmax, integer_weights=True)(x) for x in xs)

    for g, w in zip(fg.grad(loss)(xs), jax.jit(jax.grad(loss))(xs)):
        assert_exactly(g, w)


def test_general_reduce_with_an_integer_index():
    """An int32 index operand gets no cotangent (JAX's JVP crashes on it: see max_and_argmax);
    the value's gradient equals the one with a float index."""
    x = randint(37, 4, 6)

    def values(x, index_dtype):
        return weighted_sum(lambda x: max_and_argmax(x, index_dtype=index_dtype)[0])(x)

    want = jax.grad(values)(x, None)
    assert_exactly(fg.grad(values)(x, jnp.int32), want)
    assert_exactly(jax.jit(fg.grad(values), static_argnums=1)(x, jnp.int32), want)
    out, pull = fg.vjp(lambda x: max_and_argmax(x, index_dtype=jnp.int32), x)
    ct_x = pull((jnp.ones_like(out[0]), np.zeros(out[1].shape, jax.dtypes.float0)))[0]
    assert_exactly(ct_x, jax.grad(lambda x: jnp.sum(max_and_argmax(x)[0]))(x))


@pytest.mark.parametrize("shape", [(0, 3), (1, 3)], ids=["empty", "length-1"])
def test_general_reduce_edge_lengths(shape):
    x = randn(38, *shape)
    loss = weighted_sum(lambda x: smooth_fold(x) + max_and_argmax(x, axis=0)[0])
    got = fg.grad(loss)(x)
    assert got.shape == shape
    assert_trees_close(got, jax.jit(jax.grad(loss))(x))


def test_general_reduce_refuses_init_values_like_jax():
    def f(init):
        return jnp.sum(lax.reduce(jnp.arange(1.0, 4.0), init, lambda a, b: a * b + 1.0, (0,)))

    with pytest.raises(NotImplementedError, match="initial values"):
        jax.grad(f)(2.0)
    with pytest.raises(NotImplementedError, match="not its init values"):
        fg.grad(f)(2.0)


def test_general_reduce_vmap_and_second_order():
    x, y = randn(39, 2, 3, 2, 5), randn(40, 2, 3, 2, 5)  # a batch of 2
    loss = weighted_sum(weighted_pair_sum)
    want = jax.jit(jax.vmap(jax.grad(loss, (0, 1))))(x, y)
    assert_trees_close(jax.jit(jax.vmap(fg.grad(loss, (0, 1))))(x, y), want)
    with jax.enable_x64(True):
        z = randn(41, 4, 3, dtype=np.float64)
        fold = weighted_sum(smooth_fold)
        assert_trees_close(jax.jit(fg.hessian(fold))(z), jax.jit(jax.hessian(fold))(z))
        pair = weighted_sum(lambda z: max_and_argmax(z, axis=0))
        assert_trees_close(fg.hessian(pair)(z), jax.jit(jax.hessian(pair))(z))


# ---- vmap and second order -----------------------------------------------------------------
def test_vmap_of_grad():
    def f(x):
        return jnp.sum(lax.cummax(x, 0) * jnp.cumprod(x)) + jnp.prod(x) * jnp.max(x)

    xs = randn(50, 4, 6)
    want = jax.jit(jax.vmap(jax.grad(f)))(xs)
    assert_trees_close(jax.vmap(fg.grad(f))(xs), want)
    assert_trees_close(jax.jit(jax.vmap(fg.grad(f)))(xs), want)


HESSIANS = [
    ("reduce_prod", lambda x: jnp.prod(x), lambda: randn(60, 5)),
    ("reduce_prod-one-zero", lambda x: jnp.prod(x), lambda: jnp.array([1.5, 0.0, -2.0, 3.0])),
    ("reduce_max", lambda x: jnp.max(x) * jnp.sum(x**2), lambda: randn(61, 5)),
    ("logsumexp", lambda x: jax.nn.logsumexp(x), lambda: randn(62, 5)),
    ("cumsum", lambda x: jnp.sum(jnp.cumsum(x) ** 3), lambda: randn(63, 5)),
    ("cumprod", lambda x: jnp.sum(jnp.cumprod(x) * jnp.arange(1.0, 6.0)), lambda: randn(64, 5)),
    ("cumprod-zeros", lambda x: jnp.sum(lax.cumprod(x, reverse=True) ** 2),
     lambda: jnp.array([1.5, 0.0, -2.0, 0.0, 3.0])),
    ("cummax", lambda x: jnp.sum(lax.cummax(x) ** 2 * x), lambda: randn(65, 5)),
    ("cummin", lambda x: jnp.sum(lax.cummin(x, reverse=True) ** 3), lambda: randn(66, 5)),
    ("cumlogsumexp", lambda x: jnp.sum(lax.cumlogsumexp(x) * jnp.arange(5.0)),
     lambda: randn(67, 5)),
]


@pytest.mark.parametrize("name,f,make_x", HESSIANS, ids=[h[0] for h in HESSIANS])
def test_hessian_matches_jax(name, f, make_x):
    x = make_x()
    assert_trees_close(fg.hessian(f)(x), jax.jit(jax.hessian(f))(x), rtol=1e-5, atol=1e-5)


def test_grad_of_grad_float64():
    def f(s):
        x = jnp.linspace(-1.0, 2.0, 7) * s
        return jnp.sum(lax.cumlogsumexp(x)) + jnp.prod(x[1:4]) + jnp.max(jnp.cumprod(x))

    with jax.enable_x64(True):
        s = jnp.float64(0.7)
        assert_trees_close(fg.grad(fg.grad(f))(s), jax.jit(jax.grad(jax.grad(f)))(s))

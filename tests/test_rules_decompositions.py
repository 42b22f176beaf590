"""The cholesky and lu rules (and lu_pivots_to_permutation's zero) held against JAX.

Each rule is checked at the primitive (``fg.vjp`` against ``jax.vjp``, eagerly and under
``jax.jit``) over float32/float64/complex64/complex128, batch dimensions, square, tall and wide
LU factorizations and singular matrices (the inf/NaN JAX gives, in the same places), under
``jax.vmap`` and to second order; then the user-level functions that reach them
(``jnp.linalg.det/slogdet/cholesky``, ``jax.scipy.linalg.cholesky/cho_factor/lu/lu_factor/
lu_solve``, a Cholesky-based Gaussian log-likelihood) through ``fg.grad`` against ``jax.grad`` at
float64 rtol 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from gradcheck import (
    Case,
    assert_grads_match,
    assert_trees_close,
    assert_uses,
    assert_vjp_matches,
    randn,
    weighted_sum,
)
from jax import lax

import funcgrad as fg

# ---- helpers -------------------------------------------------------------------------------


def _spd(a):
    """A well-conditioned symmetric (Hermitian) positive definite matrix built from ``a``."""
    n = a.shape[-1]
    return a @ jnp.conj(jnp.swapaxes(a, -1, -2)) + n * jnp.eye(n, dtype=a.dtype)


def _rand(seed: int, *shape: int, dtype=np.float64) -> jax.Array:
    """Standard normal entries of ``dtype`` (real and imaginary parts for complex dtypes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return jnp.asarray(x, dtype)


def _random_ct(out, seed: int = 7):
    """A fixed random cotangent for ``out``'s pytree (float0 zeros for integer outputs)."""
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree_util.tree_flatten(out)
    cts = []
    for x in leaves:
        if jnp.issubdtype(x.dtype, jnp.inexact):
            v = rng.standard_normal(x.shape)
            if jnp.issubdtype(x.dtype, jnp.complexfloating):
                v = v + 1j * rng.standard_normal(x.shape)
            cts.append(jnp.asarray(v, x.dtype))
        else:
            cts.append(np.zeros(x.shape, jax.dtypes.float0))
    return jax.tree_util.tree_unflatten(tree, cts)


def check_vjp(f, *args, rtol=None, atol=None):
    """fg.vjp equals jax.vjp eagerly, and under jax.jit, for a fixed random cotangent."""
    ct = _random_ct(f(*args))
    assert_vjp_matches(f, *args, ct=ct, rtol=rtol, atol=atol)
    want = jax.jit(lambda *a: jax.vjp(f, *a)[1](ct))(*args)
    got = jax.jit(lambda *a: fg.vjp(f, *a)[1](ct))(*args)
    assert_trees_close(got, want, rtol, atol, "jit(fg.vjp)")


def _maybe_jit(f, jit: bool):
    return jax.jit(f) if jit else f


def check_vmap(loss, *args, rtol=None, atol=None, jit=True):
    """jax.vmap(fg.grad(loss)) equals jax.vmap(jax.grad(loss)) over a stacked batch of args."""
    batched = [jnp.stack([a, 1.1 * a, 0.9 * a]) for a in args]
    argnums = tuple(range(len(args)))
    want = _maybe_jit(jax.vmap(jax.grad(loss, argnums)), jit)(*batched)
    got = _maybe_jit(jax.vmap(fg.grad(loss, argnums)), jit)(*batched)
    assert_trees_close(got, want, rtol, atol, "vmap(fg.grad)")


def check_hessian(loss, *args, rtol=1e-9, atol=1e-11, jit=True):
    """jit(fg.hessian) equals jit(jax.hessian) (float64: second derivatives chain two rounds of
    triangular solves, so they lose about a digit against the first-order tolerance)."""
    argnums = tuple(range(len(args)))
    got = _maybe_jit(fg.hessian(loss, argnums), jit)(*args)
    want = _maybe_jit(jax.hessian(loss, argnums), jit)(*args)
    assert_trees_close(got, want, rtol, atol, "hessian")


def cholesky_lower(x):
    """The primitive alone: no symmetrization, lower triangle of the factor."""
    return lax.linalg.cholesky(x, symmetrize_input=False)


def lu_factor(x):
    """The packed LU factor (the pivots and permutation are integers)."""
    return lax.linalg.lu(x)[0]


def gaussian_log_likelihood(scale, x):
    """log N(x; 0, S) up to a constant, S = scale scale^T + I, through its Cholesky factor."""
    cov = scale @ scale.T + jnp.eye(scale.shape[-1], dtype=scale.dtype)
    chol = jnp.linalg.cholesky(cov)
    z = jsl.solve_triangular(chol, x, lower=True)
    return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diagonal(chol)))


# ---- the cases -----------------------------------------------------------------------------
CASES = [
    Case("cholesky", "cholesky", lambda a: jnp.linalg.cholesky(_spd(a)),
         lambda: (randn(0, 4, 4),)),
    Case("cholesky-scipy-upper-batched", "cholesky", lambda a: jsl.cholesky(_spd(a)),
         lambda: (randn(1, 2, 3, 3),)),
    Case("cho-factor", "cholesky", lambda a: jsl.cho_factor(_spd(a), lower=True)[0],
         lambda: (randn(2, 3, 3),)),
    Case("gaussian-log-likelihood", "cholesky", gaussian_log_likelihood,
         lambda: (randn(3, 3, 3), randn(4, 3)), argnums=(0, 1)),
    Case("lu-factor", "lu", lambda a: jsl.lu_factor(a)[0], lambda: (randn(5, 4, 4),)),
    Case("scipy-lu-wide", "lu", lambda a: jsl.lu(a)[1:], lambda: (randn(6, 3, 5),)),
    Case("lu-solve", "lu", lambda a, b: jsl.lu_solve(jsl.lu_factor(a), b),
         lambda: (randn(7, 4, 4) + 4 * jnp.eye(4), randn(8, 4, 2)), argnums=(0, 1)),
    Case("det", "lu", jnp.linalg.det, lambda: (randn(9, 5, 5),)),
    Case("slogdet", "lu", lambda a: jnp.linalg.slogdet(a)[1], lambda: (randn(10, 2, 4, 4),)),
]

FLOATS = [np.float32, np.float64]
ALL_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
# float32 factorizations of 4x4 matrices: a few ulps per triangular solve, compounded by the
# condition number (~10): JAX and funcgrad order the products differently
F32_DECOMP = {"rtol": 1e-4, "atol": 1e-5}


def _tol(dtype) -> dict:
    return F32_DECOMP if np.dtype(dtype) in (np.float32, np.complex64) else {}


# ---- cholesky ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 3)], ids=["4x4", "batch2-3x3"])
def test_cholesky_primitive(dtype, shape):
    with jax.enable_x64(True):
        x = _spd(_rand(0, *shape, dtype=dtype))
        check_vjp(cholesky_lower, x, **_tol(dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_cholesky_symmetrized_grad(dtype):
    with jax.enable_x64(True):
        a = _rand(1, 2, 4, 4, dtype=dtype)
        assert_uses("cholesky", jnp.linalg.cholesky, _spd(a))
        got = assert_grads_match(weighted_sum(lambda a: jnp.linalg.cholesky(_spd(a))), a,
                                 **_tol(dtype))
        assert got.shape == a.shape


def test_cholesky_reads_only_the_factor():
    """The rule reads the output, not the input: the cotangent is JAX's even for a non-SPD upper
    triangle the primitive ignores (symmetrize_input=False)."""
    with jax.enable_x64(True):
        x = _spd(_rand(2, 4, 4))
        x = x + jnp.triu(jnp.full((4, 4), 100.0), 1)  # garbage above the diagonal
        check_vjp(cholesky_lower, x)


def test_cholesky_vmap():
    with jax.enable_x64(True):
        check_vmap(weighted_sum(lambda a: jnp.linalg.cholesky(_spd(a))), _rand(3, 3, 3))


def test_cholesky_second_order():
    with jax.enable_x64(True):
        a = _rand(4, 3, 3)
        check_hessian(weighted_sum(lambda a: cholesky_lower(_spd(a))), a)
        loss = weighted_sum(lambda a: jnp.linalg.cholesky(_spd(a)))
        gg = fg.grad(lambda a: jnp.sum(jnp.sin(fg.grad(loss)(a))))(a)  # eager outer grad
        want = jax.grad(lambda a: jnp.sum(jnp.sin(jax.grad(loss)(a))))(a)
        assert_trees_close(gg, want, 1e-9, 1e-11)


def test_cholesky_not_positive_definite_is_nan_like_jax():
    with jax.enable_x64(True):
        x = -jnp.eye(3)
        loss = weighted_sum(cholesky_lower)
        got, want = fg.grad(loss)(x), jax.grad(loss)(x)
        assert np.isnan(np.asarray(want)).all()
        np.testing.assert_array_equal(np.isnan(np.asarray(got)), np.isnan(np.asarray(want)))


# ---- lu --------------------------------------------------------------------------------------

LU_SHAPES = [
    ((4, 4), np.float64),
    ((2, 3, 3), np.float32),
    ((3, 5), np.float64),
    ((5, 3), np.float32),
    ((2, 2, 4, 2), np.float64),
    ((2, 2, 5), np.float32),
]


@pytest.mark.parametrize(
    "shape,dtype",
    LU_SHAPES,
    ids=[f"{'x'.join(map(str, s))}-{np.dtype(d).name}" for s, d in LU_SHAPES],
)
def test_lu_primitive(shape, dtype):
    with jax.enable_x64(True):
        check_vjp(lax.linalg.lu, _rand(10, *shape, dtype=dtype), **_tol(dtype))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 5)], ids=["4x4", "batch2-3x5"])
def test_lu_complex(dtype, shape):
    with jax.enable_x64(True):
        check_vjp(lu_factor, _rand(11, *shape, dtype=dtype), **_tol(dtype))


def _singular(kind: str, dtype) -> jax.Array:
    """Exactly singular matrices: elimination leaves exact zeros on U's diagonal."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 4))
    if kind == "repeated-row":
        x[3] = x[0]
    elif kind == "rank1-3x5":  # rows scaled by powers of two: exact multiples
        x = np.array([[1.0], [-2.0], [4.0]]) * rng.standard_normal((1, 5))
    elif kind == "zero-column":
        x[:, 1] = 0.0
    else:
        x = np.zeros((3, 3))
    return jnp.asarray(x, dtype)


SINGULAR = [
    ("repeated-row", np.float64),
    ("rank1-3x5", np.float32),
    ("zero-column", np.float32),
    ("zeros", np.float64),
]


@pytest.mark.parametrize(
    "kind,dtype", SINGULAR, ids=[f"{k}-{np.dtype(d).name}" for k, d in SINGULAR]
)
def test_lu_singular_matches_jax_nonfinite_included(kind, dtype):
    """A singular U makes the transposed solves divide by zero: inf/NaN exactly where JAX's."""
    with jax.enable_x64(True):
        x = _singular(kind, dtype)
        ct = _random_ct(lax.linalg.lu(x))
        want = jax.vjp(lax.linalg.lu, x)[1](ct)[0]
        got = fg.vjp(lax.linalg.lu, x)[1](ct)[0]
        assert not np.isfinite(np.asarray(want)).all()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        assert_trees_close(got, want, **_tol(dtype))


def test_lu_vmap():
    with jax.enable_x64(True):
        check_vmap(weighted_sum(lu_factor), _rand(13, 4, 3))


@pytest.mark.parametrize("shape", [(3, 3), (2, 4)], ids=["3x3", "2x4"])
def test_lu_second_order(shape):
    with jax.enable_x64(True):
        check_hessian(weighted_sum(lu_factor), _rand(14, *shape))


def test_lu_pivots_to_permutation_is_non_differentiable():
    assert "lu_pivots_to_permutation" in fg.supported_primitives()
    pivots = jnp.array([2, 2, 3, 3], jnp.int32)

    def f(x):
        perm = lax.linalg.lu_pivots_to_permutation(pivots, 4)
        return jnp.sum(x[perm] * jnp.arange(4.0))

    x = randn(15, 4)
    assert_uses("lu_pivots_to_permutation", f, x)
    assert_grads_match(f, x)


# ---- user-level functions at float64 rtol 1e-10 --------------------------------------------

USER_LEVEL = {
    "det-1x1": (jnp.linalg.det, lambda: (_rand(20, 1, 1),)),
    "det-batched-1x1": (jnp.linalg.det, lambda: (_rand(21, 3, 1, 1),)),
    "det-4x4": (jnp.linalg.det, lambda: (_rand(22, 4, 4),)),
    "det-batched-5x5": (jnp.linalg.det, lambda: (_rand(23, 2, 5, 5),)),
    "slogdet-4x4": (lambda a: jnp.linalg.slogdet(a)[1], lambda: (_rand(24, 4, 4),)),
    "slogdet-batched": (lambda a: jnp.linalg.slogdet(a)[1], lambda: (_rand(25, 3, 5, 5),)),
    "cholesky": (lambda a: jnp.linalg.cholesky(_spd(a)), lambda: (_rand(26, 4, 4),)),
    "scipy-cholesky-upper": (lambda a: jsl.cholesky(_spd(a)), lambda: (_rand(27, 4, 4),)),
    "cho-factor": (lambda a: jsl.cho_factor(_spd(a))[0], lambda: (_rand(28, 3, 3),)),
    "scipy-lu-square": (lambda a: jsl.lu(a)[1:], lambda: (_rand(29, 4, 4),)),
    "scipy-lu-tall": (lambda a: jsl.lu(a)[1:], lambda: (_rand(30, 5, 3),)),
    "lu-factor-solve": (lambda a, b: jsl.lu_solve(jsl.lu_factor(a), b),
                        lambda: (_rand(31, 4, 4), _rand(32, 4, 2))),
    "lu-factor-solve-trans": (lambda a, b: jsl.lu_solve(jsl.lu_factor(a), b, trans=1),
                              lambda: (_rand(33, 4, 4), _rand(34, 4))),
    "gaussian-log-likelihood": (gaussian_log_likelihood, lambda: (_rand(35, 4, 4), _rand(36, 4))),
}


@pytest.mark.parametrize("name", USER_LEVEL)
def test_user_level_float64(name):
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        args = make_args()
        assert_grads_match(weighted_sum(f), *args, argnums=tuple(range(len(args))))


@pytest.mark.parametrize("name", ["gaussian-log-likelihood", "lu-factor-solve", "cho-factor"])
def test_user_level_second_order(name):
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        check_hessian(weighted_sum(f), *make_args())


@pytest.mark.parametrize("name", ["det-1x1", "det-batched-1x1", "det-4x4", "slogdet-4x4"])
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_det_under_vmap_and_second_order(name, jit):
    """The tangent part of det's and slogdet's custom JVP applies a nested ``jit``
    (``jnp.trace``, ``solve``) to the tangent, which the linear evaluation must run on zeros,
    not on shape-only stand-ins (this once crashed eagerly with 'ShapeDtypeStruct is not a
    valid JAX type')."""
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        args = make_args()
        check_vmap(weighted_sum(f), *args, jit=jit)
        check_hessian(weighted_sum(f), *args, jit=jit)

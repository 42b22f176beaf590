"""The triangular_solve, tridiagonal_solve and custom_linear_solve rules held against JAX.

At the primitive: every combination of ``left_side``/``lower``/``transpose_a``/``conjugate_a``/
``unit_diagonal`` (complex, so that conjugation matters), float32/float64/complex64/complex128,
batch dimensions, singular triangles (inf/NaN where JAX has them), the unread triangle and
unit diagonal getting exactly no cotangent; tridiagonal systems of every dtype, batched, of
size one; ``lax.custom_linear_solve`` with and without ``symmetric``, with ``has_aux``, pytree
right-hand sides, closures in ``solve`` (which JAX does not differentiate), and the error JAX
gives without ``transpose_solve``; all eagerly, under ``jax.jit``, under ``jax.vmap`` and to
second order. Then the user-level functions that reach them (``jnp.linalg.solve/inv/pinv``,
``jax.scipy.linalg.solve/solve_triangular/cho_solve/inv``, ``jax.scipy.sparse.linalg.cg/gmres/
bicgstab``) through ``fg.grad`` against ``jax.grad`` at float64 rtol 1e-10.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.sparse.linalg as jspl
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
from test_rules_decompositions import (
    _rand,
    _random_ct,
    _spd,
    check_hessian,
    check_vjp,
    check_vmap,
)

import funcgrad as fg

# ---- helpers -------------------------------------------------------------------------------


def _well_conditioned(a):
    """``a`` plus a multiple of the identity: comfortably invertible, either triangle."""
    n = a.shape[-1]
    return a + 4 * jnp.eye(n, dtype=a.dtype)


def tridiagonal_system(dl, d, du, b):
    """``lax.linalg.tridiagonal_solve`` with a diagonally dominant main diagonal."""
    return lax.linalg.tridiagonal_solve(dl, d + 4, du, b)


def cg_solve(a, b):
    return jspl.cg(lambda x: _spd(a) @ x, b, tol=1e-14, maxiter=100)[0]


def gmres_solve(a, b):
    return jspl.gmres(lambda x: _well_conditioned(a) @ x, b, tol=1e-14)[0]


def bicgstab_solve(a, b):
    return jspl.bicgstab(lambda x: _well_conditioned(a) @ x, b, tol=1e-14, maxiter=200)[0]


def explicit_solve(a, b):
    """``lax.custom_linear_solve`` with a dense solve and its transpose, both closing over a."""
    return lax.custom_linear_solve(
        lambda x: a @ x,
        b,
        solve=lambda _, r: jnp.linalg.solve(a, r),
        transpose_solve=lambda _, r: jnp.linalg.solve(a.T, r),
    )


# ---- the cases -----------------------------------------------------------------------------
CASES = [
    Case("solve-triangular-lower", "triangular_solve",
         lambda a, b: jsl.solve_triangular(_well_conditioned(a), b, lower=True),
         lambda: (randn(0, 4, 4), randn(1, 4, 2)), argnums=(0, 1)),
    Case("solve-triangular-trans-batched", "triangular_solve",
         lambda a, b: jsl.solve_triangular(_well_conditioned(a), b, trans=1),
         lambda: (randn(2, 2, 3, 3), randn(3, 2, 3)), argnums=(0, 1)),
    Case("cho-solve", "triangular_solve",
         lambda a, b: jsl.cho_solve(jsl.cho_factor(_spd(a)), b),
         lambda: (randn(4, 3, 3), randn(5, 3, 2)), argnums=(0, 1)),
    Case("tridiagonal-solve", "tridiagonal_solve", tridiagonal_system,
         lambda: (randn(6, 5), randn(7, 5), randn(8, 5), randn(9, 5, 2)), argnums=(0, 1, 2, 3)),
    Case("linalg-solve", "custom_linear_solve",
         lambda a, b: jnp.linalg.solve(_well_conditioned(a), b),
         lambda: (randn(10, 4, 4), randn(11, 4)), argnums=(0, 1)),
    Case("linalg-inv", "custom_linear_solve", lambda a: jnp.linalg.inv(_well_conditioned(a)),
         lambda: (randn(12, 3, 3),)),
    Case("sparse-cg", "custom_linear_solve", cg_solve,
         lambda: (randn(13, 3, 3), randn(14, 3)), argnums=(0, 1)),
]

FLOATS = [np.float32, np.float64]
ALL_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
# float32: a few ulps per solve, times the condition number (~5) of these matrices; the two
# implementations order the products of the cotangent differently
F32_SOLVE = {"rtol": 1e-4, "atol": 1e-5}


def _tol(dtype) -> dict:
    return F32_SOLVE if np.dtype(dtype) in (np.float32, np.complex64) else {}


def _name(dtype) -> str:
    return np.dtype(dtype).name


# ---- triangular_solve ----------------------------------------------------------------------

FLAGS = list(itertools.product([True, False], repeat=5))


def _flag_id(flags) -> str:
    names = ["left", "lower", "trans", "conj", "unit"]
    return "-".join(n if f else "no" + n for n, f in zip(names, flags))


def _triangular(flags, a, b):
    left_side, lower, transpose_a, conjugate_a, unit_diagonal = flags
    return lax.linalg.triangular_solve(
        a, b, left_side=left_side, lower=lower, transpose_a=transpose_a,
        conjugate_a=conjugate_a, unit_diagonal=unit_diagonal,
    )


def _triangular_args(flags, seed: int, dtype, batch=()):
    a = _well_conditioned(_rand(seed, *batch, 3, 3, dtype=dtype))
    b_shape = (3, 2) if flags[0] else (2, 3)
    return a, _rand(seed + 1, *batch, *b_shape, dtype=dtype)


@pytest.mark.parametrize("flags", FLAGS, ids=_flag_id)
def test_triangular_solve_every_flag_complex(flags):
    """complex128, so that ``conjugate_a`` and the transpose-not-adjoint convention both show."""
    with jax.enable_x64(True):
        a, b = _triangular_args(flags, 0, np.complex128)
        assert_vjp_matches(lambda a, b: _triangular(flags, a, b), a, b,
                           ct=_random_ct(_triangular(flags, a, b)))


SOME_FLAGS = [
    (True, True, False, False, False),
    (True, False, True, True, False),
    (False, True, True, False, True),
    (False, False, False, True, False),
]


@pytest.mark.parametrize(
    "flags,dtype", list(zip(SOME_FLAGS, ALL_DTYPES)),
    ids=[f"{_flag_id(f)}-{_name(d)}" for f, d in zip(SOME_FLAGS, ALL_DTYPES)],
)
def test_triangular_solve_batched_eager_and_jit(flags, dtype):
    with jax.enable_x64(True):
        a, b = _triangular_args(flags, 1, dtype, batch=(2,))
        check_vjp(lambda a, b: _triangular(flags, a, b), a, b, **_tol(dtype))


@pytest.mark.parametrize("flags", SOME_FLAGS[:2], ids=_flag_id)
def test_triangular_solve_vector_right_hand_side(flags):
    """``lax.linalg.triangular_solve`` of a vector b adds a unit axis around the primitive."""
    with jax.enable_x64(True):
        a, _ = _triangular_args(flags, 2, np.float64)
        check_vjp(lambda a, b: _triangular(flags, a, b), a, _rand(3, 3))


@pytest.mark.parametrize("unit_diagonal", [True, False], ids=["unit", "nonunit"])
def test_triangular_solve_unread_entries_get_zero(unit_diagonal):
    """The other triangle (and the diagonal, with unit_diagonal) are never read: NaN there
    changes nothing, and their cotangent is exactly zero, as in JAX."""
    with jax.enable_x64(True):
        a = jnp.tril(_well_conditioned(_rand(4, 4, 4))) + jnp.triu(jnp.full((4, 4), np.nan), 1)
        if unit_diagonal:
            a = a.at[jnp.diag_indices(4)].set(np.nan)
        b = _rand(5, 4, 3)

        def f(a, b):
            return lax.linalg.triangular_solve(a, b, left_side=True, lower=True,
                                               unit_diagonal=unit_diagonal)

        ct = _random_ct(f(a, b))
        got = fg.vjp(f, a, b)[1](ct)
        want = jax.vjp(f, a, b)[1](ct)
        assert_trees_close(got, want)
        unread = np.triu(np.ones((4, 4), bool), 0 if unit_diagonal else 1)
        assert np.all(np.asarray(got[0])[unread] == 0)
        assert np.isfinite(np.asarray(got[0])).all()


@pytest.mark.parametrize("left_side", [True, False], ids=["left", "right"])
@pytest.mark.parametrize("k", [2, 3, 5], ids=["k2", "k3", "k5"])
def test_triangular_solve_singular_matches_jax_nonfinite_included(left_side, k):
    """A zero on the diagonal: inf/NaN in exactly JAX's places, for b with fewer, as many and
    more right-hand sides than rows (JAX orders the solve and the product by shape)."""
    with jax.enable_x64(True):
        a = jnp.triu(_rand(6, 3, 3)).at[1, 1].set(0.0)
        b = _rand(7, *((3, k) if left_side else (k, 3)))

        def f(a, b):
            return lax.linalg.triangular_solve(a, b, left_side=left_side, lower=False)

        ct = _random_ct(f(a, b))
        got = fg.vjp(f, a, b)[1](ct)
        want = jax.vjp(f, a, b)[1](ct)
        assert not np.isfinite(np.asarray(want[0])).all()
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
        assert_trees_close(got, want)


def test_triangular_solve_vmap():
    flags = SOME_FLAGS[1]
    with jax.enable_x64(True):
        a, b = _triangular_args(flags, 8, np.float64)
        check_vmap(weighted_sum(lambda a, b: _triangular(flags, a, b)), a, b)


@pytest.mark.parametrize("flags", SOME_FLAGS[:3], ids=_flag_id)
def test_triangular_solve_second_order(flags):
    with jax.enable_x64(True):
        a, b = _triangular_args(flags, 9, np.float64)
        check_hessian(weighted_sum(lambda a, b: _triangular(flags, a, b)), a, b)


# ---- tridiagonal_solve ---------------------------------------------------------------------


def _tridiagonal_args(seed: int, m: int, k: int, dtype, batch=()):
    diagonals = [_rand(seed + i, *batch, m, dtype=dtype) for i in range(3)]
    return (*diagonals, _rand(seed + 3, *batch, m, k, dtype=dtype))


TRIDIAGONAL = [
    (5, 3, (), np.float32),
    (5, 3, (), np.complex128),
    (4, 1, (2,), np.float64),
    (4, 1, (2,), np.complex64),
    (1, 2, (), np.float64),
]


@pytest.mark.parametrize(
    "m,k,batch,dtype", TRIDIAGONAL,
    ids=[f"{'x'.join(map(str, (*b, m, k)))}-{_name(d)}" for m, k, b, d in TRIDIAGONAL],
)
def test_tridiagonal_solve(m, k, batch, dtype):
    with jax.enable_x64(True):
        check_vjp(tridiagonal_system, *_tridiagonal_args(10, m, k, dtype, batch), **_tol(dtype))


@pytest.mark.parametrize("argnums", [(3,), (0, 2), (1,)], ids=["b-only", "off-diagonals", "d"])
def test_tridiagonal_solve_some_inputs(argnums):
    with jax.enable_x64(True):
        args = _tridiagonal_args(11, 5, 2, np.float64)
        assert_grads_match(weighted_sum(tridiagonal_system), *args, argnums=argnums)


def test_tridiagonal_solve_perturb_singular():
    """``perturb_singular=True`` is passed on to the transposed solve."""
    with jax.enable_x64(True):
        args = _tridiagonal_args(13, 4, 2, np.float64)
        check_vjp(lambda dl, d, du, b: lax.linalg.tridiagonal_solve(dl, d + 4, du, b,
                                                                    perturb_singular=True), *args)


def test_tridiagonal_solve_vmap_and_second_order():
    with jax.enable_x64(True):
        args = _tridiagonal_args(12, 4, 2, np.float64)
        check_vmap(weighted_sum(tridiagonal_system), *args)
        check_hessian(weighted_sum(tridiagonal_system), *args)


# ---- custom_linear_solve -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=_name)
def test_custom_linear_solve_explicit(dtype):
    """Gradients w.r.t. the matrix flow through matvec only; those into solve's closure are
    dropped (JAX's rule: the solve is differentiated implicitly, never through)."""
    with jax.enable_x64(True):
        a = _well_conditioned(_rand(20, 3, 3, dtype=dtype))
        b = _rand(21, 3, dtype=dtype)
        assert_uses("custom_linear_solve", explicit_solve, a, b)
        check_vjp(explicit_solve, a, b, **_tol(dtype))


def test_custom_linear_solve_symmetric_and_has_aux():
    def f(a, b):
        spd = _spd(a)

        def solve(_, r):
            x = jnp.linalg.solve(spd, r)
            return x, jnp.sum(x)  # aux: no derivative flows back from it

        x, aux = lax.custom_linear_solve(lambda x: spd @ x, b, solve, symmetric=True,
                                         has_aux=True)
        return x, aux

    with jax.enable_x64(True):
        a, b = _rand(22, 3, 3), _rand(23, 3)
        check_vjp(lambda a, b: f(a, b)[0], a, b)
        assert_grads_match(weighted_sum(f), a, b, argnums=(0, 1))


def test_custom_linear_solve_pytree_and_scalar_parameter():
    """b is a pair of vectors; matvec has a nonlinear scalar parameter besides the matrix."""

    def f(a, s, b1, b2):
        def matvec(x):
            u, v = x
            return (a @ u + s * v, jnp.exp(s) * v)

        def solve(_, r):
            r1, r2 = r
            v = r2 / jnp.exp(s)
            return (jnp.linalg.solve(a, r1 - s * v), v)

        def transpose_solve(_, r):
            r1, r2 = r
            u = jnp.linalg.solve(a.T, r1)
            return (u, (r2 - s * u) / jnp.exp(s))

        return lax.custom_linear_solve(matvec, (b1, b2), solve, transpose_solve)

    with jax.enable_x64(True):
        args = (_well_conditioned(_rand(24, 3, 3)), jnp.float64(0.3), _rand(25, 3), _rand(26, 3))
        assert_grads_match(weighted_sum(f), *args, argnums=(0, 1, 2, 3))
        check_hessian(weighted_sum(f), *args)


def test_custom_linear_solve_without_transpose_solve_refuses_like_jax():
    def f(a, b):
        return lax.custom_linear_solve(lambda x: a @ x, b, lambda _, r: jnp.linalg.solve(a, r))

    a, b = _well_conditioned(randn(27, 3, 3)), randn(28, 3)
    loss = weighted_sum(f)
    with pytest.raises(TypeError, match="transpose_solve required"):
        jax.grad(loss, 1)(a, b)
    with pytest.raises(TypeError, match="transpose_solve required"):
        fg.grad(loss, 1)(a, b)


def test_custom_linear_solve_vmap_and_second_order():
    with jax.enable_x64(True):
        a, b = _well_conditioned(_rand(29, 3, 3)), _rand(30, 3)
        check_vmap(weighted_sum(explicit_solve), a, b)
        check_hessian(weighted_sum(explicit_solve), a, b)


# ---- user-level functions at float64 rtol 1e-10 --------------------------------------------

USER_LEVEL = {
    "solve-vector": (lambda a, b: jnp.linalg.solve(_well_conditioned(a), b),
                     lambda: (_rand(40, 4, 4), _rand(41, 4))),
    "solve-matrix": (lambda a, b: jnp.linalg.solve(_well_conditioned(a), b),
                     lambda: (_rand(42, 4, 4), _rand(43, 4, 3))),
    "solve-batched": (lambda a, b: jnp.linalg.solve(_well_conditioned(a), b),
                      lambda: (_rand(44, 2, 3, 3), _rand(45, 2, 3, 2))),
    "inv": (lambda a: jnp.linalg.inv(_well_conditioned(a)), lambda: (_rand(46, 4, 4),)),
    "scipy-inv": (lambda a: jsl.inv(_well_conditioned(a)), lambda: (_rand(47, 3, 3),)),
    "pinv": (jnp.linalg.pinv, lambda: (_rand(48, 4, 3),)),
    "scipy-solve": (lambda a, b: jsl.solve(_well_conditioned(a), b),
                    lambda: (_rand(49, 4, 4), _rand(50, 4, 2))),
    "scipy-solve-pos": (lambda a, b: jsl.solve(_spd(a), b, assume_a="pos"),
                        lambda: (_rand(51, 4, 4), _rand(52, 4, 2))),
    "scipy-solve-sym": (lambda a, b: jsl.solve(_spd(a), b, assume_a="sym"),
                        lambda: (_rand(53, 3, 3), _rand(54, 3))),
    "solve-triangular-lower": (
        lambda a, b: jsl.solve_triangular(_well_conditioned(a), b, lower=True),
        lambda: (_rand(55, 4, 4), _rand(56, 4, 2))),
    "solve-triangular-trans-unit": (
        lambda a, b: jsl.solve_triangular(a, b, trans="T", unit_diagonal=True),
        lambda: (_rand(57, 4, 4), _rand(58, 4))),
    "cho-solve-upper": (lambda a, b: jsl.cho_solve(jsl.cho_factor(_spd(a)), b),
                        lambda: (_rand(59, 4, 4), _rand(60, 4, 2))),
    "cho-solve-lower": (lambda a, b: jsl.cho_solve(jsl.cho_factor(_spd(a), lower=True), b),
                        lambda: (_rand(61, 3, 3), _rand(62, 3))),
    "cg": (cg_solve, lambda: (_rand(63, 4, 4), _rand(64, 4))),
    "gmres": (gmres_solve, lambda: (_rand(65, 4, 4), _rand(66, 4))),
    "bicgstab": (bicgstab_solve, lambda: (_rand(67, 4, 4), _rand(68, 4))),
    "tridiagonal": (tridiagonal_system, lambda: _tridiagonal_args(69, 5, 2, np.float64)),
}


@pytest.mark.parametrize("name", USER_LEVEL)
def test_user_level_float64(name):
    """fg.grad equals jax.grad w.r.t. every argument (the matrix and b for the solvers)."""
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        args = make_args()
        assert_grads_match(weighted_sum(f), *args, argnums=tuple(range(len(args))))


@pytest.mark.parametrize(
    "name", ["solve-matrix", "inv", "cho-solve-upper", "cg", "solve-triangular-lower"]
)
def test_user_level_second_order(name):
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        check_hessian(weighted_sum(f), *make_args())


@pytest.mark.parametrize("name", ["solve-batched", "cg", "scipy-solve-pos"])
def test_user_level_vmap(name):
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        check_vmap(weighted_sum(f), *make_args())


def test_solves_inside_scan_and_cond():
    """The custom_linear_solve record (the solution) is stacked per iteration by scan."""

    def scanned(a, bs):
        def step(carry, b):
            x = jnp.linalg.solve(_well_conditioned(a), b + carry)
            y = jsl.solve_triangular(jnp.linalg.cholesky(_spd(a)), x, lower=True)
            return jnp.tanh(y), jnp.sum(x * y)

        carry, ys = lax.scan(step, jnp.zeros(bs.shape[-1], bs.dtype), bs)
        return jnp.sum(carry) + jnp.sum(ys)

    def branched(a, bs):
        return lax.cond(jnp.sum(a) > 0, lambda: jnp.sum(jnp.linalg.solve(a, bs.T)),
                        lambda: jnp.sum(jnp.linalg.inv(a)))

    with jax.enable_x64(True):
        a, bs = _well_conditioned(_rand(70, 3, 3)), _rand(71, 4, 3)
        assert_grads_match(scanned, a, bs, argnums=(0, 1))
        assert_grads_match(branched, a, bs, argnums=(0, 1))
        assert_grads_match(branched, -a, bs, argnums=(0, 1))


@jax.custom_jvp
def _solve_with_custom_jvp(a, b):
    return jnp.linalg.solve(a, b)


@_solve_with_custom_jvp.defjvp
def _solve_with_custom_jvp_rule(primals, tangents):
    a, b = primals
    da, db = tangents
    x = _solve_with_custom_jvp(a, b)
    dx = lax.custom_linear_solve(
        lambda v: a @ v,
        db - da @ x,
        solve=lambda _, r: jnp.linalg.solve(a, r),
        transpose_solve=lambda _, r: jnp.linalg.solve(a.T, r),
    )
    return x, dx


def test_custom_linear_solve_on_a_custom_jvp_tangent():
    """A custom JVP rule that solves for its tangent: transposing that rule meets the solve with
    a tangent stand-in for b, which it transposes without solving forward."""
    with jax.enable_x64(True):
        a, b = _well_conditioned(_rand(72, 3, 3)), _rand(73, 3)
        loss = weighted_sum(_solve_with_custom_jvp)
        assert_grads_match(loss, a, b, argnums=(0, 1))
        check_vmap(loss, a, b, jit=False)
        check_hessian(loss, a, b, jit=False)

"""The spectral decompositions' rules (qr, eigh, eig, svd) held against jax.grad and jax.vjp.

Raw VJPs of every configuration of each primitive (thin/full, tall/square/wide, pivoting, left and
right eigenvectors, with and without singular vectors) with random complex cotangents, batched,
in float64 and complex128, and some in float32/complex64; jit and vmap; repeated eigenvalues,
repeated and zero singular values and rank-deficient matrices, where the inf/NaN positions must
be JAX's; gauge-invariant losses (which do not depend on the eigenvectors' sign or phase); second
order; what JAX refuses; and the user-level functions built on these primitives end to end.

The raw eigenvector cotangents are compared too: JAX's answer is definite for LAPACK's choice
of eigenvector phase, which both see, since both differentiate the same decomposition.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from gradcheck import Case, assert_trees_close, check, randn, weighted_sum
from jax import lax

import funcgrad as fg


def _sym(a):
    return a + jnp.swapaxes(a, -1, -2)


def _parts(z):
    """A complex result as two real ones, so that a weighted sum of it is a real loss."""
    return jnp.real(z), jnp.imag(z)


# ---- the cases: user code reaching each primitive --------------------------------------------
CASES = [
    Case("linalg-qr-tall", "qr", jnp.linalg.qr, lambda: (randn(0, 4, 3),)),
    Case("linalg-qr-complete-tall", "qr", lambda a: jnp.linalg.qr(a, mode="complete"),
         lambda: (randn(1, 4, 3),)),
    Case("linalg-qr-wide-batched", "qr", jnp.linalg.qr, lambda: (randn(2, 2, 3, 5),)),
    Case("linalg-qr-r-square", "qr", lambda a: jnp.linalg.qr(a, mode="r"),
         lambda: (randn(3, 4, 4),)),
    Case("scipy-qr-pivoting-tall", "qr", lambda a: jsl.qr(a, pivoting=True)[:2],
         lambda: (randn(4, 5, 3),)),
    Case("linalg-eigh-batched", "eigh", lambda a: jnp.linalg.eigh(_sym(a)),
         lambda: (randn(5, 2, 3, 3),)),
    Case("linalg-eigvalsh", "eigh", jnp.linalg.eigvalsh, lambda: (randn(6, 4, 4),)),
    Case("linalg-eigvals", "eig", lambda a: _parts(jnp.linalg.eigvals(a)),
         lambda: (randn(7, 3, 3),)),
    Case("lax-eig-vectors", "eig",
         lambda a: [_parts(x) for x in lax.linalg.eig(a, enable_eigvec_derivs=True)],
         lambda: (randn(8, 3, 3),)),
    Case("linalg-svd-thin-batched", "svd", lambda a: jnp.linalg.svd(a, full_matrices=False),
         lambda: (randn(9, 2, 4, 3),)),
    Case("linalg-svd-square", "svd", jnp.linalg.svd, lambda: (randn(10, 3, 3),)),
    Case("linalg-svdvals-wide", "svd", lambda a: jnp.linalg.svd(a, compute_uv=False),
         lambda: (randn(11, 3, 5),)),
    Case("linalg-norm-2", "svd", lambda a: jnp.linalg.norm(a, 2), lambda: (randn(12, 4, 3),)),
    Case("linalg-norm-nuc", "svd", lambda a: jnp.linalg.norm(a, "nuc"),
         lambda: (randn(13, 4, 3),)),
    Case("linalg-cond", "svd", jnp.linalg.cond, lambda: (randn(14, 3, 3),)),
    Case("linalg-pinv", "svd", jnp.linalg.pinv, lambda: (randn(15, 4, 3),)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_in_float64(case):
    """The table test runs these in float32; here in float64, jitted (eager is covered below)."""
    with jax.enable_x64(True):
        check(case, np.float64, eager=False, jit=True)


# ---- raw VJPs against jax.vjp, every configuration ---------------------------------------------
def _herm(a):
    """A Hermitian matrix from any square one (what the primitive may be given directly)."""
    return a + jnp.conj(jnp.swapaxes(a, -1, -2))


def _eig(left, right):
    return lambda a: lax.linalg.eig(a, compute_left_eigenvectors=left,
                                    compute_right_eigenvectors=right, enable_eigvec_derivs=True)


# name: (function of a, shape of a); all batched except pivoted QR, which JAX refuses batched
CONFIGS: dict[str, tuple[Callable, tuple[int, ...]]] = {
    "qr-square": (lambda a: lax.linalg.qr(a, full_matrices=False), (2, 3, 3)),
    "qr-thin-tall": (lambda a: lax.linalg.qr(a, full_matrices=False), (2, 4, 3)),
    "qr-full-tall": (lambda a: lax.linalg.qr(a, full_matrices=True), (2, 5, 3)),
    "qr-wide": (lambda a: lax.linalg.qr(a, full_matrices=False), (2, 3, 5)),
    "qr-full-wide": (lambda a: lax.linalg.qr(a, full_matrices=True), (2, 3, 4)),
    "qr-pivoting-tall": (lambda a: lax.linalg.qr(a, pivoting=True)[:2], (5, 3)),
    "qr-pivoting-thin": (lambda a: lax.linalg.qr(a, pivoting=True, full_matrices=False)[:2],
                         (4, 3)),
    "eigh": (lambda a: lax.linalg.eigh(_herm(a), symmetrize_input=False), (2, 3, 3)),
    "eigh-upper-symmetrized": (lambda a: lax.linalg.eigh(a, lower=False), (2, 4, 4)),
    "eigvals": (_eig(False, False), (2, 3, 3)),
    "eig-right": (_eig(False, True), (2, 3, 3)),
    "eig-left": (_eig(True, False), (2, 3, 3)),
    "eig-both": (_eig(True, True), (2, 4, 4)),
    "svd-square": (lambda a: lax.linalg.svd(a, full_matrices=True), (2, 3, 3)),
    "svd-thin-tall": (lambda a: lax.linalg.svd(a, full_matrices=False), (2, 4, 3)),
    "svd-thin-wide": (lambda a: lax.linalg.svd(a, full_matrices=False), (2, 3, 5)),
    "svd-values-tall": (lambda a: lax.linalg.svd(a, compute_uv=False), (2, 5, 3)),
    "svd-values-wide": (lambda a: lax.linalg.svd(a, compute_uv=False), (2, 3, 4)),
}


def _matrix(seed: int, shape, dtype) -> jax.Array:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return jnp.asarray(x, dtype)


def _cotangents(out, seed: int = 100):
    """A random cotangent for each output (complex where the output is), float0 for integers."""
    leaves, tree = jax.tree_util.tree_flatten(out)
    cts = [
        _matrix(seed + k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact)
        else np.zeros(x.shape, jax.dtypes.float0)
        for k, x in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(tree, cts)


def assert_vjp_equal(f, a, jit=False, rtol=None, atol=None):
    """fg.vjp(f) equals jax.vjp(f) for random (complex) cotangents, eagerly or jitted."""
    def pullback(vjp):
        def run(a, ct):
            return vjp(f, a)[1](ct)
        return jax.jit(run) if jit else run

    ct = _cotangents(jax.eval_shape(f, a))
    want = pullback(jax.vjp)(a, ct)
    got = pullback(fg.vjp)(a, ct)
    assert_trees_close(got, want, rtol, atol, "fg.vjp cotangent")


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("name", CONFIGS)
def test_vjp_matches_jax(name, dtype):
    """Jitted, so each engine compiles one program rather than each of its operations."""
    f, shape = CONFIGS[name]
    with jax.enable_x64(True):
        assert_vjp_equal(f, _matrix(1, shape, dtype), jit=True)


@pytest.mark.parametrize("name,dtype", [("qr-full-tall", np.float32), ("eigh", np.complex64),
                                        ("eig-both", np.complex64), ("svd-thin-wide", np.float32)])
def test_vjp_matches_jax_single_precision_eagerly(name, dtype):
    f, shape = CONFIGS[name]
    assert_vjp_equal(f, _matrix(2, shape, dtype))


@pytest.mark.parametrize("name", ["qr-pivoting-tall", "eigh", "eigvals", "svd-thin-tall"])
def test_grad_matches_jax_under_vmap(name):
    f, shape = CONFIGS[name]
    loss = weighted_sum(lambda a: jax.tree.map(lambda y: jnp.abs(y) ** 2, f(a)))
    with jax.enable_x64(True):
        batch = _matrix(4, (3, *shape[-2:]), np.float64)
        assert_trees_close(jax.jit(jax.vmap(fg.grad(loss)))(batch),
                           jax.jit(jax.vmap(jax.grad(loss)))(batch))
        if name == "eigh":  # and once op by op
            assert_trees_close(jax.vmap(fg.grad(loss))(batch), jax.vmap(jax.grad(loss))(batch))


# ---- degenerate matrices: inf and NaN exactly where JAX puts them -------------------------------
def _weights(shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(7).standard_normal(shape))


def _sparse_tall():
    """A 4 x 3 matrix of rank 2 with an exactly zero singular value."""
    return jnp.zeros((4, 3)).at[0, 0].set(1.0).at[1, 1].set(2.0)


def _first(f, k):
    return lambda a: f(a)[k]


SQUARE = {
    "repeated-diagonal": lambda: jnp.diag(jnp.array([1.0, 1.0, 2.0])),
    "identity": lambda: jnp.eye(3),
    "zeros": lambda: jnp.zeros((3, 3)),
}
# name: (loss, whether JAX's gradient is finite on every SQUARE matrix)
SQUARE_LOSSES = {
    # only the eigen/singular values are used: JAX skips the vectors' infinite terms
    "eigvalsh": (lambda a: jnp.sum(jnp.linalg.eigvalsh(a) ** 2), True),
    "eigh-values-of-both": (lambda a: jnp.sum(jnp.linalg.eigh(a)[0] ** 3), True),
    "svd-values-of-all-three": (lambda a: jnp.sum(jnp.linalg.svd(a)[1] ** 2), True),
    "norm-2": (lambda a: jnp.linalg.norm(a, 2), True),
    "norm-nuc": (lambda a: jnp.linalg.norm(a, "nuc"), True),
    "eigvals": (lambda a: jnp.sum(jnp.abs(jnp.linalg.eigvals(a)) ** 2), True),
    # the vectors of a repeated value: 1/(w_j - w_i) is infinite
    "eigh-vectors": (lambda a: jnp.sum(jnp.linalg.eigh(a)[1] * _weights((3, 3))), False),
    "eigh-gauge-invariant": (lambda a: jnp.sum(jnp.sin(jnp.linalg.eigh(a)[0]))
                             + jnp.sum(jnp.linalg.eigh(a)[1] ** 2 @ _weights((3, 3))), False),
    "svd-u": (lambda a: jnp.sum(jnp.linalg.svd(a)[0] * _weights((3, 3))), False),
    "svd-vt": (lambda a: jnp.sum(jnp.linalg.svd(a)[2] * _weights((3, 3))), False),
    "eig-vectors": (lambda a: jnp.sum(jnp.abs(lax.linalg.eig(a, enable_eigvec_derivs=True)[1]
                                              * _weights((3, 3)))), False),
}


def _assert_same_gradient(loss, a, finite: bool | None, jit: bool = False):
    """fg.grad == jax.grad, inf and NaN positions included (assert_allclose compares them)."""
    grad = (lambda g: jax.jit(g)) if jit else (lambda g: g)
    want = grad(jax.grad(loss))(a)
    assert_trees_close(grad(fg.grad(loss))(a), want)
    if finite is not None:  # the case does exercise what it claims to
        assert bool(np.isfinite(want).all()) == finite


@pytest.mark.parametrize("matrix", SQUARE)
@pytest.mark.parametrize("loss", SQUARE_LOSSES)
def test_repeated_eigen_and_singular_values(loss, matrix):
    f, finite = SQUARE_LOSSES[loss]
    with jax.enable_x64(True):
        _assert_same_gradient(f, SQUARE[matrix](), finite)


@pytest.mark.parametrize("loss", ["eigvalsh", "eigh-vectors", "svd-u"])
def test_repeated_values_under_jit(loss):
    f, finite = SQUARE_LOSSES[loss]
    with jax.enable_x64(True):
        _assert_same_gradient(f, SQUARE["repeated-diagonal"](), finite, jit=True)


def test_zero_matrix_qr():
    """R is singular: the triangular solve divides by its zero diagonal, in both."""
    with jax.enable_x64(True):
        _assert_same_gradient(lambda a: jnp.sum(jnp.linalg.qr(a)[0] * _weights((3, 3))),
                              jnp.zeros((3, 3)), finite=False)


# name: (loss of a 4 x 3 matrix (of its transpose if wide), finite on _sparse_tall)
RANK_DEFICIENT_LOSSES = {
    "svd-u": (lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[0]), False),
    "svd-vt": (lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[2]), True),
    "svd-s": (lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[1]), True),
    "pinv": (lambda a: jnp.sum(jnp.linalg.pinv(a) * _weights(a.shape[::-1])), True),
    "qr": (lambda a: jnp.sum(jnp.linalg.qr(a)[0]) + jnp.sum(jnp.linalg.qr(a)[1]), False),
    "qr-complete": (lambda a: jnp.sum(jnp.linalg.qr(a, mode="complete")[0]), False),
}


@pytest.mark.parametrize("wide", [False, True], ids=["tall", "wide"])
@pytest.mark.parametrize("loss", RANK_DEFICIENT_LOSSES)
def test_rank_deficient_non_square(loss, wide):
    """A zero singular value: the projection terms divide by it (U's for tall, Vt's for wide)."""
    f, finite = RANK_DEFICIENT_LOSSES[loss]
    if wide and loss.startswith("svd-"):  # a wide matrix's V plays the tall one's U
        finite = {"svd-u": True, "svd-vt": False, "svd-s": True}[loss]
    with jax.enable_x64(True):
        a = _sparse_tall()
        _assert_same_gradient(f, a.T if wide else a, finite)


def test_complete_qr_where_q_nn_minus_identity_is_singular():
    """The full-Q derivative solves with Q_nn - I, singular when Q_nn = I: NaN in both."""
    with jax.enable_x64(True):
        a = jnp.eye(4, 3)
        loss = lambda a: jnp.sum(jnp.linalg.qr(a, mode="complete")[0] * _weights((4, 4)))  # noqa: E731
        _assert_same_gradient(loss, a, finite=False)
        _assert_same_gradient(loss, -a, finite=False)


# ---- gauge-invariant losses: real losses of real and complex matrices --------------------------
GAUGE_INVARIANT = {
    "eigh": lambda a: jnp.sum(jnp.sin(jnp.linalg.eigvalsh(_herm(a))))
    + jnp.sum(jnp.abs(jnp.linalg.eigh(_herm(a))[1]) ** 2 @ _weights((3, 3))),
    "svd": lambda a: jnp.sum(jnp.linalg.svd(a)[1] ** 3)
    + jnp.sum(jnp.abs(jnp.linalg.svd(a)[0]) ** 2 @ _weights((3, 3)))
    + jnp.sum(jnp.abs(jnp.linalg.svd(a)[2]) ** 2 * _weights((3, 3))),
    "eig": lambda a: jnp.sum(jnp.abs(lax.linalg.eig(a, enable_eigvec_derivs=True)[1]) ** 2
                             @ _weights((3, 3)))
    + jnp.sum(jnp.real(jnp.linalg.eigvals(a)) ** 2),
}


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("name", GAUGE_INVARIANT)
def test_gauge_invariant_losses(name, dtype):
    """Losses that do not change with the eigenvectors' signs or phases; for complex matrices
    jax.grad returns the conjugate of the Wirtinger gradient, and so must funcgrad."""
    with jax.enable_x64(True):
        a = _matrix(5, (3, 3), dtype)
        got = fg.grad(GAUGE_INVARIANT[name])(a)
        assert got.dtype == dtype
        assert_trees_close(got, jax.grad(GAUGE_INVARIANT[name])(a))


# ---- second order ------------------------------------------------------------------------------
def _grad_of_grad(grad, f, weights):
    return grad(lambda a: jnp.sum(jnp.real(grad(f)(a) * weights)))


SECOND_ORDER = {
    "eigh": (lambda a: jnp.sum(jnp.sin(jnp.linalg.eigh(a)[0]))
             + jnp.sum(jnp.linalg.eigh(a)[1] ** 2 @ _weights((3, 3))), (3, 3)),
    "svd-thin-tall": (lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[0] ** 2
                                        @ _weights((3, 3)))
                      + jnp.sum(jnp.linalg.svd(a, full_matrices=False)[2] ** 3), (4, 3)),
    "svd-thin-wide": (lambda a: jnp.sum(jnp.linalg.svd(a, full_matrices=False)[2] ** 2
                                        @ _weights((4, 4)))
                      + jnp.sum(jnp.linalg.svd(a, full_matrices=False)[1] ** 3), (3, 4)),
    "norm-2": (lambda a: jnp.linalg.norm(a, 2), (4, 3)),
    "pinv": (lambda a: jnp.sum(jnp.linalg.pinv(a) ** 2), (3, 4)),
}
# their rules emit triangular_solve and lu, whose own rules live in another module
NEEDS_SOLVES = {
    "qr-tall": (lambda a: jnp.sum(jnp.linalg.qr(a)[0] ** 3) + jnp.sum(jnp.linalg.qr(a)[1] ** 3),
                (4, 3)),
    "qr-complete-tall": (lambda a: jnp.sum(jnp.linalg.qr(a, mode="complete")[0] ** 3), (4, 3)),
    "qr-wide": (lambda a: jnp.sum(jnp.linalg.qr(a)[1] ** 3), (3, 4)),
    "eig-vectors": (lambda a: jnp.sum(jnp.abs(lax.linalg.eig(a, enable_eigvec_derivs=True)[1])
                                      ** 2 @ _weights((3, 3))), (3, 3)),
    "eig-values-opted-in": (lambda a: jnp.sum(jnp.abs(lax.linalg.eig(
        a, compute_left_eigenvectors=False, compute_right_eigenvectors=False,
        enable_eigvec_derivs=True)[0]) ** 2), (3, 3)),
}
HAS_SOLVES = {"triangular_solve", "lu"} <= fg.supported_primitives()


def _check_second_order(f, shape):
    with jax.enable_x64(True):
        a, w = _matrix(6, shape, np.float64), _weights(shape)
        want = jax.jit(_grad_of_grad(jax.grad, f, w))(a)
        assert_trees_close(jax.jit(_grad_of_grad(fg.grad, f, w))(a), want)


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_second_order(name):
    _check_second_order(*SECOND_ORDER[name])


@pytest.mark.skipif(not HAS_SOLVES, reason="needs the triangular_solve and lu rules")
@pytest.mark.parametrize("name", NEEDS_SOLVES)
def test_second_order_through_solves(name):
    _check_second_order(*NEEDS_SOLVES[name])


def test_hessian_of_eigenvalues_eagerly():
    with jax.enable_x64(True):
        f = lambda a: jnp.sum(jnp.linalg.eigvalsh(_sym(a)) ** 3)  # noqa: E731
        a = _matrix(7, (3, 3), np.float64)
        assert_trees_close(fg.hessian(f)(a), jax.hessian(f)(a))


# ---- what JAX refuses, funcgrad refuses with the same kind of error ----------------------------
REFUSED = {
    "svd-full-non-square": (lambda a: jnp.sum(jnp.linalg.svd(a)[1]), NotImplementedError),
    "eig-vectors-not-opted-in": (lambda a: jnp.sum(jnp.abs(jnp.linalg.eig(a[:3])[0])),
                                 NotImplementedError),
    "eigvals-second-order": (lambda a: jnp.sum(jax.grad(lambda b: jnp.sum(jnp.abs(
        jnp.linalg.eigvals(b)) ** 2))(a[:3])), NotImplementedError),
    "eigh-subset": (lambda a: jnp.sum(lax.linalg.eigh(_sym(a[:3]), subset_by_index=(0, 2))[1]),
                    NotImplementedError),
    "qr-pivoting-batched": (lambda a: jnp.sum(jsl.qr(jnp.stack([a, a]), pivoting=True)[1]),
                            TypeError),
    "householder-product": (lambda a: jnp.sum(lax.linalg.householder_product(a, a[0, :2])),
                            NotImplementedError),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refuses_what_jax_refuses(name):
    f, error = REFUSED[name]
    a = randn(8, 4, 3)
    with pytest.raises(error):
        jax.grad(f)(a)
    grad = fg.grad(f)
    if name == "eigvals-second-order":  # funcgrad's own grad inside
        grad = fg.grad(lambda a: jnp.sum(fg.grad(lambda b: jnp.sum(jnp.abs(
            jnp.linalg.eigvals(b)) ** 2))(a[:3])))
    with pytest.raises(error):
        grad(a)


def test_refusal_names_the_user_line():
    with pytest.raises(NotImplementedError, match=r"decompositions_spectral\.py:\d+.*eigenvectors"):
        fg.grad(lambda a: jnp.sum(jnp.abs(lax.linalg.eig(a)[0])))(randn(9, 3, 3))


# ---- wide pivoted QR: JAX 0.10.2's derivative of R is wrong there ------------------------------
def test_wide_pivoted_qr_against_finite_differences():
    """X P = Q R with X wide: R2 = Q^H (X P)[:, m:]. JAX builds dR2 from the unpermuted X2, which
    central differences contradict; funcgrad agrees with them (and with JAX on Q)."""
    with jax.enable_x64(True):
        a, direction = _matrix(10, (3, 5), np.float64), _matrix(11, (3, 5), np.float64)
        wq, wr = _weights((3, 3)), _weights((3, 5))

        def loss(a):
            q, r, _ = jsl.qr(a, pivoting=True)
            return jnp.sum(q * wq) + jnp.sum(r * wr)

        eps = 1e-6
        numeric = (loss(a + eps * direction) - loss(a - eps * direction)) / (2 * eps)
        got = jnp.sum(fg.grad(loss)(a) * direction)
        np.testing.assert_allclose(got, numeric, rtol=1e-7)
        assert abs(jnp.sum(jax.grad(loss)(a) * direction) - numeric) > 1e-3  # JAX's is off
        q_only = lambda a: jnp.sum(jsl.qr(a, pivoting=True)[0] * wq)  # noqa: E731
        assert_trees_close(fg.grad(q_only)(a), jax.grad(q_only)(a))


# ---- user-level functions end to end, float64 --------------------------------------------------
USER_FUNCTIONS = {
    "scipy-svd-values": (lambda a: jnp.sum(jsl.svd(a, compute_uv=False) ** 2), (4, 3)),
    "scipy-qr-economic": (lambda a: jnp.sum(jsl.qr(a, mode="economic")[1] ** 3), (4, 3)),
    "eigh-upper": (lambda a: jnp.sum(jnp.linalg.eigh(a, UPLO="U")[0] ** 3), (3, 3)),
    "polar-svd": (lambda a: jnp.sum(jsl.polar(a, method="svd")[0] * _weights((4, 3)))
                  + jnp.sum(jsl.polar(a, method="svd")[1] ** 2), (4, 3)),
    "lstsq": (lambda a: jnp.sum(jnp.linalg.lstsq(a, jnp.arange(4.0))[0] ** 2), (4, 3)),
    "matrix-rank-is-constant": (lambda a: jnp.linalg.matrix_rank(a) * jnp.sum(a), (4, 3)),
    "matrix-norm-2-batched": (lambda a: jnp.sum(jnp.linalg.matrix_norm(a, ord=2)), (2, 3, 4)),
}


@pytest.mark.parametrize("name", USER_FUNCTIONS)
def test_user_functions_in_float64(name):
    f, shape = USER_FUNCTIONS[name]
    with jax.enable_x64(True):
        a = _matrix(12, shape, np.float64)
        assert_trees_close(fg.grad(f)(a), jax.grad(f)(a))


@pytest.mark.skipif(not {"lu", "triangular_solve", "custom_linear_solve"}
                    <= fg.supported_primitives(), reason="expm needs the lu and solver rules")
def test_expm_in_float64():
    """jax.scipy.linalg.expm reaches lu and solves, not these decompositions."""
    with jax.enable_x64(True):
        f = lambda a: jnp.sum(jsl.expm(a) * _weights((3, 3)))  # noqa: E731
        a = _matrix(13, (3, 3), np.float64)
        assert_trees_close(fg.grad(f)(a), jax.grad(f)(a))

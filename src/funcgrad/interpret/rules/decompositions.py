"""VJP rules for matrix decompositions: each factor's cotangent pulled back to the matrix.

Each rule is the transpose of the derivative JAX 0.10.2 defines for its primitive, derived by hand
from the matrix calculus (Giles 2008, "Collected matrix derivative results for forward and reverse
mode algorithmic differentiation"; Murray 2016, "Differentiation of the Cholesky decomposition";
Seeger et al. 2017, "Auto-differentiating linear algebra"; Townsend 2016, "Differentiating the
singular value decomposition"; Wan & Zhang 2019 for complex matrices). A decomposition's JVP
expresses the factors' tangents through triangular solves and products with the factors
themselves; its VJP is that linear map transposed, built from the same solves (transposed) and
products. Where the derivative is not unique or not finite (repeated eigen- or singular values,
zero singular values, LAPACK's choice of eigenvector phase), the rules keep JAX's formulas term
by term, so that inf and NaN land where ``jax.grad`` puts them.

Complex matrices follow JAX's convention: a VJP is the linear transpose for the bilinear pairing
``<a, b> = Re sum(a * b)``, with no hidden conjugation: ``conj`` transposes to ``conj``, ``real``
to ``complex(t, 0)``, ``imag`` to ``complex(0, -t)``, a product with a constant to the same product.

Sections: Cholesky and LU (``lu_pivots_to_permutation`` is registered as non-differentiable in
``nondiff.py``); QR, eigh, eig and SVD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.lax import linalg as lax_linalg

from funcgrad.interpret.errors import NotDifferentiableError, source_line
from funcgrad.interpret.registry import higher_order_rule, vjp_rule
from funcgrad.interpret.rules._common import is_complex
from funcgrad.interpret.rules.solvers import matmul, mT, solve_triangular, tril, triu

# ==== Cholesky and LU ============================================================================


def _iotas(shape: Any, ndim: int) -> tuple[Any, Any]:
    """Row and column indices of a ``shape[-2:]`` matrix, broadcast to ``shape``."""
    rows = lax.broadcasted_iota(np.int32, shape, ndim - 2)
    cols = lax.broadcasted_iota(np.int32, shape, ndim - 1)
    return rows, cols


def _phi(x: Any) -> Any:
    """Murray's Φ: the lower triangle of ``x`` with its diagonal halved, the rest zero."""
    rows, cols = _iotas(np.shape(x), np.ndim(x))
    lower = tril(x)
    return lax.select(lax.eq(rows, cols), lax.mul(lower, np.array(0.5, x.dtype)), lower)


@vjp_rule(lax.linalg.cholesky_p, reads=())
def cholesky_vjp(ct, x, *, out):
    """A = L L^H: Ā = L^{-T} Φ(L^T L̄) conj(L)^{-1}, Φ = lower triangle with halved diagonal.

    The transpose of JAX's JVP dL = L Φ(L^{-1} dA L^{-H}) (Murray 2016, "Differentiation of the
    Cholesky decomposition", eq. 10; Seeger et al. 2017). Like that JVP it does not symmetrise:
    ``jnp.linalg.cholesky`` symmetrises its input before the primitive, so the cotangent of
    the user's matrix comes out symmetric. Only the lower triangle of the output is the factor.
    """
    factor = tril(out)
    inner = _phi(matmul(mT(factor), ct))
    left = solve_triangular(factor, inner, left_side=True, lower=True, transpose_a=True)
    return (solve_triangular(factor, left, left_side=False, lower=True, conjugate_a=True),)


def _unit_lower(lu: Any, m: int, k: int) -> Any:
    """L (m x m) from a packed LU: the strict lower triangle of its first k columns, 1 on the
    diagonal."""
    nd = np.ndim(lu)
    cols = lax.slice_in_dim(lu, 0, k, axis=nd - 1)
    config = [(0, 0, 0)] * (nd - 1) + [(0, m - k, 0)]
    padded = lax.pad(cols, np.array(0, lu.dtype), config)
    rows_i, cols_i = _iotas(np.shape(padded), nd)
    ones = lax.full_like(padded, 1)
    return lax.select(lax.eq(rows_i, cols_i), ones, tril(padded, -1))


def _upper(lu: Any, n: int, k: int) -> Any:
    """U (n x n) from a packed LU: the upper triangle of its first k rows, identity below."""
    nd = np.ndim(lu)
    rows = lax.slice_in_dim(lu, 0, k, axis=nd - 2)
    config = [(0, 0, 0)] * (nd - 2) + [(0, n - k, 0), (0, 0, 0)]
    padded = triu(lax.pad(rows, np.array(0, lu.dtype), config))
    rows_i, cols_i = _iotas(np.shape(padded), nd)
    tail = lax.bitwise_and(lax.eq(rows_i, cols_i), lax.ge(rows_i, np.int32(k)))
    return lax.select(tail, lax.full_like(padded, 1), padded)


def _rows_by_inverse_permutation(x: Any, permutation: Any) -> Any:
    """``y`` with ``y[..., permutation[i], :] = x[..., i, :]``: the transpose of ``x[perm]``."""
    nb = np.ndim(permutation) - 1
    n = np.shape(x)[-1]
    positions = lax.broadcasted_iota(np.int32, np.shape(permutation), nb)
    _, inverse = lax.sort((permutation, positions), dimension=nb, num_keys=1)
    indices = lax.expand_dims(inverse, (nb + 1,))
    dnums = lax.GatherDimensionNumbers(
        offset_dims=(nb + 1,),
        collapsed_slice_dims=(nb,),
        start_index_map=(nb,),
        operand_batching_dims=tuple(range(nb)),
        start_indices_batching_dims=tuple(range(nb)),
    )
    return lax.gather(
        x,
        indices,
        dnums,
        slice_sizes=(1,) * nb + (1, n),
        indices_are_sorted=False,
        unique_indices=True,
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


@vjp_rule(lax.linalg.lu_p, reads=())
def lu_vjp(cts, x, *, out):
    """P A = L U: with M̄ = tril(L^T L̄U, -1) + triu(L̄U U^T), Ā = P^T L^{-T} M̄ U^{-T}.

    The transpose of JAX's JVP dLU = L tril(M, -1) + triu(M) U with M = L^{-1} P dA U^{-1}
    (de Hoog, Anderssen & Lukas 2011, "Differentiation of matrix functionals using triangular
    factorization"; Seeger et al. 2017). An m x n input has L m x m (the first min(m, n)
    columns of the packed factor) and U n x n (padded with the identity below its min(m, n)
    rows), as in JAX, so wide, tall and singular matrices give JAX's numbers, inf/NaN included.
    The pivots and the permutation are integers: they take no cotangent.
    """
    ct = cts[0]
    lu, _, permutation = out
    m, n = np.shape(lu)[-2:]
    k = min(m, n)
    lower = _unit_lower(lu, m, k)
    upper = _upper(lu, n, k)
    ct_m = tril(matmul(mT(lower), ct), -1) + triu(matmul(ct, mT(upper)))
    ct_lu_u = solve_triangular(upper, ct_m, left_side=False, lower=False, transpose_a=True)
    ct_pa = solve_triangular(
        lower, ct_lu_u, left_side=True, lower=True, transpose_a=True, unit_diagonal=True
    )
    return (_rows_by_inverse_permutation(ct_pa, permutation),)


# ==== QR, eigh, eig and SVD =======================================================================

_HIGHEST = lax.Precision.HIGHEST


class _SpectralRule:
    """A decomposition's rule: the forward pass binds the primitive as JAX's derivative does and
    keeps its residuals; the backward pass sees ``None`` for each output cotangent that is zero.

    These rules must know which outputs nobody differentiated: JAX skips their terms (the
    eigenvalues of ``eigh`` alone are differentiable at a repeated eigenvalue, the eigenvectors
    are not), while a dense zero times an infinite factor is NaN. ``vjp_rule`` instantiates
    dense zeros for such outputs, so these register as higher-order rules, which get ``None``.
    """

    def linearize(self, eqn: Any, a: Any) -> tuple[list[Any], tuple[Any, ...]]:
        """The primitive's outputs for a differentiated input, and what ``vjp`` needs of them."""
        raise NotImplementedError

    def vjp(self, cts: Sequence[Any], a: Any, residuals: tuple[Any, ...], **params: Any) -> Any:
        """The input's cotangent from the output cotangents (``None`` for zero)."""
        raise NotImplementedError

    def forward(self, eqn: Any, invals: list[Any], active: list[bool]) -> tuple:
        if not any(active):
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            return list(outs), [False] * len(eqn.outvars), None
        outs, residuals = self.linearize(eqn, invals[0])
        return outs, [True] * len(eqn.outvars), residuals

    def outputs_active(self, eqn: Any, active: list[bool]) -> list[bool]:
        return [any(active)] * len(eqn.outvars)

    def backward(self, eqn: Any, invals: list[Any], record: Any, cts: list, needs: list) -> list:
        return [self.vjp(cts, invals[0], tuple(record), **eqn.params)]


def _named(eqn: Any) -> str:
    """The primitive and, when its equation has one, the source line it was traced from."""
    where = source_line(eqn)
    return f"'{eqn.primitive.name}' at {where}" if where else f"'{eqn.primitive.name}'"


def _refuse(eqn: Any, why: str) -> NotDifferentiableError:
    """The error JAX raises where it does not differentiate, naming the user's line."""
    return NotDifferentiableError(f"{_named(eqn)}: {why} (jax.grad refuses this too)")


# ---- matrices: (..., m, n) arrays, batch dimensions leading ----------------------------------
def _mT(x: Any) -> Any:
    return lax.transpose(x, (*range(x.ndim - 2), x.ndim - 1, x.ndim - 2))


def _conj(x: Any) -> Any:
    return lax.conj(x) if is_complex(x) else x


def _mH(x: Any) -> Any:
    return _conj(_mT(x))


def _mm(a: Any, b: Any) -> Any:
    """The batched matrix product ``a @ b`` (one ``dot_general``)."""
    batch = tuple(range(a.ndim - 2))
    dims = (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch))
    return lax.dot_general(a, b, dims, precision=_HIGHEST)


def _add(x: Any, y: Any) -> Any:
    """``x + y`` where ``None`` is zero."""
    return y if x is None else x if y is None else lax.add(x, y)


def _sub(x: Any, y: Any) -> Any:
    return lax.neg(y) if x is None else lax.sub(x, y)


def _eye(like: Any) -> Any:
    """The identity of ``like``'s shape (..., n, n) and dtype."""
    nd = like.ndim
    rows = lax.broadcasted_iota(np.int32, like.shape, nd - 2)
    cols = lax.broadcasted_iota(np.int32, like.shape, nd - 1)
    return lax.convert_element_type(lax.eq(rows, cols), like.dtype)


def _strictly_lower(x: Any) -> Any:
    """The part of ``x`` below its diagonal (a select, so inf and NaN above it do not leak)."""
    rows = lax.broadcasted_iota(np.int32, x.shape, x.ndim - 2)
    cols = lax.broadcasted_iota(np.int32, x.shape, x.ndim - 1)
    return lax.select(lax.gt(rows, cols), x, lax.full_like(x, 0))


def _diagonal_matrix(d: Any) -> Any:
    """Square matrices with diagonal ``d`` and exact zeros elsewhere (``d`` padded, reshaped)."""
    n = d.shape[-1]
    config = [(0, 0, 0)] * (d.ndim - 1) + [(0, 0, n)]
    flat = lax.pad(d, np.array(0, d.dtype), config)
    return lax.reshape(flat, (*d.shape[:-1], n, n))


def _along_rows(v: Any) -> Any:
    """``v[..., None, :]`` broadcast to (..., k, k): entry (i, j) is v_j."""
    nb = v.ndim - 1
    return lax.broadcast_in_dim(v, (*v.shape, v.shape[-1]), (*range(nb), nb + 1))


def _along_cols(v: Any) -> Any:
    """``v[..., :, None]`` broadcast to (..., k, k): entry (i, j) is v_i."""
    nb = v.ndim - 1
    return lax.broadcast_in_dim(v, (*v.shape, v.shape[-1]), (*range(nb), nb))


def _gap_reciprocals(w: Any) -> Any:
    """F_ij = 1/(w_j - w_i) off the diagonal, 0 on it, as JAX computes it: (I + w_j - w_i)^-1 - I.

    Repeated eigenvalues give inf off the diagonal, which the rules multiply into NaN as JAX does.
    """
    eye = _eye(_along_rows(w))
    return lax.sub(lax.integer_pow(lax.sub(lax.add(eye, _along_rows(w)), _along_cols(w)), -1), eye)


def _complex_part_of_real(t: Any) -> Any:
    """``complex(real(t), 0)``, the transpose of ``real`` applied to ``real(t)``; t if real."""
    if not is_complex(t):
        return t
    return lax.convert_element_type(lax.real(t), t.dtype)


def _solve_transposed(lu: Any, permutation: Any, b: Any, conjugate: bool) -> Any:
    """x with op(A) x = b, op = transpose (or conjugate transpose), from ``lu(A)``: P A = L U.

    x = P^T L^-op U^-op b, the two triangular solves and the row permutation JAX's ``lu_solve``
    performs with ``trans=1`` (``trans=2`` when ``conjugate``).
    """
    x = lax_linalg.triangular_solve(
        lu, b, left_side=True, lower=False, transpose_a=True, conjugate_a=conjugate
    )
    x = lax_linalg.triangular_solve(
        lu, x, left_side=True, lower=True, unit_diagonal=True, transpose_a=True,
        conjugate_a=conjugate,
    )
    iota = lax.broadcasted_iota(np.int32, permutation.shape, permutation.ndim - 1)
    _, inverse = lax.sort_key_val(permutation, iota, dimension=permutation.ndim - 1)
    return jnp.take_along_axis(x, inverse[..., :, None], axis=-2)


# ---- qr ----------------------------------------------------------------------------------------
def _thin_qr_vjp(q: Any, r: Any, ct_q: Any, ct_r: Any) -> Any:
    """Cotangent of X = Q R (Q: m x n, R: n x n upper, m >= n) from those of Q and R.

    The transpose of JAX's QR derivative (Seeger et al. 2017; J. Townsend 2018, "Differentiating
    the QR decomposition"): with
    Y = Q^H dX R^-1 and its skew part D = tril(Y, -1) - tril(Y, -1)^H + i Im diag(Y),
    dQ = Q (D - Y) + dX R^-1 and dR = (Y - D) R. Transposed:
    dX-bar = (Q-bar + conj(Q) Y-bar) R^-T, where Y-bar collects R-bar R^T - Q^T Q-bar and the
    transpose of the skew part.
    """
    y_bar = d_bar = None
    x_bar = ct_q
    if ct_r is not None:  # dR = (Y - D) R
        z = _mm(ct_r, _mT(r))
        y_bar, d_bar = z, lax.neg(z)
    if ct_q is not None:  # dQ = Q (D - Y) + dX R^-1
        w = _mm(_mT(q), ct_q)
        d_bar, y_bar = _add(d_bar, w), _sub(y_bar, w)
    # D = L - L^H + I * (Y - real(Y)), L = tril(Y, -1)
    t = lax.mul(_eye(d_bar), d_bar)
    y_bar = lax.add(y_bar, lax.sub(t, _complex_part_of_real(t)))
    y_bar = lax.add(y_bar, _strictly_lower(lax.sub(d_bar, _mH(d_bar))))
    x_bar = _add(x_bar, _mm(_conj(q), y_bar))  # Y = Q^H (dX R^-1)
    return lax_linalg.triangular_solve(r, x_bar, left_side=False, lower=False, transpose_a=True)


def _full_qr_vjp(q: Any, r: Any, ct_q: Any, ct_r: Any) -> Any:
    """Cotangent of X = Q R for a tall X (m > n) with a square Q (m x m), R (m x n).

    JAX extends the thin derivative to the last m - n columns of Q (Papanicolopulos 2024,
    arXiv:2409.13374, eqs. 32-33): with Z = Q_pn (Q_nn - I)^-1 (rows n.. and ..n of Q's first n
    columns), dQ_mp = dQ_mn Z^H - (Q_mn + Q_mp Z) (dQ_pn - Z dQ_nn)^H. Its transpose adds
    ct_mp conj(Z) to the thin Q-bar, and E^H to rows n.. and -Z^T E^H to rows ..n, where
    E = -(Q_mn + Q_mp Z)^T ct_mp. Z is solved from an LU factorization, as JAX does.
    """
    n = r.shape[-1]
    q_mn, r_nn = q[..., :, :n], r[..., :n, :]
    ct_r_nn = None if ct_r is None else ct_r[..., :n, :]
    ct_mn = None
    if ct_q is not None:
        ct_mn, ct_mp = ct_q[..., :, :n], ct_q[..., :, n:]
        q_nn, q_pn, q_mp = q_mn[..., :n, :], q_mn[..., n:, :], q[..., :, n:]
        lu, _, permutation = lax_linalg.lu(lax.sub(q_nn, _eye(q_nn)))
        z_h = _solve_transposed(lu, permutation, _mH(q_pn), conjugate=True)  # (Q_nn - I)^H Z^H
        z = _mH(z_h)
        e = _mH(lax.neg(_mm(_mT(lax.add(q_mn, _mm(q_mp, z))), ct_mp)))
        below = lax.concatenate([lax.neg(_mm(_mT(z), e)), e], q.ndim - 2)
        ct_mn = lax.add(lax.add(ct_mn, _mm(ct_mp, _mT(z_h))), below)
    return _thin_qr_vjp(q_mn, r_nn, ct_mn, ct_r_nn)


def _wide_qr_vjp(x: Any, q: Any, r: Any, ct_q: Any, ct_r: Any) -> Any:
    """Cotangent of X = Q R for a wide X (m < n): X = [X1 X2] with X1 = Q R1 and R2 = Q^H X2.

    dR2 = dQ^H X2 + Q^H dX2, so Q-bar gains (R2-bar X2^T)^H and X2-bar = conj(Q) R2-bar; X1-bar is
    the square rule's with those.
    """
    m = x.shape[-2]
    ct_r1 = ct_x2 = None
    if ct_r is not None:
        ct_r1, ct_r2 = ct_r[..., :m], ct_r[..., m:]
        ct_q = _add(ct_q, _mH(_mm(ct_r2, _mT(x[..., m:]))))
        ct_x2 = _mm(_conj(q), ct_r2)
    ct_x1 = _thin_qr_vjp(q, r[..., :m], ct_q, ct_r1)
    if ct_x2 is None:
        ct_x2 = lax.full((*x.shape[:-1], x.shape[-1] - m), 0, x.dtype)
    return lax.concatenate([ct_x1, ct_x2], x.ndim - 1)


@higher_order_rule(lax_linalg.qr_p)
class QrVjp(_SpectralRule):
    """d(Q, R) of X = Q R (``jnp.linalg.qr``, ``jax.scipy.linalg.qr``), tall, square or wide.

    Square and thin: Seeger et al. 2017, Townsend 2018 (see ``_thin_qr_vjp``); wide: the square
    part and R2 = Q^H X2; tall with ``full_matrices``: Papanicolopulos 2024. With column pivoting
    X P = Q R, and the cotangent of X P is permuted back.
    """

    def linearize(self, eqn, a):
        outs = eqn.primitive.bind(a, **eqn.params)
        if eqn.params["pivoting"] and np.ndim(outs[2]) > 1:
            raise NotDifferentiableError(
                f"{_named(eqn)}: JAX 0.10.2 cannot differentiate a batch of pivoted "
                "QR decompositions (its rule indexes the columns with the whole batch of pivots, "
                "and jax.grad fails with a TypeError in triangular_solve); differentiate one "
                "matrix at a time, e.g. under jax.vmap"
            )
        return list(outs), tuple(outs)

    def vjp(self, cts, x, residuals, *, pivoting, full_matrices, **_):
        q, r = residuals[:2]
        ct_q, ct_r = cts[:2]
        m, n = x.shape[-2:]
        if pivoting:  # X P = Q R. (JAX 0.10.2 takes R2 = Q^H X2 from the unpermuted X, which
            # finite differences show to be wrong for wide X; this rule uses X P.)
            x = jnp.take(x, residuals[2], axis=-1)
        if m < n:
            ct_x = _wide_qr_vjp(x, q, r, ct_q, ct_r)
        elif full_matrices and m > n:
            ct_x = _full_qr_vjp(q, r, ct_q, ct_r)
        else:
            ct_x = _thin_qr_vjp(q, r, ct_q, ct_r)
        if pivoting:  # dX was permuted, dX[..., p]: each column gets its own cotangent back
            permutation = residuals[2]
            inverse = lax.sort_key_val(permutation, lax.iota(np.int32, n))[1]
            ct_x = jnp.take(ct_x, inverse, axis=-1)
        return ct_x


# ---- eigh --------------------------------------------------------------------------------------
@higher_order_rule(lax_linalg.eigh_p)
class EighVjp(_SpectralRule):
    """d(V, w) of A = V diag(w) V^H, A Hermitian (``jnp.linalg.eigh``, ``eigvalsh``).

    Giles 2008 sec. 3.1, Seeger et al. 2017: with X = V^H dA V, dw = Re diag(X) and
    dV = V (F * X), F_ij = 1/(w_j - w_i) off the diagonal. Transposed:
    A-bar = conj(V) (F * (V^T V-bar) + diag(w-bar)) V^T. A repeated eigenvalue makes F infinite:
    the eigenvectors' term is then inf or NaN, as in JAX, and skipped when V-bar is zero.
    """

    def linearize(self, eqn, a):
        n = a.shape[-1]
        if eqn.params["subset_by_index"] not in (None, (0, n)):
            raise _refuse(eqn, "derivatives are not defined for a partial eigendecomposition")
        # JAX differentiates the decomposition of (A + A^H) / 2; for the Hermitian A that
        # jnp.linalg.eigh passes, that is A itself, bit for bit.
        symmetric = lax.div(lax.add(a, _mH(a)), np.array(2, a.dtype))
        v, w = eqn.primitive.bind(symmetric, **eqn.params)
        return [v, w], (v, w)

    def vjp(self, cts, a, residuals, **_):
        v, w = residuals
        ct_v, ct_w = cts
        x_bar = None
        if ct_v is not None:
            f = _gap_reciprocals(lax.convert_element_type(w, a.dtype))
            x_bar = lax.mul(f, _mm(_mT(v), ct_v))
        if ct_w is not None:
            x_bar = _add(x_bar, _diagonal_matrix(lax.convert_element_type(ct_w, a.dtype)))
        return _mm(_conj(v), _mm(x_bar, _mT(v)))


# ---- eig ---------------------------------------------------------------------------------------
def _eigvec_vjp(w: Any, v: Any, lu: Any, permutation: Any, ct_w: Any, ct_v: Any) -> Any:
    """Cotangent of A (complex) from those of w and V in A V = V diag(w), V normalized as LAPACK.

    JAX's derivative (Giles 2008 sec. 3.1; the phase fixed as geev fixes it, jax#2748): with
    P = V^-1 dA V, dw = diag(P), U = V (F * P) and dV = U + V diag(c), where
    c_j = -Re(v_j^H u_j) - i Im(u_kj) / Re(v_kj), k = argmax_i |v_ij|. Transposed, U-bar collects
    V-bar and the two parts of c, and A-bar = V^-T (F * (V^T U-bar) + diag(w-bar)) V^T.
    """
    p_bar = None
    if ct_v is not None:
        u_bar = ct_v
        c_bar = lax.reduce_sum(lax.mul(v, ct_v), (v.ndim - 2,))  # dV = U + V diag(c)
        re_bar, im_bar = lax.real(c_bar), lax.neg(lax.imag(c_bar))  # c = complex(re, im)
        k = lax.argmax(lax.abs(v), v.ndim - 2, np.int32)
        rows = lax.broadcasted_iota(np.int32, v.shape, v.ndim - 2)
        mask = lax.convert_element_type(lax.eq(rows, _along_rows(k)), v.dtype)
        scale = lax.real(lax.reduce_sum(lax.mul(mask, v), (v.ndim - 2,)))
        # im = -Im(sum_i mask_ij U_ij) / scale_j
        s_mask = lax.complex(lax.full_like(im_bar, 0), lax.div(im_bar, scale))
        u_bar = lax.add(u_bar, lax.mul(mask, _along_rows(s_mask)))
        # re = -Re(sum_i conj(V_ij) U_ij)
        s_conj = lax.complex(lax.neg(re_bar), lax.full_like(re_bar, 0))
        u_bar = lax.add(u_bar, lax.mul(_conj(v), _along_rows(s_conj)))
        p_bar = lax.mul(_gap_reciprocals(w), _mm(_mT(v), u_bar))  # U = V (F * P)
    if ct_w is not None:
        p_bar = _add(p_bar, _diagonal_matrix(ct_w))  # dw = diag(P)
    return _solve_transposed(lu, permutation, _mm(p_bar, _mT(v)), conjugate=False)


@higher_order_rule(lax_linalg.eig_p)
class EigVjp(_SpectralRule):
    """d(w, VL, VR) of a general A = VR diag(w) VR^-1 (``jnp.linalg.eigvals``, ``lax.linalg.eig``).

    Eigenvalues alone (Giles 2008 sec. 3.1): dw = diag(VR^-1 dA VR), so
    A-bar = VR^-T (w-bar[:, None] * VR^T). Eigenvectors only with
    ``enable_eigvec_derivs=True``, as in JAX (see ``_eigvec_vjp``); the left ones are the right
    eigenvectors of A^H, with eigenvalues conj(w). A real A gets the real part.
    """

    def linearize(self, eqn, a):
        left = eqn.params["compute_left_eigenvectors"]
        right = eqn.params["compute_right_eigenvectors"]
        if (left or right) and not eqn.params["enable_eigvec_derivs"]:
            raise _refuse(
                eqn,
                "derivatives of non-symmetric eigenvectors are only valid under assumptions on "
                "the input that JAX cannot check; pass enable_eigvec_derivs=True to "
                "jax.lax.linalg.eig to opt in (jax-ml/jax#2748)",
            )
        params = {**eqn.params, "compute_right_eigenvectors": True}
        outs = list(eqn.primitive.bind(a, **params))
        vr = outs[-1]
        lu, _, permutation = lax_linalg.lu(vr)
        return (outs if right else outs[:-1]), (*outs, lu, permutation)

    def vjp(self, cts, a, residuals, *, compute_left_eigenvectors, compute_right_eigenvectors,
            **_):
        w, vr, lu, permutation = residuals[0], residuals[-3], residuals[-2], residuals[-1]
        ct_w = cts[0]
        if not (compute_left_eigenvectors or compute_right_eigenvectors):
            # dw = sum_j (VR^-1 dA)_ij VR_ji
            s_bar = lax.mul(_along_cols(ct_w), _mT(vr))
            ct_a = _solve_transposed(lu, permutation, s_bar, conjugate=False)
        else:
            ct_vr = cts[-1] if compute_right_eigenvectors else None
            ct_vl = cts[1] if compute_left_eigenvectors else None
            ct_a = None
            if ct_w is not None or ct_vr is not None:
                ct_a = _eigvec_vjp(w, vr, lu, permutation, ct_w, ct_vr)
            if ct_vl is not None:  # VL: the same derivative for A^H, conj(w)
                vl = residuals[1]
                lu_l, _, permutation_l = lax_linalg.lu(vl)
                ct_ah = _eigvec_vjp(lax.conj(w), vl, lu_l, permutation_l, None, ct_vl)
                ct_a = _add(ct_a, _mH(ct_ah))
        return ct_a if is_complex(a) else lax.real(ct_a)


# ---- svd ---------------------------------------------------------------------------------------
def _svd_vectors_vjp(a: Any, s: Any, u: Any, vt: Any, ct_u: Any, ct_vt: Any) -> Any:
    """The part of dS-bar (S = U^H dA V) owed to U-bar and Vt-bar, plus A-bar's projection terms.

    JAX's derivative (Townsend 2016; Wan & Zhang 2019 for the complex diagonal term), with
    F_ij = 1/(s_j^2 - s_i^2) off the diagonal and 0 on it, and 1/0 read as 0 in S^+:
    dU = U (F * (dS S + S dS^H) + I * (dS - dS^H) S^+ / 2) [+ (I - U U^H) dA V S^-1 if m > n],
    dV = V (F * (S dS + dS^H S)) [+ (I - V V^H) dA^H U S^-1 if n > m]. Returns dS-bar, and A-bar's
    part from the projection terms (None without them).
    """
    m, n = a.shape[-2:]
    dtype = a.dtype
    s_row, s_col = _along_rows(s), _along_cols(s)
    eye = _eye(s_row)
    gaps = lax.mul(lax.add(s_row, s_col), lax.sub(s_row, s_col))  # s_j^2 - s_i^2, as JAX has it
    f = lax.sub(lax.div(np.array(1, s.dtype), lax.add(gaps, eye)), eye)
    f, s_row, s_col = (lax.convert_element_type(x, dtype) for x in (f, s_row, s_col))
    s_by_column = lax.convert_element_type(lax.expand_dims(s, (s.ndim - 1,)), dtype)
    conj_u, conj_vt = _conj(u), _conj(vt)  # (U^H)^T and V^T
    ds_bar = a_bar = None
    if ct_u is not None:
        zeros = lax.convert_element_type(lax.eq(s, np.array(0, s.dtype)), s.dtype)
        s_pinv = lax.sub(lax.div(np.array(1, s.dtype), lax.add(s, zeros)), zeros)
        z = _mm(_mT(u), ct_u)
        g = lax.mul(f, z)  # F * (dS S + (dS S)^H)
        ds_bar = lax.mul(s_row, lax.add(g, _mH(g)))
        t = lax.mul(np.array(0.5, dtype), lax.mul(z, _diagonal_matrix(
            lax.convert_element_type(s_pinv, dtype))))  # I * (dS - dS^H) S^+ / 2
        ds_bar = lax.add(ds_bar, lax.sub(t, _mH(t)))
        if m > n:  # (dA V - U U^H dA V) S^-1
            q = lax.div(ct_u, s_by_column)
            dav_bar = lax.sub(q, _mm(conj_u, _mm(_mT(u), q)))
            a_bar = _mm(dav_bar, conj_vt)
    if ct_vt is not None:
        ct_v = _mH(ct_vt)
        g = lax.mul(f, _mm(conj_vt, ct_v))  # F * (S dS + (S dS)^H)
        ds_bar = _add(ds_bar, lax.mul(s_col, lax.add(g, _mH(g))))
        if n > m:  # (dA^H U - V V^H dA^H U) S^-1
            q = lax.div(ct_v, s_by_column)
            dahu_bar = lax.sub(q, _mm(_mT(vt), _mm(conj_vt, q)))
            a_bar = _add(a_bar, _mH(_mm(dahu_bar, _mT(u))))
    return ds_bar, a_bar


@higher_order_rule(lax_linalg.svd_p)
class SvdVjp(_SpectralRule):
    """d(s, U, Vt) of A = U diag(s) Vt (``jnp.linalg.svd``, ``norm(ord=2 / 'nuc')``, ``pinv``).

    Singular values (Giles 2008; Townsend 2016): ds = Re diag(U^H dA V), so
    A-bar = conj(U) diag(s-bar) conj(Vt). The singular vectors add the terms of
    ``_svd_vectors_vjp``; repeated singular values make them inf/NaN, zero ones make the
    projection terms of a non-square A inf/NaN, as in JAX. Like JAX, the derivative always uses
    the thin decomposition, and full U or Vt of a non-square A are refused.
    """

    def linearize(self, eqn, a):
        full, uv = eqn.params["full_matrices"], eqn.params["compute_uv"]
        if uv and full and a.shape[-2] != a.shape[-1]:
            raise _refuse(
                eqn,
                "JAX has no derivative for the full U and Vt of a non-square matrix; use "
                "full_matrices=False",
            )
        params = {**eqn.params, "full_matrices": False, "compute_uv": True}
        s, u, vt = eqn.primitive.bind(a, **params)
        return ([s, u, vt] if uv else [s]), (s, u, vt)

    def vjp(self, cts, a, residuals, *, compute_uv, **_):
        s, u, vt = residuals
        ct_s = cts[0]
        ct_u, ct_vt = cts[1:] if compute_uv else (None, None)
        ds_bar, a_bar = None, None
        if ct_u is not None or ct_vt is not None:
            ds_bar, a_bar = _svd_vectors_vjp(a, s, u, vt, ct_u, ct_vt)
        if ct_s is not None:  # ds = Re diag(dS)
            ds_bar = _add(ds_bar, _diagonal_matrix(lax.convert_element_type(ct_s, a.dtype)))
        a_bar = _add(a_bar, _mm(_conj(u), _mm(ds_bar, _conj(vt))))  # dS = U^H dA V
        return a_bar

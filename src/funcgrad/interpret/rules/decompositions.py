"""VJP rules for matrix decompositions: each factor's cotangent pulled back to the matrix.

A decomposition's JVP expresses the factors' tangents through triangular solves and products
with the factors themselves; its VJP is that linear map transposed, built from the same solves
(transposed) and products, so it reads the primal *outputs* (the factors), never the input.
Complex inputs follow JAX's convention: the plain transpose of the JVP, no conjugate transpose.

Sections: Cholesky and LU (with ``lu_pivots_to_permutation`` registered as non-differentiable in
``nondiff.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax import lax

from funcgrad.interpret.registry import vjp_rule
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


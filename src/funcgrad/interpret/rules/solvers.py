"""VJP rules for linear solves: ``triangular_solve``, ``tridiagonal_solve``, custom linear solves.

Each solve ``x = A^{-1} b`` is linear in ``b`` and has the implicit-function derivative
``dx = A^{-1} (db - dA x)``, so its VJP is one solve with the transposed operator,
``λ = A^{-T} x̄``, after which ``b̄ = λ`` and ``Ā = -λ ⊗ x`` pulled back through how ``A`` acts
(Giles 2008, "Collected matrix derivative results for forward and reverse mode AD", sec. 2.3.1).

Complex operands follow JAX's convention: a VJP is the plain transpose of the JVP, never the
conjugate transpose (``conjugate_a`` conjugates the operator, so its transpose conjugates too).

The matrix helpers at the top (``matmul``, ``mT``, ``tril``, ...) bind single lax primitives and
are shared with :mod:`funcgrad.interpret.rules.decompositions`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax import lax
from jax.extend.core import primitives as prims

from funcgrad.interpret.backward import backward, instantiate
from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.jaxprs import open_jaxpr
from funcgrad.interpret.registry import higher_order_rule, vjp_rule
from funcgrad.interpret.rules._common import is_complex, zeros
from funcgrad.interpret.trace import evaluate, is_differentiable

__all__ = ["mT", "masked_triangle", "matmul", "solve_triangular", "tril", "triu"]

# ---- matrix helpers: the last two axes are the matrix, any leading axes are batch ---------------


def mT(x: Any) -> Any:
    """``x`` with its last two axes swapped (no conjugation)."""
    n = np.ndim(x)
    return lax.transpose(x, (*range(n - 2), n - 1, n - 2))


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` over the last two axes, leading axes batched, at full precision as JAX's rules."""
    n = np.ndim(a)
    batch = tuple(range(n - 2))
    return lax.dot_general(
        a, b, (((n - 1,), (n - 2,)), (batch, batch)), precision=lax.Precision.HIGHEST
    )


def masked_triangle(x: Any, lower: bool, k: int = 0) -> Any:
    """``tril(x, k)`` (keep ``j <= i + k``) if ``lower`` else ``triu(x, k)`` (keep ``j >= i + k``).

    The other entries become exactly zero (a select, so an inf or NaN there does not leak).
    """
    shape = np.shape(x)[-2:]
    rows = lax.broadcasted_iota(np.int32, shape, 0)
    cols = lax.broadcasted_iota(np.int32, shape, 1)
    keep = lax.ge(rows + np.int32(k), cols) if lower else lax.le(rows + np.int32(k), cols)
    keep = lax.broadcast_in_dim(keep, np.shape(x), (np.ndim(x) - 2, np.ndim(x) - 1))
    return lax.select(keep, x, zeros(np.shape(x), x.dtype))


def tril(x: Any, k: int = 0) -> Any:
    """The lower triangle of ``x`` (entries ``j <= i + k``), the rest zero."""
    return masked_triangle(x, True, k)


def triu(x: Any, k: int = 0) -> Any:
    """The upper triangle of ``x`` (entries ``j >= i + k``), the rest zero."""
    return masked_triangle(x, False, k)


def solve_triangular(a: Any, b: Any, **kwargs: Any) -> Any:
    """One ``triangular_solve`` of matrices ``a`` and ``b`` (same leading axes)."""
    return lax.linalg.triangular_solve(a, b, **kwargs)


# ---- triangular_solve -----------------------------------------------------------------------


@vjp_rule(lax.linalg.triangular_solve_p, reads=(0,))
def triangular_solve_vjp(
    ct, a, b, *, out, needs, left_side, lower, transpose_a, conjugate_a, unit_diagonal
):
    """x = op(A)^{-1} b: b̄ = op(A)^{-T} x̄ and op(A)̄ = -b̄ x^T (right side: -x^T b̄), masked.

    ``op`` transposes and/or conjugates ``A``; only its ``lower``/upper triangle is read (not
    the diagonal with ``unit_diagonal``), so only that triangle gets a cotangent. Giles 2008
    sec. 2.3.1; the transpose of JAX's JVP ``dx = -op(A)^{-1} op(dA) x``. The product and the
    solve are ordered as JAX orders them (the solve on the smaller of the two matrices), so a
    singular ``A`` gives inf/NaN in the same places.
    """

    def solve_transposed(rhs: Any) -> Any:  # op(A)^{-T} rhs (left) or rhs op(A)^{-T} (right)
        return solve_triangular(
            a,
            rhs,
            left_side=left_side,
            lower=lower,
            transpose_a=not transpose_a,
            conjugate_a=conjugate_a,
            unit_diagonal=unit_diagonal,
        )

    m, n = np.shape(out)[-2:]
    solve_first = m > n if left_side else m < n
    ct_b = solve_transposed(ct) if needs[1] or (needs[0] and solve_first) else None
    ct_a = None
    if needs[0]:
        if left_side:
            ct_op = matmul(ct_b, mT(out)) if solve_first else solve_transposed(matmul(ct, mT(out)))
        else:
            ct_op = matmul(mT(out), ct_b) if solve_first else solve_transposed(matmul(mT(out), ct))
        ct_a = mT(ct_op) if transpose_a else ct_op
        if conjugate_a and is_complex(ct_a):
            ct_a = lax.conj(ct_a)
        k = 1 if unit_diagonal else 0
        ct_a = lax.neg(masked_triangle(ct_a, lower, -k if lower else k))
    return ct_a, ct_b if needs[1] else None


# ---- tridiagonal_solve ----------------------------------------------------------------------


def _shift_pad(x: Any, low: int, high: int, axis: int) -> Any:
    """``x`` padded with zeros: ``low`` entries before and ``high`` after along ``axis``."""
    config = [(0, 0, 0)] * np.ndim(x)
    config[axis] = (low, high, 0)
    return lax.pad(x, np.array(0, x.dtype), config)


def _drop(x: Any, first: int, last: int, axis: int) -> Any:
    """``x`` without its ``first`` leading and ``last`` trailing entries along ``axis``."""
    start = [0] * np.ndim(x)
    limit = list(np.shape(x))
    start[axis] = first
    limit[axis] -= last
    return lax.slice(x, start, limit)


@vjp_rule(lax.linalg.tridiagonal_solve_p, reads=(0, 1, 2))
def tridiagonal_solve_vjp(ct, dl, d, du, b, *, out, needs, perturb_singular):
    """x = A^{-1} b, A tridiagonal: λ = A^{-T} x̄, b̄ = λ, and the diagonals get -λ ⊗ x.

    d̄[i] = -Σ_j λ[i,j] x[i,j], dl̄[i] = -Σ_j λ[i,j] x[i-1,j] (dl̄[0] = 0, as dl[0] is never
    read), dū[i] = -Σ_j λ[i,j] x[i+1,j] (dū[m-1] = 0). A^T has lower diagonal du shifted down
    and upper diagonal dl shifted up (Giles 2008 sec. 2.3.1, banded).
    """
    axis = np.ndim(dl) - 1
    dl_t = _shift_pad(_drop(du, 0, 1, axis), 1, 0, axis)
    du_t = _shift_pad(_drop(dl, 1, 0, axis), 0, 1, axis)
    lam = lax.linalg.tridiagonal_solve(dl_t, d, du_t, ct, perturb_singular=perturb_singular)
    if not any(needs[:3]):
        return None, None, None, lam
    neg = lax.neg(lam)
    col = np.ndim(out) - 1  # the right-hand sides' axis, summed over
    rows = col - 1
    ct_d = lax.reduce_sum(lax.mul(neg, out), (col,)) if needs[1] else None
    ct_dl = ct_du = None
    if needs[0]:
        below = lax.mul(_drop(neg, 1, 0, rows), _drop(out, 0, 1, rows))
        ct_dl = _shift_pad(lax.reduce_sum(below, (col,)), 1, 0, axis)
    if needs[2]:
        above = lax.mul(_drop(neg, 0, 1, rows), _drop(out, 1, 0, rows))
        ct_du = _shift_pad(lax.reduce_sum(above, (col,)), 0, 1, axis)
    return ct_dl, ct_d, ct_du, lam if needs[3] else None


# ---- custom_linear_solve ----------------------------------------------------------------------


def _split(values: list[Any], lengths: Any) -> tuple[list[Any], ...]:
    """``values`` cut into consecutive pieces of the given lengths, and the rest."""
    pieces, start = [], 0
    for n in lengths:
        pieces.append(values[start : start + n])
        start += n
    pieces.append(values[start:])
    return tuple(pieces)


@higher_order_rule(prims.linear_solve_p)
class CustomLinearSolveVjp:
    """``lax.custom_linear_solve``: ``x = solve(b)`` with ``matvec(x) = b``, by implicit function.

    d x = A^{-1} (db - dA x), so λ = A^{-T} x̄ (the ``transpose_solve`` jaxpr, bound as the
    primitive again with the operator transposed, so second order works), b̄ = λ, and the
    constants of ``matvec`` get the VJP of θ ↦ matvec(θ, x) at the solution with cotangent -λ.
    The constants of ``solve``, ``transpose_solve`` and ``vecmat`` get none, and the auxiliary
    outputs of a ``has_aux`` solve carry no derivative: both as in JAX.
    """

    def _b_count(self, eqn: Any) -> int:
        return len(eqn.invars) - sum(eqn.params["const_lengths"])

    def outputs_active(self, eqn, active):
        n_matvec = eqn.params["const_lengths"].matvec
        n_b = self._b_count(eqn)
        any_active = any(active[:n_matvec]) or any(active[len(active) - n_b :])
        return [any_active and k < n_b for k in range(len(eqn.outvars))]

    def forward(self, eqn, invals, active):
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        out_active = self.outputs_active(eqn, active)
        # the solution is what the operator's cotangent is taken at
        record = list(outs[: self._b_count(eqn)]) if any(out_active) else None
        return list(outs), out_active, record

    def backward(self, eqn, invals, record, cts, needs):
        params = eqn.params
        lengths, jaxprs = params["const_lengths"], params["jaxprs"]
        if jaxprs.transpose_solve is None:
            raise NotDifferentiableError(
                "transpose_solve required for backwards mode automatic differentiation of "
                "custom_linear_solve (pass transpose_solve=, or symmetric=True)"
            )
        n_consts, n_b = sum(lengths), self._b_count(eqn)
        matvec_c, vecmat_c, solve_c, tsolve_c, _ = _split(list(invals), lengths)
        ct_x = [instantiate(ct, v.aval) for ct, v in zip(cts[:n_b], eqn.outvars)]
        transposed = eqn.primitive.bind(
            *vecmat_c,
            *matvec_c,
            *tsolve_c,
            *solve_c,
            *ct_x,
            const_lengths=lengths.transpose(),
            jaxprs=jaxprs.transpose(),
        )
        lam = list(transposed[:n_b])
        in_cts: list[Any] = [None] * len(invals)
        for k in range(n_b):
            if needs[n_consts + k]:
                in_cts[n_consts + k] = lam[k]
        matvec_needs = [bool(n) for n in needs[: lengths.matvec]]
        if any(matvec_needs):
            matvec, more_consts = open_jaxpr(jaxprs.matvec)
            solution = list(record)
            sub = evaluate(
                matvec, more_consts, [*matvec_c, *solution], matvec_needs + [False] * n_b
            )
            out_cts = [
                lax.neg(ct) if is_differentiable(v.aval) else None
                for ct, v in zip(lam, matvec.outvars)
            ]
            in_cts[: lengths.matvec] = backward(sub, out_cts)[: lengths.matvec]
        return in_cts

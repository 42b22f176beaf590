"""VJP rules for ``dot_general`` (every matmul, einsum, batched matmul and tensor contraction) and
for its grouped cousin ``ragged_dot_general`` (``lax.ragged_dot``, mixture-of-experts layers).

For ``out = dot_general(x, y)`` with contracting dims (cx, cy) and batch dims (bx, by), the
cotangent of ``x`` is ``ct`` contracted with ``y`` over the dimensions of ``y`` that survive in the
output (its free dims), batch dims paired; the result's dimensions come out ordered as
(batch, x-free, x-contracting-in-y's-order) and are transposed back into ``x``'s order. The
cotangent of ``y`` is the same construction with the roles swapped. A grouped matmul's
cotangents are grouped matmuls of ``ct`` with the other operand, built the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jax import lax

from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.registry import vjp_rule


def _free_dims(ndim: int, contract: Sequence[int], batch: Sequence[int]) -> list[int]:
    return [d for d in range(ndim) if d not in contract and d not in batch]


def _dot_vjp_lhs(ct, x_ndim, y, dimension_numbers, precision, preferred_element_type, swap):
    """Cotangent of the left operand (or of the right one, with ``swap``)."""
    (cx, cy), (bx, by) = dimension_numbers
    if swap:
        cx, cy, bx, by = cy, cx, by, bx
    y_ndim = np.ndim(y)
    x_free = _free_dims(x_ndim, cx, bx)
    y_free = _free_dims(y_ndim, cy, by)
    nb = len(bx)
    # Output dims are (batch, lhs free, rhs free); for the swapped case lhs/rhs trade places.
    first = nb + (0 if swap else len(x_free))
    ct_y_free = list(range(first, first + len(y_free)))
    ct_batch = list(range(nb))
    # dx[batch, x_free, y_contract] = sum over y_free of ct[batch, x_free, y_free] * y[...]
    dx = lax.dot_general(
        ct,
        y,
        ((tuple(ct_y_free), tuple(y_free)), (tuple(ct_batch), tuple(by))),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    # dx's dims are (batch in bx order, x_free, cx ordered as cy is sorted).
    cy_sorted = sorted(range(len(cy)), key=lambda k: cy[k])
    produced = list(bx) + x_free + [cx[k] for k in cy_sorted]
    perm = tuple(int(i) for i in np.argsort(produced))
    return lax.transpose(dx, perm) if perm != tuple(range(len(perm))) else dx


@vjp_rule(lax.dot_general_p)
def dot_general_vjp(
    ct, x, y, *, needs, dimension_numbers, precision=None, preferred_element_type=None
):
    """d(x . y) = ct . y^T (contracted over y's free dims) and x^T . ct, batch dims paired.

    The transposed products keep the forward's ``preferred_element_type``, as JAX's do: with
    ``f32 x f32 -> bf16`` the cotangent products are rounded to bf16 too (the interpreter then
    casts each cotangent to its operand's dtype).
    """
    return (
        _dot_vjp_lhs(ct, np.ndim(x), y, dimension_numbers, precision, preferred_element_type, False)
        if needs[0]
        else None,
        _dot_vjp_lhs(ct, np.ndim(y), x, dimension_numbers, precision, preferred_element_type, True)
        if needs[1]
        else None,
    )


# ---- ragged_dot_general: a grouped matmul ------------------------------------------------------


def _sorted_by(dims: Sequence[int], keys: Sequence[int]) -> list[int]:
    """``dims`` reordered as their partners ``keys`` sort (the order a contraction emits them)."""
    return [dims[k] for k in np.argsort(keys)]


def _ragged_dot(lhs, rhs, contract, batch, ragged, group, group_sizes, precision, out_type):
    """One ``ragged_dot_general`` equation with these dimension numbers."""
    dims = lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(contract, batch),
        lhs_ragged_dimensions=[ragged],
        rhs_group_dimensions=group,
    )
    return lax.ragged_dot_general(
        lhs, rhs, group_sizes, dims, precision=precision, preferred_element_type=out_type
    )


def _back_to(produced: Sequence[int], value):
    """``value``, whose dims are the operand's dims ``produced``, transposed to operand order."""
    perm = tuple(int(i) for i in np.argsort(produced))
    return lax.transpose(value, perm) if perm != tuple(range(len(perm))) else value


def _outer_to_ragged(order: Sequence[int], ragged: int) -> list[int]:
    return list(order[: list(order).index(ragged)])


@vjp_rule("ragged_dot_general")
def ragged_dot_general_vjp(
    ct, x, y, group_sizes, *, needs, ragged_dot_dimension_numbers, precision=None,
    preferred_element_type=None, group_offset=None,
):
    """Grouped matmul: each row (or contracted index) k of x's ragged dim uses group G(k) of y.

    Ragged non-contracting dim m, ``out[b,m,n] = sum_k x[b,m,k] y[G(m),b,k,n]``:
    ``dx[b,m,k] = sum_n ct[b,m,n] y[G(m),b,k,n]`` (the same mode) and
    ``dy[g,b,k,n] = sum_{m: G(m)=g} x[b,m,k] ct[b,m,n]`` (m ragged and contracted).
    Ragged contracting dim k, ``out[g,b,m,n] = sum_{k: G(k)=g} x[b,m,k] y[b,k,n]``:
    ``dx[b,m,k] = sum_n ct[G(k),b,m,n] y[b,k,n]`` and ``dy[b,k,n] = sum_m x[b,m,k] ct[G(k),b,m,n]``,
    both grouped matmuls with k ragged and not contracted. So each mode's VJP is made of the two
    modes, and second derivatives close. JAX differentiates the non-contracting mode only
    (its transpose of the contracting mode is unimplemented; ``jax.jacfwd`` does it).
    ``group_sizes`` gets no cotangent; a ragged batch dim and ``group_offset`` are refused, as
    in JAX.
    """
    if group_offset is not None:
        raise NotDifferentiableError(
            "funcgrad, like jax.grad, cannot differentiate ragged_dot_general with group_offset"
        )
    (cx, cy), (bx, by) = ragged_dot_dimension_numbers.dot_dimension_numbers
    (ragged,) = ragged_dot_dimension_numbers.lhs_ragged_dimensions
    y_group = list(ragged_dot_dimension_numbers.rhs_group_dimensions)
    cx, cy, bx, by = map(list, (cx, cy, bx, by))
    x_free = _free_dims(np.ndim(x), cx, bx)
    y_free = [d for d in _free_dims(np.ndim(y), cy, by) if d not in y_group]
    if ragged in bx:
        raise NotDifferentiableError(
            "funcgrad, like jax.grad, cannot differentiate ragged_dot_general with a ragged "
            "batch dimension"
        )
    nb = len(bx)
    shared = (group_sizes, precision, preferred_element_type)
    grad_x = grad_y = None
    if ragged in x_free:  # ct dims: (batch, x free, y free)
        ct_batch = list(range(nb))
        ct_x_free = list(range(nb, nb + len(x_free)))
        ct_y_free = list(range(nb + len(x_free), nb + len(x_free) + len(y_free)))
        if needs[0]:
            ragged_in_ct = nb + x_free.index(ragged)
            dx = _ragged_dot(ct, y, (ct_y_free, y_free), (ct_batch, by), ragged_in_ct, y_group,
                             *shared)
            grad_x = _back_to(bx + x_free + _sorted_by(cx, cy), dx)
        if needs[1]:
            dy = _ragged_dot(x, ct, (x_free, ct_x_free), (bx, ct_batch), ragged, [], *shared)
            grad_y = _back_to(y_group + by + _sorted_by(cy, cx) + y_free, dy)
        return (grad_x, grad_y, None)
    # a ragged contracting dim: ct dims are (group, batch, x free, y free)
    ct_batch = list(range(1, nb + 1))
    ct_x_free = list(range(nb + 1, nb + 1 + len(x_free)))
    ct_y_free = list(range(nb + 1 + len(x_free), nb + 1 + len(x_free) + len(y_free)))
    y_ragged = cy[cx.index(ragged)]
    if np.ndim(group_sizes) > 1 + nb and (
        _outer_to_ragged(cy, y_ragged) != _outer_to_ragged(sorted(cy), y_ragged)
        or _outer_to_ragged(cx, ragged) != _outer_to_ragged(sorted(cx), ragged)
    ):
        raise NotDifferentiableError(
            "funcgrad differentiates a ragged contracting dimension with per-row group sizes "
            "only when the contracting dims before it are listed in increasing order"
        )
    if needs[0]:
        dx = _ragged_dot(y, ct, (y_free, ct_y_free), (by, ct_batch), y_ragged, [0], *shared)
        grad_x = _back_to(bx + _sorted_by(cx, cy) + x_free, dx)
    if needs[1]:
        dy = _ragged_dot(x, ct, (x_free, ct_x_free), (bx, ct_batch), ragged, [0], *shared)
        grad_y = _back_to(by + _sorted_by(cy, cx) + y_free, dy)
    return (grad_x, grad_y, None)

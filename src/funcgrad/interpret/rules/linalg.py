"""VJP rule for ``dot_general``: every matmul, einsum, batched matmul and tensor contraction.

For ``out = dot_general(x, y)`` with contracting dims (cx, cy) and batch dims (bx, by), the
cotangent of ``x`` is ``ct`` contracted with ``y`` over the dimensions of ``y`` that survive in the
output (its free dims), batch dims paired; the result's dimensions come out ordered as
(batch, x-free, x-contracting-in-y's-order) and are transposed back into ``x``'s order. The
cotangent of ``y`` is the same construction with the roles swapped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jax import lax

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

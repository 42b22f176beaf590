"""``unbroadcast``: the adjoint of the implicit broadcasting that n-ary lax ops do.

In a jaxpr, ``add a:f32[2,3] b:f32[1,3]`` and ``mul a:f32[3] s:f32[]`` broadcast size-1 dimensions
and rank-0 operands. The cotangent of such an operand is the output cotangent summed over the
dimensions it was broadcast along.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax import lax

__all__ = ["unbroadcast"]


def unbroadcast(ct: Any, x: Any) -> Any:
    """Sum ``ct`` down to the shape of operand ``x``: d(broadcast(x)) = sum over broadcast dims."""
    shape = np.shape(x)
    if ct.shape == shape:
        return ct
    if len(shape) == 0:
        return lax.reduce_sum(ct, tuple(range(ct.ndim)))
    dims = tuple(d for d, (n, m) in enumerate(zip(shape, ct.shape)) if n == 1 and m != 1)
    return lax.reshape(lax.reduce_sum(ct, dims), shape)

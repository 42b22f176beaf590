"""Helpers the rule families share: literal constants, zeros, selects, tie shares, unbroadcast.

A constant in a rule is a NumPy scalar of the operand's dtype (:func:`const`, :func:`scalar`):
it becomes a literal in the jaxpr, which lax ops broadcast implicitly, as in JAX's own rules,
rather than a materialised array.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax import dtypes, lax

__all__ = [
    "balanced_eq",
    "const",
    "dtype_of",
    "is_complex",
    "scalar",
    "select",
    "unbroadcast",
    "zeros",
    "zeros_as",
    "zeros_like",
]


def dtype_of(x: Any) -> Any:
    """The dtype of an operand (a literal may arrive as a plain Python bool: `select_n True`)."""
    dtype = getattr(x, "dtype", None)
    return jax.typeof(x).dtype if dtype is None else dtype


def scalar(value: Any, dtype: Any) -> np.ndarray:
    """``value`` as a NumPy scalar of ``dtype``: a literal in the jaxpr."""
    return np.array(value, dtype)


def const(x: Any, value: Any) -> np.ndarray:
    """``value`` as a NumPy scalar of ``x``'s dtype: a literal that lax ops broadcast."""
    return np.array(value, dtype_of(x))


def zeros(shape: Any, dtype: Any) -> Any:
    """A dense zero array of ``shape`` and ``dtype``."""
    return lax.full(shape, 0, dtype)


def zeros_as(ct: Any, shape: Any) -> Any:
    """Zeros of ``shape`` with ``ct``'s dtype and type (the mesh axes it varies over)."""
    return lax.full_like(ct, 0, shape=tuple(shape))


def zeros_like(x: Any) -> Any:
    """A dense zero array of ``x``'s shape and dtype."""
    return lax.full_like(x, 0)


def select(pred: Any, on_true: Any, on_false: Any) -> Any:
    """``pred ? on_true : on_false`` (``select_n`` puts the False case first)."""
    return lax.select_n(pred, on_false, on_true)


def is_complex(x: Any) -> bool:
    return dtypes.issubdtype(dtype_of(x), np.complexfloating)


def balanced_eq(x: Any, out: Any, y: Any) -> Any:
    """JAX's share of ``max(x, y) = out`` owed to ``x``: 1 if x alone is out, 1/2 on a tie, else 0.

    Used by the elementwise ``max``/``min`` rules and the cumulative extrema alike.
    """
    one = lax.full_like(out, 1)
    half = lax.full_like(out, 0.5)
    zero = lax.full_like(out, 0)
    return lax.select(lax.eq(x, out), lax.select(lax.eq(y, out), half, one), zero)


def unbroadcast(ct: Any, x: Any) -> Any:
    """Sum ``ct`` down to the shape of operand ``x``: d(broadcast(x)) = sum over broadcast dims.

    In a jaxpr, ``add a:f32[2,3] b:f32[1,3]`` and ``mul a:f32[3] s:f32[]`` broadcast size-1
    dimensions and rank-0 operands; this is the adjoint of that implicit broadcasting.
    """
    shape = np.shape(x)
    if ct.shape == shape:
        return ct
    if len(shape) == 0:
        return lax.reduce_sum(ct, tuple(range(ct.ndim)))
    dims = tuple(d for d, (n, m) in enumerate(zip(shape, ct.shape)) if n == 1 and m != 1)
    return lax.reshape(lax.reduce_sum(ct, dims), shape)

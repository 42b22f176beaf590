"""VJP rules for shape and layout: broadcast, reshape, transpose, squeeze, concatenate, pad, ...

These primitives only move values around, so their VJPs move cotangents back: a broadcast's
cotangent is summed, a reshape's reshaped back, a transpose's transposed by the inverse
permutation.
"""

from __future__ import annotations

import numpy as np
from jax import lax

from funcgrad.interpret.rules import vjp_rule


@vjp_rule(lax.broadcast_in_dim_p)
def broadcast_in_dim_vjp(ct, x, *dyn_shape, shape, broadcast_dimensions):
    """d broadcast(x) = sum of ct over the new dims and over x's size-1 dims that grew."""
    x_shape = np.shape(x)
    new_dims = tuple(d for d in range(len(shape)) if d not in broadcast_dimensions)
    grown = tuple(
        d for i, d in enumerate(broadcast_dimensions) if x_shape[i] == 1 and shape[d] != 1
    )
    summed = lax.reduce_sum(ct, tuple(sorted(new_dims + grown))) if new_dims or grown else ct
    return (lax.reshape(summed, x_shape), *([None] * len(dyn_shape)))


@vjp_rule(lax.reshape_p)
def reshape_vjp(ct, x, *dyn_shape):  # reshape is a relabelling: reshape ct back
    return (lax.reshape(ct, np.shape(x)), *([None] * len(dyn_shape)))


@vjp_rule(lax.convert_element_type_p)
def convert_element_type_vjp(ct, x):  # d convert(x) = dx, cast back (by the interpreter)
    return (ct,)

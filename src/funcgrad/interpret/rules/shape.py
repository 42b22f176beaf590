"""VJP rules for shape and layout: broadcast, reshape, transpose, squeeze, concatenate, pad, ...

These primitives only move values around, so their VJPs move cotangents back: a broadcast's
cotangent is summed, a reshape's reshaped back, a transpose's transposed by the inverse
permutation, a slice's placed back into zeros, a concatenation's split. Every rule is exact (no
arithmetic beyond the sums a broadcast or a tile needs), so funcgrad and ``jax.grad`` agree bit for
bit here.
"""

from __future__ import annotations

import numpy as np
from jax import dtypes, lax

from funcgrad.interpret.registry import vjp_rule
from funcgrad.interpret.rules._common import scalar, zeros


@vjp_rule(lax.broadcast_in_dim_p, reads=())
def broadcast_in_dim_vjp(ct, x, *dyn_shape, shape, broadcast_dimensions):
    """d broadcast(x) = sum of ct over the new dims and over x's size-1 dims that grew."""
    x_shape = np.shape(x)
    new_dims = tuple(d for d in range(len(shape)) if d not in broadcast_dimensions)
    grown = tuple(
        d for i, d in enumerate(broadcast_dimensions) if x_shape[i] == 1 and shape[d] != 1
    )
    summed = lax.reduce_sum(ct, tuple(sorted(new_dims + grown))) if new_dims or grown else ct
    return (lax.reshape(summed, x_shape), *([None] * len(dyn_shape)))


@vjp_rule(lax.reshape_p, reads=())
def reshape_vjp(ct, x, *dyn_shape, dimensions=None):
    """A reshape relabels elements: reshape ct back. With ``dimensions`` (a permutation), x is
    transposed by it before the reshape, so ct is reshaped to the transposed shape and
    transposed back."""
    if dimensions is None:
        return (lax.reshape(ct, np.shape(x)), *([None] * len(dyn_shape)))
    transposed_shape = tuple(np.shape(x)[d] for d in dimensions)
    inverse = tuple(int(i) for i in np.argsort(dimensions))
    grad_x = lax.transpose(lax.reshape(ct, transposed_shape), inverse)
    return (grad_x, *([None] * len(dyn_shape)))


@vjp_rule(lax.squeeze_p, reads=())
def squeeze_vjp(ct, x):  # squeeze drops size-1 dims: put them back
    return (lax.reshape(ct, np.shape(x)),)


@vjp_rule(lax.transpose_p, reads=())
def transpose_vjp(ct, x, *, permutation):  # d transpose(x, p) = transpose(ct, p^-1)
    inverse = tuple(int(i) for i in np.argsort(permutation))
    return (lax.transpose(ct, inverse),)


@vjp_rule(lax.rev_p, reads=())
def rev_vjp(ct, x, *, dimensions):  # reversal is its own inverse
    return (lax.rev(ct, dimensions),)


@vjp_rule(lax.convert_element_type_p, reads=())
def convert_element_type_vjp(ct, x):
    """d convert(x) = dx for float->float (the interpreter casts ct back); none for int/bool x."""
    x_dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)  # x may be a Python scalar
    if not dtypes.issubdtype(x_dtype, np.inexact):
        return (None,)
    if dtypes.issubdtype(ct.dtype, np.complexfloating) and not dtypes.issubdtype(
        x_dtype, np.complexfloating
    ):
        return (lax.real(ct),)  # real -> complex: the real part of ct flows back
    return (ct,)


@vjp_rule(lax.concatenate_p, reads=())
def concatenate_vjp(ct, *xs, dimension, needs):
    """d concat(x1, x2, ...) = the slices of ct at the cumulative offsets (one ``split``)."""
    sizes = [np.shape(x)[dimension] for x in xs]
    pieces = lax.split(ct, sizes, dimension)
    return tuple(p if need else None for p, need in zip(pieces, needs))


@vjp_rule(lax.split_p, reads=())
def split_vjp(cts, x, *, sizes, axis):
    """d split(x) = concatenate of the pieces' cotangents (zeros for pieces nobody reads)."""
    shape = list(np.shape(x))
    pieces = []
    for ct, size in zip(cts, sizes):
        if ct is None:
            shape[axis] = size
            ct = zeros(tuple(shape), x.dtype)
        pieces.append(ct)
    return (lax.concatenate(pieces, axis),)


@vjp_rule(lax.stack_p)
def stack_vjp(ct, *xs, axis):  # d stack(x1, x2, ...) = unstack(ct)
    return tuple(lax.unstack_p.bind(ct, axis=axis))


@vjp_rule(lax.unstack_p)
def unstack_vjp(cts, x, *, axis):
    """d unstack(x) = stack of the pieces' cotangents (zeros for pieces nobody reads)."""
    shape = tuple(n for d, n in enumerate(np.shape(x)) if d != axis)
    pieces = [zeros(shape, x.dtype) if ct is None else ct for ct in cts]
    return (lax.stack_p.bind(*pieces, axis=axis),)


@vjp_rule(lax.tile_p, reads=())
def tile_vjp(ct, x, *, reps):
    """d tile(x, reps) = ct viewed as (rep_0, n_0, rep_1, n_1, ...) summed over the rep axes."""
    x_shape = np.shape(x)
    interleaved = tuple(k for pair in zip(reps, x_shape) for k in pair)
    rep_axes = tuple(2 * i for i in range(len(x_shape)))
    return (lax.reduce_sum(lax.reshape(ct, interleaved), rep_axes),)


def slice_as_padding(x_shape, ct_shape, start_indices, limit_indices, strides):
    """The ``pad`` config that puts a slice's cotangent back at the positions it was taken from."""
    if strides is None or all(s == 1 for s in strides):
        return [(lo, n - hi, 0) for lo, hi, n in zip(start_indices, limit_indices, x_shape)]
    # The last element taken is start + (count-1)*stride; pad from there to the end.
    config = []
    for lo, n, stride, count in zip(start_indices, x_shape, strides, ct_shape):
        end = lo + (count - 1) * stride + 1 if count else lo
        config.append((lo, n - end, stride - 1))
    return config


@vjp_rule(lax.slice_p, reads=())
def slice_vjp(ct, x, *, start_indices, limit_indices, strides):
    """d x[start:limit:stride] = ct placed at the strided positions of zeros (one ``pad``)."""
    config = slice_as_padding(np.shape(x), ct.shape, start_indices, limit_indices, strides)
    return (lax.pad(ct, scalar(0, ct.dtype), config),)


@vjp_rule(lax.pad_p, reads=())
def pad_vjp(ct, x, padding_value, *, padding_config, needs):
    """d pad(x, v): x gets ct un-padded (strided by interior+1); v gets sum(ct) - sum(x's part).

    Negative lo/hi (cropping) come back as zeros: un-padding by -lo pads where pad cropped.
    """
    lo, hi, interior = zip(*padding_config) if padding_config else ((), (), ())
    unpadded = lax.pad(ct, scalar(0, ct.dtype), [(-a, -b, 0) for a, b in zip(lo, hi)])
    ct_x = lax.slice(unpadded, (0,) * unpadded.ndim, unpadded.shape, tuple(i + 1 for i in interior))
    ct_value = None
    if needs[1]:
        everything = tuple(range(ct.ndim))
        ct_value = lax.sub(lax.reduce_sum(ct, everything), lax.reduce_sum(ct_x, everything))
    return (ct_x if needs[0] else None, ct_value)

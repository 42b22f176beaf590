"""Cotangents that are sums of zero-padded pieces, kept unmaterialised until something reads them.

The VJP of a slice is its cotangent padded with zeros to the input's shape. Where one input is
sliced many times (the kh·kw shifted windows of an im2col convolution), the backward pass would
write one full-size padded copy per slice and add them one at a time: 2k - 1 full-size arrays
and dispatches for k slices. Eagerly, ``slice_vjp`` returns a :class:`PaddedSum` instead, the
backward pass appends to it as cotangents accumulate, and the first reader calls
:func:`materialize`, which computes the whole sum as one compiled program (XLA fuses it into one
loop that writes the result once). Terms are added in the order they arrived, each padded with
exact zeros, so the result is bit for bit that of padding and adding one by one.

Under a trace (``jax.jit``, ``jax.vmap``, ``jax.make_jaxpr``, funcgrad differentiating itself)
``slice_vjp`` pads at once: jaxprs and graphs are unchanged, and XLA does this fusion itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax import lax

__all__ = ["PaddedSum", "accumulate", "materialize", "padded"]

# A term's padding config, ((lo, hi, interior), ...) per axis; None for a dense, full-size term.
Config = tuple[tuple[int, int, int], ...] | None


class PaddedSum:
    """sum_i pad(pieces[i], 0, configs[i]) (a dense term where the config is None), in order."""

    __slots__ = ("configs", "dtype", "pieces", "shape")

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        pieces: tuple[Any, ...],
        configs: tuple[Config, ...],
    ) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.pieces = pieces
        self.configs = configs

    def __repr__(self) -> str:
        return f"PaddedSum(shape={self.shape}, dtype={self.dtype}, terms={len(self.pieces)})"


def padded(piece: Any, config: Sequence[tuple[int, int, int]], shape: Sequence[int]) -> PaddedSum:
    """``pad(piece, 0, config)`` (of shape ``shape``), not yet computed."""
    config = tuple((int(lo), int(hi), int(interior)) for lo, hi, interior in config)
    return PaddedSum(tuple(int(n) for n in shape), piece.dtype, (piece,), (config,))


def _terms(ct: Any) -> tuple[tuple[Any, ...], tuple[Config, ...]]:
    if isinstance(ct, PaddedSum):
        return ct.pieces, ct.configs
    return (ct,), (None,)


def accumulate(prev: Any, ct: Any) -> Any:
    """``prev + ct``: deferred when either is a :class:`PaddedSum`, else a plain ``lax.add``."""
    if not isinstance(prev, PaddedSum) and not isinstance(ct, PaddedSum):
        return lax.add(prev, ct)
    (p_pieces, p_configs), (c_pieces, c_configs) = _terms(prev), _terms(ct)
    return PaddedSum(tuple(prev.shape), prev.dtype, p_pieces + c_pieces, p_configs + c_configs)


def materialize(ct: Any) -> Any:
    """The array a cotangent stands for (``ct`` itself unless it is a :class:`PaddedSum`)."""
    if not isinstance(ct, PaddedSum):
        return ct
    return _sum_of_padded(list(ct.pieces), configs=ct.configs)


@functools.partial(jax.jit, static_argnames="configs")
def _sum_of_padded(pieces: list[Any], *, configs: tuple[Config, ...]) -> Any:
    """sum_i pad(pieces[i], 0, configs[i]), left to right: one fused loop once compiled."""
    total = None
    for piece, config in zip(pieces, configs):
        term = piece if config is None else lax.pad(piece, lax.full((), 0, piece.dtype), config)
        total = term if total is None else lax.add(total, term)
    return total

"""Cotangents that are sums of padded slices, kept unmaterialised until something reads them.

An im2col convolution concatenates the kh·kw shifted windows (slices) of its padded input. Its
input cotangent, done one primitive at a time, is: split the patches' cotangent into kh·kw
pieces (the concatenate's VJP), pad each back to the image's shape with zeros (each slice's VJP),
add them up one by one, and crop the padding (the pad's VJP). Eagerly that writes about 3·kh·kw
arrays of the image's size in about 2·kh·kw dispatches. Here the concatenate's VJP returns its
pieces as lazy slices of the one cotangent, each slice's VJP wraps them in a padding,
accumulation appends terms, the pad's VJP folds its crop into their paddings, and the first rule
that reads the sum calls :func:`materialize`: one compiled program, which XLA fuses into one
loop reading the patches' cotangent once and writing the image's once. Terms are added in the
order they arrived, each padded with exact zeros, so the result is bit for bit that of doing it
step by step.

The lazy versions of the concatenate, slice and pad rules are here (:data:`LAZY_RULES`); only
the slice and pad ones may be handed a :class:`PaddedSum`, every other rule gets an array
(:func:`materialize`). Under a trace (``jax.jit``, ``jax.vmap``, ``jax.make_jaxpr``, funcgrad
differentiating itself) nothing is deferred: jaxprs and graphs keep the plain rules' split, pads
and adds, and XLA does this fusion itself.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax import lax

from funcgrad.interpret.rules import shape as shape_rules

__all__ = ["LAZY_RULES", "PaddedSum", "accumulate", "materialize"]

Triples = tuple[tuple[int, int, int], ...]


class Term(NamedTuple):
    """pad(slice(piece, *window), 0, padding); no slice where window is None, no pad likewise."""

    piece: Any
    window: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None
    padding: Triples | None


class PaddedSum:
    """The sum of its terms, left to right, all of shape ``shape``."""

    __slots__ = ("dtype", "shape", "terms")

    def __init__(self, shape: Sequence[int], dtype: Any, terms: tuple[Term, ...]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.terms = terms

    def __repr__(self) -> str:
        return f"PaddedSum(shape={self.shape}, dtype={self.dtype}, terms={len(self.terms)})"


def deferred(ct: Any) -> bool:
    """Whether ``ct`` may be kept lazy: a concrete array (nothing is deferred under a trace)."""
    return isinstance(ct, PaddedSum) or (
        ct is not None and not isinstance(ct, jax.core.Tracer) and hasattr(ct, "shape")
    )


def split(ct: Any, sizes: Sequence[int], axis: int) -> list[PaddedSum]:
    """``lax.split(ct, sizes, axis)``, not yet computed: one lazy slice of ``ct`` per size."""
    out = []
    for lo, hi in itertools.pairwise(np.cumsum([0, *sizes])):
        start, limit = [0] * ct.ndim, list(ct.shape)
        start[axis], limit[axis] = int(lo), int(hi)
        shape = [b - a for a, b in zip(start, limit)]
        window = (tuple(start), tuple(limit), (1,) * ct.ndim)
        out.append(PaddedSum(shape, ct.dtype, (Term(ct, window, None),)))
    return out


def _config(config: Sequence[Sequence[int]]) -> Triples:
    return tuple((int(lo), int(hi), int(interior)) for lo, hi, interior in config)


def pad(ct: Any, config: Sequence[Sequence[int]], shape: Sequence[int]) -> PaddedSum:
    """``pad(ct, 0, config)`` (of shape ``shape``), not yet computed. ``ct`` may be a sum of
    unpadded slices (what :func:`split` gives); a sum already padded is computed first."""
    config = _config(config)
    if isinstance(ct, PaddedSum) and all(t.padding is None for t in ct.terms):
        terms = tuple(t._replace(padding=config) for t in ct.terms)
    else:
        terms = (Term(materialize(ct), None, config),)
    return PaddedSum(shape, ct.dtype, terms)


def crop(ct: PaddedSum, lo: Sequence[int], hi: Sequence[int], shape: Sequence[int]) -> PaddedSum:
    """``ct`` with ``lo``/``hi`` elements cut from each axis's ends: pad(pad(p, c), -lo, -hi)
    is pad(p, c - (lo, hi)), exactly, so the crop is folded into every term's padding."""
    terms = []
    for t in ct.terms:
        padding = t.padding or tuple((0, 0, 0) for _ in lo)
        padding = tuple((a - l, b - h, i) for (a, b, i), l, h in zip(padding, lo, hi))
        terms.append(t._replace(padding=padding))
    return PaddedSum(shape, ct.dtype, tuple(terms))


def accumulate(prev: Any, ct: Any) -> Any:
    """``prev + ct``: deferred when either is a :class:`PaddedSum`, else a plain ``lax.add``."""
    if not isinstance(prev, PaddedSum) and not isinstance(ct, PaddedSum):
        return lax.add(prev, ct)

    def terms(x: Any) -> tuple[Term, ...]:
        return x.terms if isinstance(x, PaddedSum) else (Term(x, None, None),)

    return PaddedSum(prev.shape, prev.dtype, terms(prev) + terms(ct))


def materialize(ct: Any) -> Any:
    """The array a cotangent stands for (``ct`` itself unless it is a :class:`PaddedSum`)."""
    if not isinstance(ct, PaddedSum):
        return ct
    if len(ct.terms) == 1 and ct.terms[0].window is None and ct.terms[0].padding is None:
        return ct.terms[0].piece
    # Each distinct array is passed once; the plan says which one each term reads.
    pieces: list[Any] = []
    index: dict[int, int] = {}
    plan = []
    for t in ct.terms:
        if id(t.piece) not in index:
            index[id(t.piece)] = len(pieces)
            pieces.append(t.piece)
        plan.append((index[id(t.piece)], t.window, t.padding))
    return _sum_of_terms(pieces, plan=tuple(plan))


@functools.partial(jax.jit, static_argnames="plan")
def _sum_of_terms(pieces: list[Any], *, plan: tuple) -> Any:
    """sum of pad(slice(pieces[i], window), 0, padding) over the plan, left to right."""
    total = None
    for i, window, padding in plan:
        term = pieces[i]
        if window is not None:
            term = lax.slice(term, *window)
        if padding is not None:
            term = lax.pad(term, lax.full((), 0, term.dtype), padding)
        total = term if total is None else lax.add(total, term)
    return total


# ---- the lazy rules: concatenate splits, slices pad, pads crop -----------------------------


def concatenate_vjp(ct, *xs, dimension, needs):
    """Eager ``concatenate`` rule: the pieces of ``ct`` as lazy slices (one per operand)."""
    if not deferred(ct):
        return shape_rules.concatenate_vjp(ct, *xs, dimension=dimension, needs=needs)
    ct = materialize(ct)
    pieces = split(ct, [np.shape(x)[dimension] for x in xs], dimension)
    return tuple(p if need else None for p, need in zip(pieces, needs))


def slice_vjp(ct, x, *, start_indices, limit_indices, strides):
    """Eager ``slice`` rule: ``ct`` padded back to ``x``'s shape, lazily (summed with siblings)."""
    if not deferred(ct):
        return shape_rules.slice_vjp(
            ct, x, start_indices=start_indices, limit_indices=limit_indices, strides=strides
        )
    config = shape_rules.slice_as_padding(
        np.shape(x), ct.shape, start_indices, limit_indices, strides
    )
    return (pad(ct, config, np.shape(x)),)


def pad_vjp(ct, x, padding_value, *, padding_config, needs):
    """Eager ``pad`` rule: a crop of a lazy sum is folded into its terms' paddings."""
    lo, hi, interior = zip(*padding_config) if padding_config else ((), (), ())
    if isinstance(ct, PaddedSum) and not needs[1] and not any(interior):
        return (crop(ct, lo, hi, np.shape(x)) if needs[0] else None, None)
    return shape_rules.pad_vjp(
        materialize(ct), x, padding_value, padding_config=padding_config, needs=needs
    )


LAZY_RULES = {"concatenate": concatenate_vjp, "slice": slice_vjp, "pad": pad_vjp}

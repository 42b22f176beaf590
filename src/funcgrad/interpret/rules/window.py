"""VJP rules for windowed reductions: sum/average pooling, max/min pooling, and the
``select_and_*`` primitives that JAX's own pooling gradients are made of.

* ``reduce_window_sum`` is linear: its VJP is a convolution with a window of ones, i.e. the
  cotangent dilated by the strides, padded, and window-summed again with stride = base dilation
  (the same derivation as the input cotangent of a convolution, see :mod:`.conv`).
* ``reduce_window_max``/``min`` send each window's cotangent to **the first** maximal (minimal)
  element of that window, overlaps accumulating: the semantics of XLA's select-and-scatter with
  ``select = ge`` (``le``), which is what ``jax.grad`` emits, and which XLA runs on CPU as a slow
  scalar loop (see ``reduce_window_max_vjp``). For windows of up to ``MAX_UNROLLED_WINDOW``
  cells funcgrad replays select-and-scatter's scan itself: over the window offsets in row-major
  order (``best = v unless select(best, v)``), each offset a strided slice of the padded
  operand, it finds the offset each window chooses; then it places the cotangents back with
  one reshape/transpose when windows do not overlap (the usual pooling), or otherwise by
  *pulling*: for each offset, every operand element reads the (stride-dilated, shifted)
  cotangent of the window that holds it at that offset, if that window chose the offset. All of
  it is elementwise work and data movement that XLA fuses, and funcgrad differentiates it
  again. Larger windows (global pooling) emit ``select_and_scatter_add`` like JAX.
* ``select_and_scatter_add`` and ``select_and_gather_add`` (in ``jax.grad`` and ``jax.jvp``
  jaxprs of max-pooling) are linear in their first operand; as in JAX, the VJP of each is the
  other one (computed with the same machinery), so ``fg.grad`` can differentiate a ``jax.grad``
  of a max-pooling network.
* the generic ``reduce_window`` (a jaxpr computation, e.g. a max with init 0) is supported when
  its computation is a single ``add``, ``max`` or ``min``; anything else raises
  :class:`~funcgrad.UnsupportedPrimitiveError` (``jax.grad`` cannot differentiate it at all).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax import lax

from funcgrad.interpret.errors import UnsupportedPrimitiveError
from funcgrad.interpret.registry import vjp_rule
from funcgrad.interpret.rules._common import scalar
from funcgrad.interpret.rules.conv import _input_ct_padding

# ---- the geometry of a window reduction -----------------------------------------------------


def _operand_padding(padding, base_dilation):
    """pad() config that turns the operand into the array the windows slide over."""
    return [(lo, hi, d - 1) for (lo, hi), d in zip(padding, base_dilation)]


def _unpad(ct_padded, padding, base_dilation):
    """Transpose of ``pad(x, _operand_padding(...))``: the cotangent of the real elements."""
    trimmed = lax.pad(ct_padded, scalar(0, ct_padded.dtype), [(-lo, -hi, 0) for lo, hi in padding])
    if all(d == 1 for d in base_dilation):
        return trimmed
    return lax.slice(trimmed, (0,) * trimmed.ndim, trimmed.shape, tuple(base_dilation))


class _Windows:
    """The static geometry: window offsets in row-major order and their strided views."""

    def __init__(self, window_dimensions, window_strides, window_dilation, out_shape):
        self.dims = tuple(window_dimensions)
        self.strides = tuple(window_strides)
        self.dilation = tuple(window_dilation)
        self.out_shape = tuple(out_shape)
        self.offsets = list(itertools.product(*(range(w) for w in self.dims)))

    def starts(self, offset):
        return tuple(k * d for k, d in zip(offset, self.dilation))

    def view(self, padded, offset):
        """The element at ``offset`` of every window: a strided slice of the padded operand."""
        start = self.starts(offset)
        limit = tuple(b + (n - 1) * s + 1 for b, n, s in zip(start, self.out_shape, self.strides))
        return lax.slice(padded, start, limit, self.strides)

    def disjoint(self) -> bool:
        """True when no element belongs to two windows (stride >= window, no window dilation)."""
        return all(d == 1 for d in self.dilation) and all(
            w <= s for w, s in zip(self.dims, self.strides)
        )


def _chosen_offset(windows: _Windows, padded, select: Callable, init=None):
    """Index (into ``windows.offsets``) of the element each window selects.

    Replays XLA's select-and-scatter: start from the window's first element (or from ``init``,
    index -1, as a window *reduction* does) and move to each next element ``v`` unless
    ``select(best, v)``. With ``select = ge`` that is the first maximum (NaN: as XLA).
    """
    views = (windows.view(padded, k) for k in windows.offsets)
    shape = windows.out_shape
    if init is None:
        best, chosen, first = next(views), lax.full(shape, 0, np.int32), 1
    else:
        best, chosen, first = lax.broadcast(init, shape), lax.full(shape, -1, np.int32), 0
    for i, v in enumerate(views, first):
        keep = select(best, v)
        best = lax.select(keep, best, v)
        chosen = lax.select(keep, chosen, lax.full(shape, i, np.int32))
    return chosen


def _scatter(windows: _Windows, ct, chosen, padded_shape):
    """Add each window's cotangent at its chosen element of the padded operand."""
    nd = len(windows.out_shape)
    if windows.disjoint():
        # One (out..., window...) block of masked cotangents, interleaved into place.
        k = len(windows.offsets)
        block_shape = (*windows.out_shape, k)
        hit = lax.eq(
            lax.broadcast_in_dim(chosen, block_shape, tuple(range(nd))),
            lax.broadcasted_iota(np.int32, block_shape, nd),
        )
        blocks = lax.select(
            hit,
            lax.broadcast_in_dim(ct, block_shape, tuple(range(nd))),
            lax.full(block_shape, 0, ct.dtype),
        )
        blocks = lax.reshape(blocks, (*windows.out_shape, *windows.dims))
        blocks = lax.transpose(blocks, tuple(d for i in range(nd) for d in (i, nd + i)))
        zero = scalar(0, ct.dtype)
        gaps = []  # (out_d, window_d) -> (out_d, stride_d): the cells no window covers
        for s, w in zip(windows.strides, windows.dims):
            gaps += [(0, 0, 0), (0, s - w, 0)]
        if any(hi != 0 for _, hi, _ in gaps):
            blocks = lax.pad(blocks, zero, gaps)
        tiled = lax.reshape(
            blocks, tuple(n * s for n, s in zip(windows.out_shape, windows.strides))
        )
        tail = [(0, p - t, 0) for p, t in zip(padded_shape, tiled.shape)]
        return lax.pad(tiled, zero, tail) if any(hi != 0 for _, hi, _ in tail) else tiled
    # Overlapping windows: pull rather than push. Element p of the padded operand is element
    # `offset` of the window o with o * stride + offset * dilation = p, so spread ct and the
    # choices over the operand's grid (ct dilated by the strides, with margins) and, per offset,
    # read them back shifted by offset * dilation: one fused pass over the operand, no scatter.
    margins = [(w - 1) * d for w, d in zip(windows.dims, windows.dilation)]
    spread = [
        (m, p - (n - 1) * s - 1, s - 1)
        for m, p, n, s in zip(margins, padded_shape, windows.out_shape, windows.strides)
    ]
    ct_spread = lax.pad(ct, scalar(0, ct.dtype), spread)
    chosen_spread = lax.pad(chosen, scalar(-1, np.int32), spread)
    zeros = lax.full(padded_shape, 0, ct.dtype)
    total = None
    for i, offset in enumerate(windows.offsets):
        start = tuple(m - k * d for m, k, d in zip(margins, offset, windows.dilation))
        limit = tuple(b + p for b, p in zip(start, padded_shape))
        hit = lax.eq(lax.slice(chosen_spread, start, limit), lax.full(padded_shape, i, np.int32))
        term = lax.select(hit, lax.slice(ct_spread, start, limit), zeros)
        total = term if total is None else lax.add(total, term)
    return total


def _gather(windows: _Windows, values_padded, chosen):
    """Each window's value of ``values_padded`` at its chosen element (0 where none)."""
    out = lax.full(windows.out_shape, 0, values_padded.dtype)
    for i, offset in enumerate(windows.offsets):
        hit = lax.eq(chosen, lax.full(windows.out_shape, i, np.int32))
        out = lax.select(hit, windows.view(values_padded, offset), out)
    return out


_SELECT = {"ge": (lax.ge_p, lax.ge, -np.inf), "le": (lax.le_p, lax.le, np.inf)}

# Windows with more cells than this are routed by XLA's select-and-scatter (as jax.grad does):
# the unrolled scan costs one slice per cell, so a 28x28 global pool would be ~800 slices and
# tens of seconds of compilation, while up to 64 cells it beats select-and-scatter outright.
MAX_UNROLLED_WINDOW = 64


def _select(select_prim) -> tuple[Any, Callable, float]:
    """(primitive, comparison, identity) for a select primitive: ge for max, le for min."""
    name = getattr(select_prim, "name", select_prim)
    if name not in _SELECT:
        raise NotImplementedError(f"select_and_* with select_prim={select_prim}: only ge and le")
    return _SELECT[name]


def _route_to_chosen(
    ct,
    x,
    select_prim,
    *,
    window_dimensions,
    window_strides,
    padding,
    base_dilation,
    window_dilation,
):
    """Cotangent of ``x``: each window's ``ct`` added at the element select-and-scatter picks.

    The operand is padded (and base-dilated) with the identity, -inf for max, so padding cells
    are candidates that lose every comparison but a tie with -inf: exactly what JAX's CPU
    lowering of select_and_scatter_add does.
    """
    prim, select, identity = _select(select_prim)
    config = _operand_padding(padding, base_dilation)
    padded = lax.pad(x, scalar(identity, x.dtype), config)
    unrolled = int(np.prod(window_dimensions)) <= MAX_UNROLLED_WINDOW
    if unrolled or any(d != 1 for d in window_dilation):
        windows = _Windows(window_dimensions, window_strides, window_dilation, ct.shape)
        chosen = _chosen_offset(windows, padded, select)
        ct_padded = _scatter(windows, ct, chosen, padded.shape)
    else:
        ct_padded = lax.select_and_scatter_add_p.bind(
            ct,
            padded,
            select_prim=prim,
            window_dimensions=tuple(window_dimensions),
            window_strides=tuple(window_strides),
            padding=((0, 0),) * len(window_dimensions),
        )
    return _unpad(ct_padded, padding, base_dilation)


# ---- rules ----------------------------------------------------------------------------------


def _window_sum_transpose(
    ct, x_shape, window_dimensions, window_strides, padding, base_dilation, window_dilation
):
    pads = _input_ct_padding(
        x_shape,
        window_dimensions,
        ct.shape,
        window_strides,
        padding,
        base_dilation,
        window_dilation,
    )
    spread = lax.pad(
        ct, scalar(0, ct.dtype), [(lo, hi, s - 1) for (lo, hi), s in zip(pads, window_strides)]
    )
    return lax.reduce_window_sum_p.bind(
        spread,
        window_dimensions=tuple(window_dimensions),
        window_strides=tuple(base_dilation),
        padding=((0, 0),) * len(x_shape),
        base_dilation=(1,) * len(x_shape),
        window_dilation=tuple(window_dilation),
    )


@vjp_rule(lax.reduce_window_sum_p)
def reduce_window_sum_vjp(ct, x, **window):
    """d sum-pool: every element gets the sum of the ct of the windows containing it.

    ``window``: the equation's window_dimensions, window_strides, padding, base_dilation and
    window_dilation (as in every rule below).
    """
    if np.size(ct) == 0 or np.size(x) == 0:
        return (None,)
    return (_window_sum_transpose(ct, np.shape(x), **window),)


def _window_chooser_vjp(ct, x, select_prim, window):
    if np.size(ct) == 0 or np.size(x) == 0:
        return (None,)
    return (_route_to_chosen(ct, x, select_prim, **window),)


@vjp_rule(lax.reduce_window_max_p)
def reduce_window_max_vjp(ct, x, **window):
    """d max-pool: each window's ct goes to its first maximal element; overlaps add up.

    The cotangent is routed with selects over the window's offsets rather than JAX's
    select-and-scatter, which XLA:CPU runs slowly (scripts/results/max_pool_vjp.md).
    """
    return _window_chooser_vjp(ct, x, lax.ge_p, window)


@vjp_rule(lax.reduce_window_min_p)
def reduce_window_min_vjp(ct, x, **window):
    """d min-pool: each window's ct goes to its first minimal element; overlaps add up."""
    return _window_chooser_vjp(ct, x, lax.le_p, window)


@vjp_rule(lax.select_and_gather_add_p)
def select_and_gather_add_vjp(ct, tangents, operand, *, needs, select_prim, **window):
    """select_and_gather_add picks each window's tangent at its max (min) of ``operand``; it is
    linear in ``tangents``, and its VJP scatters ct back there: the max-pool VJP itself (as in
    JAX, whose transpose is select_and_scatter_add)."""
    if not needs[0] or np.size(ct) == 0 or np.size(tangents) == 0:
        return (None, None)
    return (_route_to_chosen(ct, operand, select_prim, **window), None)


@vjp_rule(lax.select_and_scatter_add_p)
def select_and_scatter_add_vjp(
    ct, source, operand, *, needs, select_prim, window_dimensions, window_strides, padding
):
    """select_and_scatter_add is linear in ``source``: its VJP gathers ct at each window's
    selected element of ``operand``.

    Mirrors JAX, whose transpose is select_and_gather_add: a window *reduction* from the init
    (-inf, 0), so a window whose elements are all -inf (+inf for min) gathers 0, although
    select-and-scatter routed its source to the first of them.
    """
    if not needs[0] or np.size(source) == 0:
        return (None, None)
    prim, select, identity = _select(select_prim)
    nd = len(window_dimensions)
    if int(np.prod(window_dimensions)) > MAX_UNROLLED_WINDOW:
        gathered = lax.select_and_gather_add_p.bind(
            ct,
            operand,
            select_prim=prim,
            window_dimensions=tuple(window_dimensions),
            window_strides=tuple(window_strides),
            padding=tuple(tuple(p) for p in padding),
            base_dilation=(1,) * nd,
            window_dilation=(1,) * nd,
        )
        return (gathered, None)
    config = _operand_padding(padding, (1,) * nd)
    init = scalar(identity, operand.dtype)
    windows = _Windows(window_dimensions, window_strides, (1,) * nd, np.shape(source))
    chosen = _chosen_offset(windows, lax.pad(operand, init, config), select, init)
    return (_gather(windows, lax.pad(ct, scalar(0, ct.dtype), config), chosen), None)


# ---- the generic reduce_window --------------------------------------------------------------

_MONOIDS = {"add", "max", "min"}


def _monoid_name(jaxpr: Any, consts: Sequence[Any]) -> str | None:
    """'add', 'max' or 'min' if the computation is exactly ``op(a, b)`` of its two inputs."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    if consts or len(jaxpr.invars) != 2 or len(jaxpr.eqns) != 1 or len(jaxpr.outvars) != 1:
        return None
    (eqn,) = jaxpr.eqns
    name = eqn.primitive.name
    if name not in _MONOIDS or set(eqn.invars) != set(jaxpr.invars) or len(set(eqn.invars)) != 2:
        return None
    return name if jaxpr.outvars[0] is eqn.outvars[0] else None


def _unsupported_window(description: str) -> UnsupportedPrimitiveError:
    err = UnsupportedPrimitiveError("reduce_window", "<unknown source>")
    err.args = (
        f"funcgrad cannot differentiate this reduce_window: {description}. Its VJP rule "
        "handles one operand reduced by a plain add, max or min (jax.grad cannot differentiate "
        "a generic reduce_window at all). Write the window reduction with lax.reduce_window "
        "and init 0 (add), -inf (max) or +inf (min), or with explicit slices.",
    )
    return err


@vjp_rule(lax.reduce_window_p)
def reduce_window_vjp(cts, *operands, needs, jaxpr, consts, **window):
    """``out[w] = op(init, elements of window w)`` for op = add, max or min.

    (Padding and dilation cells take no part, as XLA computes it on CPU; with an ``init`` that
    is the op's identity JAX emits reduce_window_sum/max/min instead of this primitive.)

    * add: dx is the reduce_window_sum VJP; d init = sum(ct), init entering each window once;
    * max/min: as reduce_window_max/min, but each window's scan starts from ``init``: ct reaches
      the first element that beats init, and goes to init where none does.
    """
    if len(operands) != 2:
        raise _unsupported_window(f"it reduces {len(operands) // 2} operands together")
    op = _monoid_name(jaxpr, consts)
    if op is None:
        raise _unsupported_window(f"its computation is {jaxpr}")
    (ct,), (x, init) = cts, operands
    if np.size(ct) == 0:
        return (None, None)
    everything = tuple(range(ct.ndim))
    if op == "add":
        ct_x = _window_sum_transpose(ct, np.shape(x), **window) if needs[0] and np.size(x) else None
        return (ct_x, lax.reduce_sum(ct, everything) if needs[1] else None)
    select, identity = (lax.ge, -np.inf) if op == "max" else (lax.le, np.inf)
    padding, base_dilation = window["padding"], window["base_dilation"]
    config = _operand_padding(padding, base_dilation)
    windows = _Windows(
        window["window_dimensions"], window["window_strides"], window["window_dilation"], ct.shape
    )
    padded = lax.pad(x, scalar(identity, x.dtype), config)
    chosen = _chosen_offset(windows, padded, select, init)
    ct_x = None
    if needs[0] and np.size(x):
        ct_x = _unpad(_scatter(windows, ct, chosen, padded.shape), padding, base_dilation)
    ct_init = None
    if needs[1]:
        kept = lax.select(lax.eq(chosen, lax.full_like(chosen, -1)), ct, lax.full_like(ct, 0))
        ct_init = lax.reduce_sum(kept, everything)
    return (ct_x, ct_init)

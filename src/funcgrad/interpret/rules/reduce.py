"""VJP rules for reductions: sums, products, maxima, and cumulative scans.

A reduction's cotangent is broadcast back over the reduced axes; for max/min it goes only to the
positions that attained the extremum (shared equally among ties, as JAX does). Products use the
product of the *other* elements, computed from exclusive prefix and suffix products, so that a
zero in the input needs no division.

A general ``lax.reduce`` (a custom computation, or several operands reduced together, such as an
argmax carried with its value) is differentiated as JAX differentiates it: through the balanced
tree of pairwise combinations JAX's JVP evaluates (:class:`ReduceVjp`).

The cumulative ops (``cumsum``, ``cumprod``, ``cummax``, ``cummin``, ``cumlogsumexp``) follow
JAX, which differentiates its ``associative_scan`` implementation of them: for ``cummax`` and
``cummin`` that tree decides how a tie shares its cotangent, so the rule walks the same tree
backwards (:func:`_scan_chooser_vjp`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.extend.core import Literal, jaxpr_as_fun
from jax.extend.core import primitives as prims

from funcgrad.interpret.backward import backward
from funcgrad.interpret.errors import NotDifferentiableError, source_line
from funcgrad.interpret.registry import higher_order_rule, vjp_rule
from funcgrad.interpret.rules._common import balanced_eq, scalar
from funcgrad.interpret.trace import evaluate, jaxpr_activity

# ---- helpers --------------------------------------------------------------------------------


def _broadcast_back(ct, x, axes):
    """Broadcast a reduced cotangent back to ``x``'s shape (the kept dims stay in place)."""
    kept = tuple(d for d in range(np.ndim(x)) if d not in axes)
    return lax.broadcast_in_dim(ct, np.shape(x), kept)


def _slice(x, axis: int, start: int, stop: int, stride: int = 1):
    """``x[start:stop:stride]`` along ``axis`` (static bounds)."""
    return lax.slice_in_dim(x, start, stop, stride, axis)


def _shift(x, axis: int, by: int, fill):
    """Shift ``x`` along ``axis`` by ``by`` places (right if positive), filling with ``fill``.

    One ``pad`` with a negative edge: ``[a, b, c]`` shifted by 1 is ``[fill, a, b]``.
    """
    config = [(0, 0, 0)] * np.ndim(x)
    config[axis] = (by, -by, 0)
    return lax.pad(x, scalar(fill, x.dtype), config)


def _interleave(even, odd, axis: int):
    """``[e0, o0, e1, o1, ...]`` along ``axis`` (``even`` is as long as ``odd`` or one longer)."""
    same = even.shape[axis] == odd.shape[axis]
    zero = scalar(0, even.dtype)
    even_cfg = [(0, 0, 0)] * even.ndim
    odd_cfg = [(0, 0, 0)] * odd.ndim
    even_cfg[axis] = (0, 1 if same else 0, 1)
    odd_cfg[axis] = (1, 0 if same else 1, 1)
    return lax.add(lax.pad(even, zero, even_cfg), lax.pad(odd, zero, odd_cfg))


# ---- reductions -----------------------------------------------------------------------------


@vjp_rule(lax.reduce_sum_p, reads=())
def reduce_sum_vjp(ct, x, *, axes):  # d sum(x) = 1 for every summed element
    return (_broadcast_back(ct, x, axes),)


@vjp_rule(lax.reduce_max_p, lax.reduce_min_p)
def reduce_chooser_vjp(ct, x, *, out, axes):
    """d max(x) = [x == max(x)] / #[x == max(x)]: ties share equally (NaN: no position matches)."""
    return (_chooser_ct(ct, x, out, axes=tuple(axes)),)


def _chooser_ct(ct, x, out, *, axes):
    """share * hit, with share = ct / #maxima broadcast back and hit = [x == max(x)] in {0, 1}.

    Written as select(hit, share, share * 0): the same bits as the product (share * 1 = share;
    share * 0 is 0, -0 or NaN as share is finite, negative or not), but XLA turns a product by
    a converted mask into a select that gives 0 where JAX's eager product gives NaN (inf * 0
    where no position matches), which this form keeps.
    """
    hit = lax.eq(x, _broadcast_back(out, x, axes))
    count = lax.reduce_sum(lax.convert_element_type(hit, ct.dtype), axes)
    share = _broadcast_back(lax.div(ct, count), x, axes)
    return lax.select(hit, share, lax.mul(share, lax.full_like(share, 0)))


def _prod_of_others(x, axis: int):
    """prod_{j != i} x_j along ``axis``, exactly (zeros included): exclusive prefix * suffix."""
    before = _shift(lax.cumprod(x, axis), axis, 1, 1)
    after = _shift(lax.cumprod(x, axis, reverse=True), axis, -1, 1)
    return lax.mul(before, after)


@vjp_rule(lax.reduce_prod_p)
def reduce_prod_vjp(ct, x, *, axes):
    """d prod(x) / dx_i = prod_{j != i} x_j (the product of the others: exact with zeros)."""
    shape = np.shape(x)
    if np.size(x) == 0:
        return (lax.full(shape, 0, ct.dtype),)
    if len(axes) == 1:
        others = _prod_of_others(x, axes[0])
    else:
        # Move the reduced axes to the front and flatten them into one.
        kept = [d for d in range(len(shape)) if d not in axes]
        perm = (*axes, *kept)
        flat = lax.reshape(
            lax.transpose(x, perm),
            (int(np.prod([shape[a] for a in axes])), *(shape[d] for d in kept)),
        )
        others = lax.reshape(_prod_of_others(flat, 0), tuple(shape[d] for d in perm))
        others = lax.transpose(others, tuple(int(i) for i in np.argsort(perm)))
    return (lax.mul(_broadcast_back(ct, x, axes), others),)


# ---- general reductions: lax.reduce with a custom computation ---------------------------------


def _reduce_by_halves(combine, init_values, operands, axes):
    """``operands`` reduced over ``axes`` by a balanced tree of ``combine`` calls, as JAX's JVP
    does: the reduced axes are flattened into one leading axis (in ``axes`` order), then its
    first half is combined with its second, the second padded with the init values when the
    length is odd, until one element is left.
    """
    shape = np.shape(operands[0])
    kept = [d for d in range(len(shape)) if d not in axes]
    kept_shape = tuple(shape[d] for d in kept)
    size = math.prod(shape[d] for d in axes)
    perm = (*axes, *kept)
    xs = [lax.reshape(lax.transpose(x, perm), (size, *kept_shape)) for x in operands]
    if size == 0:
        return [lax.full(kept_shape, v) for v in init_values]
    while size > 1:
        half = (size + 1) // 2
        firsts = [_slice(x, 0, 0, half) for x in xs]
        seconds = [_slice(x, 0, half, size) for x in xs]
        if size % 2:
            seconds = [
                lax.pad(x, v, [(0, 1, 0)] + [(0, 0, 0)] * len(kept))
                for x, v in zip(seconds, init_values)
            ]
        xs = combine(*firsts, *seconds)
        size = half
    return [lax.reshape(x, kept_shape) for x in xs]


@functools.lru_cache(maxsize=256)
def _reduction_tree(computation: Any, axes: tuple[int, ...], avals: tuple[Any, ...]) -> Any:
    """The jaxpr of :func:`_reduce_by_halves` for a reduce equation with these inputs."""
    n = len(avals) // 2
    combine = jaxpr_as_fun(computation)
    for _ in range(len(avals[0].shape) - len(axes) + 1):  # elementwise over the remaining axes
        combine = jax.vmap(combine)

    def tree(*args):
        return _reduce_by_halves(combine, args[n:], args[:n], axes)

    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    return jax.make_jaxpr(tree)(*shapes)


def _tree_of(eqn) -> Any:
    return _reduction_tree(
        eqn.params["jaxpr"], tuple(eqn.params["dimensions"]), tuple(v.aval for v in eqn.invars)
    )


@higher_order_rule(prims.reduce_p)
class ReduceVjp:
    """``lax.reduce`` with a custom computation: the VJP of JAX's tree of pairwise combinations.

    ``reduce(xs, inits, f, axes)`` leaves the order of combination to XLA, so its derivative
    depends on an order. JAX's JVP picks one (:func:`_reduce_by_halves`) and differentiates it;
    so does funcgrad: when a gradient will flow, the forward pass evaluates that tree (the same
    values, up to the order of ``f``'s combinations) and keeps its trace, whose backward pass
    gives the cotangents, ties and all, of ``jax.grad``. Integer operands (an argmax carried with
    its value) get none. Like JAX, funcgrad refuses to differentiate the init values.
    """

    def forward(self, eqn, invals, active):
        n = len(invals) // 2
        if not any(active):
            return list(eqn.primitive.bind(*invals, **eqn.params)), [False] * n, None
        if any(active[n:]):
            raise NotDifferentiableError(
                f"lax.reduce at {source_line(eqn)}: funcgrad, like jax.grad, differentiates a "
                "general reduction with respect to its operands only, not its init values; "
                "pass constant init values (or wrap them in lax.stop_gradient)"
            )
        tree = _tree_of(eqn)
        sub = evaluate(tree.jaxpr, tree.consts, invals, active)
        out_active = [
            not isinstance(v, Literal) and v in sub.active for v in tree.jaxpr.outvars
        ]
        return sub.outputs, out_active, sub

    def outputs_active(self, eqn, active):
        if not any(active):
            return [False] * len(eqn.outvars)
        return jaxpr_activity(_tree_of(eqn).jaxpr, active)

    def backward(self, eqn, invals, record, cts, needs):
        return backward(record, cts)


# ---- cumulative reductions ------------------------------------------------------------------


@vjp_rule(lax.cumsum_p)
def cumsum_vjp(ct, x, *, axis, reverse):  # d cumsum(x) is linear: ct summed the other way
    return (lax.cumsum(ct, axis, reverse=not reverse),)


def _affine_compose(inner, outer):
    """(outer o inner)(s) for maps s -> a*s + b given as (a, b) pairs."""
    a_in, b_in = inner
    a_out, b_out = outer
    return lax.mul(a_out, a_in), lax.add(lax.mul(a_out, b_in), b_out)


@vjp_rule(lax.cumprod_p)
def cumprod_vjp(ct, x, *, out, axis, reverse):
    """For y_i = prod_{k<=i} x_k: dx_j = (prod_{k<j} x_k) * S_j with S_j = ct_j + x_{j+1} S_{j+1}.

    The prefix product is the output shifted by one; the suffix recurrence is a linear scan,
    solved exactly (no division, so zeros in ``x`` are fine) by an associative scan of affine
    maps. ``reverse=True`` is the mirror image.
    """
    n = np.shape(x)[axis]
    if n == 0:
        return (lax.full(np.shape(x), 0, ct.dtype),)
    step = -1 if reverse else 1  # which neighbour comes "before" in the product
    prefix = _shift(out, axis, step, 1)  # prod of the elements strictly before j
    coeff = _shift(x, axis, -step, 0)  # x_{j+1} (x_{j-1} when reversed)
    _, suffix = lax.associative_scan(_affine_compose, (coeff, ct), reverse=not reverse, axis=axis)
    return (lax.mul(prefix, suffix),)


def _scan_chooser_vjp(x, out, ct, axis: int, choose: Callable[[Any, Any], Any]) -> Any:
    """Cotangent of ``x`` for ``out = associative_scan(choose, x)`` (choose = max or min).

    Walks JAX's ``associative_scan`` tree backwards: pairs (x0,x1), (x2,x3), ... are combined,
    the scan of the pairs gives the odd outputs, and each even output combines the previous odd
    output with the next even input. Every combine routes its cotangent by ``balanced_eq`` (ties
    split 1/2, 1/2), exactly as JAX's JVP of ``max`` does, so ties share like jax.grad.
    ``out`` is the scan of ``x``: its odd positions are the scan of the pairs one level down.
    """
    n = x.shape[axis]
    if n < 2:
        return ct
    half = n // 2
    left, right = _slice(x, axis, 0, n - 1, 2), _slice(x, axis, 1, n, 2)
    pairs = choose(left, right)
    odd_out = _slice(out, axis, 1, n, 2)  # scan of `pairs`
    evens_in = _slice(x, axis, 2, n, 2)  # x2, x4, ...
    before = _slice(odd_out, axis, 0, half - 1) if n % 2 == 0 else odd_out
    evens_out = choose(before, evens_in)
    ct_evens = _slice(ct, axis, 2, n, 2)
    ct_before = lax.mul(ct_evens, balanced_eq(before, evens_out, evens_in))
    ct_evens_in = lax.mul(ct_evens, balanced_eq(evens_in, evens_out, before))
    if n % 2 == 0:  # odd_out[-1] is not read by any even output
        pad = [(0, 0, 0)] * ct.ndim
        pad[axis] = (0, 1, 0)
        ct_before = lax.pad(ct_before, scalar(0, ct.dtype), pad)
    ct_pairs = _scan_chooser_vjp(
        pairs, odd_out, lax.add(_slice(ct, axis, 1, n, 2), ct_before), axis, choose
    )
    ct_left = lax.mul(ct_pairs, balanced_eq(left, pairs, right))
    ct_right = lax.mul(ct_pairs, balanced_eq(right, pairs, left))
    # Even positions of x: x0 (only the first output), x2, x4, ... (even outputs), and the left
    # members of the pairs; odd positions: the right members of the pairs.
    ct_even_pos = lax.concatenate([_slice(ct, axis, 0, 1), ct_evens_in], axis)
    if n % 2 == 1:  # the last element has no pair partner
        pad = [(0, 0, 0)] * ct.ndim
        pad[axis] = (0, 1, 0)
        ct_left = lax.pad(ct_left, scalar(0, ct.dtype), pad)
    return _interleave(lax.add(ct_even_pos, ct_left), ct_right, axis)


def _cum_chooser_vjp(ct, x, out, axis: int, reverse: bool, choose):
    if reverse:  # JAX scans the reversed array and reverses the result
        x, out, ct = (lax.rev(a, (axis,)) for a in (x, out, ct))
    ct_x = _scan_chooser_vjp(x, out, ct, axis, choose)
    return lax.rev(ct_x, (axis,)) if reverse else ct_x


@vjp_rule(lax.cummax_p)
def cummax_vjp(ct, x, *, out, axis, reverse):
    """d cummax(x): each output's ct goes to its running max; ties split as JAX's scan tree."""
    return (_cum_chooser_vjp(ct, x, out, axis, reverse, lax.max),)


@vjp_rule(lax.cummin_p)
def cummin_vjp(ct, x, *, out, axis, reverse):
    """d cummin(x): each output's ct goes to its running min; ties split as JAX's scan tree."""
    return (_cum_chooser_vjp(ct, x, out, axis, reverse, lax.min),)


@vjp_rule(lax.cumlogsumexp_p)
def cumlogsumexp_vjp(ct, x, *, out, axis, reverse):
    """For y_i = log sum_{k<=i} exp(x_k): dx_j = sum_{i>=j} ct_i exp(x_j - y_i).

    Factored as dx_j = exp(x_j - y_j) Q_j with Q_j = sum_{i>=j} ct_i exp(y_j - y_i), i.e.
    Q_j = ct_j + exp(y_j - y_{j+1}) Q_{j+1}: every factor is at most 1 (y is nondecreasing), so
    nothing overflows, and the recurrence is solved by an associative scan of affine maps.
    """
    if np.shape(x)[axis] == 0:
        return (lax.full(np.shape(x), 0, ct.dtype),)
    step = -1 if reverse else 1
    decay = lax.exp(lax.sub(out, _shift(out, axis, -step, np.inf)))  # exp(y_j - y_{j+1}), 0 last
    _, q = lax.associative_scan(_affine_compose, (decay, ct), reverse=not reverse, axis=axis)
    # exp(x_j - y_j); the scan's first output is its input itself: slope 1 (even at -inf, as JAX)
    n = np.shape(x)[axis]
    own = lax.exp(lax.sub(x, out))
    one_shape = list(np.shape(x))
    one_shape[axis] = 1
    one = lax.full(tuple(one_shape), 1, own.dtype)
    if reverse:
        own = lax.concatenate([_slice(own, axis, 0, n - 1), one], axis)
    else:
        own = lax.concatenate([one, _slice(own, axis, 1, n)], axis)
    return (lax.mul(own, q),)

"""VJP rules for indexing: dynamic slices, gather, the scatters, sort, top_k and approx_top_k.

Gather and scatter-add are each other's transposes: a gather reads windows of the operand at the
given indices, so its cotangent is a scatter-*add* of ``ct`` into zeros (two reads of one element
add up), with the same dimension numbers seen from the other side; a scatter-add's ``updates``
cotangent is the gather of ``ct`` at those indices. Sort and top_k move values through a
permutation, so their cotangents are scattered back through it. Index operands never get a
cotangent.

Out-of-bounds indices follow the mode of the primitive, as in JAX: ``FILL_OR_DROP`` rows of a
gather contribute nothing, ``CLIP`` rows credit the clamped window, ``PROMISE_IN_BOUNDS`` is
clamped on the way in (gather) and dropped on the way back (scatter), so its gradient is only
right for in-bounds indices, exactly as ``jax.grad``'s.
"""

from __future__ import annotations

import numpy as np
from jax import lax
from jax.extend.core import primitives as prims

from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.registry import higher_order_rule, vjp_rule
from funcgrad.interpret.rules._common import zeros, zeros_as

_MODES = lax.GatherScatterMode


# ---- dynamic slices -------------------------------------------------------------------------
# The primitives are bound directly: lax.dynamic_slice would wrap negative starts a second time.
# Both primitives clamp their starts so that the window fits, the same way, so a cotangent goes
# back exactly where the value came from, out-of-range starts included.


@vjp_rule(lax.dynamic_slice_p)
def dynamic_slice_vjp(ct, x, *starts):
    """d dynamic_slice(x, s) = ct written into zeros at the same (clamped) starts."""
    grad_x = lax.dynamic_update_slice_p.bind(zeros_as(ct, np.shape(x)), ct, *starts)
    return (grad_x, *([None] * len(starts)))


@vjp_rule(lax.dynamic_update_slice_p)
def dynamic_update_slice_vjp(ct, x, update, *starts, needs):
    """d dus(x, u, s): x gets ct with the window zeroed; u gets the window of ct."""
    grad_x = grad_update = None
    if needs[0]:
        window_zeros = zeros_as(ct, np.shape(update))
        grad_x = lax.dynamic_update_slice_p.bind(ct, window_zeros, *starts)
    if needs[1]:
        grad_update = lax.dynamic_slice_p.bind(ct, *starts, slice_sizes=np.shape(update))
    return (grad_x, grad_update, *([None] * len(starts)))


# ---- gather and the scatters ----------------------------------------------------------------
def _scatter_dnums(gather_dnums):
    """The scatter that writes back where a gather with ``gather_dnums`` read."""
    return lax.ScatterDimensionNumbers(
        update_window_dims=gather_dnums.offset_dims,
        inserted_window_dims=gather_dnums.collapsed_slice_dims,
        scatter_dims_to_operand_dims=gather_dnums.start_index_map,
        operand_batching_dims=gather_dnums.operand_batching_dims,
        scatter_indices_batching_dims=gather_dnums.start_indices_batching_dims,
    )


def _gather_dnums(scatter_dnums):
    """The gather that reads where a scatter with ``scatter_dnums`` wrote."""
    return lax.GatherDimensionNumbers(
        offset_dims=scatter_dnums.update_window_dims,
        collapsed_slice_dims=scatter_dnums.inserted_window_dims,
        start_index_map=scatter_dnums.scatter_dims_to_operand_dims,
        operand_batching_dims=scatter_dnums.operand_batching_dims,
        start_indices_batching_dims=scatter_dnums.scatter_indices_batching_dims,
    )


def _window_sizes(operand_shape, updates_shape, scatter_dnums):
    """Slice sizes of the gather mirroring a scatter: 1 on inserted and batching dims, else the
    size of the matching update window dim."""
    sizes, windows = [], iter(scatter_dnums.update_window_dims)
    skipped = set(scatter_dnums.inserted_window_dims) | set(scatter_dnums.operand_batching_dims)
    for d in range(len(operand_shape)):
        sizes.append(1 if d in skipped else updates_shape[next(windows)])
    return tuple(sizes)


def _gather_windows(ct, indices, updates_shape, dimension_numbers, mode):
    """The windows of ``ct`` a scatter with these dimension numbers wrote to (0 where dropped)."""
    return lax.gather(
        ct,
        indices,
        _gather_dnums(dimension_numbers),
        _window_sizes(ct.shape, updates_shape, dimension_numbers),
        mode=mode,
        fill_value=0,
    )


@vjp_rule(lax.gather_p)
def gather_vjp(
    ct, x, indices, *, dimension_numbers, indices_are_sorted, unique_indices, mode
):
    """d gather(x, i) = scatter-add of ct into zeros(x) at i (repeated reads add up)."""
    grad_x = lax.scatter_add(
        zeros_as(ct, np.shape(x)),
        indices,
        ct,
        _scatter_dnums(dimension_numbers),
        indices_are_sorted=indices_are_sorted,
        unique_indices=unique_indices,
        mode=mode,
    )
    return (grad_x, None)


@vjp_rule(lax.scatter_add_p)
def scatter_add_vjp(ct, x, indices, updates, *, dimension_numbers, mode, needs):
    """d scatter_add(x, i, u): x gets ct; u gets gather(ct, i) (0 for dropped windows)."""
    grad_updates = None
    if needs[2]:
        grad_updates = _gather_windows(ct, indices, np.shape(updates), dimension_numbers, mode)
    return (ct if needs[0] else None, None, grad_updates)


@vjp_rule(lax.scatter_sub_p)
def scatter_sub_vjp(ct, x, indices, updates, *, dimension_numbers, mode, needs):
    """d scatter_sub(x, i, u): x gets ct; u gets -gather(ct, i)."""
    grad_updates = None
    if needs[2]:
        windows = _gather_windows(ct, indices, np.shape(updates), dimension_numbers, mode)
        grad_updates = lax.neg(windows)
    return (ct if needs[0] else None, None, grad_updates)


@vjp_rule(lax.scatter_mul_p)
def scatter_mul_vjp(
    ct, x, indices, updates, *, dimension_numbers, indices_are_sorted, unique_indices, mode,
    needs,
):
    """d scatter_mul(x, i, u): x gets scatter_mul(ct, i, u); u gets gather(ct * x, i).

    The updates rule holds only when no slot is multiplied twice (else d/du_j would need the
    product of the other updates); like ``jax.grad``, it refuses unless ``unique_indices``.
    """
    grad_x = grad_updates = None
    if needs[0]:
        grad_x = lax.scatter_mul(
            ct,
            indices,
            updates,
            dimension_numbers,
            indices_are_sorted=indices_are_sorted,
            unique_indices=unique_indices,
            mode=mode,
        )
    if needs[2]:
        if not unique_indices:
            raise NotDifferentiableError(
                "funcgrad, like jax.grad, differentiates scatter-mul with respect to its updates "
                "only when unique_indices=True (x.at[i].multiply(u, unique_indices=True)); with "
                "repeated indices d/du would be a product of the other updates"
            )
        grad_updates = _gather_windows(
            lax.mul(ct, x), indices, np.shape(updates), dimension_numbers, mode
        )
    return (grad_x, None, grad_updates)


@vjp_rule(lax.scatter_p)
def scatter_vjp(
    ct, x, indices, updates, *, dimension_numbers, indices_are_sorted, unique_indices, mode,
    update_jaxpr=None, needs,
):
    """d scatter(x, i, u) (overwrite): x gets ct zeroed where written; u gets gather(ct, i).

    With repeated indices only the update that won a slot gets its cotangent, as in JAX: every
    update is tagged with a distinct id, the ids are scattered the same way, and an update is
    credited where gathering the scattered ids back returns its own id.
    """
    if update_jaxpr is not None:
        raise NotDifferentiableError("funcgrad, like jax.grad, cannot differentiate scatter_apply")
    if unique_indices:
        grad_x = grad_updates = None
        if needs[0]:
            grad_x = lax.scatter(
                ct,
                indices,
                zeros_as(ct, np.shape(updates)),
                dimension_numbers,
                indices_are_sorted=indices_are_sorted,
                unique_indices=True,
                mode=mode,
            )
        if needs[2]:
            grad_updates = _gather_windows(
                ct, indices, np.shape(updates), dimension_numbers, mode
            )
        return (grad_x, None, grad_updates)

    updates_shape = np.shape(updates)
    ids_shape = list(updates_shape)
    for d in dimension_numbers.update_window_dims:
        ids_shape[d] = 1  # one id per update window, broadcast over the window
    n_ids = int(np.prod(ids_shape))
    ids = lax.add(
        lax.reshape(lax.iota(np.int32, n_ids), tuple(ids_shape)), np.ones((), np.int32)
    )
    ids = lax.broadcast_in_dim(ids, updates_shape, tuple(range(len(updates_shape))))
    scattered_ids = lax.scatter(
        zeros(np.shape(x), np.int32),
        indices,
        ids,
        dimension_numbers,
        indices_are_sorted=indices_are_sorted,
        unique_indices=False,
        mode=mode,
    )
    grad_x = grad_updates = None
    if needs[0]:
        kept = lax.eq(scattered_ids, zeros(scattered_ids.shape, np.int32))
        grad_x = lax.select(kept, ct, zeros_as(ct, ct.shape))
    if needs[2]:
        # JAX gathers the ids back with the default (FILL_OR_DROP) mode whatever the scatter's.
        won = lax.eq(
            ids, _gather_windows(scattered_ids, indices, updates_shape, dimension_numbers, None)
        )
        windows = _gather_windows(ct, indices, updates_shape, dimension_numbers, mode)
        grad_updates = lax.select(won, windows, zeros(windows.shape, windows.dtype))
    return (grad_x, None, grad_updates)


@vjp_rule(lax.scatter_max_p, lax.scatter_min_p)
def scatter_extremum_vjp(ct, x, indices, updates, *, out, dimension_numbers, mode, needs):
    """d scatter_max(x, i, u) (and min): a slot's ct is shared equally among the values that
    attain it, the operand's old value and every update that ties with it, as in JAX.

    Per update window: ``n`` updates equal the result at its slot, the operand did (``kept``) or
    not, ``refs`` updates point at the slot. An attaining update gets ct/(n + kept); the operand
    keeps ct * kept/(n + kept). JAX's JVP spreads the operand's correction over the ``refs``
    updates at the slot; its transpose (and this rule) adds the ``refs`` shares back.
    """
    updates_shape = np.shape(updates)
    x_shape = np.shape(x)
    sizes = _window_sizes(x_shape, updates_shape, dimension_numbers)
    gather_dnums = _gather_dnums(dimension_numbers)

    def at_windows(a):  # the default gather mode (FILL_OR_DROP), as in JAX's JVP
        return lax.gather(a, indices, gather_dnums, sizes)

    def count_at_windows(per_update):
        totals = lax.scatter_add(zeros_as(ct, x_shape), indices, per_update, dimension_numbers)
        return at_windows(totals)

    one = lax.full(updates_shape, 1, ct.dtype)
    zero = zeros_as(ct, updates_shape)
    result = at_windows(out)
    attained = lax.eq(updates, result)
    kept = lax.eq(at_windows(x), result)
    n_attained = count_at_windows(lax.select(attained, one, zero))
    n_refs = count_at_windows(one)
    share_if_kept = lax.div(one, lax.add(n_attained, one))
    share = lax.select(kept, share_if_kept, lax.div(one, n_attained))
    updates_coef = lax.select(attained, share, zero)
    operand_coef = lax.div(lax.add(lax.neg(one), lax.select(kept, share_if_kept, zero)), n_refs)

    ct_windows = lax.gather(ct, indices, gather_dnums, sizes, mode=mode, fill_value=0)
    grad_x = grad_updates = None
    if needs[0]:
        corrections = lax.mul(ct_windows, operand_coef)
        back = lax.scatter_add(zeros_as(ct, x_shape), indices, corrections, dimension_numbers)
        grad_x = lax.add(ct, back)
    if needs[2]:
        grad_updates = lax.mul(ct_windows, updates_coef)
    return (grad_x, None, grad_updates)


# ---- sort and top_k --------------------------------------------------------------------------
def _add_back_along(ct, positions, axis, operand_shape, mode):
    """zeros(operand_shape) with ct[..., j, ...] added at positions[..., j, ...] along ``axis``.

    The transpose of ``take_along_axis(x, positions, axis)``: every other dim is a batch dim.
    """
    batch = tuple(d for d in range(ct.ndim) if d != axis)
    return lax.scatter_add(
        zeros_as(ct, operand_shape),
        lax.reshape(positions, (*positions.shape, 1)),
        ct,
        lax.ScatterDimensionNumbers(
            update_window_dims=(),
            inserted_window_dims=(axis,),
            scatter_dims_to_operand_dims=(axis,),
            operand_batching_dims=batch,
            scatter_indices_batching_dims=batch,
        ),
        mode=mode,
    )


@higher_order_rule(lax.sort_p)
class SortVjp:
    """d sort(x, ...) = each output's ct scattered back through the sorting permutation.

    The permutation is the one residual a sort's VJP needs, and recomputing it in the backward
    pass would sort twice. So when a gradient will flow, the forward pass sorts an iota along with
    the operands (as JAX's own JVP does: one sort, the same tie order) and keeps the permutation.
    Output i depends only on operand i (the permutation is piecewise constant in the keys).
    """

    def forward(self, eqn, invals, active):
        params = eqn.params
        if not any(active):
            return list(lax.sort_p.bind(*invals, **params)), list(active), None
        iota = lax.broadcasted_iota(np.int32, np.shape(invals[0]), params["dimension"])
        *outs, permutation = lax.sort_p.bind(*invals, iota, **params)
        return outs, list(active), [permutation]

    def outputs_active(self, eqn, active):
        return list(active)

    def backward(self, eqn, invals, record, cts, needs):
        dimension = eqn.params["dimension"]
        shape = np.shape(invals[0])
        permutation = record[0]
        return [
            _add_back_along(ct, permutation, dimension, shape, _MODES.PROMISE_IN_BOUNDS)
            if need and ct is not None
            else None
            for ct, need in zip(cts, needs)
        ]


@vjp_rule(lax.top_k_p)
def top_k_vjp(cts, x, *, out, axis=-1):
    """d top_k(x)[0] = the values' ct added back at the returned indices; indices get none."""
    ct_values = cts[0]
    if ct_values is None:
        return (None,)
    axis = axis % np.ndim(x)
    # JAX's JVP gathers with the default mode (FILL_OR_DROP); its transpose scatters with it too.
    return (_add_back_along(ct_values, out[1], axis, np.shape(x), _MODES.FILL_OR_DROP),)


@vjp_rule(prims.approx_top_k_p)
def approx_top_k_vjp(cts, x, *, out, reduction_dimension):
    """As top_k: the values' ct added back at the returned indices along the reduction dimension.

    On CPU the "approximate" top-k is exact; where it is approximate (TPU), the gradient goes to
    the values it did return, as JAX's does.
    """
    ct_values = cts[0]
    if ct_values is None:
        return (None,)
    axis = reduction_dimension % np.ndim(x)
    return (_add_back_along(ct_values, out[1], axis, np.shape(x), _MODES.FILL_OR_DROP),)

"""VJP rules for ``jax.shard_map`` and the collectives inside it (``psum``, ``all_gather``, ...).

``shard_map`` is higher-order: its backward pass is another ``shard_map`` over the same mesh,
whose body re-evaluates the forward body on each shard and runs funcgrad's backward pass there,
as ``cond``'s rule re-evaluates the branch taken. Inputs enter it with their forward
``in_specs``, output cotangents with the ``out_specs``, and input cotangents leave with the
``in_specs`` again, so ``jax.jit(fg.grad(f))`` is one program built of shard_maps, in which XLA
merges the re-evaluated body with the forward one (the compiled program holds the same
collectives as ``jax.grad``'s), and the collectives in the body are transposed by the rules
below, on each shard. ``jax.pmap`` and ``jax.smap`` are shard_maps too.

With ``check_vma=True`` (the default) every value inside carries the set of mesh axes it varies
over (its ``vma``), and the body's jaxpr already holds an explicit ``pvary`` wherever an
invariant value meets a varying one. The rules respect those types: ``psum`` (which binds
``psum_invariant``, varying -> invariant) transposes to ``pvary`` (invariant -> varying) and
vice versa, and a replicated input's cotangent comes out invariant. With ``check_vma=False``
(and under ``jax.pmap``, which is a shard_map without the check) nothing is typed: as in JAX,
an output replicated over an axis shares its cotangent equally among that axis's devices, and an
input replicated over an axis sums its per-device cotangents over it.

The collectives are linear, so each rule is the adjoint collective:
``psum <-> pvary`` (or ``psum`` itself without vma), ``all_gather <-> psum_scatter``,
``all_gather_invariant -> the shard's own slice``, ``all_to_all -> all_to_all`` with the split
and concat axes swapped, ``ppermute -> ppermute`` by the inverse permutation,
``pbroadcast -> psum`` kept on the source device, ``ragged_all_to_all`` -> the same exchange run
backwards, and on explicit-sharding meshes the casts between varying, invariant, reduced and
unreduced values into each other (``reshard`` moves a cotangent back to its input's sharding).
``axis_index`` is an integer: no cotangent. ``pmax``/``pmin`` have no derivative in JAX, and
funcgrad refuses them the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from funcgrad.interpret.backward import backward, instantiate
from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.registry import higher_order_rule, vjp_rule, zero_vjp
from funcgrad.interpret.rules._common import const, select, zeros_like
from funcgrad.interpret.shortcuts import PLAIN, using_shortcuts
from funcgrad.interpret.trace import evaluate, jaxpr_activity

__all__ = ["ReshardVjp", "ShardMapVjp"]


# ---- types: which mesh axes a value varies over ----------------------------------------------
def _varying(x: Any) -> frozenset:
    """The mesh axes ``x`` varies over (empty outside shard_map and with ``check_vma=False``)."""
    mat = getattr(jax.typeof(x), "mat", None)
    return frozenset() if mat is None else mat.varying


def _vary(x: Any, axes: Sequence[Any]) -> Any:
    """``x`` made device-varying over ``axes`` (``pvary``) where it is not yet: a type cast.

    A dense zero a rule creates is invariant; a collective over ``axes`` needs a varying input.
    Only shard_map's manual axes carry these types: without vma checking ``pvary`` is the
    identity and binds nothing, and the named axes of ``vmap`` have no types to cast.
    """
    manual = jax.sharding.get_abstract_mesh().manual_axes
    missing = tuple(a for a in axes if a in manual and a not in _varying(x))
    return lax.pcast(x, missing, to="varying") if missing else x


def _named(axes: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(a for a in axes if not isinstance(a, int))


def _as_tuple(axis_name: Any) -> tuple[Any, ...]:
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


# ---- the reductions --------------------------------------------------------------------------
@vjp_rule("psum_invariant", reads=())
def psum_invariant_vjp(ct, x, *, axes):
    """psum over ``axes`` of a varying value, invariant result: its adjoint is ``pvary``.

    y = sum_d x_d on every device  =>  ct_x_d = ct_y, the same cotangent on each device of the
    axes, now typed as varying over them.
    """
    return (_vary(ct, axes),)


@vjp_rule(lax.psum_p, reads=())
def psum_vjp(ct, x, *, axes, axis_index_groups):
    """psum without vma types (``check_vma=False``, ``pmap``, ``vmap`` with ``axis_name``).

    Over named axes, ``psum`` is read as psum-then-broadcast, so its adjoint is ``psum`` again
    (each device's output cotangent counts once per device that holds the sum); positional
    (integer) axes are an ordinary ``reduce_sum``, whose adjoint broadcasts.
    """
    positional = tuple(a for a in axes if isinstance(a, int))
    if positional:
        shape = np.shape(x)
        dims = [a % len(shape) for a in positional]
        kept = tuple(d for d in range(len(shape)) if d not in dims)
        ct = lax.broadcast_in_dim(ct, shape, kept)
    named = _named(axes)
    if named:
        ct = lax.psum_p.bind(ct, axes=named, axis_index_groups=axis_index_groups)
    return (ct,)


@vjp_rule("pvary", reads=())
def pvary_vjp(ct, x, *, axes):
    """``pvary``: an invariant value made varying over ``axes``; its adjoint is ``psum``.

    y_d = x on every device d  =>  ct_x = sum_d ct_y_d, invariant again.
    """
    return (lax.psum(_vary(ct, axes), axes),)


def _refuse_extremum(name: str) -> None:
    raise NotDifferentiableError(
        f"Differentiation rule for '{name}' not implemented: JAX defines no derivative of "
        f"lax.{name} (jax.grad raises this same error), and funcgrad does not guess one. To "
        f"differentiate a maximum across devices, all_gather the values and take jnp.max "
        f"(or jnp.min) of the gathered array."
    )


@vjp_rule(lax.pmax_p, reads=())
def pmax_vjp(ct, x, *, axes, axis_index_groups):
    """Refused, as ``jax.grad`` refuses: JAX has no derivative rule for ``pmax``."""
    _refuse_extremum("pmax")


@vjp_rule(lax.pmin_p, reads=())
def pmin_vjp(ct, x, *, axes, axis_index_groups):
    """Refused, as ``jax.grad`` refuses: JAX has no derivative rule for ``pmin``."""
    _refuse_extremum("pmin")


# ---- gathers and scatters --------------------------------------------------------------------
@vjp_rule(lax.all_gather_p, reads=())
def all_gather_vjp(ct, x, *, all_gather_dimension, axis_name, axis_index_groups, axis_size,
                   tiled):
    """all_gather (varying -> varying): its adjoint is ``psum_scatter`` along the same dimension.

    y = concat_d x_d on every device  =>  ct_x_d = (sum_e ct_y_e)[block d].
    """
    ct = _vary(ct, _as_tuple(axis_name))
    return (
        lax.psum_scatter(
            ct,
            axis_name,
            scatter_dimension=all_gather_dimension,
            axis_index_groups=axis_index_groups,
            tiled=tiled,
        ),
    )


@vjp_rule("reduce_scatter", reads=())
def reduce_scatter_vjp(ct, x, *, scatter_dimension, axis_name, axis_index_groups, axis_size,
                       tiled):
    """psum_scatter: its adjoint is ``all_gather`` along the scattered dimension.

    y_d = (sum_e x_e)[block d]  =>  ct_x_e = concat_d ct_y_d, the same on every device e.
    """
    ct = _vary(ct, _as_tuple(axis_name))
    return (
        lax.all_gather(
            ct,
            axis_name,
            axis_index_groups=axis_index_groups,
            axis=scatter_dimension,
            tiled=tiled,
        ),
    )


@vjp_rule("all_gather_invariant", reads=())
def all_gather_invariant_vjp(ct, x, *, all_gather_dimension, axis_name, axis_size, tiled):
    """all_gather to an invariant result: each device's cotangent is its own block of ``ct``.

    y = concat_d x_d, one value for all devices  =>  ct_x_d = ct_y[block d], block d chosen
    by the device's ``axis_index``.
    """
    block = ct.shape[all_gather_dimension] // axis_size
    start = lax.mul(lax.axis_index(axis_name), np.int32(block))
    out = lax.dynamic_slice_in_dim(ct, start, block, axis=all_gather_dimension)
    return (out if tiled else lax.squeeze(out, (all_gather_dimension,)),)


@vjp_rule(lax.all_to_all_p, reads=())
def all_to_all_vjp(ct, x, *, axis_name, split_axis, concat_axis, axis_index_groups, tiled):
    """all_to_all: a permutation of blocks among devices; its adjoint swaps split and concat.

    As a primitive, all_to_all splits ``split_axis`` into one block per device and
    concatenates the blocks received along ``concat_axis`` (``tiled`` only tells how the
    public function reshaped around it); sending each block back is the same exchange with the
    two axes swapped.
    """
    ct = _vary(ct, _as_tuple(axis_name))
    return (
        lax.all_to_all_p.bind(
            ct,
            axis_name=axis_name,
            split_axis=concat_axis,
            concat_axis=split_axis,
            axis_index_groups=axis_index_groups,
            tiled=tiled,
        ),
    )


@vjp_rule(lax.ppermute_p, reads=())
def ppermute_vjp(ct, x, *, axis_name, perm):
    """ppermute sends x from device s to device t for each (s, t): the adjoint sends t -> s.

    Devices that receive nothing get zeros, and devices that send nothing get a zero cotangent.
    """
    inverse = tuple((dst, src) for src, dst in perm)
    return (lax.ppermute(_vary(ct, _as_tuple(axis_name)), axis_name, inverse),)


@vjp_rule("pbroadcast", reads=())
def pbroadcast_vjp(ct, x, *, axis_name, source):
    """pbroadcast copies the source device's x to every device: the source gets the sum.

    y_d = x_source for all d  =>  ct_x_source = sum_d ct_y_d, and zero on other devices.
    """
    total = lax.psum(_vary(ct, _as_tuple(axis_name)), axis_name)
    is_source = lax.eq(lax.axis_index(axis_name), np.int32(source))
    return (select(is_source, total, zeros_like(total)),)


@vjp_rule(lax.ragged_all_to_all_p, reads=(2, 3, 4, 5))
def ragged_all_to_all_vjp(ct, operand, output, input_offsets, send_sizes, output_offsets,
                          recv_sizes, *, axis_name, axis_index_groups, needs):
    """ragged_all_to_all writes slices sent by other devices over rows of ``output``.

    result = output with rows [here_i, here_i + recv_i) replaced by received slices, where
    here = all_to_all(output_offsets) says where each received slice lands locally:
    ct_output = ct with those rows zeroed, and ct_operand is the same exchange run backwards,
    each receiver sending its rows' cotangents back to the sender's ``input_offsets``.
    The offsets and sizes are integers: no cotangent.
    """
    here = lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)
    grad_operand = grad_output = None
    if needs[0]:
        there = lax.all_to_all(input_offsets, axis_name, 0, 0, tiled=True)
        grad_operand = lax.ragged_all_to_all(
            ct, lax.full_like(ct, 0, shape=np.shape(operand)), here, recv_sizes, there,
            send_sizes, axis_name=axis_name, axis_index_groups=axis_index_groups,
        )
    if needs[1]:
        rows = lax.broadcasted_iota(here.dtype, (ct.shape[0], here.shape[0]), 0)
        starts = lax.broadcast_in_dim(here, rows.shape, (1,))
        ends = lax.add(starts, lax.broadcast_in_dim(recv_sizes, rows.shape, (1,)))
        covered = lax.reduce_or(lax.bitwise_and(lax.ge(rows, starts), lax.lt(rows, ends)), (1,))
        covered = lax.broadcast_in_dim(covered, ct.shape, (0,))
        grad_output = select(covered, zeros_like(ct), ct)
    return (grad_operand, grad_output, None, None, None, None)


# the device's position along a mesh axis is an integer: nothing flows into or out of it
zero_vjp(lax.axis_index_p)


@higher_order_rule("reshard")
class ReshardVjp:
    """``jax.sharding.reshard`` moves x to another sharding: its cotangent moves back to x's.

    A rule class only because the cotangent's target may be a sharding the public
    ``jax.sharding.reshard`` refuses (x unsharded, on no mesh at all): it binds the
    primitive itself, ``reshard[dst_sharding=sharding of x]``, as JAX's transpose does.
    """

    def forward(self, eqn, invals, active):
        return [eqn.primitive.bind(*invals, **eqn.params)], self.outputs_active(eqn, active), None

    def outputs_active(self, eqn, active):
        return [any(active)]

    def backward(self, eqn, invals, record, cts, needs):
        src = eqn.invars[0].aval.sharding
        with jax.sharding.use_abstract_mesh(src.mesh):
            ct = eqn.primitive.bind(
                cts[0], dst_sharding=src, concrete_mesh=eqn.params["concrete_mesh"]
            )
        return [ct]


# ---- reduced and unreduced values (explicit-sharding meshes, under jit) ----------------------
# An *unreduced* value holds one addend per device of the sum it stands for; a *reduced* one
# holds the same value on every device, and its cotangent is unreduced, and vice versa. The
# casts between these types and varying/invariant ones transpose into each other, as in JAX.
@vjp_rule("vary_unreduced_cast_p", reads=())
def vary_unreduced_cast_vjp(ct, x, *, axes):
    """Varying -> unreduced (x_d read as addends of one sum): the reduced ct is each device's."""
    return (lax.pcast(ct, axes, to="varying"),)


@vjp_rule("reduced_vary_cast_p", reads=())
def reduced_vary_cast_vjp(ct, x, *, axes):
    """Reduced -> varying (every device keeps its copy): the cotangents are addends, unreduced."""
    return (lax.pcast(_vary(ct, axes), axes, to="unreduced"),)


@vjp_rule("preduced", reads=())
def preduced_vjp(ct, x, *, axes):
    """Invariant -> reduced (a no-op cast): the unreduced cotangent is summed, invariant."""
    return (lax.psum(ct, axes),)


@vjp_rule("unreduced_psum", reads=())
def unreduced_psum_vjp(ct, x, *, axes):
    """Unreduced -> invariant (the pending sum done): the cotangent is a reduced copy."""
    return (lax.pcast(ct, axes, to="reduced"),)


@vjp_rule("all_gather_reduced", reads=())
def all_gather_reduced_vjp(ct, x, *, all_gather_dimension, axis_name, axis_size, tiled):
    """all_gather to a reduced result: the unreduced cotangent is summed and scattered back.

    y = concat_d x_d on every device  =>  ct_x_d = (sum_e ct_y_e)[block d].
    """
    return (lax.psum_scatter(ct, axis_name, scatter_dimension=all_gather_dimension, tiled=tiled),)


@vjp_rule("unreduced_reduce_scatter", reads=())
def unreduced_reduce_scatter_vjp(ct, x, *, axis_name, scatter_dimension, axis_size, tiled):
    """psum_scatter of an unreduced value: the cotangent is all_gathered into a reduced one."""
    return (
        lax.all_gather(
            _vary(ct, _as_tuple(axis_name)), axis_name, axis=scatter_dimension, tiled=tiled,
            to="reduced",
        ),
    )


# ---- shard_map -------------------------------------------------------------------------------
def _mentioned(spec: PartitionSpec) -> set[Any]:
    """Mesh axes a spec names: those the value is split over (and unreduced over)."""
    names: set[Any] = set(getattr(spec, "unreduced", ()) or ())
    for part in spec:
        if part is not None:
            names.update(_as_tuple(part))
    return names


def _unmentioned(params: dict[str, Any], spec: PartitionSpec) -> tuple[Any, ...]:
    """The manual mesh axes ``spec`` does not split over: the value is replicated along them."""
    manual = params["newly_manual_axes"]
    named = _mentioned(spec)
    return tuple(n for n in params["mesh"].axis_names if n in manual and n not in named)


def _explicit(params: dict[str, Any]) -> bool:
    """Whether every manual axis is ``Explicit``: then a value's type carries its sharding."""
    mesh = params["mesh"]
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    return all(types[n] == jax.sharding.AxisType.Explicit for n in params["newly_manual_axes"])


def _padded(spec: PartitionSpec, ndim: int) -> tuple[Any, ...]:
    return (*spec, *(None,) * (ndim - len(spec)))


def _resharded(ct: Any, spec: PartitionSpec, mesh: Any) -> Any:
    """``ct`` resharded to ``spec`` when its type says otherwise (explicit-sharding meshes).

    shard_map checks that an explicitly sharded input's type matches its in_spec; a cotangent
    computed by rules that do not track shardings (a broadcast of a scalar) may be replicated
    where the spec splits it. The values are the same; ``reshard`` only moves them.
    """
    have = getattr(jax.typeof(ct), "sharding", None)
    ndim = np.ndim(ct)
    if have is not None and _padded(have.spec, ndim) == _padded(spec, ndim):
        return ct
    return jax.sharding.reshard(ct, jax.sharding.NamedSharding(mesh, spec))


def _ct_spec(spec: PartitionSpec) -> PartitionSpec:
    """The spec of a cotangent: JAX swaps ``reduced`` and ``unreduced`` (a no-op otherwise)."""
    to_ct = getattr(spec, "to_ct_spec", None)
    return spec if to_ct is None else to_ct()


def _replicas(params: dict[str, Any], spec: PartitionSpec) -> int:
    """How many devices hold a copy of each block of a value laid out by ``spec``."""
    mesh = params["mesh"]
    return math.prod(mesh.shape[n] for n in _unmentioned(params, spec))


def _without_side_effects(jaxpr: Any) -> Any:
    """``jaxpr`` without its output-free effects (``jax.debug.print``, ``debug.callback``).

    The backward shard_map evaluates the body a second time; the values it needs do not depend
    on those equations, and a user's print should appear once per call, as with ``jax.grad``.
    """
    eqns = [e for e in jaxpr.eqns if e.outvars or not e.effects]
    if len(eqns) == len(jaxpr.eqns):
        return jaxpr
    effects = frozenset().union(*(e.effects for e in eqns))
    return jaxpr.replace(eqns=eqns, effects=effects)


def _per_shard_vjp(
    params: dict[str, Any], needs: Sequence[bool], ct_idx: Sequence[int]
) -> Callable[..., tuple[Any, ...]]:
    """The body of the backward shard_map: (inputs, output cts) -> needed input cts, per shard.

    It evaluates the forward body again on this shard's inputs and walks it backwards. Without
    vma types, JAX reads an output replicated over k devices as k equal shares of one value (its
    cotangent is split k ways) and an input replicated over k devices as used by each of them
    (their cotangents are summed): the same here.
    """
    body, check_vma = _without_side_effects(params["jaxpr"]), params["check_vma"]
    in_specs, out_specs = params["in_specs"], params["out_specs"]
    need_idx = [k for k, need in enumerate(needs) if need]
    n_in = len(body.invars)

    def shard_vjp(*args: Any) -> tuple[Any, ...]:
        with using_shortcuts(PLAIN):  # values here are per-shard tracers
            sub = evaluate(body, [], list(args[:n_in]), list(needs))
            out_cts: list[Any] = [None] * len(body.outvars)
            for j, ct in zip(ct_idx, args[n_in:]):
                copies = 1 if check_vma else _replicas(params, _ct_spec(out_specs[j]))
                out_cts[j] = lax.div(ct, const(ct, copies)) if copies != 1 else ct
            in_cts = backward(sub, out_cts)
            results = []
            for k in need_idx:
                ct = instantiate(in_cts[k], body.invars[k].aval)
                replicated = _unmentioned(params, _ct_spec(in_specs[k]))
                results.append(lax.psum(ct, replicated) if replicated and not check_vma else ct)
        return tuple(results)

    return shard_vjp


@higher_order_rule("shard_map")
class ShardMapVjp:
    """``jax.shard_map``: a backward shard_map that re-runs the body and transposes it per shard.

    d shard_map(f)(x) = shard_map(vjp f)(x, ct): each device differentiates its own instance
    of the body, and the collectives inside exchange cotangents as their rules direct. Under
    ``jax.jit`` XLA merges the re-run body with the forward one: the compiled program holds the
    same collectives as ``jax.grad``'s.
    """

    def forward(self, eqn, invals, active):
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        return list(outs), self.outputs_active(eqn, active), None

    def outputs_active(self, eqn, active):
        return jaxpr_activity(eqn.params["jaxpr"], active)

    def backward(self, eqn, invals, record, cts, needs):
        params = eqn.params
        in_specs, out_specs = params["in_specs"], params["out_specs"]
        need_idx = [k for k, need in enumerate(needs) if need]
        ct_idx = [j for j, ct in enumerate(cts) if ct is not None]
        ct_specs = [_ct_spec(out_specs[j]) for j in ct_idx]
        ct_values = [cts[j] for j in ct_idx]
        if _explicit(params):
            ct_values = [_resharded(c, s, params["mesh"]) for c, s in zip(ct_values, ct_specs)]
        run = jax.shard_map(
            _per_shard_vjp(params, needs, ct_idx),
            mesh=params["mesh"],
            in_specs=(*in_specs, *ct_specs),
            out_specs=tuple(_ct_spec(in_specs[k]) for k in need_idx),
            axis_names=set(params["newly_manual_axes"]),
            check_vma=params["check_vma"],
        )
        out: list[Any] = [None] * len(invals)
        for k, ct in zip(need_idx, run(*invals, *ct_values)):
            out[k] = ct
        return out


# ---- host-local <-> global arrays (jax.experimental.multihost_utils) -------------------------
# Each process's local shard read as part of one global array, and back: a relabelling of the
# same values, linear, whose transpose JAX defines as the same relabelling of the cotangent.
@vjp_rule("host_local_array_to_global_array", reads=())
def host_local_to_global_vjp(ct, x, *, global_mesh, pspec):
    """d local_to_global(x) = local_to_global(ct), JAX's transpose of this relabelling."""
    return (multihost_utils.host_local_array_to_global_array(ct, global_mesh, pspec),)


@vjp_rule("global_array_to_host_local_array", reads=())
def global_to_host_local_vjp(ct, x, *, global_mesh, pspec):
    """d global_to_local(x) = global_to_local(ct), JAX's transpose of this relabelling."""
    return (multihost_utils.global_array_to_host_local_array(ct, global_mesh, pspec),)

"""shard_map and its collectives held against jax.grad, on one device and on eight.

In this process there is one CPU device: the CASES run shard_map over a 1x1 mesh (the
primitives are emitted all the same), the collectives of ``vmap(..., axis_name=...)`` need no
devices at all, and the refusals (``pmax``/``pmin``, as in JAX) are checked. Everything that
needs real devices runs in ONE subprocess with 8 simulated CPU devices (XLA_FLAGS must be set
before jax is imported): it imports this module, runs every check in MESH_CHECKS over a 4x2
mesh ('a', 'b'), and reports one result per check, which the parametrized test below reads.

Each mesh check compares fg.grad with jax.grad under jax.jit (jitted against jitted) and, for
each collective at least once, eagerly; in float32 and float64; for collectives over one mesh
axis and over both; with ``check_vma`` on (the vma-typed psum/pvary pair) and off (pmap's
untyped psum); and to second order (fg.grad of fg.grad against jax.grad of jax.grad) where
JAX supports it. The checks marked in KNOWN_FAILURES fail because of rules outside this family
(each reason names the rule and the fix is described there); they are strict xfails.

XLA:CPU cannot run ``ragged_all_to_all``: this module gives it a CPU lowering, an emulation
written from JAX's docstring (and checked against the docstring's example), so that its rule
can be tested here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import (
    Case,
    assert_grads_match,
    assert_trees_close,
    assert_vjp_matches,
    primitives_of,
    randn,
    weighted_sum,
)
from jax import lax
from jax.experimental import multihost_utils
from jax.interpreters import mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import funcgrad as fg
from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.rules.collectives import pbroadcast_vjp


# ---- ragged_all_to_all, emulated on CPU ----------------------------------------------------------
def ragged_all_to_all_emulated(operand, output, input_offsets, send_sizes, output_offsets,
                               recv_sizes, *, axis_name, axis_index_groups):
    """ragged_all_to_all as its JAX docstring defines it, built from all_gather and all_to_all.

    XLA:CPU has no ragged-all-to-all, so this test module lowers the primitive to this function
    on CPU (it matches the docstring's example, checked on 8 devices below). Output row m takes
    row ``start_i + m - here_i`` of the sender of received slice i if here_i <= m < here_i +
    recv_i, where here = all_to_all(output_offsets), and keeps ``output[m]`` otherwise.
    """
    del axis_index_groups
    k = input_offsets.shape[0]
    per_device = k // lax.psum(1, axis_name)
    sent = lax.all_gather(operand, axis_name)  # (devices, N, ...)
    starts = lax.all_gather(input_offsets, axis_name)  # (devices, K)
    here = lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)
    i = jnp.arange(k)
    sender = i // per_device
    start = starts[sender, lax.axis_index(axis_name) * per_device + i % per_device]
    m = jnp.arange(output.shape[0])[:, None]
    match = (m >= here[None, :]) & (m < (here + recv_sizes)[None, :])
    which = jnp.argmax(match, axis=1)
    rows = jnp.clip(start[which] + m[:, 0] - here[which], 0, operand.shape[0] - 1)
    hit = jnp.any(match, axis=1).reshape((-1,) + (1,) * (output.ndim - 1))
    return jnp.where(hit, sent[sender[which], rows], output)


mlir.register_lowering(
    lax.ragged_all_to_all_p, mlir.lower_fun(ragged_all_to_all_emulated, multiple_results=False),
    platform="cpu",
)


def ragged_tables(devices: int, per_device: int, seed: int,
                  empty: bool = False) -> tuple[np.ndarray, ...]:
    """Offsets and sizes of a consistent exchange, slices packed (some empty if ``empty``)."""
    k = devices * per_device
    sizes = np.random.default_rng(seed).integers(0 if empty else 1, 3, (devices, k))
    send = sizes.astype(np.int32)
    input_offsets = np.concatenate([np.zeros((devices, 1), np.int32),
                                    np.cumsum(send, axis=1)[:, :-1]], axis=1).astype(np.int32)
    recv = np.zeros_like(send)
    output_offsets = np.zeros_like(send)
    for dst in range(devices):
        row = 0
        for src in range(devices):
            for j in range(per_device):
                recv[dst, src * per_device + j] = send[src, dst * per_device + j]
                output_offsets[src, dst * per_device + j] = row
                row += send[src, dst * per_device + j]
    return input_offsets, send, output_offsets, recv


# ---- one device: CASES over a 1x1 mesh ---------------------------------------------------------
MESH_1 = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))
EXPLICIT_1 = jax.make_mesh((1, 1), ("a", "b"), devices=jax.devices()[:1])


def on_mesh_1(body: Callable, in_specs: Any, out_specs: Any, check_vma: bool = True) -> Callable:
    return jax.shard_map(body, mesh=MESH_1, in_specs=in_specs, out_specs=out_specs,
                         check_vma=check_vma)


def on_explicit_1(body: Callable, in_spec: P, out_spec: P) -> Callable:
    """body as a jitted shard_map over an explicit-axes mesh, its input resharded to in_spec.

    Reduced and unreduced values exist only on explicit meshes and only under jit.
    """

    @jax.jit
    def run(x):
        x = jax.sharding.reshard(x, NamedSharding(EXPLICIT_1, in_spec))
        return jax.shard_map(body, mesh=EXPLICIT_1, in_specs=in_spec, out_specs=out_spec)(x)

    return run


AB = P("a", "b")

CASES = [
    Case("shard_map", "shard_map", on_mesh_1(lambda x: jnp.sin(x) * 2, AB, AB),
         lambda: (randn(0, 4, 3),)),
    Case("psum", "psum_invariant", on_mesh_1(lambda x: lax.psum(jnp.sin(x), "a"), AB, P(None, "b")),
         lambda: (randn(1, 4, 3),)),
    Case("psum-unchecked", "psum",
         on_mesh_1(lambda x: lax.psum(jnp.sin(x), ("a", "b")), AB, P(), check_vma=False),
         lambda: (randn(2, 4, 3),)),
    Case("pvary", "pvary", on_mesh_1(lambda x, w: x * w, (AB, P()), AB),
         lambda: (randn(3, 4, 3), randn(4, 3)), argnums=(0, 1)),
    Case("all_gather", "all_gather",
         on_mesh_1(lambda x: lax.all_gather(x, "a", axis=1) ** 2, AB, P("a", None, "b")),
         lambda: (randn(5, 4, 3),)),
    Case("all_gather-invariant", "all_gather_invariant",
         on_mesh_1(lambda x: lax.all_gather(x, "a", tiled=True, to="invarying") ** 2, AB,
                   P(None, "b")),
         lambda: (randn(6, 4, 3),)),
    Case("psum_scatter", "reduce_scatter",
         on_mesh_1(lambda x: lax.psum_scatter(x**2, "b", scatter_dimension=1, tiled=True), AB, AB),
         lambda: (randn(7, 4, 3),)),
    Case("all_to_all", "all_to_all",
         on_mesh_1(lambda x: lax.all_to_all(x**2, "a", 0, 1, tiled=True), AB, AB),
         lambda: (randn(8, 4, 3),)),
    Case("ppermute", "ppermute", on_mesh_1(lambda x: lax.ppermute(x**2, "a", [(0, 0)]), AB, AB),
         lambda: (randn(9, 4, 3),)),
    Case("axis_index", "axis_index",
         on_mesh_1(lambda x: x * (lax.axis_index("a") + 1).astype(x.dtype), AB, AB),
         lambda: (randn(10, 4, 3),)),
    Case("ragged_all_to_all", "ragged_all_to_all",  # jitted: eagerly, each emulation compiles
         jax.jit(on_mesh_1(lambda o, u: lax.ragged_all_to_all(
             jnp.sin(o), u * 2, *(t[0] for t in ragged_tables(1, 3, seed=0)), axis_name="a"),
             (P("a"), P("a")), P("a"))),
         lambda: (randn(18, 6, 2), randn(19, 7, 2)), argnums=(0, 1)),
    Case("reshard", "reshard", on_explicit_1(jnp.sin, AB, AB), lambda: (randn(11, 4, 3),)),
    Case("unreduced_psum", "unreduced_psum",
         on_explicit_1(lambda x: lax.psum(lax.pcast(x * x, "a", to="unreduced"), "a"), AB,
                       P(None, "b")),
         lambda: (randn(12, 4, 3),)),
    Case("vary_unreduced_cast", "vary_unreduced_cast_p",
         on_explicit_1(lambda x: lax.psum(lax.pcast(jnp.sin(x), "a", to="unreduced"), "a"), AB,
                       P(None, "b")),
         lambda: (randn(13, 4, 3),)),
    Case("all_gather-reduced", "all_gather_reduced",
         on_explicit_1(lambda x: jnp.sin(lax.pcast(
             lax.all_gather(x, "a", to="reduced", tiled=True), "a", to="varying")), AB, AB),
         lambda: (randn(14, 4, 3),)),
    Case("reduced_vary_cast", "reduced_vary_cast_p",
         on_explicit_1(lambda x: jnp.cos(lax.pcast(
             lax.all_gather(x * x, "a", to="reduced", tiled=True), "a", to="varying")), AB, AB),
         lambda: (randn(15, 4, 3),)),
    Case("psum_scatter-unreduced", "unreduced_reduce_scatter",
         on_explicit_1(lambda x: jnp.sin(lax.psum_scatter(
             lax.pcast(x * x, "a", to="unreduced"), "a", tiled=True)), AB, AB),
         lambda: (randn(16, 4, 3),)),
    Case("preduced", "preduced",
         on_explicit_1(lambda x: jnp.sin(lax.pcast(lax.pcast(
             lax.psum(x * x, "a"), "a", to="reduced"), "a", to="varying")), AB, AB),
         lambda: (randn(17, 4, 3),)),
    # refused, as jax.grad refuses: JAX defines no derivative of a maximum across devices
    Case("pmax", "pmax", on_mesh_1(lambda x: lax.pmax(x, "a"), AB, P(None, "b")),
         lambda: (randn(0, 4, 3),), refused=NotImplementedError),
    Case("pmin", "pmin", on_mesh_1(lambda x: lax.pmin(x, "b"), AB, P("a", None)),
         lambda: (randn(0, 4, 3),), refused=NotImplementedError),
    Case("host_local_array_to_global_array", "host_local_array_to_global_array",
         lambda x: jnp.sin(multihost_utils.host_local_array_to_global_array(x * 2, MESH_1, AB)),
         lambda: (randn(3, 4, 3),)),
    Case("global_array_to_host_local_array", "global_array_to_host_local_array",
         lambda x: jnp.sin(multihost_utils.global_array_to_host_local_array(x * 2, MESH_1, AB)),
         lambda: (randn(4, 4, 3),)),
]


COLLECTIVES = {
    "shard_map", "psum", "psum_invariant", "pvary", "pmax", "pmin", "all_gather",
    "all_gather_invariant", "reduce_scatter", "all_to_all", "ppermute", "pbroadcast",
    "axis_index", "reshard", "vary_unreduced_cast_p", "reduced_vary_cast_p", "preduced",
    "unreduced_psum", "all_gather_reduced", "unreduced_reduce_scatter", "ragged_all_to_all",
    "host_local_array_to_global_array", "global_array_to_host_local_array",
}


def test_supported_primitives_include_the_collectives():
    assert not COLLECTIVES - fg.supported_primitives()
    assert not {c.primitive for c in CASES} - COLLECTIVES


def test_cotangents_have_their_inputs_device_variance():
    """Inside the backward shard_map, a replicated input's cotangent is invariant (psum'd by the
    pvary rule) and a sharded input's varies over its axes: the types JAX's vma check wants."""
    f = weighted_sum(on_mesh_1(lambda x, w: lax.psum(jnp.sin(x) * w, "a"), (AB, P()),
                               P(None, "b")))
    jaxpr = jax.make_jaxpr(fg.grad(f, (0, 1)))(randn(27, 4, 3), randn(28, 3)).jaxpr
    backward_map = [e for e in jaxpr.eqns if e.primitive.name == "shard_map"][-1]
    body = backward_map.params["jaxpr"]
    varying = [v.aval.mat.varying for v in body.outvars]
    assert varying == [frozenset({"a", "b"}), frozenset()]
    assert "psum_invariant" in {e.primitive.name for e in body.eqns}  # the transposed pvary


def test_closure_backward_pass_uses_only_supported_primitives():
    """fg.grad's own backward pass must be differentiable by funcgrad: every primitive the
    collective rules emit (inside the backward shard_map too) has a rule."""
    supported = fg.supported_primitives()
    for case in (c for c in CASES if c.refused is None):
        grad_jaxpr = jax.make_jaxpr(fg.grad(weighted_sum(case.f), case.argnums))(*case.args())
        missing = primitives_of(grad_jaxpr.jaxpr) - supported
        assert not missing, f"{case.id}: no rule for {sorted(missing)}"


@pytest.mark.parametrize("reduce", [lax.pmax, lax.pmin], ids=["pmax", "pmin"])
def test_pmax_and_pmin_are_refused_as_jax_refuses(reduce):
    """JAX has no derivative rule for pmax/pmin; funcgrad raises the same error, and says why."""
    f = weighted_sum(on_mesh_1(lambda x: reduce(x, "a"), AB, P(None, "b")))
    x = randn(0, 4, 3)
    name = reduce.__name__
    with pytest.raises(NotImplementedError, match=f"Differentiation rule for '{name}'") as want:
        jax.grad(f)(x)
    with pytest.raises(NotImplementedError, match=f"Differentiation rule for '{name}'") as got:
        fg.grad(f)(x)
    assert isinstance(got.value, type(want.value))
    assert isinstance(got.value, NotDifferentiableError)
    assert "JAX defines no derivative" in str(got.value)


def test_pmax_of_values_not_differentiated_is_fine():
    """pmax of data that is not differentiated: no cotangent reaches it, in JAX or here."""
    f = weighted_sum(on_mesh_1(lambda x, d: x / lax.pmax(d, "a") + lax.pmin(d, "b") * x,
                               (AB, AB), AB))
    assert_grads_match(f, randn(1, 4, 3) + 3.0, randn(2, 4, 3))


def test_pmax_of_a_stop_gradient_value():
    f = weighted_sum(on_mesh_1(lambda x: x / lax.pmax(lax.stop_gradient(jnp.abs(x)), "a"), AB, AB))
    assert_grads_match(f, randn(1, 4, 3) + 3.0)


def test_vjp_and_trace_of_a_shard_map_with_several_outputs():
    def f(x, w):
        return lax.psum(jnp.sin(x) * w, "a"), x * 2, jnp.cos(w)

    g = on_mesh_1(f, (AB, P()), (P(None, "b"), AB, P()))
    x, w = randn(24, 4, 3), randn(25, 3)
    assert_vjp_matches(g, x, w)
    want = jax.grad(weighted_sum(g), (0, 1))(x, w)
    for jit in (False, True):
        tr = fg.trace(weighted_sum(g), x, w, argnums=(0, 1), jit=jit)
        assert_trees_close(tr.grads, want, what=f"fg.trace(jit={jit})")


def test_side_effects_in_the_body_run_once():
    """The backward shard_map re-evaluates the body, but not its prints and callbacks.

    Jitted only: JAX's eager shard_map (0.10.2) does not run debug callbacks at all.
    """
    calls = {"jax": 0, "fg": 0}

    def loss(engine):
        def body(x):
            jax.debug.callback(lambda: calls.__setitem__(engine, calls[engine] + 1))
            return lax.psum(jnp.sin(x), "a")

        return lambda x: jnp.sum(on_mesh_1(body, AB, P(None, "b"))(x))

    x = randn(26, 4, 3)
    for engine, grad in (("jax", jax.grad), ("fg", fg.grad)):
        jax.block_until_ready(jax.jit(grad(loss(engine)))(x))
        jax.effects_barrier()
    assert calls["fg"] == calls["jax"] == 1


# ---- vmap with axis_name: collectives over a batch axis, no devices needed ---------------------
def _per_example(body: Callable) -> Callable:
    """A scalar loss per example whose body uses collectives over the vmapped axis 'i'."""

    def loss(x):
        y = body(x)
        w = jnp.asarray(np.random.default_rng(5).standard_normal(y.shape), y.dtype)
        return jnp.sum(jnp.sin(y) * w)

    return loss


VMAP_BODIES = {
    "psum": lambda x: lax.psum(x * x, "i"),
    "all_gather": lambda x: lax.all_gather(x, "i") * x[0],
    "all_gather-tiled": lambda x: lax.all_gather(x, "i", axis=0, tiled=True),
    "psum_scatter": lambda x: lax.psum_scatter(jnp.tile(x * x, 4), "i", tiled=True),
    "ppermute": lambda x: lax.ppermute(x * x, "i", [(0, 1), (1, 2), (2, 3), (3, 0)]) + x,
    "all_to_all": lambda x: lax.all_to_all(x.reshape(4, 2) ** 2, "i", 0, 1, tiled=True),
    "axis_index": lambda x: x * lax.axis_index("i").astype(x.dtype),
}


VMAP_PARAMS = [(name, np.float32) for name in VMAP_BODIES] + [
    (name, np.float64) for name in ("psum", "all_gather-tiled", "ppermute")
]


@pytest.mark.parametrize("name,dtype", VMAP_PARAMS,
                         ids=[f"{n}-{np.dtype(d).name}" for n, d in VMAP_PARAMS])
def test_vmap_axis_name_collectives(name, dtype):
    """vmap(fg.grad(f), axis_name='i') equals vmap(jax.grad(f), axis_name='i'), jitted too."""
    loss = _per_example(VMAP_BODIES[name])
    with jax.enable_x64(dtype == np.float64):
        xs = randn(20, 4, 8, dtype=dtype)
        want = jax.vmap(jax.grad(loss), axis_name="i")(xs)
        got = jax.vmap(fg.grad(loss), axis_name="i")(xs)
        assert_trees_close(got, want)
        got_jit = jax.jit(jax.vmap(fg.grad(loss), axis_name="i"))(xs)
        assert_trees_close(got_jit, jax.jit(jax.vmap(jax.grad(loss), axis_name="i"))(xs))


def test_vmap_axis_name_second_order():
    loss = _per_example(VMAP_BODIES["all_gather"])
    xs = randn(21, 4, 8)
    v = randn(22, 8)

    def second(grad):
        return grad(lambda x: jnp.sum(grad(loss)(x) * v))

    want = jax.vmap(second(jax.grad), axis_name="i")(xs)
    assert_trees_close(jax.vmap(second(fg.grad), axis_name="i")(xs), want, rtol=1e-5, atol=1e-5)


def test_pbroadcast_rule_is_the_adjoint_of_pbroadcast():
    """pbroadcast has no CPU lowering (and JAX's own batching and transpose of it fail), so its
    rule is held to the definition: y_d = x_source for all d, hence ct_x = sum(ct) at the source.
    """
    cts = randn(23, 4, 3)
    x = jax.ShapeDtypeStruct((3,), jnp.float32)
    got = jax.vmap(lambda ct: pbroadcast_vjp(ct, x, axis_name="i", source=2)[0],
                   axis_name="i")(cts)
    want = np.zeros((4, 3), np.float32)
    want[2] = np.sum(np.asarray(cts), axis=0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


# ---- eight devices: one subprocess, every check in MESH_CHECKS ---------------------------------
@dataclass
class MeshCheck:
    """fg.grad against jax.grad (or ``reference``'s jax.grad) for a loss built on the 4x2 mesh.

    ``build(mesh)`` returns ``(loss, args)``; arguments are built with the check's dtype.
    ``order=2`` compares fg.grad(fg.grad) with jax.grad(jax.grad) of ``<grad loss, v>``.
    """

    build: Callable[[Any], tuple[Callable, tuple]]
    argnums: int | tuple[int, ...] = 0
    eager: bool = True
    order: int = 1
    dtype: Any = np.float32
    reference: Callable[[Any], Callable] | None = None
    explicit: bool = False  # a mesh of explicit axes (jax.make_mesh's default), set as context
    in_context: bool = False  # the mesh set with jax.set_mesh (smap and explicit meshes need it)


def _mesh(explicit: bool = False) -> Any:
    if explicit:
        return jax.make_mesh((4, 2), ("a", "b"))
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))


def _loss(mesh, body, in_specs, out_specs, check_vma=True) -> Callable:
    return weighted_sum(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                      check_vma=check_vma))


def _x(dtype, *shape, seed=30):
    return randn(seed, *shape, dtype=dtype)


def _psum_a(mesh, dtype):
    body = lambda x, w: lax.psum(jnp.sin(x) * w, "a")  # noqa: E731  (w invariant: a pvary)
    return _loss(mesh, body, (AB, P()), P(None, "b")), (_x(dtype, 8, 4), _x(dtype, seed=31))


def _psum_ab(mesh, dtype):
    body = lambda x: lax.psum(jnp.sin(x) * x[0, 0], ("a", "b"))  # noqa: E731
    return _loss(mesh, body, AB, P()), (_x(dtype, 8, 4),)


def _psum_unchecked(mesh, dtype):
    body = lambda x, w: lax.psum(jnp.sin(x) * w, "a")  # noqa: E731
    loss = _loss(mesh, body, (AB, P()), P(None, "b"), check_vma=False)
    return loss, (_x(dtype, 8, 4), _x(dtype, seed=31))


def _psum_positional(mesh, dtype):
    body = lambda x: lax.psum(jnp.sin(x), ("a", 0))[None]  # noqa: E731
    return _loss(mesh, body, AB, P(None, "b"), check_vma=False), (_x(dtype, 8, 4),)


def _pmean(mesh, dtype):
    return _loss(mesh, lambda x: lax.pmean(x * x, "b"), AB, P("a")), (_x(dtype, 8, 4),)


def _all_gather(mesh, dtype):
    body = lambda x: lax.all_gather(x, "a") * jnp.cos(x)  # noqa: E731
    return _loss(mesh, body, AB, P("a", None, "b")), (_x(dtype, 8, 4),)


def _all_gather_tiled(mesh, dtype):
    body = lambda x: jnp.sin(lax.all_gather(x, "a", axis=1, tiled=True)) * x[0, 0]  # noqa: E731
    return _loss(mesh, body, AB, AB), (_x(dtype, 8, 4),)


def _all_gather_ab(mesh, dtype):
    body = lambda x: lax.all_gather(x * x, ("a", "b"), tiled=True)  # noqa: E731
    return _loss(mesh, body, AB, P(("a", "b"))), (_x(dtype, 8, 4),)


def _all_gather_groups(mesh, dtype):
    body = lambda x: lax.all_gather(x * x, "a", axis_index_groups=[[0, 1], [2, 3]])  # noqa: E731
    return _loss(mesh, body, AB, P("a", None, "b")), (_x(dtype, 8, 4),)


def _all_gather_invariant(mesh, dtype):
    body = lambda x: jnp.sin(lax.all_gather(x, "a", to="invarying", tiled=True))  # noqa: E731
    return _loss(mesh, body, AB, P(None, "b")), (_x(dtype, 8, 4),)


def _all_gather_invariant_stacked(mesh, dtype):
    def body(x):
        tiled = lax.all_gather(x, "a", to="invarying", tiled=True)  # (8, 2)
        stacked = lax.all_gather(jnp.sin(x), "a", to="invarying", axis=1)  # (2, 4, 2)
        return tiled.reshape(4, 2, 2).transpose(1, 0, 2) * stacked

    return _loss(mesh, body, AB, P(None, None, "b")), (_x(dtype, 8, 4),)


def _psum_scatter(mesh, dtype):
    body = lambda x: lax.psum_scatter(jnp.tile(x * x, (4, 1)), "a", tiled=True)  # noqa: E731
    return _loss(mesh, body, AB, AB), (_x(dtype, 8, 4),)


def _psum_scatter_untiled(mesh, dtype):
    body = lambda x: lax.psum_scatter(jnp.sin(x), "b", scatter_dimension=1)  # noqa: E731
    return _loss(mesh, body, P("a"), P(("a", "b"))), (_x(dtype, 8, 2),)


def _psum_scatter_ab(mesh, dtype):
    body = lambda x: lax.psum_scatter(jnp.tile(x * x, (8, 1)), ("a", "b"), tiled=True)  # noqa: E731
    return _loss(mesh, body, AB, P(("a", "b"))), (_x(dtype, 8, 4),)


def _psum_scatter_groups(mesh, dtype):
    def body(x):
        return lax.psum_scatter(jnp.tile(x * x, (2, 1)), "a", tiled=True,
                                axis_index_groups=[[0, 2], [1, 3]])

    return _loss(mesh, body, AB, AB, check_vma=False), (_x(dtype, 8, 4),)


def _ppermute(mesh, dtype):
    body = lambda x: jnp.cos(lax.ppermute(x * x, "a", [(0, 1), (1, 2), (2, 3), (3, 0)]))  # noqa: E731
    return _loss(mesh, body, AB, AB), (_x(dtype, 8, 4),)


def _ppermute_ab(mesh, dtype):
    perm = [(0, 5), (5, 2), (2, 7), (3, 0)]  # over the 8 devices of ('a', 'b'); some get none
    body = lambda x: lax.ppermute(jnp.sin(x), ("a", "b"), perm) * x  # noqa: E731
    return _loss(mesh, body, AB, AB), (_x(dtype, 8, 4),)


def _all_to_all(mesh, dtype):
    body = lambda x: lax.all_to_all(x * x, "b", 0, 1, tiled=True)  # noqa: E731
    return _loss(mesh, body, AB, AB), (_x(dtype, 8, 4),)


def _all_to_all_ab(mesh, dtype):
    body = lambda x: lax.all_to_all(jnp.sin(x), ("a", "b"), 1, 0, tiled=True)  # noqa: E731
    return _loss(mesh, body, P(("a", "b")), P(("a", "b"))), (_x(dtype, 64, 8),)


def _all_to_all_untiled(split, concat):
    """Untiled all_to_all: jax.grad rejects its own cotangent's shape here (JAX 0.10.2), so the
    reference is the same exchange written with the tiled form around explicit axes."""

    def build(mesh, dtype):
        body = lambda x: lax.all_to_all(x * x, "b", split, concat)  # noqa: E731
        out = P("a", "b") if concat else P("b", "a")
        return _loss(mesh, body, AB, out), (_x(dtype, 8, 4, 2),)

    return build


def _all_to_all_untiled_reference(split, concat):
    def reference(mesh):
        def body(x):
            if split < concat:
                x = lax.expand_dims(x * x, (concat + 1,))
                return lax.squeeze(lax.all_to_all(x, "b", split, concat + 1, tiled=True), (split,))
            x = lax.expand_dims(x * x, (concat,))
            return lax.squeeze(lax.all_to_all(x, "b", split + 1, concat, tiled=True), (split + 1,))

        out = P("a", "b") if concat else P("b", "a")
        return _loss(mesh, body, AB, out)

    return reference


def _axis_index(mesh, dtype):
    def body(x):
        return jnp.sin(x) * (lax.axis_index("a") + 2 * lax.axis_index("b")).astype(x.dtype)

    return _loss(mesh, body, AB, AB), (_x(dtype, 8, 4),)


def _mlp(mesh, dtype):
    """Data parallel over 'a', tensor parallel over 'b', a psum and an all_gather."""

    def body(x, w1, w2):
        h = jnp.tanh(x @ w1)  # w1 columns over 'b'
        y = lax.psum(h @ w2, "b")  # w2 rows over 'b': partial sums
        y = lax.all_gather(y, "a", tiled=True)
        return lax.psum(jnp.sum(y**2, keepdims=True)[0], "a")[None]

    loss = _loss(mesh, body, (P("a"), P(None, "b"), P("b")), P())
    return loss, (_x(dtype, 8, 4), _x(dtype, 4, 6, seed=32), _x(dtype, 6, 3, seed=33))


def _library_calls(mesh, dtype):
    """jit, custom_jvp (relu, logsumexp) and custom_vjp bodies inside the shard_map body."""

    @jax.custom_vjp
    def scaled_sin(x):
        return jnp.sin(x)

    scaled_sin.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (2 * g * c,))

    def body(x, w):
        y = jax.nn.relu(x * w) + jax.nn.logsumexp(x, axis=1, keepdims=True) + scaled_sin(x)
        return lax.psum(y, "a")

    return _loss(mesh, body, (AB, P()), P(None, "b")), (_x(dtype, 8, 4), _x(dtype, seed=31))


def _classifier(mesh, dtype):
    """A data-parallel step: MLP, log_softmax, integer labels, pmean of the loss."""

    def body(x, labels, w1, w2):
        logp = jax.nn.log_softmax(jax.nn.relu(x @ w1) @ w2)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()
        return lax.pmean(nll + 0.1 * jnp.max(logp), ("a", "b"))

    def loss(x, w1, w2):
        labels = jnp.arange(16) % 3
        specs = (P(("a", "b")), P(("a", "b")), P(), P())
        return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P())(x, labels, w1, w2)

    return loss, (_x(dtype, 16, 4), _x(dtype, 4, 5, seed=31), _x(dtype, 5, 3, seed=32))


def _dynamic_slice_of_invariant(mesh, dtype):
    """Each device reads its own rows of a replicated table."""
    body = lambda x, w: x * lax.dynamic_slice_in_dim(w, lax.axis_index("a") * 2, 2)  # noqa: E731
    return _loss(mesh, body, (AB, P()), AB), (_x(dtype, 8, 4), _x(dtype, 8, 2, seed=31))


def _ragged(exchange: Callable, empty: bool) -> Callable:
    """A ragged exchange over 'a' (4 devices, 2 slices each way): ``exchange`` is
    lax.ragged_all_to_all, or the emulation written in jnp whose jax.grad is the reference."""

    def loss(mesh):
        tables = [jnp.asarray(t.reshape(-1)) for t in ragged_tables(4, 2, seed=3, empty=empty)]

        def body(operand, output, *tables):
            return exchange(jnp.sin(operand), output * 2, *tables, axis_name=("a",),
                            axis_index_groups=None)

        f = jax.shard_map(body, mesh=mesh, in_specs=(P("a"),) * 6, out_specs=P("a"))
        return weighted_sum(lambda operand, output: f(operand, output, *tables))

    return loss


def _ragged_check(empty: bool) -> Callable:
    def build(mesh, dtype):
        args = (_x(dtype, 4 * 16, 3), _x(dtype, 4 * 17, 3, seed=31))
        return _ragged(lax.ragged_all_to_all, empty)(mesh), args

    return build


def _cond(zero_branch: bool):
    def build(mesh, dtype):
        def body(x, w):
            if zero_branch:  # one branch gives x no cotangent: a zero of x's (varying) type
                return lax.cond(w > 0, lambda x: x * 2.0, lambda x: jnp.zeros_like(x), x) * w
            return lax.cond(w > 0, lambda x: jnp.sin(x) * w, lambda x: x * w, x)

        return _loss(mesh, body, (AB, P()), AB), (_x(dtype, 8, 4), _x(dtype, seed=31) ** 2)

    return build


def _scan(mesh, dtype):
    def body(x, w):
        def step(c, xi):
            c = jnp.tanh(c * w + xi)
            return c, lax.psum(c, "b")

        return lax.scan(step, jnp.zeros_like(x[0]), x)[1]

    return _loss(mesh, body, (AB, P()), P("a")), (_x(dtype, 8, 4), _x(dtype, seed=31))


def _integers_and_unused_outputs(mesh, dtype):
    def body(x, n, w):
        return jnp.sin(x) * n.astype(x.dtype) * w, n + 1, lax.psum(x, "a")

    def loss(x, w):
        n = jnp.arange(8, dtype=jnp.int32).reshape(8, 1)
        f = jax.shard_map(body, mesh=mesh, in_specs=(AB, P("a"), P()),
                          out_specs=(AB, P("a"), P(None, "b")))
        y, _, _ = f(x, n, w)  # the integer output and the psum are not used
        return jnp.sum(y * x)

    return loss, (_x(dtype, 8, 4), _x(dtype, seed=31))


def _pmap(mesh, dtype):
    def f(x):
        return jax.pmap(lambda y: lax.psum(jnp.sin(y), "i") * y, axis_name="i")(x)

    return weighted_sum(f), (_x(dtype, 8, 3),)


def _nested(mesh, dtype):
    def f(x):
        def outer(x):
            inner = jax.shard_map(lambda y: lax.psum(jnp.sin(y), "b"), in_specs=P(None, "b"),
                                  out_specs=P(), axis_names={"b"})
            return lax.psum(inner(x), "a")

        return jax.shard_map(outer, mesh=mesh, in_specs=P("a"), out_specs=P(), axis_names={"a"})(x)

    return weighted_sum(f), (_x(dtype, 8, 4),)


def _flat_reference(mesh):
    return _loss(mesh, lambda x: lax.psum(jnp.sin(x), ("a", "b")), AB, P())


def _partial_manual(mesh, dtype):
    def f(x):
        return jax.shard_map(lambda x: lax.psum(jnp.sin(x) * x, "a"), mesh=mesh, in_specs=P("a"),
                             out_specs=P(), axis_names={"a"})(x)

    return weighted_sum(f), (_x(dtype, 8, 4),)


def _smap(mesh, dtype):
    """jax.smap: a shard_map over one axis ('a', with 'b' left automatic), in_axes style."""
    body = lambda x: lax.psum(jnp.sin(x), "a") * x  # noqa: E731
    f = jax.smap(body, in_axes=0, out_axes=0, axis_name="a")
    return weighted_sum(f), (_x(dtype, 8, 4),)


def _vmap_of_shard_map(mesh, dtype):
    """A shard_map'd function vmapped over a batch, then differentiated."""
    f = jax.shard_map(lambda x: lax.psum(jnp.sin(x), "a"), mesh=mesh, in_specs=AB,
                      out_specs=P(None, "b"))
    return weighted_sum(jax.vmap(f)), (_x(dtype, 3, 8, 4),)


def _vmap_of_grad(mesh) -> str | None:
    """vmap(fg.grad(f)) of a shard_map'd f, batched over either argument, eager and jitted."""
    loss, (x, w) = _psum_a(mesh, np.float32)
    xs, ws = jnp.stack([x, 2 * x, -x]), randn(41, 3)
    cases = [((None, 0), (x, ws), 1), ((0, None), (xs, w), 0)]
    for in_axes, args, argnum in cases:
        for wrap in (lambda g: g, jax.jit):
            want = wrap(jax.vmap(jax.grad(loss, argnum), in_axes=in_axes))(*args)
            got = wrap(jax.vmap(fg.grad(loss, argnum), in_axes=in_axes))(*args)
            try:
                assert_trees_close(got, want)
            except AssertionError as err:
                return f"in_axes={in_axes}: {err}"
    return None


def _grad_inside_shard_map(mesh) -> str | None:
    """The data-parallel pattern: each device takes fg.grad of a loss (one with a pmean inside,
    one local) and the gradients are averaged: the same as with jax.grad, eager and jitted."""

    def step(grad):
        def body(x, w):
            synced = grad(lambda w: lax.pmean(jnp.mean(jnp.tanh(x @ w) ** 2), ("a", "b")))(w)
            local = grad(lambda w: jnp.sum(jnp.sin(x @ w)))(w)
            return synced, lax.pmean(local, ("a", "b"))

        specs = (P(("a", "b")), P())
        return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(P(), P()))

    x, w = _x(np.float32, 16, 4), _x(np.float32, 4, 3, seed=31)
    for wrap in (lambda f: f, jax.jit):
        try:
            assert_trees_close(wrap(step(fg.grad))(x, w), wrap(step(jax.grad))(x, w))
        except AssertionError as err:
            return str(err)
    return None


def _explicit(mesh, dtype):
    """The default mesh of jax.make_mesh: explicit axes; inputs must carry their sharding."""
    body = lambda x, w: lax.psum(jnp.sin(lax.all_gather(x, "b", axis=1, tiled=True)) * w, "a")  # noqa: E731
    x = jax.device_put(_x(dtype, 8, 4), NamedSharding(mesh, AB))
    w = jax.device_put(_x(dtype, seed=31), NamedSharding(mesh, P()))

    def loss(x, w):
        f = jax.shard_map(body, in_specs=(AB, P()), out_specs=P(None, "b"))
        return jnp.sum(f(x, w))  # reduce_sum's cotangent is not sharded: resharded to P(None, 'b')

    return loss, (x, w)


def _unreduced(mesh, dtype):
    def body(x):
        partial_sums = lax.pcast(jnp.tile(x * x, (4, 1)), "a", to="unreduced")
        y = lax.psum_scatter(partial_sums, "a", tiled=True)
        z = lax.pcast(lax.all_gather(jnp.sin(y), "a", to="reduced", tiled=True), "a", to="varying")
        total = lax.psum(lax.pcast(z, "a", to="unreduced"), "a")
        return jnp.cos(lax.pcast(lax.pcast(total, "a", to="reduced"), "a", to="varying"))

    x = jax.device_put(_x(dtype, 8, 4), NamedSharding(mesh, AB))
    return weighted_sum(jax.jit(jax.shard_map(body, in_specs=AB, out_specs=AB))), (x,)


def _checks() -> dict[str, MeshCheck]:
    f64 = np.float64
    checks: dict[str, MeshCheck] = {}

    def add(name, build, *, f64_eager=False, second=True, eager=True, **kw):
        checks[f"{name}[f32]"] = MeshCheck(build, eager=eager, **kw)
        checks[f"{name}[f64]"] = MeshCheck(build, eager=f64_eager, dtype=f64, **kw)
        if second:
            checks[f"{name}[2nd]"] = MeshCheck(build, eager=False, order=2, dtype=f64, **kw)

    add("psum-a", _psum_a, argnums=(0, 1))
    add("psum-ab", _psum_ab, eager=False, second=False)
    add("psum-unchecked", _psum_unchecked, argnums=(0, 1))
    add("psum-positional-unchecked", _psum_positional, eager=False, second=False)
    add("pmean", _pmean, eager=False, second=False)
    add("all_gather", _all_gather)
    add("all_gather-tiled-axis1", _all_gather_tiled, eager=False)
    add("all_gather-ab", _all_gather_ab, eager=False, second=False)
    add("all_gather-groups", _all_gather_groups, eager=False, second=False)
    add("all_gather_invariant", _all_gather_invariant)
    add("all_gather_invariant-stacked", _all_gather_invariant_stacked, eager=False, second=False)
    add("psum_scatter", _psum_scatter)
    add("psum_scatter-untiled", _psum_scatter_untiled, eager=False, second=False)
    add("psum_scatter-ab", _psum_scatter_ab, eager=False, second=False)
    add("psum_scatter-groups-unchecked", _psum_scatter_groups, eager=False, second=False)
    add("ppermute", _ppermute)
    add("ppermute-ab-partial", _ppermute_ab, eager=False, second=False)
    add("all_to_all", _all_to_all)
    add("all_to_all-ab", _all_to_all_ab, eager=False, second=False)
    for split, concat in [(0, 2), (2, 0)]:
        add(f"all_to_all-untiled-{split}-{concat}", _all_to_all_untiled(split, concat),
            reference=_all_to_all_untiled_reference(split, concat), eager=split == 0,
            second=False)
    add("axis_index", _axis_index, second=False)
    add("mlp-dp-tp", _mlp, argnums=(0, 1, 2), eager=False)
    add("classifier-dp", _classifier, argnums=(0, 1, 2), eager=False, second=False)
    add("jit-custom_jvp-custom_vjp-in-body", _library_calls, argnums=(0, 1), eager=False,
        second=False)
    add("cond-in-body", _cond(False), argnums=(0, 1), eager=False, second=False)
    add("cond-zero-branch-in-body", _cond(True), argnums=(0, 1), eager=False, second=False)
    add("scan-in-body", _scan, argnums=(0, 1), eager=False, second=False)
    add("integers-and-unused-outputs", _integers_and_unused_outputs, argnums=(0, 1),
        eager=False, second=False)
    add("pmap", _pmap)
    add("nested-shard_map", _nested, reference=_flat_reference, eager=False)
    add("partial-manual-axes", _partial_manual, eager=False, second=False)
    add("smap", _smap, in_context=True)
    add("vmap-of-shard_map", _vmap_of_shard_map, eager=False, second=False)
    add("explicit-mesh", _explicit, argnums=(0, 1), explicit=True)
    add("reduced-unreduced", _unreduced, explicit=True)
    # JAX's own transpose of ragged_all_to_all zeroes the wrong rows of the output's cotangent
    # when slices are empty (it counts starts and ends with a cumsum that goes negative), so
    # the reference is jax.grad of the exchange written in jnp; without empty slices, JAX's.
    add("ragged_all_to_all", _ragged_check(empty=True), argnums=(0, 1), eager=False,
        reference=_ragged(ragged_all_to_all_emulated, empty=True))
    add("ragged_all_to_all-no-empty-slices", _ragged_check(empty=False), argnums=(0, 1),
        eager=False, second=False)
    checks["dynamic_slice-of-invariant[f32]"] = MeshCheck(
        _dynamic_slice_of_invariant, argnums=(0, 1), eager=False)
    return checks


MESH_CHECKS = _checks()

# Known failures, each caused by a rule outside this family (see the reasons); none today.
KNOWN_FAILURES: dict[str, str] = {}


def _second_order(grad: Callable, loss: Callable, argnums: Any, v: Any) -> Callable:
    """grad of <grad(loss)(args), v>: a Hessian-vector product, by one engine throughout."""

    def inner(*args):
        g = grad(loss, argnums)(*args)
        return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))

    return grad(inner, argnums)


def _run_check(check: MeshCheck) -> None:
    """Raises AssertionError (or JAX's error) if fg.grad differs from jax.grad."""
    with jax.enable_x64(check.dtype == np.float64):
        mesh = _mesh(check.explicit)
        context = check.explicit or check.in_context
        with jax.set_mesh(mesh) if context else contextlib.nullcontext():
            loss, args = check.build(mesh, check.dtype)
            ref = loss if check.reference is None else check.reference(mesh)
            nums = check.argnums
            if check.order == 1:
                fg_grad, jax_grad = fg.grad(loss, nums), jax.grad(ref, nums)
            else:
                wrt = args[nums] if isinstance(nums, int) else tuple(args[i] for i in nums)
                v = jax.tree.map(lambda a: randn(40, *np.shape(a), dtype=a.dtype), wrt)
                fg_grad = _second_order(fg.grad, loss, nums, v)
                jax_grad = _second_order(jax.grad, ref, nums, v)
            if check.eager:
                assert_trees_close(fg_grad(*args), jax_grad(*args), what="eager")
            assert_trees_close(jax.jit(fg_grad)(*args), jax.jit(jax_grad)(*args), what="jit")


def _collectives_of(program: Callable, *args: Any) -> Counter:
    hlo = jax.jit(program).lower(*args).compile().as_text()
    ops = re.findall(
        r" (all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\(", hlo
    )
    return Counter(ops)


def _ragged_docstring_example(mesh) -> str | None:
    """The example of lax.ragged_all_to_all's docstring, over 'b' (2 devices), emulated."""
    tables = [[[0, 1], [0, 1]], [[1, 2], [1, 1]], [[0, 0], [1, 2]], [[1, 1], [2, 1]]]
    operand, output = jnp.array([[1, 2, 2], [3, 4, 0]], jnp.float32), jnp.zeros((2, 4))

    def body(operand, output, *tables):
        return lax.ragged_all_to_all(operand[0], output[0], *(t[0] for t in tables),
                                     axis_name="b")[None]

    f = jax.shard_map(body, mesh=mesh, in_specs=P("b"), out_specs=P("b"))
    got = jax.jit(f)(operand, output, *(jnp.array(t, jnp.int32) for t in tables))
    want = [[1, 3, 0, 0], [2, 2, 4, 0]]
    return None if np.array_equal(np.asarray(got), want) else f"{got} != {want}"


def _run_mesh_checks() -> None:
    """In the 8-device subprocess: run every check, print {name: error or None} as JSON."""
    assert len(jax.devices()) == 8, jax.devices()
    results: dict[str, str | None] = {}
    for name, check in MESH_CHECKS.items():
        try:
            _run_check(check)
            results[name] = None
        except Exception as err:  # reported per check by the parametrized test
            results[name] = f"{type(err).__name__}: {err}"[:3000]
    mesh = _mesh()
    results["ragged_all_to_all-emulation-is-the-docstring's"] = _ragged_docstring_example(mesh)
    results["vmap-of-grad"] = _vmap_of_grad(mesh)
    results["grad-inside-shard_map"] = _grad_inside_shard_map(mesh)
    loss, args = _mlp(mesh, np.float32)
    nums = (0, 1, 2)
    ours = _collectives_of(fg.value_and_grad(loss, nums), *args)
    theirs = _collectives_of(jax.value_and_grad(loss, nums), *args)
    results["compiled-collectives"] = None if ours == theirs else f"{ours} != {theirs}"
    x = _x(np.float32, 8, 4)
    errors = []
    for engine in (jax.grad, fg.grad):
        try:
            engine(_loss(mesh, lambda x: lax.pmax(x, "a"), AB, P(None, "b")))(x)
            errors.append("no error")
        except NotImplementedError as err:
            errors.append(str(err).split(":")[0])
    same = errors[0] == errors[1] == "Differentiation rule for 'pmax' not implemented"
    results["pmax-refused"] = None if same else str(errors)
    print(json.dumps(results))


@pytest.fixture(scope="module")
def mesh_results() -> dict[str, str | None]:
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([tests, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", "import test_rules_collectives as t; t._run_mesh_checks()"],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MESH_NAMES = [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[name]))
    if name in KNOWN_FAILURES else name
    for name in [*MESH_CHECKS, "compiled-collectives", "pmax-refused", "vmap-of-grad",
                 "grad-inside-shard_map", "ragged_all_to_all-emulation-is-the-docstring's"]
]


@pytest.mark.parametrize("name", MESH_NAMES)
def test_on_8_devices(mesh_results, name):
    """fg.grad equals jax.grad over a 4x2 mesh of 8 simulated CPU devices (see MESH_CHECKS)."""
    assert name in mesh_results, f"the subprocess did not run {name!r}"
    assert mesh_results[name] is None, mesh_results[name]

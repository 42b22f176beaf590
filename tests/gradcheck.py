"""Helpers the tests use to hold funcgrad's gradients against jax.grad.

Tolerances are those of ``fg.compare_grads`` (``funcgrad.compare.TOLERANCES``): float32
rtol=1e-5, atol=1e-6 (a few ULPs of accumulated rounding: the two implementations may order a
sum differently); float64 rtol=1e-10, atol=1e-12. Dtypes outside the table compare exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Jaxpr

import funcgrad as fg
from funcgrad.compare import TOLERANCES
from funcgrad.interpret.jaxprs import all_eqns


def assert_trees_close(got: Any, want: Any, rtol: float | None = None, atol: float | None = None,
                       what: str = "gradient") -> None:
    """Same structure, shapes and dtypes, and values within the dtype's tolerance."""
    got_leaves, _ = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    assert jax.tree_util.tree_structure(got) == want_tree, (
        f"{what}: structure {jax.tree_util.tree_structure(got)} != {want_tree}"
    )
    for (path, g), w in zip(got_leaves, want_leaves):
        name = jax.tree_util.keystr(path)
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{what}{name}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{what}{name}: dtype {g.dtype} != {w.dtype}"
        if g.dtype == jax.dtypes.float0:
            continue
        r, a = TOLERANCES.get(g.dtype, (0.0, 0.0))
        np.testing.assert_allclose(
            g, w, rtol=r if rtol is None else rtol, atol=a if atol is None else atol,
            err_msg=f"{what}{name}",
        )


def assert_grads_match(f, *args, argnums=0, eager: bool = True, jit: bool = True, rtol=None,
                       atol=None, reference: Callable | None = None, **kwargs):
    """fg.grad(f) equals jax.grad(f) on args: eagerly, and jitted against jitted.

    Each engine is compared in the same mode: XLA may round a fused, compiled program
    differently from the op-by-op one (bf16 products, for instance), and eager jax.grad of some
    ops (cumulative scans, convolutions) is slow. ``reference`` (default ``f``) is the function
    jax.grad differentiates. Returns funcgrad's gradient.
    """
    if not (eager or jit):
        raise ValueError("assert_grads_match needs eager=True, jit=True or both")
    reference = f if reference is None else reference
    got = None
    if eager:
        want = jax.grad(reference, argnums)(*args, **kwargs)
        got = fg.grad(f, argnums)(*args, **kwargs)
        assert_trees_close(got, want, rtol, atol, "fg.grad")
    if jit:
        want_jit = jax.jit(jax.grad(reference, argnums))(*args, **kwargs)
        got_jit = jax.jit(fg.grad(f, argnums))(*args, **kwargs)
        assert_trees_close(got_jit, want_jit, rtol, atol, "jit(fg.grad)")
        got = got_jit if got is None else got
    return got


def assert_vjp_matches(f, *primals, ct=None, rtol=None, atol=None):
    """fg.vjp(f) equals jax.vjp(f) for output cotangent ``ct`` (default: a fixed random one)."""
    out, jax_pull = jax.vjp(f, *primals)
    if ct is None:
        leaves, tree = jax.tree_util.tree_flatten(out)
        rng = np.random.default_rng(0)
        ct = jax.tree_util.tree_unflatten(
            tree,
            [jnp.asarray(rng.standard_normal(np.shape(x)), dtype=x.dtype)
             if jnp.issubdtype(x.dtype, jnp.inexact)
             else np.zeros(np.shape(x), jax.dtypes.float0) for x in leaves],
        )
    fg_out, fg_pull = fg.vjp(f, *primals)
    assert_trees_close(fg_out, out, rtol, atol, "fg.vjp output")
    assert_trees_close(fg_pull(ct), jax_pull(ct), rtol, atol, "fg.vjp cotangent")


def assert_vjps_match_jit(cases: list[tuple[str, Callable, tuple]]) -> None:
    """For each ``(label, f, primals)``: fg.vjp(f) equals jax.vjp(f) for a random cotangent.

    All cases are computed in one jitted program (one compilation instead of one per case).
    """
    rng = np.random.default_rng(0)
    cts = []
    for _, f, primals in cases:
        out = jax.eval_shape(f, *primals)
        cts.append(jnp.asarray(rng.standard_normal(out.shape), out.dtype))

    @jax.jit
    def both(primals, cts):
        return [
            (fg.vjp(f, *p)[1](ct), jax.vjp(f, *p)[1](ct))
            for (_, f, _), p, ct in zip(cases, primals, cts)
        ]

    results = both([p for _, _, p in cases], cts)
    for (label, _, _), (got, want) in zip(cases, results):
        assert_trees_close(got, want, what=f"jit(fg.vjp) [{label}]")


def assert_vjp_matches_jit(f: Callable, *primals: Any) -> None:
    """fg.vjp(f) equals jax.vjp(f), both computed in one jitted program, for a random cotangent."""
    assert_vjps_match_jit([("", f, primals)])


# ---- building test cases for rule families ---------------------------------------------------
def randn(seed: int, *shape: int, dtype=np.float32) -> jax.Array:
    """Standard normal values from a fixed seed."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def randint(seed: int, *shape: int, high: int = 3, dtype=np.float32) -> jax.Array:
    """Small integers as floats: many ties, and sums of cotangents stay exact."""
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), dtype)


def weighted_sum(f: Callable, integer_weights: bool = False) -> Callable:
    """sum(f(...) * w) over f's float outputs, with a fixed random w per output.

    A scalar loss whose cotangent is not uniform, so a rule that routes the cotangent to the
    wrong element cannot pass. ``integer_weights`` makes every cotangent a small integer, so
    routing conventions (which element gets which share) are compared exactly.
    """

    def loss(*args):
        total = 0.0
        for k, y in enumerate(jax.tree_util.tree_leaves(f(*args))):
            if not jnp.issubdtype(y.dtype, jnp.inexact):
                continue
            rng = np.random.default_rng(100 + k)
            w = rng.integers(-3, 4, y.shape) if integer_weights else rng.standard_normal(y.shape)
            total = total + jnp.sum(y * w.astype(y.dtype))
        return total

    return loss


def primitives_of(jaxpr: Jaxpr) -> set[str]:
    """Names of every primitive in ``jaxpr``, sub-jaxprs (jit, scan, ...) included."""
    return {eqn.primitive.name for eqn in all_eqns(jaxpr)}


def assert_uses(primitive: str, f: Callable, *args: Any) -> None:
    """The case really reaches the primitive it claims to test."""
    used = primitives_of(jax.make_jaxpr(f)(*args).jaxpr)
    assert primitive in used, f"expected '{primitive}' in the jaxpr, got {sorted(used)}"


def assert_exactly(got: Any, want: Any) -> None:
    """Bitwise-equal values (NaN positions included), leaf by leaf for pytrees of arrays."""
    if isinstance(got, (jax.Array, np.ndarray)):
        got, want = [got], [np.asarray(want)]  # ``want`` may be a plain list of numbers
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@dataclass
class Case:
    """User code reaching one primitive, with inputs built lazily (under x64 for float64 runs).

    ``eager=False``: compare under jit only. Op-by-op jax.grad compiles one small XLA program per
    operation and shape, which takes seconds for a cumulative scan or a convolution; such cases are
    checked eagerly by a few representatives only.
    ``reference``: for a primitive jax.grad cannot differentiate, the same function written with
    primitives it can; ``check`` compares fg.grad(f) with jax.grad(reference).
    ``refused``: for a primitive jax.grad refuses to differentiate, the kind of error it raises;
    ``check`` asserts that fg.grad raises a NotDifferentiableError of that kind too.
    """

    id: str
    primitive: str
    f: Callable
    make_args: Callable[[], tuple]
    argnums: int | tuple[int, ...] = 0
    eager: bool = True
    reference: Callable | None = None
    refused: type[Exception] | None = None

    def args(self, dtype=np.float32) -> tuple:
        return tuple(
            a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
            for a in self.make_args()
        )


def check(case: Case, dtype=np.float32, eager: bool = True, jit: bool = False,
          integer_weights: bool = False) -> None:
    """The case reaches its primitive, and fg.grad equals jax.grad on a weighted sum of it.

    With a ``case.reference``, jax.grad differentiates the reference, after checking that it
    computes the same values.
    """
    args = case.args(dtype)
    assert_uses(case.primitive, case.f, *args)
    if case.refused is not None:
        assert_refused_alike(weighted_sum(case.f), args, case.argnums, case.refused, eager, jit)
        return
    reference = None
    if case.reference is not None:
        assert_trees_close(case.f(*args), case.reference(*args), what="reference value")
        reference = weighted_sum(case.reference, integer_weights)
    assert_grads_match(weighted_sum(case.f, integer_weights), *args, argnums=case.argnums,
                       eager=eager, jit=jit, reference=reference)


def assert_refused_alike(f: Callable, args: tuple, argnums: Any, kind: type[Exception],
                         eager: bool, jit: bool) -> None:
    """jax.grad refuses to differentiate ``f`` with a ``kind`` error, and fg.grad does too."""
    from funcgrad.interpret.errors import NotDifferentiableError

    modes = ([lambda g: g] if eager else []) + ([jax.jit] if jit else [])
    for mode in modes:
        with pytest.raises(kind):
            mode(jax.grad(f, argnums))(*args)
        with pytest.raises(NotDifferentiableError) as caught:
            mode(fg.grad(f, argnums))(*args)
        assert isinstance(caught.value, kind)

"""Helpers the tests use to hold funcgrad's gradients against jax.grad.

Tolerances: float32 rtol=1e-5, atol=1e-6 (a few ULPs of accumulated rounding: the two
implementations may order a sum differently); float64 rtol=1e-10, atol=1e-12.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import funcgrad as fg

TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-3),
    np.dtype(jnp.bfloat16): (2e-2, 1e-2),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.complex64): (1e-5, 1e-6),
    np.dtype(np.complex128): (1e-10, 1e-12),
}


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


def assert_grads_match(f, *args, argnums=0, jit: bool = True, rtol=None, atol=None, **kwargs):
    """fg.grad(f) equals jax.grad(f) on args, eagerly and (by default) under jax.jit too."""
    want = jax.grad(f, argnums)(*args, **kwargs)
    got = fg.grad(f, argnums)(*args, **kwargs)
    assert_trees_close(got, want, rtol, atol, "fg.grad")
    if jit:
        got_jit = jax.jit(fg.grad(f, argnums))(*args, **kwargs)
        assert_trees_close(got_jit, want, rtol, atol, "jit(fg.grad)")
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

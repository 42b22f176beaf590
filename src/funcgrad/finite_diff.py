"""Central finite differences: the gradient as the slope of the function, with no autodiff at all.

``(f(x + h·e_i) - f(x - h·e_i)) / 2h`` estimates ∂f/∂x_i with error about ``h²·f'''/6`` (truncation)
plus ``eps·|f|/h`` (rounding). The step balancing the two is ``h = cbrt(eps)·max(1, |x_i|)``:
about 5e-3 in float32 and 6e-6 in float64, where the estimates are good to roughly 1e-3 and 1e-9
relative. Hence: **run finite-difference checks in float64** (``jax.enable_x64``); in float32
they only catch gross errors.

Strategy per differentiated leaf (``probe``):

- a leaf of at most ``max_elements`` elements is differentiated element by element, all of it;
- a larger leaf gets ``max_elements`` elements drawn at random (fixed by ``seed``, without
  replacement) *and* one directional derivative ``(f(x + h·v) - f(x - h·v)) / 2h`` along a random
  unit vector ``v``, to be compared with ``<g, v>``: the adjoint test of
  ``jax.test_util.check_grads``, which sees every element at once.

The perturbed copies of a leaf are evaluated together with ``jax.vmap`` (in chunks that keep
memory bounded), so ``fun`` must be a JAX-traceable function, as it must be for ``jax.grad``.
The actual step taken, ``(x + h) - (x - h)`` in the leaf's dtype, is what the difference is divided
by, so representation error in ``x ± h`` does not bias the estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FD_ELEMENTS", "LeafProbe", "Probe", "numerical_grad", "probe", "step_size"]

#: Leaves up to this many elements are differentiated element by element; larger ones sample
#: this many elements plus one random direction.
FD_ELEMENTS = 64

# Perturbed copies evaluated per vmap call: copies × leaf size stays under this many elements.
_CHUNK_ELEMENTS = 1 << 22


def step_size(x: Any) -> np.ndarray:
    """The central-difference step for each element of ``x``: h = cbrt(eps)·max(1, |x|).

    ``eps`` is the machine epsilon of ``x``'s dtype (float32: h ≈ 4.9e-3, float64: h ≈ 6.1e-6
    for |x| <= 1).
    """
    x = np.asarray(x)
    eps = float(jnp.finfo(x.dtype).eps)
    return np.cbrt(eps) * np.maximum(1.0, np.abs(x.astype(np.float64)))


@dataclass
class LeafProbe:
    """Finite-difference estimates for one leaf.

    ``indices`` are the flat indices of the probed elements (all of them when ``complete``),
    ``values`` the estimated partial derivatives there (float64). ``direction`` (leaf shape,
    float64, the step actually taken divided by 2h) and ``directional`` (the estimated derivative
    along it) are set for a sampled leaf, and None when every element was probed.
    """

    size: int
    indices: np.ndarray
    values: np.ndarray
    direction: np.ndarray | None = None
    directional: float | None = None

    @property
    def complete(self) -> bool:
        """True if every element of the leaf was probed."""
        return len(self.indices) == self.size

    def describe(self) -> str:
        """What was checked, for a report: ``"all 100 elements"`` or ``"64 of 78400 + 1 dir"``."""
        if self.complete:
            return f"all {self.size} elements"
        return f"{len(self.indices)} of {self.size} elements + 1 direction"


@dataclass
class Probe:
    """Finite differences of a scalar function at one point: ``value = f(x)`` and one
    :class:`LeafProbe` per leaf of the differentiated arguments (``jax.tree.leaves`` order)."""

    value: float
    leaves: list[LeafProbe]
    dtype: np.dtype


def _argnums_tuple(argnums: int | Sequence[int]) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def _leaf_function(
    fun: Callable, args: tuple[Any, ...], argnums: tuple[int, ...]
) -> tuple[list[Any], Callable[[int, Any], Any]]:
    """The differentiated leaves, and ``f(j, leaf)``: ``fun`` with leaf ``j`` replaced."""
    trees, leaves, owners = [], [], []
    for i in argnums:
        flat, tree = jax.tree_util.tree_flatten(args[i])
        trees.append(tree)
        for k, leaf in enumerate(flat):
            leaves.append(leaf)
            owners.append((len(trees) - 1, k))

    def f(j: int, new_leaf: Any) -> Any:
        rebuilt = list(args)
        t, k = owners[j]
        flat = jax.tree_util.tree_leaves(args[argnums[t]])
        flat[k] = new_leaf
        rebuilt[argnums[t]] = jax.tree_util.tree_unflatten(trees[t], flat)
        return fun(*rebuilt)

    return leaves, f


def _evaluate_batch(f_leaf: Callable[[Any], Any], stacked: np.ndarray) -> np.ndarray:
    """``f_leaf`` on each row of ``stacked`` (copies of a leaf), as float64."""
    return np.asarray(jax.vmap(f_leaf)(jnp.asarray(stacked)), dtype=np.float64)


def _check_scalar(value: Any) -> float:
    arr = np.asarray(value)
    if arr.shape != () or not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            "finite differences need a function with a real scalar output, got "
            f"shape {arr.shape} dtype {arr.dtype}"
        )
    return float(arr)


def _probe_elements(
    f_leaf: Callable[[Any], Any], x: np.ndarray, indices: np.ndarray
) -> np.ndarray:
    """Central differences at flat ``indices`` of leaf ``x``, a chunk of copies at a time."""
    flat = x.reshape(-1)
    h = step_size(flat[indices])
    plus_el = (flat[indices].astype(np.float64) + h).astype(x.dtype)
    minus_el = (flat[indices].astype(np.float64) - h).astype(x.dtype)
    per = max(1, _CHUNK_ELEMENTS // max(1, x.size))
    f_plus, f_minus = [], []
    for start in range(0, len(indices), per):
        idx = indices[start : start + per]
        rows = np.arange(len(idx))
        plus = np.repeat(flat[None], len(idx), axis=0)
        minus = plus.copy()
        plus[rows, idx] = plus_el[start : start + per]
        minus[rows, idx] = minus_el[start : start + per]
        f_plus.append(_evaluate_batch(f_leaf, plus.reshape(len(idx), *x.shape)))
        f_minus.append(_evaluate_batch(f_leaf, minus.reshape(len(idx), *x.shape)))
    taken = plus_el.astype(np.float64) - minus_el.astype(np.float64)
    return (np.concatenate(f_plus) - np.concatenate(f_minus)) / taken


def _probe_direction(
    f_leaf: Callable[[Any], Any], x: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """(effective unit-ish direction, directional derivative estimate) along a random v."""
    v = rng.standard_normal(x.shape)
    v /= np.linalg.norm(v)
    x64 = x.astype(np.float64)
    h = float(np.cbrt(float(jnp.finfo(x.dtype).eps)) * max(1.0, float(np.max(np.abs(x64)))))
    plus = (x64 + h * v).astype(x.dtype)
    minus = (x64 - h * v).astype(x.dtype)
    f_plus, f_minus = _evaluate_batch(f_leaf, np.stack([plus, minus]))
    # The direction actually stepped along (rounding moved x ± h·v a little).
    direction = (plus.astype(np.float64) - minus.astype(np.float64)) / (2 * h)
    return direction, float((f_plus - f_minus) / (2 * h))


def probe(
    fun: Callable,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    max_elements: int = FD_ELEMENTS,
    seed: int = 0,
) -> Probe:
    """Central finite differences of scalar ``fun`` at ``args`` w.r.t. ``args[argnums]``.

    Leaves of at most ``max_elements`` elements are probed element by element; larger leaves at
    ``max_elements`` random elements plus one random direction (see the module docstring). The
    sample depends only on ``seed`` and the leaf's position, so reruns probe the same elements.
    Raises ``TypeError`` for non-float (or complex) leaves and non-scalar outputs.
    """
    if max_elements < 1:
        raise ValueError(f"max_elements must be at least 1, got {max_elements}")
    nums = _argnums_tuple(argnums)
    leaves, f = _leaf_function(fun, args, nums)
    value = _check_scalar(fun(*args))
    probes, dtype = [], None
    for j, leaf in enumerate(leaves):
        x = np.asarray(leaf)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"finite differences need real floating-point leaves; leaf {j} has dtype "
                f"{x.dtype}"
            )
        dtype = x.dtype if dtype is None else np.promote_types(dtype, x.dtype)

        def f_leaf(new: Any, j: int = j) -> Any:
            return f(j, new)

        rng = np.random.default_rng([seed, j])
        if x.size <= max_elements:
            indices = np.arange(x.size)
            probes.append(LeafProbe(x.size, indices, _probe_elements(f_leaf, x, indices)))
            continue
        indices = np.sort(rng.choice(x.size, size=max_elements, replace=False))
        values = _probe_elements(f_leaf, x, indices)
        direction, directional = _probe_direction(f_leaf, x, rng)
        probes.append(LeafProbe(x.size, indices, values, direction, directional))
    return Probe(value, probes, np.dtype(dtype if dtype is not None else np.float32))


def numerical_grad(fun: Callable, *args: Any, argnums: int | Sequence[int] = 0) -> Any:
    """The full gradient by central differences, with the structure ``jax.grad`` returns.

    Every element of every differentiated leaf is probed (2 evaluations each), so keep inputs
    small; the values are float64 numpy arrays cast to each leaf's dtype.
    """
    nums = _argnums_tuple(argnums)
    result = probe(fun, *args, argnums=nums, max_elements=np.iinfo(np.int64).max)
    out, pos = [], 0
    for i in nums:
        flat, tree = jax.tree_util.tree_flatten(args[i])
        grads = []
        for leaf in flat:
            x = np.asarray(leaf)
            grads.append(result.leaves[pos].values.reshape(x.shape).astype(x.dtype))
            pos += 1
        out.append(jax.tree_util.tree_unflatten(tree, grads))
    return out[0] if isinstance(argnums, int) else tuple(out)

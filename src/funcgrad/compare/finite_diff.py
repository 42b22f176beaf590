"""Central finite differences: the gradient as the slope of the function, with no autodiff at all.

``C(h) = (f(x + h·e_i) - f(x - h·e_i)) / 2h`` estimates ∂f/∂x_i with a truncation error of
``h²·f'''/6`` and a rounding error of about ``eps·|f|/h``; ``h = cbrt(eps)·max(1, |x_i|)`` (about
5e-3 in float32, 6e-6 in float64) balances the two. Each element is probed with steps h and h/2
and the two are Richardson-extrapolated, ``(4·C(h/2) - C(h)) / 3``, which cancels the h² term:
what remains is mostly rounding, about 1e-4 of |f| in float32 and 1e-10 in float64. Hence:
**run finite-difference checks in float64** (``jax.enable_x64``); in float32 they only catch
gross errors.

The same evaluations give one-sided slopes. For a smooth function all these slopes agree to
O(h²); where they disagree (the *roughness* of a probe) a kink (ReLU, max, abs) lies within the
step, and the estimate is no derivative at ``x`` at all. The comparison skips such probes and
says how many (the test reads ``f`` alone, so no gradient, right or wrong, can hide behind it).

Strategy per differentiated leaf (``probe``):

- a leaf of at most ``max_elements`` elements is differentiated element by element, all of it;
- a larger leaf gets ``max_elements`` elements drawn at random (fixed by ``seed``, without
  replacement) *and* one directional derivative ``(f(x + h·v) - f(x - h·v)) / 2h`` along a random
  unit vector ``v``, to be compared with ``<g, v>``: the adjoint test of
  ``jax.test_util.check_grads``, which sees every element at once.

All perturbed copies, of every leaf, are evaluated by one ``jax.jit(jax.vmap(...))`` program (in
chunks that keep memory bounded), so ``fun`` must be a JAX-traceable function of the
differentiated arguments, as it must be for ``jax.grad``. The step actually taken,
``(x + h) - x`` in the leaf's dtype, is what a difference is divided by, so representation error
in ``x ± h`` does not bias the estimate.
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

# Rows evaluated per call: rows × (elements of all leaves) stays under this.
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
    ``values`` the estimated partial derivatives there (float64, step h) and ``roughness`` how
    much estimates with other steps and sides disagree (see :func:`_estimates`): O(h²) where
    ``f`` is smooth, about the jump in slope where a kink (ReLU, max) lies within the step, and
    there the estimate says nothing about the gradient at ``x``. ``direction`` (leaf shape,
    float64, the step actually taken divided by 2h), ``directional`` (the estimated derivative
    along it) and ``directional_roughness`` are set for a sampled leaf, None when every element
    was probed.
    """

    size: int
    indices: np.ndarray
    values: np.ndarray
    roughness: np.ndarray
    direction: np.ndarray | None = None
    directional: float | None = None
    directional_roughness: float | None = None

    @property
    def complete(self) -> bool:
        """True if every element of the leaf was probed."""
        return len(self.indices) == self.size

    def describe(self) -> str:
        """What was checked: ``"all 100 elements"`` or ``"64 of 78400 elements + 1 direction"``."""
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
) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """The differentiated leaves, and ``f(leaves)``: ``fun`` with those leaves replaced."""
    trees, leaves, owners = [], [], []
    for i in argnums:
        flat, tree = jax.tree_util.tree_flatten(args[i])
        owners.append((len(leaves), len(leaves) + len(flat)))
        trees.append(tree)
        leaves.extend(flat)

    def f(current: list[Any]) -> Any:
        rebuilt = list(args)
        for i, tree, (lo, hi) in zip(argnums, trees, owners):
            rebuilt[i] = jax.tree_util.tree_unflatten(tree, current[lo:hi])
        return fun(*rebuilt)

    return leaves, f


def _check_scalar(out: Any) -> None:
    """Raise unless ``out`` (a ShapeDtypeStruct) is a real floating-point scalar."""
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            "finite differences need a function with a real scalar output, got "
            f"{type(out).__name__} shape {shape} dtype {dtype}"
        )


@dataclass
class _Plan:
    """What to evaluate for one leaf: element probes, and a direction for a sampled leaf."""

    x: np.ndarray
    indices: np.ndarray
    moved: list[np.ndarray]  # new values of x[indices] at +h, -h, +h/2, -h/2 (leaf dtype)
    dir_rows: np.ndarray | None = None  # x + s·h·v for s = +1, -1, +1/2, -1/2 (4, *shape)
    h_dir: float = 0.0


def _plan(x: np.ndarray, indices: np.ndarray, rng: np.random.Generator | None) -> _Plan:
    x64 = x.reshape(-1)[indices].astype(np.float64)
    h = step_size(x.reshape(-1)[indices])
    plan = _Plan(x, indices, [(x64 + s).astype(x.dtype) for s in (h, -h, h / 2, -h / 2)])
    if rng is not None:
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        plan.h_dir = float(np.cbrt(float(jnp.finfo(x.dtype).eps)) * max(1.0, np.abs(x).max()))
        offsets = (plan.h_dir, -plan.h_dir, plan.h_dir / 2, -plan.h_dir / 2)
        plan.dir_rows = np.stack([(x.astype(np.float64) + s * v).astype(x.dtype) for s in offsets])
    return plan


def _evaluate(f: Callable, leaves: list[Any], plans: list[_Plan]) -> tuple[float, list[Any]]:
    """f(x), and f at every perturbation the plans ask for: one compiled program for all.

    A row (leaf, element, value, direction) says which leaf to change and how: set one element
    to ``value``, or (element -1) take that leaf's ``direction``-th row of ``dir_rows``; leaf -1
    is x itself. Rows run through one ``jit(vmap(...))`` in chunks of one size (the last padded),
    so the whole probe costs one compilation however many leaves and elements it has.
    """
    rows: list[tuple[int, int, float, int]] = [(-1, -1, 0.0, 0)]
    for j, plan in enumerate(plans):
        for moved in plan.moved:
            rows += [(j, int(e), float(m), 0) for e, m in zip(plan.indices, moved)]
        if plan.dir_rows is not None:
            rows += [(j, -1, 0.0, d) for d in range(4)]
    dirs = [p.dir_rows for p in plans]

    def one(leaves, dirs, leaf_id: Any, element: Any, value: Any, direction: Any) -> Any:
        current = []
        for j, (leaf, plan) in enumerate(zip(leaves, plans)):
            flat = jnp.reshape(leaf, -1)
            changed = flat.at[jnp.maximum(element, 0)].set(value.astype(flat.dtype))
            if plan.dir_rows is not None:
                changed = jnp.where(element < 0, jnp.reshape(dirs[j][direction], -1), changed)
            current.append(jnp.where(leaf_id == j, changed, flat).reshape(jnp.shape(leaf)))
        return f(current)

    batched = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0)))
    total = sum(int(np.size(leaf)) for leaf in leaves)
    per = min(len(rows), max(1, _CHUNK_ELEMENTS // max(1, total)))
    table = np.array(rows, dtype=object)
    out = []
    for start in range(0, len(rows), per):
        chunk = table[start : start + per]
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], per - len(chunk), axis=0)])
        values = batched(
            leaves,
            dirs,
            jnp.asarray(chunk[:, 0].astype(np.int32)),
            jnp.asarray(chunk[:, 1].astype(np.int32)),
            jnp.asarray(chunk[:, 2].astype(np.float64)),
            jnp.asarray(chunk[:, 3].astype(np.int32)),
        )
        out.append(np.asarray(values, dtype=np.float64))
    f_all = np.concatenate(out)[: len(rows)]
    per_leaf, pos = [], 1
    for plan in plans:
        n = 4 * len(plan.indices) + (4 if plan.dir_rows is not None else 0)
        per_leaf.append(f_all[pos : pos + n])
        pos += n
    return float(f_all[0]), per_leaf


def _estimates(f0: Any, plus: list, minus: list, steps: list) -> tuple[Any, Any]:
    """(derivative estimate, roughness) from f(x), f(x ± h) and f(x ± h/2).

    The estimate is the Richardson extrapolation ``(4·C(h/2) - C(h)) / 3`` of the central
    differences C, accurate to O(h⁴) where f is smooth. The roughness is the larger of
    ``|C(h) - C(h/2)|`` (O(h²) where f is smooth) and ``|R₊ - R₋|``, the one-sided slopes
    extrapolated to step 0, ``R± = 2·D±(h/2) - D±(h)`` (O(h³)); a kink within the step makes
    one of them about the jump in slope.
    """
    # steps: the distances actually stepped, ((x+h) - x, x - (x-h)), then the same for h/2.
    (fp, fp2), (fm, fm2), (h, h2) = plus, minus, steps
    central = (fp - fm) / (h[0] + h[1])
    central_half = (fp2 - fm2) / (h2[0] + h2[1])
    right = 2 * (fp2 - f0) / h2[0] - (fp - f0) / h[0]
    left = 2 * (f0 - fm2) / h2[1] - (f0 - fm) / h[1]
    roughness = np.maximum(np.abs(central - central_half), np.abs(right - left))
    return (4 * central_half - central) / 3, roughness


def _leaf_probe(plan: _Plan, f0: float, f: np.ndarray) -> LeafProbe:
    k = len(plan.indices)
    x64 = plan.x.reshape(-1)[plan.indices].astype(np.float64)
    fs = [f[i * k : (i + 1) * k] for i in range(4)]  # at +h, -h, +h/2, -h/2
    taken = [np.abs(m.astype(np.float64) - x64) for m in plan.moved]
    values, roughness = _estimates(
        f0, [fs[0], fs[2]], [fs[1], fs[3]], [(taken[0], taken[1]), (taken[2], taken[3])]
    )
    probe = LeafProbe(plan.x.size, plan.indices, values, roughness)
    if plan.dir_rows is not None:
        f_dir, h = f[4 * k :], plan.h_dir
        value, rough = _estimates(f0, [f_dir[0], f_dir[2]], [f_dir[1], f_dir[3]],
                                  [(h, h), (h / 2, h / 2)])
        # The direction actually stepped along (rounding moved x ± h·v a little).
        rows = plan.dir_rows.astype(np.float64)
        probe.direction = (rows[0] - rows[1]) / (2 * h)
        probe.directional, probe.directional_roughness = float(value), float(rough)
    return probe


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
    _check_scalar(jax.eval_shape(fun, *args))
    plans, dtype = [], None
    for j, leaf in enumerate(leaves):
        x = np.asarray(leaf)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"finite differences need real floating-point leaves; leaf {j} has dtype "
                f"{x.dtype}"
            )
        dtype = x.dtype if dtype is None else jnp.promote_types(dtype, x.dtype)
        if x.size <= max_elements:
            plans.append(_plan(x, np.arange(x.size), None))
            continue
        rng = np.random.default_rng([seed, j])
        plans.append(_plan(x, np.sort(rng.choice(x.size, size=max_elements, replace=False)), rng))
    f0, per_leaf = _evaluate(f, leaves, plans)
    probes = [_leaf_probe(plan, f0, f_leaf) for plan, f_leaf in zip(plans, per_leaf)]
    return Probe(f0, probes, np.dtype(dtype if dtype is not None else np.float32))


def numerical_grad(fun: Callable, *args: Any, argnums: int | Sequence[int] = 0) -> Any:
    """The full gradient by central differences, with the structure ``jax.grad`` returns.

    Every element of every differentiated leaf is probed (4 evaluations each), so keep inputs
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

"""``compare_grads``: one gradient by several engines, compared leaf by leaf in a GradReport.

The engines are funcgrad's interpreter (``fg.grad``), ``jax.grad``, each hand-derived gradient
you pass as ``reference`` and ``"fd"`` (central finite differences). Each is computed once, its
leaves named as a person writes them (``layers[0].W``), and each chosen pair becomes one row per
leaf (:mod:`funcgrad.compare.rows`); tagged intermediates add ``tag:<name>`` rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad._args import arg_names as _arg_names
from funcgrad._args import argnums_tuple as _argnums_tuple
from funcgrad._paths import leaf_name, path_to_str
from funcgrad.compare import finite_diff
from funcgrad.compare.report import GradReport
from funcgrad.compare.rows import Tolerances, analytic_row, engine_label, fd_row
from funcgrad.compare.tags import jax_tag_cotangents
from funcgrad.interpret import grad as fg_grad
from funcgrad.interpret import trace as fg_trace
from funcgrad.interpret.trace import lookup

__all__ = ["compare_grads"]

_ALIASES = {"fg": "funcgrad"}
_RESERVED = ("funcgrad", "fg", "jax")


class _Namer:
    """Leaf names for gradient pytrees: ``layers[0].W`` (one argnum), ``params.layers[0].W``
    (several), the argument's name for a bare array."""

    def __init__(self, fun: Callable, nargs: int, nums: tuple[int, ...], single: bool) -> None:
        self.arg_names = [_arg_names(fun, nargs)[i] for i in nums]
        self.single = single

    def name(self, path: Sequence[Any]) -> str:
        path = tuple(path)
        if self.single:
            return leaf_name(self.arg_names[0], path, single=True)
        # Several argnums: the gradient is a tuple, one entry per differentiated argument.
        head = path[0] if path else None
        if isinstance(head, jax.tree_util.SequenceKey) and head.idx < len(self.arg_names):
            return leaf_name(self.arg_names[head.idx], path[1:])
        return path_to_str(path) or "(root)"

    def leaves(self, tree: Any) -> list[tuple[str, Any]]:
        with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
        return [(self.name(p), leaf) for p, leaf in with_paths]


def _parse_references(reference: Any) -> dict[str, Any]:
    """{engine name: callable or "fd"} from the ``reference`` argument."""
    if reference is None:
        return {}
    if isinstance(reference, Mapping):
        out = {}
        for name, ref in reference.items():
            if not isinstance(name, str) or not name or "~" in name or name in _RESERVED:
                raise ValueError(
                    f"reference name {name!r} must be a non-empty string without '~', and not "
                    f"one of {_RESERVED} (funcgrad and jax are always compared)"
                )
            if ref == "fd" or callable(ref):
                out[name] = ref
            else:
                raise TypeError(f"reference {name!r} must be a callable or 'fd', got {ref!r}")
        return out
    items = [reference] if isinstance(reference, str) or callable(reference) else list(reference)
    manual = [r for r in items if callable(r)]
    out, k = {}, 0
    for ref in items:
        if isinstance(ref, str) and ref in ("jax", "funcgrad", "fg"):
            continue
        if isinstance(ref, str) and ref == "fd":
            out["fd"] = "fd"
        elif callable(ref):
            out["manual" if len(manual) == 1 else f"manual{k}"] = ref
            k += 1
        else:
            raise TypeError(
                "reference must be None, 'fd', a callable with the signature of "
                f"jax.grad(fun, argnums), or a list or dict of those; got {ref!r}"
            )
    return out


def _as_leaf(x: Any, like: np.ndarray) -> np.ndarray:
    # A bare Python number is weakly typed, as in JAX: it takes the reference's dtype.
    if isinstance(x, (int, float, complex)) and not isinstance(x, bool):
        return np.asarray(x, dtype=like.dtype)
    return np.asarray(x)


def _check_structure(got: Any, want: Any, engine: str, namer: _Namer) -> list[np.ndarray]:
    """``got``'s leaves in ``want``'s order; ``ValueError`` listing every path that differs."""
    want_named = namer.leaves(want)
    got_named = namer.leaves(got)
    want_tree = jax.tree_util.tree_structure(want)
    got_tree = jax.tree_util.tree_structure(got)
    problems: list[str] = []
    label = f"{engine!r}" if engine != "funcgrad" else "fg.grad"
    if want_tree != got_tree:
        want_names = [n for n, _ in want_named]
        got_names = [n for n, _ in got_named]
        missing = [n for n in want_names if n not in got_names]
        extra = [n for n in got_names if n not in want_names]
        if missing:
            problems.append(f"missing from {label} (in jax.grad's): " + ", ".join(missing))
        if extra:
            problems.append(f"only in {label} (not in jax.grad's): " + ", ".join(extra))
        if not missing and not extra:
            problems.append(
                f"same leaf paths but different containers: {label} gives {got_tree}, "
                f"jax.grad gives {want_tree}"
            )
    leaves = []
    if not problems:
        for (name, g), (_, w) in zip(got_named, want_named):
            w = np.asarray(w)
            g = _as_leaf(g, w)
            if g.shape != w.shape:
                problems.append(f"shape of {name}: {label} {g.shape}, jax.grad {w.shape}")
            leaves.append(g)
    if problems:
        raise ValueError(
            f"the gradient from {label} does not have the structure of jax.grad(fun, argnums)"
            "(*args):\n  " + "\n  ".join(problems) + "\nReturn a pytree with the same paths "
            "and shapes as the differentiated arguments (a transposed weight gradient is a "
            "shape mismatch)."
        )
    return leaves


def _float_array_args(args: tuple[Any, ...]) -> tuple[int, ...]:
    """Positions of arguments made only of arrays, at least one of them floating-point."""
    nums = []
    for i, arg in enumerate(args):
        leaves = jax.tree_util.tree_leaves(arg)
        arrays = all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
        if leaves and arrays and any(jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves):
            nums.append(i)
    return tuple(nums)


def _resolve_pairs(
    pairs: Sequence[Sequence[str]] | None, engines: Sequence[str]
) -> list[tuple[str, str]]:
    """(tested, reference) engine pairs: each engine vs jax by default, else ``pairs`` checked."""
    if pairs is None:
        return [(e, "jax") for e in engines if e != "jax"]
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"each pair must be (tested, reference), got {pair!r}")
        a, b = (_ALIASES.get(e, e) for e in pair)
        for e in (a, b):
            if e not in engines:
                raise ValueError(f"pair {tuple(pair)!r} names {e!r}; the engines are {engines}")
        if b == "fd":
            raise ValueError(
                f"put finite differences on the tested side: ('fd', {a!r}), not {tuple(pair)!r}"
            )
        if a == b:
            raise ValueError(f"pair {tuple(pair)!r} compares an engine with itself")
        out.append((a, b))
    if not out:
        raise ValueError("pairs is empty: nothing would be compared")
    return out


def compare_grads(
    fun: Callable,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    reference: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    intermediates: Mapping[str, Any] | None = None,
    pairs: Sequence[Sequence[str]] | None = None,
    fd_rtol: float | None = None,
    fd_atol: float | None = None,
    fd_elements: int = finite_diff.FD_ELEMENTS,
    fd_dtype: Any = None,
    seed: int = 0,
    jit: bool = False,
    title: str | None = None,
) -> GradReport:
    """Compare ``fg.grad(fun, argnums)(*args)`` with ``jax.grad`` and any references.

    ``reference``: None (funcgrad vs JAX only); a callable with the signature and output
    structure of ``jax.grad(fun, argnums)`` (a hand-derived gradient, engine ``manual``);
    ``"fd"`` (central finite differences, see :mod:`funcgrad.compare.finite_diff`); or a list
    of those, or a dict naming them (``{"textbook": grad_fn, "fd": "fd"}``). Each engine is
    compared with ``jax.grad`` unless ``pairs`` (e.g. ``[("manual", "funcgrad")]``) says
    otherwise.

    ``rtol``/``atol`` override the per-dtype defaults (:data:`TOLERANCES`) for analytic pairs,
    ``fd_rtol``/``fd_atol`` for finite differences (:data:`FD_TOLERANCES`). ``intermediates``
    maps ``fg.tag`` names to hand-derived cotangents of those values (``tag:<name>`` rows, vs
    funcgrad's and JAX's; finite differences are for arguments only). ``fd_elements`` is the
    per-leaf budget of probed elements, ``seed`` picks them. ``fd_dtype="float64"`` evaluates
    the finite differences with every float argument cast to float64 (x64 enabled for the
    duration), the one precision in which they check more than gross errors, whatever the
    gradients' dtype; by default they run in the arguments' dtype. ``jit=True`` compiles each
    gradient with ``jax.jit`` (fewer, larger compilations: faster for big models; ``fun`` and
    the references must then be jittable in every argument); finite differences are always
    compiled.

    Raises ``ValueError`` listing the paths (and shapes) that differ when an engine returns a
    different structure, and whatever ``fg.grad`` raises (``fg.UnsupportedPrimitiveError``).
    """
    nums = _argnums_tuple(argnums, len(args))
    namer = _Namer(fun, len(args), nums, isinstance(argnums, int))
    refs = _parse_references(reference)
    engines = ["funcgrad", "jax", *refs]
    chosen = _resolve_pairs(pairs, engines)
    tol = Tolerances(rtol, atol, fd_rtol, fd_atol)

    names, values = _gradients(fun, args, argnums, refs, namer, jit)
    fd_engines = [e for e, ref in refs.items() if isinstance(ref, str)]
    fd_probe = None
    if fd_engines:
        fd_probe = _fd_probe(fun, args, nums, fd_elements, fd_dtype, seed)

    rows: list[dict[str, Any]] = []
    if intermediates:
        given = chosen if pairs is not None else None
        rows += _intermediate_rows(fun, args, nums, intermediates, given, tol, jit)
    argument_rows, raised_atol = _argument_rows(names, values, chosen, fd_engines, fd_probe, tol)
    rows += argument_rows

    notes = [tol.note(sorted({r["dtype"] for r in rows}), bool(fd_engines))]
    if fd_probe is not None:
        notes += _fd_notes(fd_probe, rows, fd_elements, seed, fd_dtype, raised_atol)
    if intermediates:
        notes.append(
            "tag rows: JAX's cotangent of a tagged value is jax.grad of the loss w.r.t. a zero "
            "added at the tag; funcgrad's is fg.trace(...).cotangent(name)"
        )
    if title is None:
        fname = getattr(fun, "__name__", "fun")
        wrt = ", ".join(_arg_names(fun, len(args))[i] for i in nums)
        shown = [*engines, "manual"] if intermediates and "manual" not in engines else engines
        title = f"gradients of {fname} w.r.t. {wrt}: " + ", ".join(engine_label(e) for e in shown)
    pair_labels = list(dict.fromkeys(r["pair"] for r in rows))
    return GradReport(rows, engines=engines, pairs=pair_labels, notes=notes, title=title)


def _gradients(
    fun: Callable,
    args: tuple[Any, ...],
    argnums: int | Sequence[int],
    refs: dict[str, Any],
    namer: _Namer,
    jit: bool,
) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    """(leaf names, {engine: leaves}) of jax.grad, fg.grad and each callable reference."""

    def compiled(f: Callable) -> Callable:
        return jax.jit(f) if jit else f

    want = compiled(jax.grad(fun, argnums))(*args)
    named = namer.leaves(want)
    if not named:
        raise ValueError(
            "nothing to compare: the differentiated arguments have no array leaves "
            f"(argnums={argnums!r})"
        )
    values: dict[str, list[np.ndarray]] = {"jax": [np.asarray(w) for _, w in named]}
    got = compiled(fg_grad(fun, argnums))(*args)
    values["funcgrad"] = _check_structure(got, want, "funcgrad", namer)
    for engine, ref in refs.items():
        if not isinstance(ref, str):
            values[engine] = _check_structure(compiled(ref)(*args), want, engine, namer)
    return [n for n, _ in named], values


def _argument_rows(
    names: list[str],
    values: dict[str, list[np.ndarray]],
    chosen: list[tuple[str, str]],
    fd_engines: list[str],
    fd_probe: finite_diff.Probe | None,
    tol: Tolerances,
) -> tuple[list[dict[str, Any]], float | None]:
    """One row per (leaf, pair), and the fd atol when the estimates' noise raised it, else None.

    The noise floor of a finite-difference estimate is the rounding noise of ``f(x ± h)``
    divided by h, ``10·eps^(2/3)·|f(x)|``: no estimate is sharper, so a default fd atol below
    it is raised to it.
    """
    noise_floor, raised = 0.0, False
    if fd_probe is not None:
        noise_floor = 10 * float(jnp.finfo(fd_probe.dtype).eps) ** (2 / 3) * abs(fd_probe.value)
    rows = []
    for k, name in enumerate(names):
        for a, b in chosen:
            ref = values[b][k]
            if a in fd_engines:
                r, t = tol.for_dtype(ref.dtype, fd=True)
                if tol.fd_atol is None and noise_floor > t:
                    t = noise_floor
                    raised = True
                rows.append(fd_row(name, (a, b), fd_probe.leaves[k], ref, r, t))
            else:
                r, t = tol.for_dtype(ref.dtype)
                rows.append(analytic_row(name, "argument", (a, b), values[a][k], ref, r, t))
    return rows, (noise_floor if raised else None)


def _fd_notes(
    fd_probe: finite_diff.Probe,
    rows: list[dict[str, Any]],
    fd_elements: int,
    seed: int,
    fd_dtype: Any,
    raised_atol: float | None,
) -> list[str]:
    """What the report says about its finite differences: sampling, atol, dtype, kinks."""
    notes = []
    if any(not lp.complete for lp in fd_probe.leaves):
        notes.append(
            f"fd: leaves over {fd_elements} elements are probed at {fd_elements} random "
            f"elements (seed {seed}) plus one random direction v, compared as <g, v>"
        )
    if raised_atol is not None:
        notes.append(
            f"fd: atol raised to {raised_atol:.2g} = 10·eps^(2/3)·|f(x)|, the rounding noise "
            f"of the estimates for |f(x)| = {abs(fd_probe.value):.3g}"
        )
    if fd_dtype is not None and any(r["dtype"] != str(fd_probe.dtype) for r in rows):
        notes.append(
            f"fd: evaluated in {fd_probe.dtype}, every float argument cast to it; the fd "
            "tolerance is that of the gradients' dtype"
        )
    inconclusive = [r["leaf"] for r in rows if r["close"] is None]
    if inconclusive:
        notes.append(
            "fd inconclusive (every probe straddles a kink of the function) for: "
            + ", ".join(inconclusive)
        )
    if np.dtype(fd_probe.dtype).itemsize < 8:
        notes.append(
            f"note: finite differences in {fd_probe.dtype} only catch gross errors; for a "
            "sharper check run in float64: `funcgrad check --x64`, or "
            "`with jax.enable_x64(True):` and float64 inputs"
        )
    return notes


def _fd_probe(
    fun: Callable,
    args: tuple[Any, ...],
    nums: tuple[int, ...],
    fd_elements: int,
    fd_dtype: Any,
    seed: int,
) -> finite_diff.Probe:
    """Finite differences in the arguments' dtype, or with float arguments cast to fd_dtype."""
    if fd_dtype is None:
        return finite_diff.probe(fun, *args, argnums=nums, max_elements=fd_elements, seed=seed)
    dtype = np.dtype(fd_dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"fd_dtype must be a floating-point dtype, got {fd_dtype!r}")

    def cast(x: Any) -> Any:
        is_float = isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating)
        return jnp.asarray(x, dtype) if is_float else x

    with jax.enable_x64(bool(jax.config.jax_enable_x64) or dtype.itemsize == 8):
        cast_args = tuple(jax.tree_util.tree_map(cast, a) for a in args)
        return finite_diff.probe(
            fun, *cast_args, argnums=nums, max_elements=fd_elements, seed=seed
        )


def _intermediate_rows(
    fun: Callable,
    args: tuple[Any, ...],
    nums: tuple[int, ...],
    intermediates: Mapping[str, Any],
    pairs: list[tuple[str, str]] | None,
    tol: Tolerances,
    jit: bool,
) -> list[dict[str, Any]]:
    """``tag:<name>`` rows: funcgrad's, JAX's and the given cotangent of each tagged value."""
    names = list(intermediates)
    inactive: set[str] = set()

    def fg_cotangents(trace_nums: tuple[int, ...], *args: Any) -> dict[str, Any]:
        tr = fg_trace(fun, *args, argnums=trace_nums)
        for n in names:  # static facts, recorded while tracing
            owner, var = lookup(tr, n)
            if var not in owner.active:
                inactive.add(n)
        return {n: tr.cotangent(n) for n in names}

    def fg_run(trace_nums: tuple[int, ...]) -> dict[str, Any]:
        f = functools.partial(fg_cotangents, trace_nums)
        return (jax.jit(f) if jit else f)(*args)

    fg_cts = fg_run(nums)
    if inactive:
        # A tag that does not depend on the differentiated arguments gets no cotangent from
        # funcgrad; differentiate every float argument so that it does.
        inactive.clear()
        fg_cts = fg_run(tuple(sorted(set(nums) | set(_float_array_args(args)))))
    jax_cts = jax_tag_cotangents(fun, *args, names=names, jit=jit)
    cts = {
        "funcgrad": {k: np.asarray(v) for k, v in fg_cts.items()},
        "jax": {k: np.asarray(v) for k, v in jax_cts.items()},
        "manual": {},
    }
    for name in names:
        ref = cts["jax"][name]
        given = _as_leaf(intermediates[name], ref)
        if given.shape != ref.shape:
            raise ValueError(
                f"intermediates[{name!r}] has shape {given.shape}, but the value tagged "
                f"{name!r} has shape {ref.shape}"
            )
        cts["manual"][name] = given
    # The tagged values have three engines: funcgrad, JAX and the hand-derived "manual".
    tag_pairs = [("funcgrad", "jax"), ("manual", "jax")]
    if pairs is not None:
        tag_pairs = [p for p in pairs if p[0] in cts and p[1] in cts] or tag_pairs
    rows = []
    for name in names:
        for a, b in tag_pairs:
            ref = cts[b][name]
            r, t = tol.for_dtype(ref.dtype)
            rows.append(
                analytic_row(f"tag:{name}", "intermediate", (a, b), cts[a][name], ref, r, t)
            )
    return rows

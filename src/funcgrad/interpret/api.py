"""``grad``, ``value_and_grad``, ``vjp``, ``jacrev``, ``hessian`` and ``trace``: JAX's contracts.

Each call traces the function afresh with ``jax.make_jaxpr`` (so, like ``jax.grad``, it sees the
current values of globals), evaluates the jaxpr forward keeping every value, and walks it
backwards with funcgrad's rules. Pytrees in and out, ``argnums`` as an int or a tuple, ``has_aux``,
float0 cotangents for integer inputs, and the same errors as JAX for non-scalar or integer
outputs.

Every argument leaf that is an array becomes a jaxpr input (the differentiated ones are marked
active), so the graph can name data inputs too; non-array leaves of non-differentiated arguments
(Python numbers, strings, flags) stay static, as they do under ``jax.grad``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import dtypes
from jax.extend.core import ClosedJaxpr

from funcgrad._args import arg_names as _arg_names
from funcgrad._args import argnums_tuple as _argnums_tuple
from funcgrad._paths import leaf_name
from funcgrad.interpret import rules  # noqa: F401  (registers every rule)
from funcgrad.interpret.backward import TransposeObserver, backward
from funcgrad.interpret.eager import EAGER
from funcgrad.interpret.jaxprs import without_refs
from funcgrad.interpret.shortcuts import PLAIN, Shortcuts, using_shortcuts
from funcgrad.interpret.trace import Trace, evaluate, is_differentiable

__all__ = ["grad", "hessian", "jacrev", "trace", "value_and_grad", "vjp"]

def _dtype_of(x: Any) -> np.dtype:
    dt = getattr(x, "dtype", None)
    if dt is not None:
        return np.dtype(dt) if not dtypes.issubdtype(dt, dtypes.extended) else dt
    return dtypes.canonicalize_dtype(np.result_type(x))


class _Traced:
    """A function traced on specific arguments: the jaxpr and how to map leaves in and out.

    Only the leaves of the differentiated arguments become jaxpr inputs; every other argument is
    closed over exactly as ``jax.grad`` does (so a concrete array stays concrete, and Python
    control flow on it works). Arrays among them end up as the jaxpr's constants, and are named
    after the argument they came from when they can be recognised.
    """

    def __init__(
        self,
        fun: Callable,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        argnums: tuple[int, ...],
        has_aux: bool,
    ) -> None:
        self.argnums = argnums
        self.arg_trees: dict[int, Any] = {}
        self.arg_slices: dict[int, slice] = {}
        dyn: list[Any] = []
        names: list[str] = []
        arg_names = _arg_names(fun, len(args))
        single = len(argnums) == 1
        for i in argnums:
            with_paths, treedef = jax.tree_util.tree_flatten_with_path(args[i])
            self.arg_trees[i] = treedef
            start = len(dyn)
            for path, leaf in with_paths:
                dyn.append(leaf)
                names.append(leaf_name(arg_names[i], path, single))
            self.arg_slices[i] = slice(start, len(dyn))
        self.dyn_args = dyn
        self.input_names = names
        store: dict[str, Any] = {}

        def flat_fun(*leaves: Any) -> list[Any]:
            rebuilt = list(args)
            for i in argnums:
                sl = self.arg_slices[i]
                rebuilt[i] = jax.tree_util.tree_unflatten(self.arg_trees[i], leaves[sl])
            out = fun(*rebuilt, **kwargs)
            aux: Any = None
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(
                        "with has_aux=True the function must return a pair (output, aux), "
                        f"got {type(out).__name__}"
                    )
                out, aux = out
            out_leaves, store["out_tree"] = jax.tree_util.tree_flatten(out)
            aux_leaves, store["aux_tree"] = jax.tree_util.tree_flatten(aux)
            store["n_out"] = len(out_leaves)
            return [*out_leaves, *aux_leaves]

        # A fresh closure per call: make_jaxpr caches on the function object, and a cached trace
        # would not see globals that changed since (jax.grad always re-traces, and so do we).
        self.closed: ClosedJaxpr = without_refs(jax.make_jaxpr(flat_fun)(*dyn))
        self.out_tree = store["out_tree"]
        self.aux_tree = store["aux_tree"]
        self.n_out: int = store["n_out"]
        self.const_names = self._name_consts(args, arg_names)

    def _name_consts(self, args: tuple[Any, ...], arg_names: list[str]) -> list[str | None]:
        """Names of the constants that are (by identity) leaves of undifferentiated args."""
        by_id: dict[int, str] = {}
        for i, arg in enumerate(args):
            if i in self.argnums:
                continue
            for path, leaf in jax.tree_util.tree_flatten_with_path(arg)[0]:
                if isinstance(leaf, jax.Array):
                    by_id.setdefault(id(leaf), leaf_name(arg_names[i], path))
        return [by_id.get(id(c)) for c in self.closed.consts]

    @property
    def out_avals(self) -> list[Any]:
        return [v.aval for v in self.closed.jaxpr.outvars[: self.n_out]]

    @property
    def shortcuts(self) -> Shortcuts:
        """Eager shortcuts for concrete arguments; the plain interpreter under a trace."""
        if any(isinstance(a, jax.core.Tracer) for a in self.dyn_args):
            return PLAIN
        return EAGER

    def evaluate(self, shortcuts: Shortcuts = PLAIN) -> Trace:
        """Evaluate forward, keeping every value (or only residuals, if ``shortcuts`` says so)."""
        closed = self.closed
        active = [True] * len(self.dyn_args)
        drops = shortcuts.forward_drops(closed.jaxpr, active)
        with using_shortcuts(shortcuts):
            return evaluate(closed.jaxpr, closed.consts, self.dyn_args, active, drops=drops)

    def split_outputs(self, values: list[Any]) -> tuple[Any, Any]:
        values = [v if isinstance(v, jax.Array) else jnp.asarray(v) for v in values]
        out = jax.tree_util.tree_unflatten(self.out_tree, values[: self.n_out])
        aux = jax.tree_util.tree_unflatten(self.aux_tree, values[self.n_out :])
        return out, aux

    def grads_tree(self, in_cts: list[Any]) -> tuple[Any, ...]:
        """Per differentiated argument, the pytree of its cotangents (zeros where none flowed)."""
        invars = self.closed.jaxpr.invars
        grads = []
        for i in self.argnums:
            sl = self.arg_slices[i]
            leaves = [_cotangent_or_zero(ct, v.aval) for ct, v in zip(in_cts[sl], invars[sl])]
            grads.append(jax.tree_util.tree_unflatten(self.arg_trees[i], leaves))
        return tuple(grads)


def _cotangent_or_zero(ct: Any, aval: Any) -> Any:
    """A dense cotangent: zeros where none flowed, float0 zeros for integer inputs (as JAX)."""
    if not is_differentiable(aval):
        return np.zeros(aval.shape, dtype=dtypes.float0)
    if ct is None:
        return jnp.zeros(aval.shape, aval.dtype)
    return ct


def _check_grad_inputs(traced: _Traced, fname: str) -> None:
    for x in traced.dyn_args:
        dt = _dtype_of(x)
        if not dtypes.issubdtype(dt, np.inexact):
            raise TypeError(
                f"{fname} requires real- or complex-valued inputs (input dtype that is a "
                f"sub-dtype of np.inexact), but got {dt}. If you want to use Boolean- or "
                f"integer-valued inputs, use fg.vjp (integer inputs get float0 cotangents)."
            )


def _scalar_seed(traced: _Traced, fname: str) -> Any:
    """The output cotangent 1.0, after checking the output is a real scalar, as jax.grad does."""
    if traced.n_out != 1:
        raise TypeError(
            f"{fname} requires a function with a single scalar output, but its output is a "
            f"pytree with {traced.n_out} leaves"
        )
    aval = traced.out_avals[0]
    if aval.shape != ():
        raise TypeError(
            "Gradient only defined for scalar-output functions. "
            f"Output had shape: {tuple(aval.shape)}."
        )
    if not dtypes.issubdtype(aval.dtype, np.floating):
        raise TypeError(
            f"{fname} requires real-valued outputs (output dtype that is a sub-dtype of "
            f"np.floating), but got {aval.dtype}. For complex or integer outputs use fg.vjp."
        )
    return np.ones((), aval.dtype)  # a host constant: no dispatch eagerly, a literal under jit


def value_and_grad(
    fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Like ``jax.value_and_grad``: ``f(*args) -> ((value[, aux]), grads)`` from funcgrad's rules.

    Grads have the structure of ``args[argnums]`` (a tuple of them when ``argnums`` is a tuple).
    """

    @functools.wraps(fun)
    def value_and_grad_fun(*args: Any, **kwargs: Any) -> Any:
        nums = _argnums_tuple(argnums, len(args))
        traced = _Traced(fun, args, kwargs, nums, has_aux)
        _check_grad_inputs(traced, "grad")
        seed = _scalar_seed(traced, "grad")
        shortcuts = traced.shortcuts
        tr = traced.evaluate(shortcuts)
        outs = tr.outputs
        with using_shortcuts(shortcuts):
            in_cts = backward(tr, [seed] + [None] * (len(outs) - 1), release=True)
        grads = traced.grads_tree(in_cts)
        value, aux = traced.split_outputs(outs)
        g = grads[0] if isinstance(argnums, int) else grads
        return ((value, aux), g) if has_aux else (value, g)

    value_and_grad_fun.__funcgrad_grad__ = ("value_and_grad", argnums)  # type: ignore[attr-defined]
    return value_and_grad_fun


def grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """Like ``jax.grad``: the gradient of scalar ``fun`` w.r.t. ``args[argnums]``, by funcgrad.

    The function is traced to a jaxpr, evaluated forward keeping every value, and differentiated
    backwards with one hand-written VJP rule per primitive. Composes with ``jax.jit``,
    ``jax.vmap``, ``jax.grad`` and itself.
    """
    vg = value_and_grad(fun, argnums, has_aux)

    @functools.wraps(fun)
    def grad_fun(*args: Any, **kwargs: Any) -> Any:
        if has_aux:
            (_, aux), g = vg(*args, **kwargs)
            return g, aux
        return vg(*args, **kwargs)[1]

    grad_fun.__funcgrad_grad__ = ("grad", argnums)  # type: ignore[attr-defined]
    return grad_fun


def vjp(fun: Callable, *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """Like ``jax.vjp``: ``(out, vjp_fn)`` (and ``aux``), ``vjp_fn(ct)`` a tuple per primal."""
    if not primals:
        raise TypeError("fg.vjp needs at least one primal argument to differentiate")
    traced = _Traced(fun, primals, {}, tuple(range(len(primals))), has_aux)
    shortcuts = traced.shortcuts
    tr = traced.evaluate(shortcuts)
    outs = tr.outputs
    out, aux = traced.split_outputs(outs)
    out_avals = traced.out_avals
    n_aux = len(outs) - traced.n_out

    def vjp_fn(ct: Any) -> tuple[Any, ...]:
        ct_leaves, ct_tree = jax.tree_util.tree_flatten(ct)
        if ct_tree != traced.out_tree:
            raise ValueError(
                "unexpected tree structure of argument to vjp function: "
                f"got {ct_tree}, but expected to match {traced.out_tree}"
            )
        seeds = []
        for leaf, aval in zip(ct_leaves, out_avals):
            if not is_differentiable(aval):
                seeds.append(None)  # integer outputs take float0 cotangents: nothing flows
                continue
            shape = np.shape(leaf)
            if tuple(shape) != tuple(aval.shape):
                raise ValueError(
                    "unexpected JAX type (e.g. shape/dtype) for argument to vjp function: got "
                    f"shape {tuple(shape)}, but expected {aval.str_short()} because the "
                    "corresponding output of the function had that shape/dtype"
                )
            seeds.append(jnp.asarray(leaf, aval.dtype))
        with using_shortcuts(shortcuts):
            in_cts = backward(tr, seeds + [None] * n_aux)
        return traced.grads_tree(in_cts)

    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def _replace_args(args: tuple[Any, ...], nums: tuple[int, ...], new: Sequence[Any]) -> list[Any]:
    out = list(args)
    for i, x in zip(nums, new):
        out[i] = x
    return out


def jacrev(fun: Callable, argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Like ``jax.jacrev``: the Jacobian, one funcgrad VJP per output element (vmapped).

    The result has the output's structure outside and ``args[argnums]``'s inside; each leaf has
    shape ``out_leaf.shape + in_leaf.shape``.
    """

    @functools.wraps(fun)
    def jac_fun(*args: Any, **kwargs: Any) -> Any:
        nums = _argnums_tuple(argnums, len(args))

        def partial_fun(*dyn: Any) -> Any:
            return fun(*_replace_args(args, nums, dyn), **kwargs)

        out, pullback = vjp(partial_fun, *(args[i] for i in nums))
        out_leaves, out_tree = jax.tree_util.tree_flatten(out)
        sizes = [int(np.prod(leaf.shape)) for leaf in out_leaves]
        offsets = np.cumsum([0, *sizes])
        total = int(offsets[-1])
        dtype = jnp.result_type(*out_leaves) if out_leaves else jnp.float32

        def pull_row(e: Any) -> tuple[Any, ...]:
            cts = [
                e[offsets[k] : offsets[k + 1]].reshape(leaf.shape).astype(leaf.dtype)
                for k, leaf in enumerate(out_leaves)
            ]
            return pullback(jax.tree_util.tree_unflatten(out_tree, cts))

        rows = jax.vmap(pull_row)(jnp.eye(total, dtype=dtype))
        per_out = []
        for k, leaf in enumerate(out_leaves):
            lo, hi = int(offsets[k]), int(offsets[k + 1])
            per_out.append(
                jax.tree_util.tree_map(
                    lambda j, lo=lo, hi=hi, shape=leaf.shape: j[lo:hi].reshape(
                        (*shape, *j.shape[1:])
                    ),
                    rows,
                )
            )
        if isinstance(argnums, int):
            per_out = [p[0] for p in per_out]
        return jax.tree_util.tree_unflatten(out_tree, per_out)

    return jac_fun


def hessian(fun: Callable, argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Like ``jax.hessian`` but reverse-over-reverse with funcgrad only: ``jacrev(grad(f))``."""
    return jacrev(grad(fun, argnums), argnums)


def trace(
    fun: Callable,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    out_cotangent: Any = None,
    backward: bool = True,
    jit: bool = False,
    on_transpose: TransposeObserver | None = None,
    **kwargs: Any,
) -> Trace:
    """Evaluate ``fun(*args, **kwargs)`` and its backward pass, keeping every value and cotangent.

    The returned :class:`Trace` holds the jaxpr, the value and cotangent of every variable (nested
    ones inside ``jit``/``custom_jvp`` bodies too), the output (``.value``, ``.aux``) and the
    gradients (``.grads``, with the structure ``fg.grad`` returns). ``.cotangent("logits")`` gives
    the cotangent of a value tagged with ``fg.tag``, or of an input by its name
    (``"layers[0].W"``). ``out_cotangent`` seeds a non-scalar output (default: 1.0 for scalars).

    ``backward=False`` evaluates the forward pass only (any output; no cotangents, no grads).
    ``jit=True`` runs the whole evaluation as one compiled program and returns the same trace:
    much faster for large models (eagerly, every primitive is dispatched, and compiled the first
    time it is seen), but values may differ from eager ones by float rounding where XLA fuses
    operations differently. Per-iteration values inside scan bodies are not kept either way.

    ``on_transpose(index, eqn, out_cts, in_cts)`` is told of each top-level equation the backward
    walk transposes, in the order it does (see :func:`funcgrad.interpret.backward.backward`);
    it needs ``jit=False``, since a compiled walk has no values to report.
    """
    if on_transpose is not None and jit:
        raise ValueError("fg.trace: on_transpose needs jit=False (a compiled walk has no values)")
    nums = _argnums_tuple(argnums, len(args))
    traced = _Traced(fun, args, kwargs, nums, has_aux)
    seeds = _trace_seeds(traced, out_cotangent) if backward else None
    with using_shortcuts(PLAIN):  # every value and cotangent kept, every equation interpreted
        if jit:
            tr, in_cts = _evaluate_compiled(traced, seeds)
        else:
            tr = traced.evaluate()
            in_cts = _backward_seeded(tr, traced, seeds, on_transpose) if backward else None
    value, aux = traced.split_outputs(tr.outputs)
    tr.closed_jaxpr = traced.closed
    tr.input_names = traced.input_names
    tr.const_names = traced.const_names
    tr.out_tree = traced.out_tree
    tr.aux_tree = traced.aux_tree if has_aux else None
    tr.value = value
    tr.aux = aux if has_aux else None
    if in_cts is not None:
        grads = traced.grads_tree(in_cts)
        tr.grads = grads[0] if isinstance(argnums, int) else grads
    return tr


def _trace_seeds(traced: _Traced, out_cotangent: Any) -> list[Any]:
    if out_cotangent is None:
        return [_scalar_seed(traced, "fg.trace")]
    leaves, tree = jax.tree_util.tree_flatten(out_cotangent)
    if tree != traced.out_tree:
        raise ValueError(
            f"out_cotangent has tree structure {tree}, but the output has {traced.out_tree}"
        )
    return [jnp.asarray(leaf, aval.dtype) for leaf, aval in zip(leaves, traced.out_avals)]


def _backward_seeded(
    tr: Trace, traced: _Traced, seeds: list[Any], on_transpose: TransposeObserver | None = None
) -> list[Any]:
    n_aux = len(traced.closed.jaxpr.outvars) - traced.n_out
    return backward(tr, seeds + [None] * n_aux, keep=True, on_transpose=on_transpose)


def _cotangent_leaves(tr: Trace) -> list[Any]:
    out = list((tr.cotangents or {}).values())
    for _, _, record in tr.eqn_records():
        if isinstance(record, Trace):
            out.extend(_cotangent_leaves(record))
    return out


def _with_cotangent_leaves(skeleton: Trace, tr: Trace, leaves: list[Any]) -> int:
    """Give ``tr`` (rebuilt from ``skeleton``) the cotangents ``leaves``; returns how many used."""
    keys = list((skeleton.cotangents or {}).keys())
    if skeleton.cotangents is not None:
        tr.cotangents = dict(zip(keys, leaves[: len(keys)]))
    pos = len(keys)
    for i, _, record in skeleton.eqn_records():
        if isinstance(record, Trace):
            pos += _with_cotangent_leaves(record, tr.records[i], leaves[pos:])
        else:
            tr.records[i] = None  # scan/custom_vjp records hold values of the compiled trace
    return pos


def _evaluate_compiled(traced: _Traced, seeds: list[Any] | None) -> tuple[Trace, Any]:
    """fg.trace(jit=True): one compiled program returns every value and cotangent."""
    closed = traced.closed
    box: dict[str, Trace] = {}

    def run(dyn: list[Any], consts: list[Any], seeds: list[Any] | None):
        tr = evaluate(closed.jaxpr, consts, dyn, [True] * len(dyn))
        in_cts = None if seeds is None else _backward_seeded(tr, traced, seeds)
        box["skeleton"] = tr
        return tr.outputs, tr.leaves(), _cotangent_leaves(tr), in_cts

    _, leaves, ct_leaves, in_cts = jax.jit(run)(traced.dyn_args, list(closed.consts), seeds)
    skeleton = box["skeleton"]
    tr = skeleton.with_leaves(leaves, list(closed.consts))
    _with_cotangent_leaves(skeleton, tr, ct_leaves)
    return tr, in_cts

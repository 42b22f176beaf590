"""The reverse walk: from output cotangents to input cotangents, one equation at a time.

Cotangents are accumulated per variable (a variable read twice gets the sum of both
contributions), ``None`` stands for a symbolic zero, and only *active* variables (see
:mod:`funcgrad.interpret.trace`) are ever given one. Each equation's rule comes from the registry;
the walk itself knows nothing about any particular primitive.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import DropVar, Literal, Var

from funcgrad.interpret.errors import (
    RuleError,
    UnsupportedPrimitiveError,
    enclosing,
    failures_named,
    source_line,
)
from funcgrad.interpret.registry import RuleSpec
from funcgrad.interpret.shortcuts import Shortcuts, current_shortcuts
from funcgrad.interpret.trace import Trace, is_differentiable, placeholder

__all__ = ["TransposeObserver", "backward", "emitting_rule", "instantiate", "zeros_like_aval"]

# Whether nested backward passes (inside jit, custom_jvp, ... bodies) keep every cotangent too.
_KEEP_COTANGENTS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "funcgrad_keep_cotangents", default=False
)


_SCOPE_OPEN, _SCOPE_CLOSE = "vjp[", "]"
SUM_OF_COTANGENTS = "sum of cotangents"


def _rule_scope(name: str) -> Any:
    """Name what a rule emits ``vjp[name]`` in each traced equation's name stack.

    :func:`emitting_rule` reads it back (the graph labels each backward equation with its rule),
    and XLA's op metadata carries it, so profiles show it too. Eagerly it records nothing and
    costs about a microsecond.
    """
    return jax.named_scope(f"{_SCOPE_OPEN}{name}{_SCOPE_CLOSE}")


def emitting_rule(eqn: Any) -> str | None:
    """Which VJP rule emitted ``eqn``, when it comes from funcgrad's traced backward pass.

    The rule's function name (``tanh_vjp``), its class name for higher-order rules
    (``ScanVjp``), or ``"sum of cotangents"`` for the adds that accumulate a variable's
    cotangents; None for an equation the backward pass did not emit.
    """
    for scope in reversed(eqn.source_info.name_stack.stack):
        name = getattr(scope, "name", "")
        if name.startswith(_SCOPE_OPEN) and name.endswith(_SCOPE_CLOSE):
            return name[len(_SCOPE_OPEN) : -len(_SCOPE_CLOSE)]
    return None


def zeros_like_aval(aval: Any) -> Any:
    """A dense zero of ``aval``'s shape and dtype, varying over the same manual mesh axes.

    Inside a ``shard_map`` body a value's type says which mesh axes it varies over; a zero
    cotangent must say the same, or ``lax.scan``/``lax.cond`` reject the mismatched types.
    """
    zero = lax.full(aval.shape, 0, aval.dtype)
    varying = getattr(getattr(aval, "mat", None), "varying", ())
    if varying:
        manual = jax.sharding.get_abstract_mesh().manual_axes
        axes = tuple(a for a in varying if a in manual)
        if axes:
            zero = lax.pcast(zero, axes, to="varying")
    return zero


def instantiate(ct: Any, aval: Any) -> Any:
    """``ct``, or a dense zero of ``aval`` where ``ct`` is the symbolic zero ``None``."""
    return zeros_like_aval(aval) if ct is None else ct


def _fit(ct: Any, v: Var, eqn: Any, shortcuts: Shortcuts) -> Any:
    """Check a rule's cotangent against its input's aval and cast it to the input's dtype."""
    aval = v.aval
    shape = getattr(ct, "shape", None)
    if shape is None:
        ct = jnp.asarray(ct)
        shape = ct.shape
    if tuple(shape) != tuple(aval.shape):
        raise RuleError(
            f"the VJP rule for '{eqn.primitive.name}' (at {source_line(eqn)}) returned a "
            f"cotangent of shape {tuple(shape)} for an input of shape {tuple(aval.shape)}"
        )
    if ct.dtype != aval.dtype:
        ct = lax.convert_element_type(shortcuts.dense(ct), aval.dtype)
    return ct


def _call_rule(spec: RuleSpec, eqn: Any, trace: Trace, cts: list[Any], needs: list[bool]) -> Any:
    values = trace.values
    invals = [
        v.val if isinstance(v, Literal) else values[v] if v in values else placeholder(v)
        for v in eqn.invars
    ]
    kwargs: dict[str, Any] = {}
    if eqn.primitive.multiple_results:
        ct_arg: Any = [
            instantiate(c, v.aval) if c is None and is_differentiable(v.aval) else c
            for c, v in zip(cts, eqn.outvars)
        ]
        if spec.wants_out:
            kwargs["out"] = [None if isinstance(v, DropVar) else values[v] for v in eqn.outvars]
    else:
        ct_arg = cts[0]
        if spec.wants_out:
            kwargs["out"] = values[eqn.outvars[0]]
    if spec.wants_needs:
        kwargs["needs"] = tuple(needs)
    params = eqn.params
    if spec.param_names is None:
        kwargs.update(params)
    else:
        for name in spec.param_names:
            if name in params:
                kwargs[name] = params[name]
    return spec.fn(ct_arg, *invals, **kwargs)


TransposeObserver = Callable[[int, Any, list[Any], list[Any]], None]
"""``on_transpose(index, eqn, out_cts, in_cts)``: told of each equation the walk transposes."""


def backward(
    trace: Trace,
    out_cts: Sequence[Any],
    *,
    keep: bool | None = None,
    release: bool = False,
    on_transpose: TransposeObserver | None = None,
) -> list[Any]:
    """Cotangents of ``trace``'s jaxpr inputs given its output cotangents (``None`` = zero).

    With ``keep=True`` the cotangent of every variable stays in ``trace.cotangents`` (for
    ``fg.trace`` and the graph renderer), in nested traces too; otherwise each is dropped once it
    has been used. ``keep=None`` inherits the setting of the enclosing backward pass.

    With ``release=True`` the trace is used up: each equation's output values (and its record)
    are dropped from ``trace`` as soon as the walk has passed the equation, since only the
    equations after it read them. Peak memory then falls during the backward pass, as the
    forward activations are freed layer by layer; for ``fg.grad``, whose trace serves one pass.

    ``on_transpose(index, eqn, out_cts, in_cts)`` is called after each equation of ``trace``'s
    own jaxpr whose rule the walk runs (those with a nonzero output cotangent), last equation
    first, with the cotangents of its outputs and those its rule returned for its inputs
    (``None`` = zero), before they are added to what the inputs already hold. Nested walks
    (inside ``jit``, ``scan``, ... bodies) are not reported. For inspection (``fg.trace``,
    ``fg.viz.animate_backward``); nothing is called or kept when it is None.
    """
    if keep is None:
        keep = _KEEP_COTANGENTS.get()
    token = _KEEP_COTANGENTS.set(keep)
    try:
        return _backward(trace, out_cts, keep, release and not keep, on_transpose)
    finally:
        _KEEP_COTANGENTS.reset(token)


def _backward(
    trace: Trace,
    out_cts: Sequence[Any],
    keep: bool,
    release: bool,
    on_transpose: TransposeObserver | None,
) -> list[Any]:
    jaxpr = trace.jaxpr
    active = trace.active
    shortcuts = current_shortcuts()
    cts: dict[Var, Any] = {}

    def accumulate(v: Any, ct: Any) -> None:
        if ct is None or isinstance(v, (Literal, DropVar)) or v not in active:
            return
        prev = cts.get(v)
        if prev is None:
            cts[v] = ct
            return
        with _rule_scope(SUM_OF_COTANGENTS):
            cts[v] = shortcuts.add(prev, ct)

    for v, ct in zip(jaxpr.outvars, out_cts, strict=True):
        accumulate(v, ct)

    kept: dict[Var, Any] = {}
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        eqn_cts = [None if isinstance(v, DropVar) else cts.get(v) for v in eqn.outvars]
        if keep:
            kept.update((v, c) for v, c in zip(eqn.outvars, eqn_cts) if c is not None)
        else:
            for v in eqn.outvars:
                cts.pop(v, None)
        if any(c is not None for c in eqn_cts):
            in_cts = _transpose_eqn(i, eqn, trace, eqn_cts, shortcuts)
            if on_transpose is not None:
                on_transpose(i, eqn, eqn_cts, in_cts)
            for v, ct in zip(eqn.invars, in_cts):
                accumulate(v, ct)
        if release:  # every reader of these outputs comes later in the program: done
            for v in eqn.outvars:
                trace.values.pop(v, None)
            trace.records.pop(i, None)

    in_cts = [shortcuts.dense(cts.get(v)) for v in jaxpr.invars]
    if keep:
        kept.update((v, shortcuts.dense(c)) for v, c in cts.items())
        trace.cotangents = kept
    return in_cts


def _transpose_eqn(
    i: int, eqn: Any, trace: Trace, eqn_cts: list[Any], shortcuts: Shortcuts
) -> list[Any]:
    """Equation ``i``'s rule applied to its output cotangents: one cotangent (or None) per input."""
    needs = [not isinstance(v, Literal) and v in trace.active for v in eqn.invars]
    if not any(needs):
        return [None] * len(eqn.invars)
    name = eqn.primitive.name
    higher = shortcuts.higher_order_rule(name)
    spec = None if higher is not None else shortcuts.vjp_rule(name)
    if higher is not None:
        rule_name = getattr(higher, "name", type(higher).__name__)
    else:
        rule_name = spec.fn.__name__ if spec is not None else name
    with _rule_scope(rule_name):
        in_cts = _apply_rule(i, eqn, trace, higher, spec, eqn_cts, needs)
        return [
            _fit(ct, v, eqn, shortcuts) if need and ct is not None else None
            for v, ct, need in zip(eqn.invars, in_cts, needs)
        ]


def _apply_rule(
    i: int, eqn: Any, trace: Trace, higher: Any, spec: RuleSpec | None, cts: list, needs: list
) -> Sequence[Any]:
    """Run equation ``i``'s rule; any failure names the primitive and the user's line."""
    name = eqn.primitive.name
    with failures_named(eqn, "VJP rule"):
        if higher is not None:
            invals = [trace.read(v) for v in eqn.invars]
            with enclosing(eqn):
                in_cts = higher.backward(eqn, invals, trace.records.get(i), cts, needs)
        elif spec is None:
            raise UnsupportedPrimitiveError(name, source_line(eqn), dict(eqn.params))
        else:
            in_cts = _call_rule(spec, eqn, trace, cts, needs)
    if len(in_cts) != len(eqn.invars):
        raise RuleError(
            f"the VJP rule for '{name}' (at {source_line(eqn)}) returned {len(in_cts)} "
            f"cotangents for {len(eqn.invars)} inputs",
            name,
            source_line(eqn),
        )
    return in_cts

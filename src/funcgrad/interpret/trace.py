"""Forward evaluation of a jaxpr that keeps the value of every variable.

``evaluate(jaxpr, consts, args, active)`` binds each equation's primitive in order, as
``jax.core.eval_jaxpr`` does, but keeps every intermediate value in a :class:`Trace` and marks
which variables are *active*: floating-point values that depend on a differentiated input. Only
active variables ever receive a cotangent, which is how the backward pass skips work on data
(labels, masks, integer indices) that no gradient flows through.

Higher-order primitives (``jit``, ``scan``, ``custom_jvp_call``, ...) evaluate through their rule,
which usually recurses into :func:`evaluate` and stores the nested :class:`Trace` as the
equation's *record*.

Everything here is traceable: under ``jax.jit`` or ``jax.vmap`` the values are tracers and the
interpreter simply emits the primitives again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import dtypes
from jax.extend.core import DropVar, Jaxpr, JaxprEqn, Literal, Var

from funcgrad.interpret.errors import enclosing, failures_named
from funcgrad.interpret.registry import lookup_higher_order, lookup_vjp
from funcgrad.interpret.shortcuts import current_shortcuts
from funcgrad.interpret.tagging import tag_p

__all__ = [
    "Trace",
    "active_vars",
    "bind_eqn",
    "cotangent_of",
    "evaluate",
    "is_differentiable",
    "jaxpr_activity",
    "lookup",
    "passes_cotangents",
    "placeholder",
    "read",
    "read_when_transposed",
    "tag_names",
    "value_of",
]

_DIFFERENTIABLE: dict[Any, bool] = {}


def is_differentiable(aval: Any) -> bool:
    """True for avals of inexact dtype (float or complex): the only ones that carry cotangents."""
    dtype = getattr(aval, "dtype", None)
    if dtype is None:
        return False
    known = _DIFFERENTIABLE.get(dtype)
    if known is None:
        known = _DIFFERENTIABLE[dtype] = bool(dtypes.issubdtype(dtype, np.inexact))
    return known


def placeholder(v: Var) -> jax.ShapeDtypeStruct:
    """What a rule gets for an input whose value was not kept: its shape and dtype only.

    Rules registered with ``reads`` never look further; any other use fails loudly (a lax op
    rejects it) instead of computing with made-up numbers.
    """
    return jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype)


def _zeros_of(stand_in: jax.ShapeDtypeStruct) -> Any:
    """Zeros of a :func:`placeholder`'s shape and dtype (float0 zeros stay on the host)."""
    if stand_in.dtype == dtypes.float0:
        return np.zeros(stand_in.shape, dtypes.float0)
    return jax.lax.full(stand_in.shape, 0, stand_in.dtype)


def read(env: dict[Var, Any], v: Any) -> Any:
    """The value of ``v`` in ``env`` (a Literal carries its own value)."""
    return v.val if isinstance(v, Literal) else env[v]


class Trace:
    """One evaluation of one jaxpr: the value of every variable, and later every cotangent.

    ``values`` maps each :class:`Var` to its value, ``active`` is the set of variables that
    depend on a differentiated input, ``records`` maps the index of each higher-order equation
    to what its rule stored (usually a nested :class:`Trace`), and ``cotangents`` is filled in by
    the backward pass when asked to keep them.
    """

    __slots__ = (
        "active",
        "aux",
        "aux_tree",
        "closed_jaxpr",
        "const_names",
        "consts",
        "cotangents",
        "grads",
        "input_names",
        "invariant",
        "jaxpr",
        "out_tree",
        "records",
        "value",
        "values",
    )

    def __init__(
        self,
        jaxpr: Jaxpr,
        consts: Sequence[Any],
        values: dict[Var, Any],
        active: set[Var],
        records: dict[int, Any],
        invariant: frozenset[Var],
    ) -> None:
        self.jaxpr = jaxpr
        self.consts = list(consts)
        self.values = values
        self.active = active
        self.records = records
        self.invariant = invariant
        self.cotangents: dict[Var, Any] | None = None
        # Filled in by fg.trace for the top-level trace:
        self.closed_jaxpr: Any = None
        self.input_names: list[str] | None = None
        self.const_names: list[str | None] | None = None
        self.value: Any = None
        self.aux: Any = None
        self.grads: Any = None
        self.out_tree: Any = None
        self.aux_tree: Any = None

    def __repr__(self) -> str:
        n = len(self.jaxpr.eqns)
        done = "with cotangents" if self.cotangents is not None else "forward only"
        return f"<funcgrad Trace: {n} equations, {len(self.values)} values, {done}>"

    # ---- looking things up by name (fg.tag names and input paths) ----------------------------
    def cotangent(self, name: str) -> Any:
        """funcgrad's cotangent of the ``fg.tag``-ged value or input called ``name``."""
        return cotangent_of(self, name)

    def value_of(self, name: str) -> Any:
        """The forward value of the ``fg.tag``-ged value or input called ``name``."""
        return value_of(self, name)

    def tags(self) -> list[str]:
        """Names of every ``fg.tag`` in this trace, nested calls included."""
        return tag_names(self)

    # ---- reading ----------------------------------------------------------------------------
    def read(self, v: Any) -> Any:
        """The value of variable ``v`` (or of a Literal)."""
        return read(self.values, v)

    @property
    def outputs(self) -> list[Any]:
        """The values of the jaxpr's outputs."""
        return [read(self.values, v) for v in self.jaxpr.outvars]

    def eqn_records(self) -> Iterator[tuple[int, JaxprEqn, Any]]:
        """(index, equation, record) for each higher-order equation that stored a record."""
        for i in sorted(self.records):
            yield i, self.jaxpr.eqns[i], self.records[i]

    # ---- residuals: a Trace as a flat list of arrays (for lax.scan) --------------------------
    def _varying_vars(self) -> list[Var]:
        ins = [v for v in self.jaxpr.invars if v not in self.invariant]
        outs = [
            v for eqn in self.jaxpr.eqns for v in eqn.outvars if not isinstance(v, DropVar)
        ]
        return ins + outs

    def leaves(self) -> list[Any]:
        """Every loop-varying value this trace holds, nested records included, in a fixed order."""
        out = [self.values[v] for v in self._varying_vars()]
        for i in sorted(self.records):
            out.extend(_record_leaves(self.records[i]))
        return out

    def with_leaves(self, leaves: Sequence[Any], consts: Sequence[Any] | None = None) -> Trace:
        """A trace of the same structure whose varying values are ``leaves`` (see ``leaves``).

        ``consts`` rebinds the jaxpr's constants (when the trace was built from other values).
        """
        leaves = list(leaves)
        varying = self._varying_vars()
        values = {v: self.values[v] for v in self.invariant}
        if consts is not None:
            values.update(zip(self.jaxpr.constvars, consts))
        values.update(zip(varying, leaves[: len(varying)]))
        pos = len(varying)
        records = {}
        for i in sorted(self.records):
            rec = self.records[i]
            n = _record_size(rec)
            records[i] = _record_with_leaves(rec, leaves[pos : pos + n])
            pos += n
        if pos != len(leaves):
            raise AssertionError(f"trace residuals: expected {pos} leaves, got {len(leaves)}")
        new_consts = self.consts if consts is None else list(consts)
        return Trace(self.jaxpr, new_consts, values, self.active, records, self.invariant)

    def only_trace_records(self) -> bool:
        """True if every nested record is itself a Trace with only Trace records (no scan)."""
        return all(
            isinstance(r, Trace) and r.only_trace_records() for r in self.records.values()
        )


def _is_record(item: Any) -> bool:
    return item is None or isinstance(item, (list, tuple)) or hasattr(item, "with_leaves")


def _record_leaves(record: Any) -> list[Any]:
    """Flatten a record: None, an object with ``leaves()`` (a Trace), or a list of them/arrays."""
    if record is None:
        return []
    if hasattr(record, "with_leaves"):
        return record.leaves()
    out: list[Any] = []
    for item in record:
        out.extend(_record_leaves(item) if _is_record(item) else [item])
    return out


def _record_size(record: Any) -> int:
    return len(_record_leaves(record))


def _record_with_leaves(record: Any, leaves: list[Any]) -> Any:
    if record is None:
        return None
    if hasattr(record, "with_leaves"):
        return record.with_leaves(leaves)
    out, pos = [], 0
    for item in record:
        if _is_record(item):
            n = _record_size(item)
            out.append(_record_with_leaves(item, leaves[pos : pos + n]))
            pos += n
        else:
            out.append(leaves[pos])
            pos += 1
    return tuple(out) if isinstance(record, tuple) else out


def bind_eqn(eqn: JaxprEqn, invals: list[Any]) -> list[Any]:
    """``eqn``'s primitive applied to ``invals`` (as ``jax.core.eval_jaxpr`` does): its outputs."""
    out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def read_when_transposed(eqn: JaxprEqn) -> list[Var]:
    """The variables whose values the backward pass reads to transpose ``eqn``.

    The inputs its rule declares in ``reads`` (all of them by default, and always for
    higher-order rules, which have no ``reads``), and the outputs if the rule asks for ``out``.
    """
    spec = lookup_vjp(eqn.primitive.name)  # None for higher-order primitives
    reads = None if spec is None else spec.reads
    ins = [
        v
        for i, v in enumerate(eqn.invars)
        if not isinstance(v, Literal) and (reads is None or i in reads)
    ]
    if spec is None or spec.wants_out:
        ins.extend(v for v in eqn.outvars if not isinstance(v, DropVar))
    return ins


def _needed_by_linear_part(jaxpr: Jaxpr, active: set[Var]) -> set[Var]:
    """Variables whose values the backward pass of a linear (tangent) jaxpr reads.

    Equations with an active input are linear in it, and their rules read only the *other*
    inputs (the primal values a tangent is multiplied by, the mask that selects it). Those, and
    everything they are computed from, are needed; primal outputs nobody reads are not.
    """
    needed: set[Var] = set()
    for eqn in reversed(jaxpr.eqns):
        if any(v in active for v in eqn.outvars):  # transposed: its rule reads some inputs
            needed.update(read_when_transposed(eqn))
        elif any(v in needed for v in eqn.outvars):  # evaluated: all its inputs are read
            needed.update(v for v in eqn.invars if not isinstance(v, Literal))
    return needed


def evaluate(
    jaxpr: Jaxpr,
    consts: Sequence[Any],
    args: Sequence[Any],
    active_in: Sequence[bool],
    invariant_in: Sequence[bool] | None = None,
    *,
    linear: bool = False,
    drops: Mapping[int, Sequence[Var]] | None = None,
) -> Trace:
    """Evaluate ``jaxpr`` on ``args``, keeping every value; ``active_in`` marks differentiated args.

    ``invariant_in`` marks arguments that stay the same across the iterations of an enclosing
    loop (a scan's constants): they are left out of :meth:`Trace.leaves`.

    ``linear=True`` is for a jaxpr that is linear in its active inputs (a custom JVP rule's
    tangent part), evaluated only to be transposed: first-order equations on tangents are not
    computed (a :func:`placeholder` with their shape and dtype stands in, which linear rules
    never read), and primal values nothing downstream needs are skipped. This is
    the work JAX's partial evaluation avoids: eagerly it saves dispatches, under ``jit`` it
    keeps dead code out of the program XLA has to compile.

    ``drops`` maps an equation's index to values nothing reads once it has run; they are
    dropped then (``fg.grad`` keeps only what the backward pass reads, as ``jax.vjp`` keeps
    residuals; see :mod:`funcgrad.interpret.eager`). By default every value is kept.
    """
    if len(args) != len(jaxpr.invars):
        raise TypeError(f"jaxpr takes {len(jaxpr.invars)} arguments, got {len(args)}")
    if linear:
        return _evaluate_linear(jaxpr, consts, args, active_in)
    values: dict[Var, Any] = dict(zip(jaxpr.constvars, consts))
    active: set[Var] = set()
    invariant = set(jaxpr.constvars)
    for i, (v, x) in enumerate(zip(jaxpr.invars, args)):
        values[v] = x
        if active_in[i] and is_differentiable(v.aval):
            active.add(v)
        if invariant_in is not None and invariant_in[i]:
            invariant.add(v)
    records: dict[int, Any] = {}
    drops = drops or {}
    shortcuts = current_shortcuts()
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [v.val if isinstance(v, Literal) else values[v] for v in eqn.invars]
        in_active = [not isinstance(v, Literal) and v in active for v in eqn.invars]
        rule = shortcuts.higher_order_rule(eqn.primitive.name)
        outvals, out_active, record = _run(eqn, rule, invals, in_active)
        if record is not None:
            records[i] = record
        for v, x, a in zip(eqn.outvars, outvals, out_active):
            if isinstance(v, DropVar):
                continue
            values[v] = x
            if a and is_differentiable(v.aval):
                active.add(v)
        for v in drops.get(i, ()):
            del values[v]
    return Trace(jaxpr, consts, values, active, records, frozenset(invariant))


def _run(eqn: JaxprEqn, rule: Any, invals: list[Any], in_active: list[bool]) -> tuple:
    """(outputs, which are active, record) of one equation: bound, or through its rule."""
    if rule is None:
        active = any(in_active) and passes_cotangents(eqn)
        return bind_eqn(eqn, invals), [active] * len(eqn.outvars), None
    with enclosing(eqn), failures_named(eqn, "forward evaluation"):
        return rule.forward(eqn, invals, in_active)


def _evaluate_linear(
    jaxpr: Jaxpr, consts: Sequence[Any], args: Sequence[Any], active_in: Sequence[bool]
) -> Trace:
    values: dict[Var, Any] = dict(zip(jaxpr.constvars, consts))
    values.update(zip(jaxpr.invars, args))
    active = active_vars(jaxpr, active_in)  # activity first (static), then what is read
    needed = _needed_by_linear_part(jaxpr, active)
    records: dict[int, Any] = {}
    shortcuts = current_shortcuts()
    for i, eqn in enumerate(jaxpr.eqns):
        outs_active = any(v in active for v in eqn.outvars)
        if not outs_active and not any(v in needed for v in eqn.outvars):
            for v in eqn.outvars:  # a stand-in for a rule that asks only its shape and dtype
                if not isinstance(v, DropVar):
                    values[v] = placeholder(v)
            continue
        rule = shortcuts.higher_order_rule(eqn.primitive.name)
        if outs_active and rule is None:  # a tangent: transposed, never computed
            for v in eqn.outvars:
                if not isinstance(v, DropVar):
                    values[v] = placeholder(v)
            continue
        invals = [v.val if isinstance(v, Literal) else values[v] for v in eqn.invars]
        if rule is not None:
            # A higher-order equation on tangents (a jit inside a custom JVP rule, say) is
            # evaluated for its residuals: on zero tangents, which it is linear in.
            invals = [_zeros_of(x) if isinstance(x, jax.ShapeDtypeStruct) else x for x in invals]
        in_active = [not isinstance(v, Literal) and v in active for v in eqn.invars]
        outvals, _, record = _run(eqn, rule, invals, in_active)
        if record is not None:
            records[i] = record
        for v, x in zip(eqn.outvars, outvals):
            if not isinstance(v, DropVar):
                values[v] = x
    return Trace(jaxpr, consts, values, active, records, frozenset(jaxpr.constvars))


def passes_cotangents(eqn: JaxprEqn) -> bool:
    """False for a primitive whose derivative is zero by definition (``stop_gradient``,
    ``floor``, comparisons, ...): its outputs do not depend on the differentiated inputs in the
    sense of the derivative, as in JAX, where their tangents are symbolic zeros."""
    spec = lookup_vjp(eqn.primitive.name)
    return spec is None or not spec.zero


def active_vars(jaxpr: Jaxpr, active_in: Sequence[bool]) -> set[Var]:
    """The variables of ``jaxpr`` that depend on its active inputs, without evaluating anything."""
    active = {v for v, a in zip(jaxpr.invars, active_in) if a and is_differentiable(v.aval)}
    for eqn in jaxpr.eqns:
        in_active = [not isinstance(v, Literal) and v in active for v in eqn.invars]
        if not any(in_active):
            continue
        rule = lookup_higher_order(eqn.primitive.name)
        out_active = (
            rule.outputs_active(eqn, in_active)
            if rule is not None
            else [passes_cotangents(eqn)] * len(eqn.outvars)
        )
        for v, a in zip(eqn.outvars, out_active):
            if a and not isinstance(v, DropVar) and is_differentiable(v.aval):
                active.add(v)
    return active


def jaxpr_activity(jaxpr: Jaxpr, active_in: Sequence[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on its active inputs, without evaluating anything."""
    active = active_vars(jaxpr, active_in)
    return [not isinstance(v, Literal) and v in active for v in jaxpr.outvars]


# ---- names: fg.tag-ged values and differentiated inputs ---------------------------------------


def _find_tags(tr: Trace, name: str) -> list[tuple[Trace, Var]]:
    found = []
    for eqn in tr.jaxpr.eqns:
        if eqn.primitive is tag_p and eqn.params["name"] == name:
            found.append((tr, eqn.outvars[0]))
    for _, _, record in tr.eqn_records():
        if isinstance(record, Trace):
            found.extend(_find_tags(record, name))
    return found


def tag_names(tr: Trace) -> list[str]:
    """Names of every ``fg.tag`` reachable in ``tr`` (nested calls included), in order."""
    names = [e.params["name"] for e in tr.jaxpr.eqns if e.primitive is tag_p]
    for _, _, record in tr.eqn_records():
        if isinstance(record, Trace):
            names.extend(tag_names(record))
    return names


def lookup(tr: Trace, name: str) -> tuple[Trace, Any]:
    """The (trace, variable) a name refers to: a differentiated input's path or a tag."""
    names = getattr(tr, "input_names", None) or []
    if name in names:
        return tr, tr.jaxpr.invars[names.index(name)]
    found = _find_tags(tr, name)
    if not found:
        known = [*names, *tag_names(tr)]
        raise KeyError(
            f"no input or fg.tag named {name!r} in this trace; known names: {known}. "
            "Tags inside scan or cond bodies are not kept per iteration."
        )
    if len(found) > 1:
        raise KeyError(
            f"fg.tag name {name!r} appears {len(found)} times in this trace; give each tag a "
            "distinct name (e.g. f'h{i}' in a loop)"
        )
    return found[0]


def cotangent_of(tr: Trace, name: str) -> Any:
    """funcgrad's cotangent of the input or tagged value ``name`` (zeros if none flowed)."""
    owner, v = lookup(tr, name)
    if isinstance(v, Literal):
        raise KeyError(f"{name!r} is a literal constant; it has no cotangent")
    cts = owner.cotangents or {}
    ct = cts.get(v)
    return jnp.zeros(v.aval.shape, v.aval.dtype) if ct is None else ct


def value_of(tr: Trace, name: str) -> Any:
    """The forward value of the input or tagged value ``name``."""
    owner, v = lookup(tr, name)
    return owner.read(v)

"""Walking jaxprs: opening closed ones, finding sub-jaxprs, visiting every equation.

One module for what the interpreter's higher-order rules, the comparison of tagged
intermediates and the graph renderer all need to know about the shape of a jaxpr.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn

try:  # no public API offers state discharge; it is a program transformation, not AD
    from jax._src.state.discharge import discharge_state
except ImportError:  # pragma: no cover - a JAX that moved it
    discharge_state = None

__all__ = [
    "CALL_PRIMITIVES",
    "REF_PRIMITIVES",
    "all_eqns",
    "body_of_call",
    "open_jaxpr",
    "sub_jaxprs",
    "without_refs",
]

# Primitives that call a jaxpr once with the same inputs and outputs: transparent to values.
CALL_PRIMITIVES = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "call", "remat2", "checkpoint", "remat",
     "remat_opt"}
)


# Primitives of mutable references (``jax.new_ref``, ``ref[...] = v``, ``run_state``).
REF_PRIMITIVES = frozenset(
    {"new_ref", "empty_ref", "free_ref", "freeze", "get", "swap", "addupdate", "run_state",
     "accum_grad_in_ref"}
)


def open_jaxpr(jaxpr: ClosedJaxpr | Jaxpr) -> tuple[Jaxpr, list[Any]]:
    """``(open jaxpr, consts)`` of a ClosedJaxpr or of an open Jaxpr (which has none)."""
    if isinstance(jaxpr, ClosedJaxpr):
        return jaxpr.jaxpr, list(jaxpr.consts)
    return jaxpr, []


def sub_jaxprs(eqn: JaxprEqn) -> list[ClosedJaxpr | Jaxpr]:
    """Every jaxpr among ``eqn``'s params (a call's body, scan's body, cond's branches, ...)."""
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (ClosedJaxpr, Jaxpr)):
                found.append(item)
    return found


def body_of_call(eqn: JaxprEqn) -> tuple[Jaxpr, list[Any]] | None:
    """``(body, consts)`` of a call-like equation (``jit``, ``custom_jvp_call``, ...), else None."""
    params = eqn.params
    body = params.get("jaxpr", params.get("call_jaxpr", params.get("fwd_jaxpr")))
    if body is None or not isinstance(body, (ClosedJaxpr, Jaxpr)):
        return None
    return open_jaxpr(body)


def all_eqns(jaxpr: ClosedJaxpr | Jaxpr) -> Iterator[JaxprEqn]:
    """Every equation of ``jaxpr``, those of its sub-jaxprs (jit, scan, ...) included."""
    for eqn in open_jaxpr(jaxpr)[0].eqns:
        yield eqn
        for sub in sub_jaxprs(eqn):
            yield from all_eqns(sub)


def without_refs(closed: ClosedJaxpr) -> ClosedJaxpr:
    """``closed`` with its mutable references discharged into plain values, if it has any.

    A program that creates ``jax.new_ref``s and reads and writes them is rewritten (by JAX's own
    state discharge, a program transformation, not differentiation) into one that threads the
    values through instead: reads become slices, writes become updates. Its gradient is then
    the gradient of ordinary primitives, which is what ``jax.grad`` computes too.
    """
    if not any(eqn.primitive.name in REF_PRIMITIVES for eqn in all_eqns(closed)):
        return closed
    if discharge_state is None:
        raise NotImplementedError(
            "this JAX has no jax._src.state.discharge.discharge_state, which funcgrad uses to "
            "differentiate programs with mutable references (jax.new_ref); please report it"
        )
    return discharge_state(closed)

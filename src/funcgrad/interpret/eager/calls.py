"""A ``jit`` call's body as two compiled programs, forward and backward, when running eagerly.

Eagerly, the interpreter dispatches one primitive at a time. A ``jit`` body (log_softmax, relu,
take_along_axis, ...) is the same jaxpr object on every call (JAX caches it), so its
interpretation is compiled once: the forward program returns the outputs and every value the
backward pass needs, the backward program maps those values and the output cotangents to input
cotangents. This is what JAX's eager mode does with a jitted function too: one dispatch, not one
per primitive. Bodies whose records cannot be rebuilt from a flat list of arrays (a ``scan``
inside, say) are interpreted inline, as under a trace.
"""

from __future__ import annotations

from typing import Any

import jax

from funcgrad.interpret.backward import backward
from funcgrad.interpret.jaxprs import body_of_call
from funcgrad.interpret.registry import HigherOrderRule
from funcgrad.interpret.shortcuts import PLAIN, using_shortcuts
from funcgrad.interpret.trace import Trace, evaluate, jaxpr_activity

__all__ = ["CompiledCallVjp"]


class _NotCompilable(Exception):
    """A body whose records cannot be rebuilt from leaves alone (e.g. it contains a scan)."""


class _CompiledBody:
    """The forward and backward programs of one call body, for one pattern of active inputs.

    The first trace of the forward program records the body's :class:`Trace` as the skeleton
    the backward program rebuilds from the forward's flat list of residuals.
    """

    def __init__(self, jaxpr: Any, active: tuple[bool, ...]):
        self.out_active = jaxpr_activity(jaxpr, active)
        self.skeleton: Trace | None = None

        def forward(consts: list[Any], args: list[Any]) -> tuple[list[Any], list[Any]]:
            with using_shortcuts(PLAIN):
                sub = evaluate(jaxpr, consts, args, active)
            if not sub.only_trace_records():
                raise _NotCompilable
            self.skeleton = sub
            return sub.outputs, sub.leaves()

        def backward_(consts: list[Any], leaves: list[Any], cts: list[Any]) -> list[Any]:
            assert self.skeleton is not None, "the forward program runs first"
            with using_shortcuts(PLAIN):
                return backward(self.skeleton.with_leaves(leaves, consts), cts)

        self.forward = jax.jit(forward)
        self.backward = jax.jit(backward_)


class _CompiledRecord:
    def __init__(self, body: _CompiledBody, consts: list[Any], leaves: list[Any]):
        self.body, self.consts, self.leaves_ = body, consts, leaves

    def leaves(self) -> list[Any]:
        return list(self.leaves_)

    def with_leaves(self, leaves: list[Any]) -> _CompiledRecord:
        return _CompiledRecord(self.body, self.consts, list(leaves))


class CompiledCallVjp:
    """The call rule, with each concrete call's body run as its two compiled programs."""

    _MAX_BODIES = 512  # bodies are few; a pathological program must not grow this forever

    def __init__(self, plain: HigherOrderRule):
        self.plain = plain
        self.name = type(plain).__name__
        # (id(jaxpr), active) -> (jaxpr, body or None if not compilable); holding the jaxpr
        # keeps it alive, so its id stays unique.
        self._bodies: dict[tuple[int, tuple[bool, ...]], tuple[Any, _CompiledBody | None]] = {}

    def _body(self, jaxpr: Any, active: tuple[bool, ...]) -> _CompiledBody | None:
        key = (id(jaxpr), active)
        hit = self._bodies.get(key)
        if hit is not None and hit[0] is jaxpr:
            return hit[1]
        if len(self._bodies) > self._MAX_BODIES:
            self._bodies.clear()
        body = _CompiledBody(jaxpr, active)
        self._bodies[key] = (jaxpr, body)
        return body

    def forward(self, eqn, invals, active):
        concrete = not any(isinstance(x, jax.core.Tracer) for x in invals)
        if any(active) and concrete:
            jaxpr, consts = body_of_call(eqn)
            body = self._body(jaxpr, tuple(active))
            if body is not None:
                try:
                    outs, leaves = body.forward(consts, invals)
                except _NotCompilable:
                    self._bodies[(id(jaxpr), tuple(active))] = (jaxpr, None)
                else:
                    return list(outs), body.out_active, _CompiledRecord(body, consts, leaves)
        return self.plain.forward(eqn, invals, active)

    def outputs_active(self, eqn, active):
        return self.plain.outputs_active(eqn, active)

    def backward(self, eqn, invals, record, cts, needs):
        if isinstance(record, _CompiledRecord):
            return record.body.backward(record.consts, record.leaves_, list(cts))
        return self.plain.backward(eqn, invals, record, cts, needs)

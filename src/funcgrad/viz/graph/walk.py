"""The backward walk as it happened: which equation it transposed at each step, with which rule,
and which cotangent reached which value when.

:func:`record_walk` runs ``fg.trace`` with its ``on_transpose`` observer: the interpreter itself
reports each step, nothing here re-implements the walk. A :class:`Walk` then answers, for any
value and any step, what a student would see written next to it: nothing yet, the sum of the
cotangents that have arrived so far (``2 of 3 summed``), or the final gradient (the very text
``draw_jaxpr(..., grads=True)`` shows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.extend.core import DropVar, JaxprEqn, Literal, Var

from funcgrad.interpret import trace as funcgrad_trace
from funcgrad.viz.graph.formulas import rule_of
from funcgrad.viz.graph.labels import FLOWS, ZERO, grad_text, summary_lines
from funcgrad.viz.graph.model import Level

__all__ = ["PENDING_TEXT", "GradState", "Step", "Walk", "record_walk"]

PENDING_TEXT = "grad ?"
"""What a value shows until its first cotangent arrives."""


@dataclass(eq=False)
class Step:
    """One equation the backward walk transposed: frame ``frame`` shows the state after it."""

    frame: int
    index: int  # the equation's index in the top-level jaxpr
    eqn: JaxprEqn
    rule: str
    formula: str
    out_cts: list[Any]
    in_cts: list[Any]
    node: str = ""  # the DOT name of the node (or cluster) drawn for the equation

    @property
    def primitive(self) -> str:
        return self.eqn.primitive.name


@dataclass(frozen=True)
class GradState:
    """What a value's gradient line says from one frame on: ``kind`` is "pending", "partial"
    (``arrived`` of ``total`` cotangents summed so far) or "final"."""

    frame: int
    kind: str
    text: str
    status: str
    arrived: int
    total: int
    value: Any = None  # the (partial) sum, for the tooltip


@dataclass(eq=False)
class Walk:
    """A traced evaluation, its backward walk step by step, and the cotangents' arrivals."""

    trace: Any
    steps: list[Step] = field(default_factory=list)
    # each top-level variable's contributions, in the order they arrived: (frame, cotangent)
    arrivals: dict[Var, list[tuple[int, Any]]] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.steps) + 1

    def observe(self, index: int, eqn: JaxprEqn, out_cts: list[Any], in_cts: list[Any]) -> None:
        """The ``on_transpose`` observer: keep the step and what it sent to each input."""
        rule, formula = rule_of(eqn.primitive.name)
        frame = len(self.steps) + 1
        self.steps.append(Step(frame, index, eqn, rule, formula, list(out_cts), list(in_cts)))
        self.arrive(eqn.invars, in_cts, frame)

    def arrive(self, variables: Sequence[Any], cts: Sequence[Any], frame: int) -> None:
        """Cotangents reaching ``variables`` at ``frame``: those the walk adds to what a value
        holds (active variables only, as the walk's own accumulation does)."""
        active = self.trace.active if self.trace is not None else None
        for v, ct in zip(variables, cts):
            if ct is None or isinstance(v, (Literal, DropVar)):
                continue
            if active is not None and v not in active:
                continue
            self.arrivals.setdefault(v, []).append((frame, ct))

    def states(self, level: Level, v: Any, reached: int | None) -> list[GradState] | None:
        """The successive states of ``v``'s gradient line, or None when it never changes.

        A top-level value changes as cotangents arrive; a value inside a call's body
        (``reached`` is the frame its call is transposed at) gets its gradient all at once then.
        """
        status, final = level.grad(v)
        if status not in (FLOWS, ZERO) or final is None:
            return None
        pending = GradState(0, "pending", PENDING_TEXT, FLOWS, 0, 0)
        if reached is not None:
            done = GradState(reached, "final", final, status, 1, 1, level.cotangent(v))
            return [pending, done] if reached > 0 else [done]
        arrivals = self.arrivals.get(v, [])
        total = len(arrivals)
        if total == 0:
            return None
        out = [] if arrivals[0][0] == 0 else [pending]
        running = None
        for m, (frame, ct) in enumerate(arrivals, 1):
            a = np.asarray(ct)
            running = a if running is None else np.add(running, a, dtype=a.dtype)
            if m == total:
                out.append(GradState(frame, "final", final, status, m, total,
                                     level.cotangent(v)))
            else:
                part_status, part = grad_text(running)
                out.append(GradState(frame, "partial", f"{part} ({m} of {total} summed)",
                                     part_status, m, total, running))
        return out


def gradient_tip(state: GradState, name: str = "") -> list[str]:
    """Tooltip lines about a gradient in ``state``."""
    what = f"gradient of {name}" if name else "gradient"
    if state.kind == "pending":
        return [f"{what}: not computed yet (the backward walk has not reached it)"]
    summary = summary_lines(state.value)
    if state.kind == "partial":
        head = f"{what} so far: {state.arrived} of {state.total} cotangents summed"
    elif state.total > 1:
        head = f"{what}: the sum of {state.total} cotangents"
    else:
        head = what
    if not summary:
        return [head]
    return [f"{head}: {summary[0]}", *("    " + x for x in summary[1:])]


def record_walk(
    fun: Callable,
    args: Sequence[Any],
    *,
    argnums: int | Sequence[int],
    has_aux: bool,
    out_cotangent: Any,
) -> Walk:
    """``fg.trace`` of ``fun(*args)``, observing its backward walk (one :class:`Step` each)."""
    walk = Walk(None)
    tr = funcgrad_trace(fun, *args, argnums=argnums, has_aux=has_aux,
                        out_cotangent=out_cotangent, on_transpose=walk.observe)
    walk.trace = tr
    # The seeds (d output / d output) are there before the first step.
    outvars = tr.jaxpr.outvars[: tr.out_tree.num_leaves]
    if out_cotangent is None:
        seeds = [np.ones(v.aval.shape, v.aval.dtype) for v in outvars]
    else:
        leaves = jax.tree_util.tree_leaves(out_cotangent)
        seeds = [np.asarray(c, v.aval.dtype) for c, v in zip(leaves, outvars)]
    later = walk.arrivals
    walk.arrivals = {}
    walk.arrive(outvars, seeds, 0)
    for v, contributions in later.items():
        walk.arrivals.setdefault(v, []).extend(contributions)
    return walk

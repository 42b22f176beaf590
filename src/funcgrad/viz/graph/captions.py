"""The caption of each frame of a backward animation: the step, the rule, the cotangents.

Four lines: which equation is transposed (step k of n), the VJP rule and its formula, the
cotangent its output received, and the cotangent it sent back to each input, by the input's
name (a parameter's path, or the equation that computed it), marked when it is one of several
that are summed into the same value.
"""

from __future__ import annotations

from typing import Any

from jax.extend.core import DropVar, Literal, Var

from funcgrad.viz.graph.labels import value_text
from funcgrad.viz.graph.walk import Walk

__all__ = ["CAPTION_SIZES", "MAX_CAPTION", "captions"]

CAPTION_SIZES = ((12, True), (11, False), (11, False), (11, False))
"""(point size, bold) of each caption line."""

MAX_CAPTION = 170
"""Caption lines longer than this many characters are cut."""

_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CAPTION else text[: MAX_CAPTION - 1].rstrip() + "…"


def _ct(ct: Any) -> str:
    if ct is None:
        return "0 (none)"
    return value_text(ct) or "(no numbers)"


def _names(walk: Walk) -> dict[Any, str]:
    """What to call each top-level value in a caption."""
    tr = walk.trace
    jaxpr = tr.jaxpr
    names: dict[Any, str] = {}
    for k, eqn in enumerate(jaxpr.eqns):
        for j, v in enumerate(eqn.outvars):
            suffix = f" #{j}" if len(eqn.outvars) > 1 else ""
            names[v] = f"{eqn.primitive.name} (eqn {k}){suffix}"
    for k, v in enumerate(jaxpr.constvars):
        const_names = tr.const_names or []
        names[v] = const_names[k] if k < len(const_names) and const_names[k] else f"const[{k}]"
    input_names = tr.input_names or []
    for k, v in enumerate(jaxpr.invars):
        names[v] = input_names[k] if k < len(input_names) else f"in[{k}]"
    return names


def captions(walk: Walk, graph: Any) -> list[list[str]]:
    """The caption lines of every frame of ``walk``'s animation (``graph`` is its drawing)."""
    n = len(walk.steps)
    names = _names(walk)
    drawing = getattr(graph, "drawing", None)
    outputs = list(drawing.names.outputs) if drawing is not None else []
    for k, v in enumerate(walk.trace.jaxpr.outvars[: len(outputs)]):
        names[v] = outputs[k]
    seeds = [(v, arrivals[0][1]) for v, arrivals in walk.arrivals.items() if arrivals[0][0] == 0]
    seed_text = "; ".join(f"{names.get(v, 'output')} gets {_ct(ct)}" for v, ct in seeds)
    out = [[
        f"step 0 of {n}: the forward pass has run, every value is kept",
        "the backward walk starts at the output with its cotangent, the seed: "
        + (seed_text or "none"),
        "it transposes the equations last first: each VJP rule turns the cotangent of an "
        "equation's output into those of its inputs",
        "next ▶ (or the → key) takes one step; hover a node for its values",
    ]]
    order: dict[tuple[Any, int], list[int]] = {}  # which arrivals at a value came when
    for v, arrivals in walk.arrivals.items():
        for m, (frame, _) in enumerate(arrivals, 1):
            order.setdefault((v, frame), []).append(m)
    for step in walk.steps:
        eqn = step.eqn
        record = graph.records.get(step.node)
        where = ""
        if record is not None and record.kind == "collapsed" and record.group is not None:
            where = f", inside {record.group.name} (collapsed)"
        last = "  (the last: every gradient is complete)" if step.frame == n else ""
        head = f"step {step.frame} of {n}: transpose equation {step.index}, {eqn.primitive.name}"
        outs = [f"#{j} {_ct(ct)}" if len(step.out_cts) > 1 else _ct(ct)
                for j, ct in enumerate(step.out_cts)
                if not isinstance(eqn.outvars[j], DropVar)]
        sent = []
        for v, ct in zip(eqn.invars, step.in_cts):
            if isinstance(v, Literal):
                continue
            name = names.get(v, "?")
            if isinstance(v, Var) and v not in walk.trace.active:
                sent.append(f"{name} ← none needed (no gradient flows into it)")
                continue
            if ct is None or not isinstance(v, Var) or (v, step.frame) not in order:
                sent.append(f"{name} ← 0 (none)")
                continue
            total = len(walk.arrivals[v])
            m = order[(v, step.frame)].pop(0)
            fan_in = f" ({_ORDINALS.get(m, f'{m}th')} of {total}, summed)" if total > 1 else ""
            sent.append(f"{name} ← {_ct(ct)}{fan_in}")
        out.append([
            _cut(head + where + last),
            _cut(f"rule {step.rule}:  {step.formula}"),
            _cut("cotangent of its output: " + "; ".join(outs)),
            _cut("sent back: " + ("; ".join(sent) or "nothing (no input needs one)")),
        ])
    return out

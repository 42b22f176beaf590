"""What the caller of a drawing chose: one frozen record, passed from the API to each stage."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_NODE_BUDGET", "DrawOptions", "NodeNames"]

DEFAULT_NODE_BUDGET = 150
"""Above this many nodes, ``collapse=None`` collapses clusters (innermost, then largest, first)."""


@dataclass(frozen=True)
class DrawOptions:
    """The options of :func:`funcgrad.viz.draw_trace` that shape the drawing (see there)."""

    grads: bool
    values: bool = True
    collapse: bool | str | Iterable[str] | None = None
    node_budget: int | None = DEFAULT_NODE_BUDGET
    rankdir: str = "LR"
    scopes: bool = True
    legend: bool = True
    title: str | None = None


@dataclass(frozen=True)
class NodeNames:
    """What the input, constant and output nodes are called (pytree paths, ``grad w``, ...)."""

    inputs: Sequence[str] | None
    consts: Sequence[str | None] | None
    outputs: Sequence[str]

"""Pictures of gradients and training: jaxpr graphs now; plots, animations and reports on demand.

``draw_jaxpr(fun, *args)`` draws a function's jaxpr with funcgrad's values and gradients on every
node, ``draw_trace(trace)`` draws a trace made by ``fg.trace``, ``animate_backward(fun, *args)``
plays its backward pass one equation at a time. The plotting modules (``plots``,
``animate``, ``report``) import matplotlib and are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from funcgrad.viz.graph import (
    DEFAULT_NODE_BUDGET,
    BackwardAnimation,
    GraphvizNotFoundError,
    JaxprGraph,
    animate_backward,
    draw_jaxpr,
    draw_trace,
)

_SUBMODULES = frozenset({"plots", "animate", "report"})

__all__ = [
    "DEFAULT_NODE_BUDGET",
    "BackwardAnimation",
    "GraphvizNotFoundError",
    "JaxprGraph",
    "animate_backward",
    "draw_jaxpr",
    "draw_trace",
    *sorted(_SUBMODULES),
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'funcgrad.viz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

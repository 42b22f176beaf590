"""funcgrad: see and check how neural networks get their gradients, then train them fast.

``fg.grad`` traces a function to a jaxpr, evaluates it forward keeping every value, and walks it
backwards with one hand-written VJP rule per JAX primitive. The result is checked against
``jax.grad``, finite differences and textbook formulas, composes with ``jax.jit``/``jax.vmap`` and
with itself, and is what the graph renderer draws.

Submodules (``models``, ``losses``, ``data``, ``train``, ``viz``, ...) are imported on first use so
that ``import funcgrad`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from funcgrad.interpret import (
    NotDifferentiableError,
    RuleError,
    Trace,
    UnsupportedPrimitiveError,
    grad,
    hessian,
    jacrev,
    supported_primitives,
    tag,
    trace,
    value_and_grad,
    vjp,
)

__version__ = "0.1.0"

# Submodules loaded lazily (PEP 562): matplotlib, graphviz and optax are not paid for by
# ``import funcgrad``.
_SUBMODULES = frozenset(
    {"models", "losses", "manual", "data", "train", "checkpoint", "viz", "compare", "cli"}
)
# Public names that live in a lazily loaded submodule.
_LAZY_NAMES = {
    "compare_grads": "compare",
    "GradReport": "compare",
}

__all__ = [
    "GradReport",
    "NotDifferentiableError",
    "RuleError",
    "Trace",
    "UnsupportedPrimitiveError",
    "compare_grads",
    "grad",
    "hessian",
    "jacrev",
    "supported_primitives",
    "tag",
    "trace",
    "value_and_grad",
    "vjp",
    *sorted(_SUBMODULES),
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"funcgrad.{name}")
    if name in _LAZY_NAMES:
        module = importlib.import_module(f"funcgrad.{_LAZY_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'funcgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The one hook through which eager-only speed-ups change how the interpreter runs.

The interpreter (:mod:`~funcgrad.interpret.trace`, :mod:`~funcgrad.interpret.backward`) asks the
current :class:`Shortcuts` for four things: the rule of a primitive, how to add two cotangents,
how to turn a cotangent into an array, and which values the forward pass may drop. The plain
answers, given here, are the textbook algorithm; :mod:`funcgrad.interpret.eager` answers
differently when values are concrete, for speed, without changing a single bit of the result.
``fg.grad`` and ``fg.vjp`` choose the shortcuts for each call; ``fg.trace``, ``jax.jit`` and
every other trace run plain.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jax import lax
from jax.extend.core import Jaxpr, Var

from funcgrad.interpret.registry import (
    HigherOrderRule,
    RuleSpec,
    lookup_higher_order,
    lookup_vjp,
)

__all__ = ["PLAIN", "Shortcuts", "current_shortcuts", "using_shortcuts"]


class Shortcuts:
    """How the interpreter runs: as written in the textbook."""

    def vjp_rule(self, name: str) -> RuleSpec | None:
        """The first-order rule that transposes primitive ``name`` (None: it has none)."""
        return lookup_vjp(name)

    def higher_order_rule(self, name: str) -> HigherOrderRule | None:
        """The higher-order rule that evaluates and transposes primitive ``name``."""
        return lookup_higher_order(name)

    def add(self, a: Any, b: Any) -> Any:
        """Two cotangents of one variable, summed."""
        return lax.add(a, b)

    def dense(self, ct: Any) -> Any:
        """The array a cotangent stands for."""
        return ct

    def forward_drops(
        self, jaxpr: Jaxpr, active_in: Sequence[bool]
    ) -> Mapping[int, Sequence[Var]] | None:
        """Values the forward pass may drop after each equation (None: keep every value)."""
        return None


PLAIN = Shortcuts()

_CURRENT: contextvars.ContextVar[Shortcuts] = contextvars.ContextVar(
    "funcgrad_shortcuts", default=PLAIN
)


def current_shortcuts() -> Shortcuts:
    """The shortcuts of the interpreter call in progress (plain outside ``fg.grad``/``fg.vjp``)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using_shortcuts(shortcuts: Shortcuts) -> Iterator[None]:
    """Run the interpreter with ``shortcuts`` inside the block."""
    token = _CURRENT.set(shortcuts)
    try:
        yield
    finally:
        _CURRENT.reset(token)

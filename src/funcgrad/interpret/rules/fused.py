"""One compiled program for a rule's arithmetic when the interpreter runs eagerly.

Un-jitted, every ``lax`` call a rule makes is its own dispatch and writes its own full-size
intermediate (a max-pool cotangent is a broadcast, a comparison, a conversion, a sum, a
division, another broadcast and a product). :func:`fused` compiles such a helper once per shape
so that XLA fuses it into one or two kernels. Under any trace (``jax.jit``, ``jax.make_jaxpr``,
funcgrad differentiating itself) the helper runs as plain Python, so jaxprs, graphs and
compile times are exactly what the unfused code gives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

__all__ = ["fused"]

F = TypeVar("F", bound=Callable[..., Any])


def _traced(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    leaves = jax.tree.leaves((args, kwargs))
    return any(isinstance(x, jax.core.Tracer) for x in leaves)


def fused(*, static_argnames: Sequence[str] = ()) -> Callable[[F], F]:
    """Decorator: eagerly, run the function as one jitted program; under a trace, run it inline.

    ``static_argnames`` are the (hashable) keyword arguments that are not arrays, such as axes.
    """

    def wrap(fn: F) -> F:
        compiled = jax.jit(fn, static_argnames=tuple(static_argnames), inline=True)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if _traced(args, kwargs):
                return fn(*args, **kwargs)
            return compiled(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap

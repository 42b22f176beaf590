"""Positional arguments of the functions funcgrad differentiates: ``argnums`` and their names."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

__all__ = ["arg_names", "argnums_tuple"]


def argnums_tuple(argnums: int | Sequence[int], nargs: int) -> tuple[int, ...]:
    """``argnums`` as a tuple of non-negative indices into ``nargs`` positional arguments."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums:
        raise ValueError("argnums must name at least one argument, got an empty sequence")
    for n in nums:
        if not isinstance(n, int):
            raise TypeError(f"argnums must be ints, got {n!r}")
        if not -nargs <= n < nargs:
            raise ValueError(
                f"argnums={argnums!r} is out of range for a function called with {nargs} "
                f"positional argument(s)"
            )
    return tuple(n % nargs for n in nums)


def arg_names(fun: Callable, nargs: int) -> list[str]:
    """Names for ``fun``'s first ``nargs`` positional arguments: from its signature where it has
    them (``params``, ``x``), else ``args[i]``."""
    names = [f"args[{i}]" for i in range(nargs)]
    try:
        params = [
            p
            for p in inspect.signature(fun).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return names
    for i, p in enumerate(params[:nargs]):
        names[i] = p.name
    return names

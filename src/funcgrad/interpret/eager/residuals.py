"""Residuals only: the forward values ``fg.grad`` drops as its backward pass never reads them."""

from __future__ import annotations

from collections.abc import Sequence

from jax.extend.core import DropVar, Jaxpr, Literal, Var

from funcgrad.interpret.trace import active_vars, read_when_transposed

__all__ = ["forward_drops"]


def forward_drops(jaxpr: Jaxpr, active_in: Sequence[bool]) -> dict[int, list[Var]]:
    """For each equation, the intermediates nothing needs once it has run.

    The backward pass reads only :func:`~funcgrad.interpret.trace.read_when_transposed` of
    each equation with an active output. Every other intermediate can go after its last use
    in the forward pass, which frees memory for the allocator to reuse.
    """
    active = active_vars(jaxpr, active_in)
    kept: set[Var] = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    last_use: dict[Var, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        last_use.update((v, i) for v in eqn.invars if not isinstance(v, Literal))
        if any(v in active for v in eqn.outvars):  # transposed: keep what its rule reads
            kept.update(read_when_transposed(eqn))
    drops: dict[int, list[Var]] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.outvars:
            if not isinstance(v, DropVar) and v not in kept:
                drops.setdefault(last_use.get(v, i), []).append(v)
    return drops

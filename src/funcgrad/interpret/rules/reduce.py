"""VJP rules for reductions: sums, products, maxima, and cumulative scans.

A reduction's cotangent is broadcast back over the reduced axes; for max/min it goes only to the
positions that attained the extremum (shared equally among ties, as JAX does).
"""

from __future__ import annotations

from jax import lax

from funcgrad.interpret.rules import vjp_rule


def _broadcast_back(ct, x, axes):
    """Broadcast a reduced cotangent back to ``x``'s shape (the kept dims stay in place)."""
    kept = tuple(d for d in range(x.ndim) if d not in axes)
    return lax.broadcast_in_dim(ct, x.shape, kept)


@vjp_rule(lax.reduce_sum_p)
def reduce_sum_vjp(ct, x, *, axes):  # d sum(x) = 1 for every summed element
    return (_broadcast_back(ct, x, axes),)

"""The hand-written VJP interpreter: trace to a jaxpr, evaluate forward, walk backwards.

``trace.py`` evaluates a jaxpr keeping every value, ``backward.py`` walks it in reverse applying
the rules registered in ``rules/`` (one per primitive, grouped by family), and ``api.py`` gives it
JAX's contracts: ``grad``, ``value_and_grad``, ``vjp``, ``jacrev``, ``hessian`` and ``trace``.
"""

from funcgrad.interpret.api import grad, hessian, jacrev, trace, value_and_grad, vjp
from funcgrad.interpret.errors import RuleError, UnsupportedPrimitiveError
from funcgrad.interpret.rules import supported_primitives, vjp_rule, zero_vjp
from funcgrad.interpret.tagging import tag
from funcgrad.interpret.trace import Trace


def clear_caches() -> None:
    """Like ``jax.clear_caches()``, for funcgrad's own caches of traced custom JVP rules."""
    from funcgrad.interpret.rules.control import clear_caches as clear_control

    clear_control()


__all__ = [
    "RuleError",
    "Trace",
    "UnsupportedPrimitiveError",
    "clear_caches",
    "grad",
    "hessian",
    "jacrev",
    "supported_primitives",
    "tag",
    "trace",
    "value_and_grad",
    "vjp",
    "vjp_rule",
    "zero_vjp",
]

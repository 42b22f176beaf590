"""The hand-written VJP interpreter: trace to a jaxpr, evaluate forward, walk backwards.

``trace.py`` evaluates a jaxpr keeping every value, ``backward.py`` walks it in reverse applying
the rules registered (``registry.py``) by ``rules/`` (one per primitive, grouped by family), and
``api.py`` gives it JAX's contracts: ``grad``, ``value_and_grad``, ``vjp``, ``jacrev``,
``hessian`` and ``trace``. ``eager/`` holds every eager-only speed-up, plugged in through the
one hook in ``shortcuts.py``.
"""

from funcgrad.interpret.api import grad, hessian, jacrev, trace, value_and_grad, vjp
from funcgrad.interpret.errors import (
    NotDifferentiableError,
    RuleError,
    UnsupportedPrimitiveError,
)
from funcgrad.interpret.registry import supported_primitives, vjp_rule, zero_vjp
from funcgrad.interpret.tagging import tag
from funcgrad.interpret.trace import Trace

__all__ = [
    "NotDifferentiableError",
    "RuleError",
    "Trace",
    "UnsupportedPrimitiveError",
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

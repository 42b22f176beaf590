"""Errors the interpreter raises, and where in the user's code an equation came from."""

from __future__ import annotations

from typing import Any

from jax.extend import source_info_util

__all__ = ["RuleError", "UnsupportedPrimitiveError", "source_line"]


def source_line(eqn: Any) -> str:
    """The user's source line an equation was traced from, e.g. ``model.py:12 (loss)``."""
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # source info is best-effort: never hide the real error behind this one
        return "<unknown source>"


class UnsupportedPrimitiveError(NotImplementedError):
    """A cotangent reached a primitive that has no hand-written VJP rule.

    funcgrad never guesses a gradient: it stops, names the primitive and the line of user code
    the equation came from, and says how to add the rule.
    """

    def __init__(self, primitive: str, source: str, params: dict[str, Any] | None = None):
        self.primitive = primitive
        self.source = source
        keys = ", ".join(sorted(params or {}))
        hint = f"(its params: {keys})" if keys else "(it takes no params)"
        super().__init__(
            f"funcgrad has no VJP rule for the JAX primitive '{primitive}', used at {source}.\n"
            f"A gradient flows through it, and funcgrad never guesses one. To add the rule, "
            f"write it in src/funcgrad/interpret/rules/<family>.py {hint}:\n\n"
            f"    @vjp_rule('{primitive}')\n"
            f"    def {primitive.replace('-', '_')}_vjp(ct, *primals, out):\n"
            f"        return (...,)  # one cotangent per input, None for zero\n\n"
            f"and test it against jax.grad. fg.supported_primitives() lists the rules there are."
        )


class RuleError(AssertionError):
    """A VJP rule returned something of the wrong shape or arity: a bug in funcgrad."""

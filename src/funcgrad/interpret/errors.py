"""Errors the interpreter raises, and where in the user's code an equation came from.

Every error that leaves the interpreter names the primitive and the user's own source line:
the frame outside JAX and funcgrad, found through the enclosing calls when the equation sits
inside a jitted library function (``jnp.linalg.eigh`` is a ``jit`` whose body has no user
frame). Three kinds reach the user:

- :class:`UnsupportedPrimitiveError`: a cotangent reached a primitive without a rule;
- :class:`NotDifferentiableError`: funcgrad refuses where ``jax.grad`` refuses too (a
  ``while_loop`` with a dynamic trip count, a callback without a custom rule), with the same
  kind of error (a ``ValueError``) and the reason;
- :class:`RuleError`: anything unexpected inside a rule (an internal ``IndexError``, a shape
  mismatch, an error raised by a user's ``custom_vjp`` backward function), wrapped so that it
  names the primitive and the line, with the original exception chained.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

from jax.extend import source_info_util

__all__ = [
    "NotDifferentiableError",
    "RuleError",
    "UnsupportedPrimitiveError",
    "enclosing",
    "failures_named",
    "source_line",
]

# funcgrad's own frames are not the user's: JAX's source summaries skip them, as they skip JAX's.
source_info_util.register_exclusion(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The higher-order equations (calls, custom rules, loops) the interpreter is inside, outermost
# first: where an equation of a library function's body was called from the user's code.
_ENCLOSING: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "funcgrad_enclosing_equations", default=()
)


@contextlib.contextmanager
def enclosing(eqn: Any) -> Iterator[None]:
    """Evaluate or transpose the body of higher-order equation ``eqn`` inside this block."""
    token = _ENCLOSING.set((*_ENCLOSING.get(), eqn))
    try:
        yield
    finally:
        _ENCLOSING.reset(token)


def _summary(eqn: Any) -> str:
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # source info is best-effort: never hide the real error behind this one
        return ""


def _call_name(eqn: Any) -> str:
    name = eqn.params.get("name")
    return f"{eqn.primitive.name} '{name}'" if isinstance(name, str) else eqn.primitive.name


def source_line(eqn: Any) -> str:
    """The user's source line an equation was traced from, e.g. ``model.py:12:4 (loss)``.

    For an equation inside a library function's body, the line of the user's call, and the
    calls in between: ``model.py:12:4 (loss), inside jit 'eigvalsh'``.
    """
    line = _summary(eqn)
    if line:
        return line
    inner: list[str] = []
    for outer in reversed(_ENCLOSING.get()):
        line = _summary(outer)
        inner.append(_call_name(outer))
        if line:
            return f"{line}, inside {' > '.join(reversed(inner))}"
    return "an unknown line (JAX kept no source information for it)"


@contextlib.contextmanager
def failures_named(eqn: Any, what: str) -> Iterator[None]:
    """Turn any unexpected exception in the block into a :class:`RuleError` naming ``eqn``.

    ``what`` says what was running (``"VJP rule"``, ``"forward evaluation"``). The errors
    funcgrad raises on purpose pass through unchanged.
    """
    try:
        yield
    except (UnsupportedPrimitiveError, NotDifferentiableError, RuleError):
        raise
    except Exception as err:
        name = eqn.primitive.name
        where = source_line(eqn)
        raise RuleError(
            f"funcgrad's {what} for the JAX primitive '{name}', used at {where}, failed with "
            f"{type(err).__name__}: {err}",
            name,
            where,
        ) from err


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


class NotDifferentiableError(ValueError, TypeError, NotImplementedError):
    """funcgrad refuses to differentiate this, as ``jax.grad`` does; the message says why.

    It is each kind of error ``jax.grad`` raises when it refuses, so that code catching JAX's
    catches funcgrad's: a ``ValueError`` (a ``while_loop`` with a dynamic trip count, a
    callback), a ``NotImplementedError`` (``pmax``, a partial eigendecomposition) and a
    ``TypeError`` (a batch of pivoted QR decompositions).
    """


class RuleError(RuntimeError):
    """A VJP rule failed or returned something malformed; the message names the primitive and
    the user's line, and the original exception (if any) is chained as ``__cause__``."""

    def __init__(self, message: str, primitive: str | None = None, source: str | None = None):
        self.primitive = primitive
        self.source = source
        super().__init__(message)

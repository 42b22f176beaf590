"""The VJP rule registry: one hand-written rule per JAX primitive, keyed by the primitive's name.

A first-order rule reads like the derivative it implements::

    @vjp_rule(lax.sin_p)
    def sin_vjp(ct, x, *, accuracy=None):  # d sin(x) = cos(x)
        return (lax.mul(ct, lax.cos(x, accuracy=accuracy)),)

It receives the output cotangent ``ct`` (a list of them for multiple-result primitives), the
primal inputs positionally, and, by keyword, only what its signature asks for: ``out`` (the primal
output(s)), ``needs`` (a tuple of bools: which inputs need a cotangent, so that expensive rules can
skip work nobody reads) and any of the equation's params by name. It returns one cotangent per
input, ``None`` meaning "zero". The interpreter casts each cotangent to its input's dtype and
checks its shape, so a rule only has to get the math right.

Higher-order primitives (``jit``, ``scan``, ``cond``, ``custom_jvp_call``, ...) need the
interpreter itself; they register a :class:`HigherOrderRule` with :func:`higher_order_rule`.

Rules never call ``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.linear_transpose`` or JAX's
internal AD rules: the point of funcgrad is an independent implementation checked against them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jax.extend.core import Primitive

__all__ = [
    "HigherOrderRule",
    "RuleSpec",
    "higher_order_rule",
    "lookup_higher_order",
    "lookup_vjp",
    "supported_primitives",
    "vjp_rule",
    "zero_vjp",
]


@dataclass(frozen=True)
class RuleSpec:
    """A registered first-order rule and what its signature asks the interpreter to pass."""

    fn: Callable[..., Sequence[Any]]
    wants_out: bool
    wants_needs: bool
    param_names: frozenset[str] | None  # None: the rule takes **params
    reads: tuple[int, ...] | None = None  # inputs whose values it reads; None: all of them
    zero: bool = False  # registered by zero_vjp: no input ever gets a cotangent


class HigherOrderRule(Protocol):
    """A primitive whose forward and backward passes recurse into the interpreter."""

    def forward(
        self, eqn: Any, invals: list[Any], active: list[bool]
    ) -> tuple[list[Any], list[bool], Any]:
        """Evaluate ``eqn``: its outputs, which of them are active, and a record for backward."""
        ...

    def outputs_active(self, eqn: Any, active: list[bool]) -> list[bool]:
        """Which outputs depend on an active (differentiated) input."""
        ...

    def backward(
        self, eqn: Any, invals: list[Any], record: Any, cts: list[Any], needs: list[bool]
    ) -> list[Any]:
        """Cotangents of the inputs (``None`` for zero) from the cotangents of the outputs."""
        ...


_VJP_RULES: dict[str, RuleSpec] = {}
_HIGHER_ORDER_RULES: dict[str, HigherOrderRule] = {}

_RESERVED = frozenset({"out", "needs"})


def _name(primitive: Primitive | str) -> str:
    return primitive if isinstance(primitive, str) else primitive.name


def _register(names: list[str], spec: RuleSpec) -> None:
    for name in names:
        if name in _VJP_RULES or name in _HIGHER_ORDER_RULES:
            raise ValueError(f"a VJP rule for primitive {name!r} is already registered")
        _VJP_RULES[name] = spec


def vjp_rule(
    *primitives: Primitive | str, reads: Sequence[int] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the VJP rule of each of ``primitives`` (objects or names).

    ``reads`` lists the inputs whose *values* the rule uses (``select_n``'s rule reads only the
    selector, not the cases); the others it may only ask for shape and dtype. The default is all
    of them. When a custom JVP rule's tangent part is transposed, inputs nobody reads are not
    computed (the zeros ``jax.nn.relu``'s rule selects between, for instance).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        kw = [
            p.name
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _RESERVED
        ]
        takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        spec = RuleSpec(
            fn=fn,
            wants_out="out" in sig.parameters,
            wants_needs="needs" in sig.parameters,
            param_names=None if takes_var_kw else frozenset(kw),
            reads=None if reads is None else tuple(reads),
        )
        _register([_name(p) for p in primitives], spec)
        return fn

    return register


def _zero_cotangents(ct: Any, *primals: Any) -> tuple[None, ...]:
    return (None,) * len(primals)


def zero_vjp(*primitives: Primitive | str) -> None:
    """Register primitives whose inputs get no cotangent, and whose outputs carry none.

    Two kinds: piecewise-constant functions of floats (``floor``, ``sign``, ``stop_gradient``:
    the derivative is zero almost everywhere, and JAX defines it as zero) and primitives whose
    outputs are integers, booleans or keys (comparisons, ``iota``, ``argmax``, random bits).
    """
    spec = RuleSpec(_zero_cotangents, False, False, frozenset(), reads=(), zero=True)
    _register([_name(p) for p in primitives], spec)


def higher_order_rule(*primitives: Primitive | str) -> Callable[[type], type]:
    """Class decorator: register an instance of the class for each of ``primitives``."""

    def register(cls: type) -> type:
        rule = cls()
        for name in (_name(p) for p in primitives):
            if name in _VJP_RULES or name in _HIGHER_ORDER_RULES:
                raise ValueError(f"a VJP rule for primitive {name!r} is already registered")
            _HIGHER_ORDER_RULES[name] = rule
        return cls

    return register


def lookup_vjp(name: str) -> RuleSpec | None:
    """The first-order rule for primitive ``name``, or None."""
    return _VJP_RULES.get(name)


def lookup_higher_order(name: str) -> HigherOrderRule | None:
    """The higher-order rule for primitive ``name``, or None."""
    return _HIGHER_ORDER_RULES.get(name)


def supported_primitives() -> frozenset[str]:
    """Names of every JAX primitive funcgrad has a hand-written VJP rule for."""
    return frozenset(_VJP_RULES) | frozenset(_HIGHER_ORDER_RULES)

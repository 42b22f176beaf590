"""JAX's own cotangent of a value marked ``fg.tag(z, name)``: ``∂loss/∂δ`` for a zero δ added at z.

funcgrad reads a tagged value's cotangent from its trace (``fg.trace(...).cotangent(name)``);
to hold it against JAX without trusting funcgrad, the function's jaxpr is evaluated with a
zero ``δ`` added at each tag and ``jax.grad`` (JAX's rules) differentiates w.r.t. the ``δ``s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Jaxpr, Literal

from funcgrad.interpret.jaxprs import (
    CALL_PRIMITIVES,
    all_eqns,
    body_of_call,
    open_jaxpr,
    sub_jaxprs,
)
from funcgrad.interpret.tagging import tag_p

__all__ = ["jax_tag_cotangents"]


def _tag_sites(jaxpr: Jaxpr, inside: str | None = None) -> list[tuple[str, Any, str | None]]:
    """(tag name, aval, enclosing non-call primitive or None) for every tag in ``jaxpr``."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is tag_p:
            found.append((eqn.params["name"], eqn.outvars[0].aval, inside))
            continue
        name = eqn.primitive.name
        enclosing = inside or (None if name in CALL_PRIMITIVES else name)
        for sub in sub_jaxprs(eqn):
            found.extend(_tag_sites(open_jaxpr(sub)[0], enclosing))
    return found


def _has_tag(jaxpr: Jaxpr, names: Any) -> bool:
    """True if a tag named in ``names`` is among ``jaxpr``'s equations, sub-jaxprs included."""
    return any(e.primitive is tag_p and e.params["name"] in names for e in all_eqns(jaxpr))


def _eval_with_deltas(jaxpr: Jaxpr, consts: list[Any], args: list[Any], deltas: dict) -> list:
    """Evaluate ``jaxpr`` as ``jax.core.eval_jaxpr`` does, adding ``deltas[name]`` at each tag."""
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(v: Any) -> Any:
        return v.val if isinstance(v, Literal) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        body = body_of_call(eqn) if eqn.primitive.name in CALL_PRIMITIVES else None
        if eqn.primitive is tag_p and eqn.params["name"] in deltas:
            outs = [tag_p.bind(invals[0], **eqn.params) + deltas[eqn.params["name"]]]
        elif body is not None and _has_tag(body[0], deltas):
            outs = _eval_with_deltas(*body, invals, deltas)
        else:
            bound = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = list(bound) if eqn.primitive.multiple_results else [bound]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def jax_tag_cotangents(
    fun: Callable, *args: Any, names: Sequence[str], jit: bool = False
) -> dict[str, Any]:
    """JAX's cotangent ``∂fun/∂z`` of each value ``z`` tagged ``fg.tag(z, name)`` inside ``fun``.

    ``fun`` is traced with every argument held fixed; a zero ``δ`` is added at each named tag
    and ``jax.grad`` (JAX's own rules, not funcgrad's) differentiates the scalar output w.r.t.
    the ``δ``s. Tags may sit inside ``jax.jit`` calls, not inside ``scan``/``cond``/``while``
    bodies or custom-derivative functions (``KeyError``/``ValueError`` say which). ``jit``
    compiles the differentiated program (always valid: it is a traced jaxpr).
    """
    closed = jax.make_jaxpr(lambda: fun(*args))()
    sites = _tag_sites(closed.jaxpr)
    known = [s[0] for s in sites]
    deltas = {}
    for name in names:
        count = known.count(name)
        if count == 0:
            raise KeyError(f"no fg.tag named {name!r} in the function; its tags are {known}")
        if count > 1:
            raise KeyError(
                f"fg.tag name {name!r} appears {count} times; give each tag a distinct name"
            )
        _, aval, inside = sites[known.index(name)]
        if inside is not None:
            raise ValueError(
                f"fg.tag {name!r} is inside a {inside}; JAX's cotangent can be read only for "
                "tags outside control flow and custom-derivative functions"
            )
        if not jnp.issubdtype(aval.dtype, jnp.inexact):
            raise TypeError(f"fg.tag {name!r} has dtype {aval.dtype}: it has no cotangent")
        deltas[name] = jnp.zeros(aval.shape, aval.dtype)
    if len(closed.jaxpr.outvars) != 1 or closed.jaxpr.outvars[0].aval.shape != ():
        raise TypeError("jax_tag_cotangents needs a function with a single scalar output")

    def perturbed(d: dict) -> Any:
        return _eval_with_deltas(closed.jaxpr, list(closed.consts), [], d)[0]

    grad = jax.grad(perturbed)
    return (jax.jit(grad) if jit else grad)(deltas)

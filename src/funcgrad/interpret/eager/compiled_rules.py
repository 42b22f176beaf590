"""Rules whose arithmetic runs as one compiled program when the interpreter runs eagerly.

Un-jitted, every ``lax`` call a rule makes is its own dispatch and writes its own full-size
intermediate (a max-pool cotangent is a broadcast, a comparison, a conversion, a sum, a
division, another broadcast and a product). :func:`compiled_rule` compiles the whole rule once
per shape, so that XLA fuses it into one or two kernels. The rule's inputs that it declares it
does not read (``reads=``) are passed as their shape and dtype only. Under any trace
(``jax.jit``, ``jax.make_jaxpr``, funcgrad differentiating itself) the rule runs as plain
Python, so jaxprs, graphs and compile times are exactly what the plain rule gives.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from funcgrad.interpret.registry import RuleSpec

__all__ = ["COMPILED_WHEN_EAGER", "compiled_rule"]

# Rules with several full-size intermediates per call, on the hot path of common models
# (max pooling as reduce_max, jnp.where / relu's select).
COMPILED_WHEN_EAGER = frozenset({"reduce_max", "reduce_min", "select_n"})


def _traced(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _stand_in(x: Any) -> jax.ShapeDtypeStruct:
    """Shape and dtype of an array, a literal or a stand-in already."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    aval = jax.typeof(x)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype)


def compiled_rule(spec: RuleSpec) -> RuleSpec:
    """``spec`` whose rule runs as one jitted program on concrete values."""
    fn = spec.fn

    def call(ct: Any, read: list[Any], out: Any, unread: tuple, params: tuple) -> Any:
        invals: list[Any] = list(read)
        for i, stand_in in unread:
            invals.insert(i, stand_in)
        kwargs = dict(params)
        if spec.wants_out:
            kwargs["out"] = out
        return fn(ct, *invals, **kwargs)

    jitted = jax.jit(call, static_argnames=("unread", "params"), inline=True)

    def run(ct: Any, *invals: Any, **kwargs: Any) -> Any:
        if _traced((ct, invals, kwargs)):
            return fn(ct, *invals, **kwargs)
        out = kwargs.pop("out", None)
        reads = range(len(invals)) if spec.reads is None else spec.reads
        read = [x for i, x in enumerate(invals) if i in reads]
        unread = tuple((i, _stand_in(x)) for i, x in enumerate(invals) if i not in reads)
        return jitted(ct, read, out, unread=unread, params=tuple(sorted(kwargs.items())))

    run.__name__ = fn.__name__
    return dataclasses.replace(spec, fn=run)

"""``fg.tag(x, "logits")``: name an intermediate value so its cotangent can be looked up.

A tag is a primitive of its own, ``funcgrad_tag[name=...]``, so it survives tracing into the jaxpr
(``jax.named_call`` and ``jax.named_scope`` leave no equation behind). It is the identity in value
and in gradient, and it is transparent to ``jax.jit``, ``jax.vmap`` and ``jax.grad`` too, so code
that tags its intermediates runs unchanged under plain JAX.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from funcgrad._paths import leaf_name
from funcgrad.interpret.registry import vjp_rule

__all__ = ["tag", "tag_p"]

tag_p = Primitive("funcgrad_tag")
tag_p.def_impl(lambda x, *, name: x)
tag_p.def_abstract_eval(lambda aval, *, name: aval)
mlir.register_lowering(tag_p, lambda ctx, x, *, name: [x])
# JAX's own rules, so that jax.grad/jax.vmap of tagged code works. funcgrad's rule is below.
ad.deflinear2(tag_p, lambda ct, x, *, name: [tag_p.bind(ct, name=name)])
batching.primitive_batchers[tag_p] = lambda args, dims, *, name: (
    tag_p.bind(args[0], name=name),
    dims[0],
)


def tag(x: Any, name: str) -> Any:
    """Return ``x`` unchanged, marked as ``name`` in the traced jaxpr (identity in value and grad).

    ``fg.trace(f, ...).cotangent(name)`` then gives funcgrad's cotangent of that value, and
    ``fg.compare_grads(..., intermediates={name: expected})`` checks a hand-derived one against it.
    A pytree is tagged leaf by leaf, as ``name``, ``name[0]``, ``name.W`` and so on.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"fg.tag needs a non-empty string name, got {name!r}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(x)
    if len(leaves) == 1 and not leaves[0][0]:
        return tag_p.bind(x, name=name)
    tagged = [
        tag_p.bind(leaf, name=leaf_name(name, path)) for path, leaf in leaves
    ]
    return jax.tree_util.tree_unflatten(treedef, tagged)


@vjp_rule(tag_p)
def tag_vjp(ct, x, *, name):  # d tag(x) = dx
    return (ct,)

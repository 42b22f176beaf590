"""VJP rules for call-like primitives whose body defines their value: ``lax.composite`` and
``jax.custom_batching.custom_vmap``.

A composite names its decomposition for the compiler (``stablehlo.composite``), and a
``custom_vmap`` function carries its own batching rule; both compute exactly what their body
computes, so the derivative is the body's. When a gradient flows, the forward pass evaluates the
body inline and keeps its trace (as ``jit`` does in ``control.py``), and the backward pass
differentiates it with the ordinary rules; otherwise the primitive is bound as it was.

``jax.grad`` itself refuses both: composite has a JVP rule that raises ("use jax.custom_jvp"),
and custom_vmap's JVP (the body's JVP, batched by the JVP of the user's rule) cannot be
linearized, so only ``jax.jvp``/``jax.jacfwd`` differentiate it. funcgrad's gradients equal
``jax.grad`` of the body called directly and ``jax.jacfwd`` of the wrapped function.

Evaluating the body inline means that under ``jax.vmap(fg.grad(f))`` the body is batched by
JAX's ordinary rules, not by a custom_vmap function's own rule, and that the forward pass of a
differentiated composite is its decomposition, not the named composite op.
"""

from __future__ import annotations

from typing import Any

from jax.extend.core import Literal

from funcgrad.interpret.backward import backward
from funcgrad.interpret.jaxprs import open_jaxpr
from funcgrad.interpret.registry import higher_order_rule
from funcgrad.interpret.trace import evaluate, jaxpr_activity


class _BodyVjp:
    """d prim(body)(x) = d body(x): the body (the ClosedJaxpr in param ``body_param``) inline."""

    body_param = ""

    def _body(self, eqn: Any) -> Any:
        return eqn.params[self.body_param]

    def forward(self, eqn, invals, active):
        if not any(active):
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            return list(outs), [False] * len(eqn.outvars), None
        jaxpr, consts = open_jaxpr(self._body(eqn))
        sub = evaluate(jaxpr, consts, invals, active)
        out_active = [not isinstance(v, Literal) and v in sub.active for v in jaxpr.outvars]
        return sub.outputs, out_active, sub

    def outputs_active(self, eqn, active):
        return jaxpr_activity(open_jaxpr(self._body(eqn))[0], active)

    def backward(self, eqn, invals, record, cts, needs):
        return backward(record, cts)


@higher_order_rule("composite")
class CompositeVjp(_BodyVjp):
    """``lax.composite(decomposition, name)``: the derivative of the decomposition."""

    body_param = "jaxpr"


@higher_order_rule("custom_vmap_call")
class CustomVmapVjp(_BodyVjp):
    """``jax.custom_batching.custom_vmap`` (and ``sequential_vmap``): the body's derivative."""

    body_param = "call"

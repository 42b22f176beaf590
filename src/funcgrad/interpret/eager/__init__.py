"""Every eager-only speed-up of the interpreter, behind one hook: :data:`EAGER`.

``fg.grad`` and ``fg.vjp`` on concrete arrays run the interpreter with these shortcuts (see
:mod:`funcgrad.interpret.shortcuts`); ``fg.trace``, ``jax.jit``, ``jax.vmap`` and funcgrad
differentiating itself run the plain algorithm, so jaxprs, graphs and compiled programs are
exactly the textbook's. None of the shortcuts changes a bit of any result; each exists because,
one primitive at a time, Python dispatch and fresh memory cost more than the arithmetic:

- **Residuals only** (:mod:`.residuals`): the forward pass drops every value the backward pass
  will not read, as soon as its last reader has run, and the backward pass frees each
  equation's values once it has passed it, as ``jax.vjp`` keeps only residuals. The CNN's
  eager peak memory at batch 512: 1256 MB, against 1444 MB keeping everything (JAX: 1272 MB).
- **Compiled call bodies** (:mod:`.calls`): each ``jit`` call (relu, log_softmax,
  take_along_axis, ...) runs as one compiled forward and one compiled backward program, as
  JAX's eager mode runs a jitted function.
- **Compiled rules** (:mod:`.compiled_rules`): the max/min reductions' and ``select_n``'s
  rules, several full-size intermediates each, run as one compiled program.
- **Lazy padded sums** (:mod:`.padded`): an im2col convolution's input cotangent (a split, one
  zero padding per window, the adds, the crop) is kept as one lazy sum and computed by one
  compiled program that reads the patches' cotangent once.

Measured effect (``scripts/bench_grad.py``; numbers in ``scripts/results/``): eagerly, fg.grad
takes 0.6x jax.grad's time for the MLP and the transformer and 0.9x for the CNN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jax.extend.core import Jaxpr, Var

from funcgrad.interpret.eager import padded
from funcgrad.interpret.eager.calls import CompiledCallVjp
from funcgrad.interpret.eager.compiled_rules import COMPILED_WHEN_EAGER, compiled_rule
from funcgrad.interpret.eager.residuals import forward_drops
from funcgrad.interpret.registry import HigherOrderRule, RuleSpec
from funcgrad.interpret.shortcuts import Shortcuts

__all__ = ["EAGER", "EagerShortcuts"]

_CALLS = ("jit", "closed_call", "call")


def _dense_cotangents(fn: Any) -> Any:
    """``fn`` with any lazy cotangent it is given computed first."""

    def call(ct: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(ct, list):
            ct = [padded.materialize(c) for c in ct]
        else:
            ct = padded.materialize(ct)
        return fn(ct, *args, **kwargs)

    call.__name__ = fn.__name__
    return call


class _DenseHigherOrder:
    """A higher-order rule that is given computed cotangents only."""

    def __init__(self, rule: HigherOrderRule):
        self.rule = rule
        self.name = getattr(rule, "name", type(rule).__name__)

    def forward(self, eqn, invals, active):
        return self.rule.forward(eqn, invals, active)

    def outputs_active(self, eqn, active):
        return self.rule.outputs_active(eqn, active)

    def backward(self, eqn, invals, record, cts, needs):
        cts = [padded.materialize(c) for c in cts]
        return self.rule.backward(eqn, invals, record, cts, needs)


class EagerShortcuts(Shortcuts):
    """The eager interpreter: the same rules, fewer dispatches and less memory."""

    def __init__(self) -> None:
        self._rules: dict[str, RuleSpec | None] = {}
        self._higher: dict[str, Any] = {}

    def vjp_rule(self, name: str) -> RuleSpec | None:
        if name not in self._rules:
            self._rules[name] = self._eager_rule(name, super().vjp_rule(name))
        return self._rules[name]

    @staticmethod
    def _eager_rule(name: str, spec: RuleSpec | None) -> RuleSpec | None:
        if spec is None:
            return None
        if name in padded.LAZY_RULES:
            return dataclasses.replace(spec, fn=padded.LAZY_RULES[name])
        if name in COMPILED_WHEN_EAGER:
            spec = compiled_rule(spec)
        return dataclasses.replace(spec, fn=_dense_cotangents(spec.fn))

    def higher_order_rule(self, name: str) -> Any:
        if name not in self._higher:
            rule = super().higher_order_rule(name)
            if rule is not None and name in _CALLS:
                rule = CompiledCallVjp(rule)
            self._higher[name] = None if rule is None else _DenseHigherOrder(rule)
        return self._higher[name]

    def add(self, a: Any, b: Any) -> Any:
        return padded.accumulate(a, b)

    def dense(self, ct: Any) -> Any:
        return padded.materialize(ct)

    def forward_drops(self, jaxpr: Jaxpr, active_in: Sequence[bool]) -> dict[int, list[Var]]:
        return forward_drops(jaxpr, active_in)


EAGER = EagerShortcuts()

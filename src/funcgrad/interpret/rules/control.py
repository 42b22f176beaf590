"""VJP rules for higher-order primitives: calls, custom derivatives, remat, cond, scan, while.

These rules recurse into the interpreter. A call (``jit``) is evaluated inline and its nested
:class:`~funcgrad.interpret.trace.Trace` kept, so every value inside ``jax.nn.log_softmax`` is
visible and differentiated by the same rules as the outer function. Control flow stays control
flow: ``cond`` becomes a ``lax.switch`` over per-branch VJPs and ``scan`` a reverse ``lax.scan``
over the body's VJP, so ``jax.jit(fg.grad(f))`` compiles to loops, not unrolled code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import dtypes, lax
from jax.extend.core import ClosedJaxpr, Literal
from jax.interpreters import ad as jax_ad

from funcgrad.interpret.backward import backward, instantiate
from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.jaxprs import body_of_call, open_jaxpr
from funcgrad.interpret.registry import higher_order_rule
from funcgrad.interpret.trace import (
    Trace,
    bind_eqn,
    evaluate,
    is_differentiable,
    jaxpr_activity,
)


def _outputs_active(sub: Trace) -> list[bool]:
    return [not isinstance(v, Literal) and v in sub.active for v in sub.jaxpr.outvars]


def _is_traced(values: list[Any]) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in values)


def _zero_tangent(aval: Any) -> Any:
    """A zero tangent for ``aval``: float0 for integer/bool primals, as JAX uses."""
    if is_differentiable(aval):
        return lax.full(aval.shape, 0, aval.dtype)
    return np.zeros(aval.shape, dtype=dtypes.float0)


def _tangent_dtype(aval: Any) -> Any:
    return aval.dtype if is_differentiable(aval) else dtypes.float0


@higher_order_rule("jit", "closed_call", "call", "remat_opt")
class CallVjp:
    """A call is transparent: d call(f)(x) = d f(x). Evaluated inline, its trace kept.

    ``remat_opt`` (inside a ``jax.custom_vjp(..., optimize_remat=True)`` forward) is a call of
    its ``fwd_jaxpr``, differentiated as that jaxpr, as JAX does.
    """

    def forward(self, eqn, invals, active):
        jaxpr, consts = body_of_call(eqn)
        sub = evaluate(jaxpr, consts, invals, active)
        return sub.outputs, _outputs_active(sub), sub

    def outputs_active(self, eqn, active):
        return jaxpr_activity(body_of_call(eqn)[0], active)

    def backward(self, eqn, invals, record, cts, needs):
        return backward(record, cts)


def _transpose_jvp(
    closed: Any, jvp_consts: list[Any], primals: list[Any], tangent_cts: list[Any]
) -> list[Any]:
    """Cotangents of a JVP jaxpr's tangent inputs: its linear part transposed, primals fixed."""
    jvp_jaxpr, more_consts = open_jaxpr(closed)
    tangent_avals = [v.aval for v in jvp_jaxpr.invars[len(primals) :]]
    # shape and dtype only: the linear evaluation never reads a tangent's value
    tangents = [jax.ShapeDtypeStruct(aval.shape, _tangent_dtype(aval)) for aval in tangent_avals]
    active = [False] * len(primals) + [True] * len(tangents)
    sub = evaluate(
        jvp_jaxpr, [*more_consts, *jvp_consts], [*primals, *tangents], active, linear=True
    )
    n_primal_outs = len(jvp_jaxpr.outvars) - len(tangent_cts)
    in_cts = backward(sub, [None] * n_primal_outs + list(tangent_cts))
    return in_cts[len(primals) :]


@higher_order_rule("custom_jvp_call")
class CustomJvpVjp:
    """``jax.custom_jvp`` (relu, softplus, ...): honour the user's JVP rule, not the body.

    The JVP jaxpr maps (primals, tangents) to (primal outs, tangent outs) and is linear in the
    tangents, so its VJP with respect to the tangents, primals held fixed, is the transpose of the
    custom rule: exactly what ``jax.grad`` uses. Differentiating the body instead would give
    ``relu'(0) = 0.5`` (from ``max``) where JAX's rule says 0.

    On concrete values the body is evaluated inline, so ``fg.trace`` shows what is inside. Under
    a trace (``jax.jit``, ``jax.vmap``, an outer ``fg.grad``) the primitive itself is bound
    again, so that whatever differentiates this program next also uses the custom rule: the
    second derivative of a straight-through estimator is the derivative of its rule, not of its
    body.
    """

    def forward(self, eqn, invals, active):
        if _is_traced(invals):
            return bind_eqn(eqn, invals), self.outputs_active(eqn, active), None
        jaxpr, consts = open_jaxpr(eqn.params["call_jaxpr"])
        sub = evaluate(jaxpr, consts, invals, active)
        return sub.outputs, _outputs_active(sub), sub

    def outputs_active(self, eqn, active):
        return jaxpr_activity(open_jaxpr(eqn.params["call_jaxpr"])[0], active)

    def backward(self, eqn, invals, record, cts, needs):
        params = eqn.params
        nc = params["num_consts"]
        primals = invals[nc:]
        if params["symbolic_zeros"]:
            zero_flags = [not n for n in needs[nc:]]
        else:  # JAX instantiates every tangent for these rules
            zero_flags = [False] * len(primals)
        closed, jvp_consts, out_zeros = params["jvp_jaxpr_fun"].call_wrapped(*zero_flags)
        tangent_cts = [ct for ct, zero in zip(cts, out_zeros) if not zero]
        in_cts = _transpose_jvp(closed, list(jvp_consts), list(primals), tangent_cts)
        tangent_in_cts = iter(in_cts)
        return [None] * nc + [None if zero else next(tangent_in_cts) for zero in zero_flags]


@higher_order_rule("linear_call")
class LinearCallVjp:
    """``linear_call(f, f_t, res, lin)``: f is linear in ``lin`` and ``f_t`` is its transpose.

    d lin = f_t(res, ct), bound as another ``linear_call`` (whose transpose is f again), so a
    second derivative works too. The residuals get no cotangent: JAX refuses to differentiate
    them, and so does funcgrad.
    """

    def forward(self, eqn, invals, active):
        n_fixed = eqn.params["num_callee_consts"] + eqn.params["num_res"]
        if any(active[:n_fixed]):
            raise NotDifferentiableError(
                "linear_call is linear in its linear arguments only: funcgrad, like jax.grad, "
                "cannot differentiate it with respect to its residual arguments"
            )
        return bind_eqn(eqn, invals), self.outputs_active(eqn, active), None

    def outputs_active(self, eqn, active):
        return [any(active) and is_differentiable(v.aval) for v in eqn.outvars]

    def backward(self, eqn, invals, record, cts, needs):
        params = eqn.params
        nc, nr = params["num_callee_consts"], params["num_res"]
        transpose, t_consts = params["transpose_thunk"]()
        residuals = invals[nc : nc + nr]
        ct_avals = transpose.in_avals[len(t_consts) + nr :]
        dense = [instantiate(ct, aval) for ct, aval in zip(cts, ct_avals)]
        callee, consts = params["callee"], invals[:nc]
        in_cts = eqn.primitive.bind(
            *t_consts,
            *residuals,
            *dense,
            callee=transpose,
            transpose_thunk=lambda: (callee, consts),
            num_callee_consts=len(t_consts),
            num_res=nr,
        )
        return [None] * (nc + nr) + list(in_cts)


class _CustomVjpRecord:
    """What a custom_vjp forward keeps: the fwd trace and the residuals ``bwd`` will be given."""

    def __init__(self, fwd_trace: Trace, residuals: list[Any]):
        self.fwd_trace = fwd_trace
        self.residuals = residuals

    def leaves(self) -> list[Any]:
        return [*self.fwd_trace.leaves(), *self.residuals]

    def with_leaves(self, leaves: list[Any]) -> _CustomVjpRecord:
        n = len(self.fwd_trace.leaves())
        return _CustomVjpRecord(self.fwd_trace.with_leaves(leaves[:n]), list(leaves[n:]))


@higher_order_rule("custom_vjp_call")
class CustomVjpVjp:
    """``jax.custom_vjp``: run the user's fwd, keep its residuals, call the user's bwd."""

    def forward(self, eqn, invals, active):
        params = eqn.params
        nc = params["num_consts"]
        if any(active[:nc]):
            raise NotDifferentiableError(
                "a jax.custom_vjp function closes over a value that is being differentiated; "
                "pass that value as an explicit argument instead (JAX refuses this too: its "
                "custom VJP rule says nothing about closed-over values)"
            )
        primals = invals[nc:]
        if not any(active):
            jaxpr, consts = open_jaxpr(params["call_jaxpr"])
            sub = evaluate(jaxpr, consts, invals, active)
            return sub.outputs, [False] * len(eqn.outvars), sub
        fwd_jaxpr, fwd_consts = params["fwd_jaxpr_thunk"].call_wrapped(*active[nc:])
        fwd_jaxpr, more_consts = open_jaxpr(fwd_jaxpr)
        sub = evaluate(fwd_jaxpr, [*more_consts, *fwd_consts], primals, [False] * len(primals))
        outs = sub.outputs
        _, res_tree, input_fwds = params["out_trees"]()
        num_res_out = res_tree.num_leaves - sum(f is not None for f in input_fwds)
        res_out, primal_outs = outs[:num_res_out], outs[num_res_out:]
        res_iter = iter(res_out)
        # input_fwds index every input, closed-over constants included
        residuals = [next(res_iter) if f is None else invals[f] for f in input_fwds]
        # bwd is user code that may index a residual with a traced index: give it jax arrays,
        # as JAX does, not the NumPy constants a jaxpr may carry
        residuals = [jnp.asarray(r) if isinstance(r, np.ndarray) else r for r in residuals]
        out_active = [is_differentiable(v.aval) for v in eqn.outvars]
        return primal_outs, out_active, _CustomVjpRecord(sub, residuals)

    def outputs_active(self, eqn, active):
        return [any(active) and is_differentiable(v.aval) for v in eqn.outvars]

    def backward(self, eqn, invals, record, cts, needs):
        params = eqn.params
        nc = params["num_consts"]
        dense = [
            instantiate(ct, v.aval) if is_differentiable(v.aval) else _zero_tangent(v.aval)
            for ct, v in zip(cts, eqn.outvars)
        ]
        in_cts = params["bwd"].call_wrapped(*record.residuals, *dense)
        zero_types = (jax_ad.Zero, jax.custom_derivatives.SymbolicZero)
        cleaned = [None if ct is None or isinstance(ct, zero_types) else ct for ct in in_cts]
        return [None] * nc + cleaned


@higher_order_rule("remat2")
class RematVjp:
    """``jax.checkpoint``: same gradient as the body; under a trace, recompute instead of store.

    When traced (under ``jax.jit``) the forward values of the body are not kept: the backward
    pass evaluates the body again from its inputs, behind an optimization barrier when
    ``prevent_cse`` asks for one, so XLA cannot merge the recomputation with the forward pass.
    Eagerly there is nothing to save by recomputing, so the trace is kept for inspection.
    """

    def forward(self, eqn, invals, active):
        sub = evaluate(eqn.params["jaxpr"], [], invals, active)
        record = None if _is_traced(invals) else sub
        return sub.outputs, _outputs_active(sub), record

    def outputs_active(self, eqn, active):
        return jaxpr_activity(eqn.params["jaxpr"], active)

    def backward(self, eqn, invals, record, cts, needs):
        if record is None:
            inputs = invals
            if eqn.params.get("prevent_cse", True):
                inputs = list(lax.optimization_barrier(list(invals)))
            record = evaluate(eqn.params["jaxpr"], [], inputs, needs)
        return backward(record, cts)


@higher_order_rule("cond")
class CondVjp:
    """``lax.cond``/``lax.switch``: the VJP of the branch taken, chosen by the same index.

    Each branch's VJP re-evaluates that branch forward (the residuals of a branch exist only
    inside it), and every branch returns dense cotangents of identical types, as ``lax.switch``
    requires. The index itself gets no cotangent.
    """

    def forward(self, eqn, invals, active):
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        return list(outs), self.outputs_active(eqn, active), None

    def outputs_active(self, eqn, active):
        per_branch = [jaxpr_activity(b.jaxpr, active[1:]) for b in eqn.params["branches"]]
        return [any(col) for col in zip(*per_branch)]

    def backward(self, eqn, invals, record, cts, needs):
        index, *operands = invals
        op_needs = list(needs[1:])
        need_idx = [k for k, n in enumerate(op_needs) if n]
        op_avals = [v.aval for v in eqn.invars[1:]]
        ct_idx = [j for j, ct in enumerate(cts) if ct is not None]
        ct_values = [cts[j] for j in ct_idx]

        def branch_vjp(branch: ClosedJaxpr):
            def vjp(ops: list[Any], ct_vals: list[Any]) -> list[Any]:
                sub = evaluate(branch.jaxpr, branch.consts, ops, op_needs)
                out_cts: list[Any] = [None] * len(branch.jaxpr.outvars)
                for j, ct in zip(ct_idx, ct_vals):
                    out_cts[j] = ct
                in_cts = backward(sub, out_cts)
                return [instantiate(in_cts[k], op_avals[k]) for k in need_idx]

            return vjp

        branches = [branch_vjp(b) for b in eqn.params["branches"]]
        results = lax.switch(index, branches, list(operands), ct_values)
        out: list[Any] = [None] * len(invals)
        for k, ct in zip(need_idx, results):
            out[1 + k] = ct
        return out


class _ScanRecord:
    """Per-iteration residuals of a scan body, stacked, plus the body trace's structure."""

    def __init__(self, skeleton: Trace, stacked: list[Any], carry_active: list[bool]):
        self.skeleton = skeleton
        self.stacked = stacked
        self.carry_active = carry_active

    def leaves(self) -> list[Any]:
        return list(self.stacked)

    def with_leaves(self, leaves: list[Any]) -> _ScanRecord:
        return _ScanRecord(self.skeleton, list(leaves), self.carry_active)


def _scan_carry_active(eqn: Any, active: list[bool]) -> list[bool]:
    """Fixed point: a carry is active if its initial value is, or if the body makes it so."""
    params = eqn.params
    nc, ncar = params["num_consts"], params["num_carry"]
    body = params["jaxpr"].jaxpr
    carry = list(active[nc : nc + ncar])
    while True:
        out = jaxpr_activity(body, [*active[:nc], *carry, *active[nc + ncar :]])
        new = [a or b for a, b in zip(carry, out[:ncar])]
        if new == carry:
            return carry
        carry = new


@higher_order_rule("scan")
class ScanVjp:
    """``lax.scan``: a forward scan that stacks each step's values, then a reverse scan of VJPs.

    The carry cotangent flows backwards through the iterations, the constants' cotangents are
    summed in the backward carry, and the cotangents of ``xs`` come out as the backward scan's
    stacked outputs.
    """

    def outputs_active(self, eqn, active):
        params = eqn.params
        nc, ncar = params["num_consts"], params["num_carry"]
        carry = _scan_carry_active(eqn, active)
        out = jaxpr_activity(params["jaxpr"].jaxpr, [*active[:nc], *carry, *active[nc + ncar :]])
        return [*carry, *out[ncar:]]

    def forward(self, eqn, invals, active):
        params = eqn.params
        nc, ncar = params["num_consts"], params["num_carry"]
        if not any(active):
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
            return list(outs), [False] * len(eqn.outvars), None
        body: ClosedJaxpr = params["jaxpr"]
        consts, init, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]
        carry_active = _scan_carry_active(eqn, active)
        body_active = [*active[:nc], *carry_active, *active[nc + ncar :]]
        invariant = [True] * nc + [False] * (len(invals) - nc)
        skeleton: dict[str, Trace] = {}

        def step(carry: list[Any], x: list[Any]) -> tuple[list[Any], Any]:
            sub = evaluate(body.jaxpr, body.consts, [*consts, *carry, *x], body_active, invariant)
            skeleton["trace"] = sub
            outs = sub.outputs
            return outs[:ncar], (outs[ncar:], sub.leaves())

        final, (ys, stacked) = lax.scan(
            step,
            list(init),
            list(xs),
            length=params["length"],
            reverse=params["reverse"],
            unroll=params["unroll"],
        )
        out_active = self.outputs_active(eqn, active)
        return [*final, *ys], out_active, _ScanRecord(skeleton["trace"], stacked, carry_active)

    def backward(self, eqn, invals, record, cts, needs):
        params = eqn.params
        nc, ncar = params["num_consts"], params["num_carry"]
        carry_idx = [j for j, a in enumerate(record.carry_active) if a]
        out_avals = [v.aval for v in eqn.outvars]
        in_avals = [v.aval for v in eqn.invars]
        # inside the backward scan's body, values are per iteration: xs lose their leading axis
        body_avals = [v.aval for v in params["jaxpr"].jaxpr.invars]
        ys_idx = [j for j in range(ncar, len(cts)) if is_differentiable(out_avals[j])]
        const_idx = [k for k in range(nc) if needs[k]]
        xs_idx = [k for k in range(nc + ncar, len(invals)) if needs[k]]
        skeleton = record.skeleton
        ct_carry = [instantiate(cts[j], out_avals[j]) for j in carry_idx]
        ct_ys = [instantiate(cts[j], out_avals[j]) for j in ys_idx]
        ct_consts = [instantiate(None, in_avals[k]) for k in const_idx]

        def bstep(carry: tuple[list[Any], list[Any]], inputs: tuple[list[Any], list[Any]]):
            ct_c, acc = carry
            residuals, ct_y = inputs
            sub = skeleton.with_leaves(residuals)
            out_cts: list[Any] = [None] * len(sub.jaxpr.outvars)
            for j, ct in zip(carry_idx, ct_c):
                out_cts[j] = ct
            for j, ct in zip(ys_idx, ct_y):
                out_cts[j] = ct
            in_cts = backward(sub, out_cts)
            new_ct_c = [instantiate(in_cts[nc + j], body_avals[nc + j]) for j in carry_idx]
            new_acc = [a + instantiate(in_cts[k], body_avals[k]) for a, k in zip(acc, const_idx)]
            ct_x = [instantiate(in_cts[k], body_avals[k]) for k in xs_idx]
            return (new_ct_c, new_acc), ct_x

        (ct_init, ct_consts), ct_xs = lax.scan(
            bstep,
            (ct_carry, ct_consts),
            (record.stacked, ct_ys),
            length=params["length"],
            reverse=not params["reverse"],
            unroll=params["unroll"],
        )
        out: list[Any] = [None] * len(invals)
        for k, ct in zip(const_idx, ct_consts):
            out[k] = ct
        for j, ct in zip(carry_idx, ct_init):
            if needs[nc + j]:
                out[nc + j] = ct
        for k, ct in zip(xs_idx, ct_xs):
            out[k] = ct
        return out


@higher_order_rule("while")
class WhileVjp:
    """``lax.while_loop`` evaluates forward; like ``jax.grad``, funcgrad refuses to reverse it."""

    def forward(self, eqn, invals, active):
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        return list(outs), self.outputs_active(eqn, active), None

    def outputs_active(self, eqn, active):
        return [any(active) and is_differentiable(v.aval) for v in eqn.outvars]

    def backward(self, eqn, invals, record, cts, needs):
        raise NotDifferentiableError(
            "Reverse-mode differentiation does not work for lax.while_loop or lax.fori_loop with "
            "dynamic start/stop values. Try using lax.scan, or using fori_loop with static "
            "start/stop (funcgrad refuses exactly where jax.grad does)."
        )

"""Build the model of a drawing from a trace: one item per equation, grouped into clusters.

Calls (``jit``, ``custom_jvp``, checkpoint) get a cluster of their body, drawn with its values
when the trace recorded them; ``scan``/``cond``/``while`` get their bodies as structure. Within a
level, equations are grouped by the nested Python calls that emitted them; in a gradient program,
first into its forward pass, the equations funcgrad's VJP rules emitted (one cluster per rule
application) and what follows.
"""

from __future__ import annotations

import os
from typing import Any

from jax.extend.core import ClosedJaxpr, DropVar, Jaxpr, Var

from funcgrad.interpret.backward import emitting_rule
from funcgrad.interpret.jaxprs import CALL_PRIMITIVES, body_of_call, open_jaxpr
from funcgrad.viz.graph.model import Body, Eqn, Group, Item, Level
from funcgrad.viz.graph.origins import Frame, user_stack
from funcgrad.viz.graph.params import body_name
from funcgrad.viz.graph.style import (
    CALL_COLOR,
    CONTROL_COLOR,
    DATA_COLOR,
    PARAM_COLOR,
    RULE_COLOR,
    SCOPE_COLOR,
)

__all__ = ["Builder", "level_of_trace"]

# Drawn as a cluster of their body: calls, and custom derivatives around the function they wrap.
_CUSTOM_CALLS = frozenset({"custom_jvp_call", "custom_vjp_call"})
_CALL_LIKE = CALL_PRIMITIVES | _CUSTOM_CALLS
_CALL_KIND = {
    "custom_jvp_call": "custom_jvp: gradient from its JVP rule",
    "custom_vjp_call": "custom_vjp: gradient from its bwd function",
    "remat2": "checkpoint",
    "checkpoint": "checkpoint",
}


def level_of_trace(trace: Any, grad_mode: str) -> Level:
    """The top level of a :class:`funcgrad.Trace`; ``grad_mode`` "full" draws its gradients."""
    return Level(
        jaxpr=trace.jaxpr,
        values=trace.values,
        active=trace.active if grad_mode != "off" else None,
        cts=trace.cotangents if grad_mode == "full" else None,
        grad_mode=grad_mode,
    )


class Builder:
    """Turns a trace (or a bare jaxpr) into the tree of items and groups that gets drawn.

    ``scopes=False`` leaves out the clusters of Python functions and of VJP rules.
    """

    def __init__(self, *, scopes: bool) -> None:
        self.scopes = scopes

    def items(self, level: Level, records: dict[int, Any] | None) -> list[Item]:
        """The items of ``level``, grouped; ``records`` are the trace's per-equation records of
        sub-jaxprs (a call's own trace), if any."""
        items = []
        for i, eqn in enumerate(level.jaxpr.eqns):
            item = Eqn(i, eqn)
            item.body = self.body_group(item, level, (records or {}).get(i))
            items.append(item)
        return self.group(items)

    # -- sub-jaxprs ----------------------------------------------------------------------------
    def body_group(self, item: Eqn, level: Level, record: Any) -> Group | None:
        """The cluster of a call's or a control-flow equation's sub-jaxprs, else None."""
        if item.eqn.primitive.name in _CALL_LIKE:
            opened = body_of_call(item.eqn)
            if opened is not None:
                return self.call_group(item, opened, level, record)
        return self.control_group(item)

    def control_group(self, item: Eqn) -> Group | None:
        """``scan``/``cond``/``while`` bodies as structure (their iterations' values are gone)."""
        eqn = item.eqn
        name = eqn.primitive.name
        p = eqn.params
        if name == "scan":
            bodies = [self.structure_body(None, p["jaxpr"], list(eqn.invars))]
            title = f"scan × {p['length']} (body structure; values per iteration are not kept)"
        elif name == "cond":
            ops = list(eqn.invars[1:])
            bodies = [self.structure_body(f"branch {k}", b, ops)
                      for k, b in enumerate(p["branches"])]
            title = f"cond: {len(bodies)} branches (structure; only the one taken ran)"
        elif name == "while":
            cn, bn = p["cond_nconsts"], p["body_nconsts"]
            ins = list(eqn.invars)
            carry = ins[cn + bn:]
            bodies = [
                self.structure_body("condition", p["cond_jaxpr"], ins[:cn] + carry),
                self.structure_body("body", p["body_jaxpr"], ins[cn:cn + bn] + carry),
            ]
            title = "while loop (structure)"
        else:
            return None
        return Group("control", name, title, bodies=bodies, owner=item, color=CONTROL_COLOR)

    def structure_body(self, title: str | None, body: ClosedJaxpr | Jaxpr, sources: list) -> Body:
        jaxpr, consts = open_jaxpr(body)
        level = Level.structure(jaxpr)
        return Body(title, level, self.items(level, None), sources, consts)

    def call_group(
        self, item: Eqn, opened: tuple[Jaxpr, list[Any]], level: Level, record: Any
    ) -> Group | None:
        """A call's body, with its values and gradients where ``record`` (its trace) has them."""
        eqn = item.eqn
        prim = eqn.primitive.name
        jaxpr, consts = opened
        if not jaxpr.eqns:  # an identity body (a custom_vjp around x -> x): one node says it all
            return None
        name = body_name(eqn)
        has_trace = record is not None and getattr(record, "jaxpr", None) is jaxpr
        if has_trace and level.values is not None:
            if level.grad_mode == "full" and prim in _CUSTOM_CALLS:
                mode = "custom"
            else:
                mode = level.grad_mode
            sub = Level(
                jaxpr,
                record.values,
                record.active if mode != "off" else None,
                (record.cotangents or {}) if mode == "full" else None,
                mode,
            )
            records = record.records
        else:
            sub = Level.structure(jaxpr)
            records = None
        if sub.grad_mode == "custom":
            # The body's gradients are not the custom rule's: its outputs show the outer ones.
            sub.override = {
                bv: (level, ov)
                for bv, ov in zip(jaxpr.outvars, eqn.outvars)
                if isinstance(bv, Var) and not isinstance(ov, DropVar)
            }
        items = self.items(sub, records)
        kind = _CALL_KIND.get(prim, prim)
        group = Group("call", name, f"{name}  ({kind})", owner=item, color=CALL_COLOR)
        group.kinds = [kind]
        group.bodies = [Body(None, sub, items, list(eqn.invars), consts)]
        _unwrap(group)
        return group

    # -- grouping by Python function and by pass -----------------------------------------------
    def group(self, items: list[Eqn]) -> list[Item]:
        """Group one level's equations: by pass in a gradient program, else by Python call."""
        if not items:
            return items
        for it in items:
            it.rule = emitting_rule(it.eqn)
        backward = [it.rule is not None for it in items]
        if any(backward) and not all(backward):
            return self.phases(items, backward)
        return self.scoped(items)

    def phases(self, items: list[Eqn], backward: list[bool]) -> list[Item]:
        """A gradient program: its forward pass, then what the VJP rules emitted (then whatever
        the function computes from the gradient), each a cluster."""
        out: list[Item] = []
        start = 0
        for k in range(1, len(items) + 1):
            if k < len(items) and backward[k] == backward[start]:
                continue
            run = items[start:k]
            if backward[start]:
                out.append(Group("phase", "backward", "backward pass: funcgrad's VJP rules, "
                                 "last equation first", items=self.rule_runs(run),
                                 color=PARAM_COLOR))
            else:
                title = ("forward pass: evaluate, keeping every value" if not out
                         else "after the backward pass")
                out.append(Group("phase", "forward" if not out else "after", title,
                                 items=self.scoped(run), color=DATA_COLOR))
            start = k
        return out

    def rule_runs(self, items: list[Eqn]) -> list[Item]:
        """Consecutive equations emitted by the same VJP rule, as one cluster each."""
        if not self.scopes:
            return list(items)
        out: list[Item] = []
        for it in items:
            if out and isinstance(out[-1], Group) and out[-1].name == it.rule:
                out[-1].items.append(it)
            else:
                out.append(Group("scope", it.rule or "backward", f"{it.rule}  (VJP rule)",
                                 items=[it], color=RULE_COLOR))
        return _simplify(out)

    def scoped(self, items: list[Eqn]) -> list[Item]:
        """Group equations by the (nested) Python function calls that emitted them."""
        if not self.scopes or len(items) < 3:
            return list(items)
        stacks = [user_stack(it.eqn) for it in items]
        common = _common_prefix(stacks)
        root: list[Item] = []
        open_: list[tuple[Any, Group]] = []  # the scopes the last item sits in, outermost first
        for item, stack in zip(items, stacks):
            rel = stack[common:]
            keys = [(*rel[:k], rel[k][:2]) for k in range(len(rel))]
            n = 0
            while n < len(open_) and n < len(keys) and open_[n][0] == keys[n]:
                n += 1
            del open_[n:]
            for k in range(n, len(keys)):
                caller = rel[k - 1] if k else (stack[common - 1] if common else None)
                grp = _scope_group(rel[k][1], caller)
                (open_[-1][1].items if open_ else root).append(grp)
                open_.append((keys[k], grp))
            (open_[-1][1].items if open_ else root).append(item)
        root = _simplify(root)
        while len(root) == 1 and isinstance(root[0], Group) and root[0].kind == "scope":
            root = root[0].items
        return root


def _scope_group(func: str, caller: Frame | None) -> Group:
    """The cluster of a call of Python function ``func`` from ``caller``'s line."""
    where = f"{os.path.basename(caller[0])}:{caller[2]}" if caller else ""
    short = func.split(".")[-1].replace("<lambda>", "lambda")
    return Group("scope", short, short + (f"  (called at {where})" if where else ""),
                 color=SCOPE_COLOR, where=where)


def _unwrap(group: Group) -> None:
    """``custom_jvp(relu) > jit(relu) > max``: draw one cluster, not two nested ones.

    (The inner level's gradients, where it does not know them, already come from the outer
    level through its ``override``.)
    """
    body = group.bodies[0]
    while (
        len(body.items) == 1
        and isinstance(body.items[0], Eqn)
        and body.items[0].body is not None
        and body.items[0].body.kind == "call"
        and not body.consts
    ):
        inner_item = body.items[0]
        inner_group = inner_item.body
        if list(inner_item.eqn.invars) != list(body.level.jaxpr.invars) or list(
            inner_item.eqn.outvars
        ) != list(body.level.jaxpr.outvars):
            return
        names = group.name if inner_group.name == group.name else (
            f"{group.name} > {inner_group.name}"
        )
        group.kinds += [k for k in inner_group.kinds if k not in group.kinds]
        group.title = f"{names}  ({', '.join(group.kinds)})"
        inner = inner_group.bodies[0]
        body = Body(None, inner.level, inner.items, body.sources, inner.consts)
        group.bodies = [body]


def _common_prefix(stacks: list[tuple[Frame, ...]]) -> int:
    """How many outermost frames every stack shares."""
    if not stacks:
        return 0
    first = stacks[0]
    n = min(len(s) for s in stacks)
    for s in stacks[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def _simplify(items: list[Item]) -> list[Item]:
    """Drop scope groups that hold a single item (a cluster around one node says nothing)."""
    out = []
    for it in items:
        if isinstance(it, Group) and it.kind == "scope":
            it.items = _simplify(it.items)
            if len(it.items) == 1:
                out.append(it.items[0])
                continue
        out.append(it)
    return out

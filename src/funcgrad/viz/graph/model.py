"""The model of a drawing: levels (jaxprs), items (equations) and groups (clusters).

A :class:`Level` is one jaxpr with what is known about its variables (values, cotangents). Its
equations become :class:`Eqn` items; a call or control-flow equation owns a :class:`Group` of
the :class:`Body` levels it runs, and runs of equations are grouped by the Python function that
emitted them (a ``"scope"`` group) or by the half of a gradient program they belong to (a
``"phase"`` group). :mod:`.build` makes this tree, :mod:`.collapse` marks groups collapsed and
:mod:`.dot` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jax.extend.core import DropVar, Jaxpr, JaxprEqn, Literal, Var

from funcgrad.viz.graph.labels import CONST, NO_GRAD_TEXT, NONE, UNKNOWN, grad_text

__all__ = [
    "Body",
    "Eqn",
    "Group",
    "Item",
    "Level",
    "NodeRecord",
    "boundary",
    "count_eqns",
    "group_of",
    "produced",
    "uses",
]


@dataclass(eq=False)
class Level:
    """One jaxpr being drawn, and what is known about its variables."""

    jaxpr: Jaxpr
    values: dict[Var, Any] | None  # None: structure only (scan bodies, or values=False)
    active: set[Var] | None
    cts: dict[Var, Any] | None
    grad_mode: str  # "full", "custom" (a custom rule replaced the body's gradients), "off"
    override: dict[Var, tuple[Level, Any]] = field(default_factory=dict)
    stopped_by: dict[Var, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Outputs of a primitive whose derivative is zero by definition (stop_gradient, floor)
        # applied to a value that does carry a gradient: inactive because the gradient stops.
        if self.active is None:
            return
        for eqn in self.jaxpr.eqns:
            if any(not isinstance(v, Literal) and v in self.active for v in eqn.invars):
                for v in eqn.outvars:
                    if not isinstance(v, DropVar) and v not in self.active:
                        self.stopped_by[v] = eqn.primitive.name

    @classmethod
    def structure(cls, jaxpr: Jaxpr) -> Level:
        """A level drawn without values or gradients."""
        return cls(jaxpr, None, None, None, "off")

    def value(self, v: Any) -> Any:
        if isinstance(v, Literal):
            return v.val
        if self.values is None:
            return None
        return self.values.get(v)

    def grad(self, v: Any) -> tuple[str, str | None]:
        """(status, text) of ``v``'s gradient."""
        if self.grad_mode == "off" or isinstance(v, (Literal, DropVar)):
            return UNKNOWN, None
        if self.grad_mode == "custom" and v in self.override:
            outer, outer_v = self.override[v]
            return outer.grad(outer_v)
        if self.active is not None and v not in self.active:
            if v in self.stopped_by:
                return CONST, f"no grad: {self.stopped_by[v]} passes none back"
            return CONST, NO_GRAD_TEXT[CONST]
        if self.grad_mode == "custom":
            return UNKNOWN, None
        ct = (self.cts or {}).get(v)
        if ct is None:
            return NONE, NO_GRAD_TEXT[NONE]
        return grad_text(ct)

    def cotangent(self, v: Any) -> Any:
        """``v``'s cotangent where this level knows it (else None), as :meth:`grad` reads it."""
        if self.grad_mode == "off" or isinstance(v, (Literal, DropVar)):
            return None
        if self.grad_mode == "custom":
            if v in self.override:
                outer, outer_v = self.override[v]
                return outer.cotangent(outer_v)
            return None
        return (self.cts or {}).get(v)


@dataclass(eq=False)
class Eqn:
    """One equation of a level, as drawn."""

    index: int
    eqn: JaxprEqn
    body: Group | None = None  # a call's or a control-flow primitive's sub-jaxpr(s)
    rule: str | None = None  # in a gradient program: the VJP rule that emitted this equation


@dataclass(eq=False)
class Body:
    """One sub-jaxpr of a call or control-flow equation, and which outer values feed its inputs."""

    title: str | None
    level: Level
    items: list[Item]
    sources: list[Any]  # outer invars (Var or Literal), one per body invar
    consts: list[Any]  # values of the body's constvars


@dataclass(eq=False)
class Group:
    """A cluster: a call's body (kind "call"), control flow ("control"), a Python function's
    equations ("scope") or the forward/backward half of a gradient program ("phase")."""

    kind: str
    name: str
    title: str
    items: list[Item] = field(default_factory=list)  # scope/phase: items of the same level
    bodies: list[Body] = field(default_factory=list)  # call/control: the sub-jaxprs
    owner: Eqn | None = None
    collapsed: bool = False
    depth: int = 0
    color: str = "#999999"
    kinds: list[str] = field(default_factory=list)  # a call's primitive(s), for its title
    where: str = ""  # a scope's call site, ``model.py:12``


Item = Eqn | Group
"""What a level's (or a group's) list of items holds."""


@dataclass(eq=False)
class NodeRecord:
    """What one drawn node (or cluster) stands for: read back by the interactive renderings.

    ``kind`` is "input", "eqn" (an equation, or a call or loop drawn collapsed), "collapsed" (a
    scope or phase group), "control" (the results of an expanded loop or cond), "output",
    "literal" or "cluster" (an expanded call's or loop's cluster). ``eqns`` are the indices of
    the ``level``'s equations it stands for, ``grad_lines`` the variable and the text of each
    gradient line it shows, in order, and ``group`` the collapsed group (or body) it hides.
    """

    name: str
    kind: str
    level: Level | None
    eqns: list[int] = field(default_factory=list)
    grad_lines: list[tuple[Any, str]] = field(default_factory=list)
    group: Group | None = None
    item: Item | None = None


def group_of(item: Item) -> Group | None:
    """The group an item stands for: itself, an equation's body, or None."""
    return item.body if isinstance(item, Eqn) else item


def uses(jaxpr: Jaxpr) -> dict[Var, int]:
    """How many times each variable is read in ``jaxpr`` (its outputs count as reads)."""
    counts: dict[Var, int] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, Var):
                counts[v] = counts.get(v, 0) + 1
    for v in jaxpr.outvars:
        if isinstance(v, Var):
            counts[v] = counts.get(v, 0) + 1
    return counts


def _group_eqns(g: Group) -> list[JaxprEqn]:
    """The equations of this level that a scope/phase group holds (not those of nested bodies)."""
    out = []
    for it in g.items:
        if isinstance(it, Eqn):
            out.append(it.eqn)
        elif isinstance(it, Group):
            out.extend(_group_eqns(it))
    return out


def produced(g: Group) -> list[Var]:
    """The variables the equations of a scope/phase group define."""
    return [v for e in _group_eqns(g) for v in e.outvars if not isinstance(v, DropVar)]


def boundary(g: Group, counts: dict[Var, int]) -> tuple[list[Var], list[Var]]:
    """(values the group reads from outside, values it produces that are read outside), given
    the read ``counts`` of the group's level (:func:`uses`)."""
    eqns = _group_eqns(g)
    inside = set(produced(g))
    inner_uses: dict[Var, int] = {}
    inputs: list[Var] = []
    seen: set[Var] = set()
    for e in eqns:
        for v in e.invars:
            if not isinstance(v, Var):
                continue
            inner_uses[v] = inner_uses.get(v, 0) + 1
            if v not in inside and v not in seen:
                seen.add(v)
                inputs.append(v)
    outputs = [
        v for e in eqns for v in e.outvars
        if not isinstance(v, DropVar) and counts.get(v, 0) > inner_uses.get(v, 0)
    ]
    return inputs, outputs


def count_eqns(g: Group) -> int:
    """How many equations a group holds, nested bodies included."""
    items = list(g.items) + [it for b in g.bodies for it in b.items]
    total = 0
    for it in items:
        if isinstance(it, Group):
            total += count_eqns(it)
        elif it.body is not None:
            total += count_eqns(it.body)
        else:
            total += 1
    return total

"""Choosing which clusters to collapse to one node each: by name, all, or to fit a node budget.

Past the budget, the innermost groups go first (detail that matters least at a glance), then the
largest; groups of the same name at the same depth (every ``layer_norm`` of a model) collapse
together, so that the drawing stays uniform. In a gradient program the forward pass is context
and goes first; the backward pass, what such a drawing is for, is never collapsed automatically.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from funcgrad.viz.graph.model import Group, Item, group_of

__all__ = ["budget_notes", "choose_collapsed", "outermost_collapsed", "size", "walk_groups"]


def walk_groups(items: Iterable[Item], depth: int = 1) -> Iterator[Group]:
    """Every group under ``items``, outermost first, each with its nesting ``depth`` set."""
    for it in items:
        group = group_of(it)
        if not isinstance(group, Group):
            continue
        group.depth = depth
        yield group
        if group.kind in ("scope", "phase"):
            yield from walk_groups(group.items, depth + 1)
        for body in group.bodies:
            yield from walk_groups(body.items, depth + 1)


def size(items: Iterable[Item]) -> int:
    """How many nodes drawing ``items`` takes, given which groups are collapsed."""
    total = 0
    for it in items:
        group = group_of(it)
        if group is None or group.collapsed:
            total += 1
        else:
            total += _expanded_size(group)
    return total


def _expanded_size(group: Group) -> int:
    if group.kind in ("scope", "phase"):
        return size(group.items)
    n = sum(size(b.items) + len(b.level.jaxpr.constvars) for b in group.bodies)
    return n + (1 if group.kind == "control" else 0)


def choose_collapsed(
    items: list[Item], fixed: int, collapse: Any, node_budget: int | None
) -> list[Group]:
    """Mark groups collapsed per ``collapse`` (and ``node_budget``); return every group.

    ``collapse``: True/False for all/none, a name or set of names, or None to collapse only as
    much as keeps ``fixed`` (the input and output nodes) plus the items within ``node_budget``.
    """
    groups = list(walk_groups(items))
    for g in groups:
        g.collapsed = False
    if collapse is False or not groups:
        return groups
    if collapse is True:
        for g in groups:
            g.collapsed = True
        return groups
    if collapse is not None:
        _collapse_by_name(groups, {collapse} if isinstance(collapse, str) else set(collapse))
    elif node_budget is not None and fixed + size(items) > node_budget:
        _collapse_to_budget(items, groups, node_budget - fixed)
    return groups


def _collapse_by_name(groups: list[Group], names: set[str]) -> None:
    known = {g.name for g in groups}
    unknown = names - known
    if unknown:
        raise ValueError(
            f"collapse={sorted(unknown)!r}: no cluster of that name in this graph; its "
            f"clusters are {sorted(known)}. Pass collapse=True/False or a set of those names."
        )
    for g in groups:
        g.collapsed = g.name in names


def _collapse_to_budget(items: list[Item], groups: list[Group], budget: int) -> None:
    """Collapse classes of groups (same depth, same name), in the order the module docstring
    gives, until ``items`` take at most ``budget`` nodes."""
    classes: dict[tuple[int, str], list[Group]] = {}
    for g in groups:
        classes.setdefault((g.depth, g.name), []).append(g)
    order = sorted(
        classes.values(),
        key=lambda gs: (
            not (gs[0].kind == "phase" and gs[0].name == "forward"),
            -gs[0].depth,
            -sum(_expanded_size(g) for g in gs),
        ),
    )
    for members in order:
        if size(items) <= budget:
            break
        if members[0].kind == "phase" and members[0].name == "backward":
            continue
        for g in members:
            if _expanded_size(g) > 1:
                g.collapsed = True


def _parents(groups: list[Group]) -> dict[int, Group]:
    """The group each group sits directly in, by ``id``."""
    out: dict[int, Group] = {}
    for g in groups:
        children = list(g.items)
        for b in g.bodies:
            children += b.items
        for it in children:
            child = group_of(it)
            if isinstance(child, Group):
                out[id(child)] = g
    return out


def outermost_collapsed(groups: list[Group]) -> list[Group]:
    """The collapsed groups that get drawn: those not inside another collapsed group."""
    parents = _parents(groups)

    def inside_collapsed(g: Group) -> bool:
        p = parents.get(id(g))
        while p is not None:
            if p.collapsed:
                return True
            p = parents.get(id(p))
        return False

    return [g for g in groups if g.collapsed and not inside_collapsed(g)]


def budget_notes(
    collapsed: list[Group], total: int, collapse: Any, node_budget: int | None
) -> list[str]:
    """What collapsing to fit ``node_budget`` did (or could not do), for the graph's legend;
    ``total`` is the number of nodes drawn."""
    if collapse is not None:
        return []
    notes = []
    if collapsed:
        counts: dict[str, int] = {}
        for g in collapsed:
            counts[g.name] = counts.get(g.name, 0) + 1
        which = ", ".join(f"{n} ×{c}" if c > 1 else n for n, c in counts.items())
        notes.append(
            f"{len(collapsed)} cluster(s) collapsed to stay within node_budget={node_budget}: "
            f"{which}. Expand them with collapse=False or a larger node_budget, or pick with "
            "collapse={names}."
        )
    if node_budget is not None and total > node_budget:
        notes.append(
            f"{total} nodes, over node_budget={node_budget} even after collapsing what could be "
            "collapsed (a gradient program's backward pass never is)."
        )
    return notes

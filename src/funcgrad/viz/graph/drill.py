"""What a drawing was made from, kept with it so that each collapsed cluster can be drawn open.

:class:`Drawing` holds the top level, its items and the caller's options; :meth:`Drawing.drill`
draws one collapsed group (a Python function's equations, a call's or a loop's body) on its own,
expanded, between nodes named after the values it reads and gives out, its own inner groups
collapsed to fit the node budget as in the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jax.extend.core import Var

from funcgrad.viz.graph.collapse import choose_collapsed, walk_groups
from funcgrad.viz.graph.digraph import JaxprGraph
from funcgrad.viz.graph.dot import emit_drill
from funcgrad.viz.graph.model import Eqn, Group, Item, Level, NodeRecord, uses
from funcgrad.viz.graph.options import DrawOptions, NodeNames

__all__ = ["Drawing"]


@dataclass(eq=False)
class Drawing:
    """The model a :class:`JaxprGraph` was emitted from (see :mod:`.model`)."""

    level: Level
    items: list[Item]
    names: NodeNames
    options: DrawOptions
    _counts: dict[int, dict[Var, int]] = field(default_factory=dict)

    def drill(self, record: NodeRecord) -> JaxprGraph | None:
        """The group ``record``'s node hides, drawn open; None if it hides none."""
        group, level = record.group, record.level
        if group is None or level is None or not isinstance(record.item, (Eqn, Group)):
            return None
        item = record.item
        counts = self._counts.setdefault(id(level), uses(level.jaxpr))
        children = list(group.items) + [it for b in group.bodies for it in b.items]
        # Marks are set for this drawing only, then put back as the whole graph had them.
        marks = [(g, g.collapsed) for g in [group, *walk_groups(children)]]
        collapse = self.options.collapse
        if collapse not in (None, True, False):  # the names picked that this group holds
            names = {collapse} if isinstance(collapse, str) else set(collapse)
            collapse = names & {g.name for g in walk_groups(children)} or False
        choose_collapsed(children, 0, collapse, self.options.node_budget)
        group.collapsed = False
        try:
            graph = emit_drill(level, item, counts, self.options, self._input_names(level),
                               self._output_names(level))
        finally:
            for g, collapsed in marks:
                g.collapsed = collapsed
        graph.drawing = self
        return graph

    def _input_names(self, level: Level) -> dict[Any, tuple[str, str]]:
        """(name, role) of the values a group of ``level`` may read from outside."""
        names: dict[Any, tuple[str, str]] = {}
        jaxpr = level.jaxpr
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                names[v] = (f"from {eqn.primitive.name}", "value")
        if level is self.level:
            inputs = list(self.names.inputs or [])
            consts = list(self.names.consts or [])
            for k, v in enumerate(jaxpr.invars):
                names[v] = (inputs[k] if k < len(inputs) else f"in[{k}]", "param")
            for k, v in enumerate(jaxpr.constvars):
                name = consts[k] if k < len(consts) and consts[k] else f"const[{k}]"
                names[v] = (name, "data")
        else:
            for k, v in enumerate(jaxpr.invars):
                names[v] = (f"body input #{k}", "value")
            for k, v in enumerate(jaxpr.constvars):
                names[v] = (f"body constant #{k}", "data")
        return names

    def _output_names(self, level: Level) -> dict[Any, str]:
        if level is not self.level:
            return {}
        outputs = list(self.names.outputs)
        return {v: outputs[k] for k, v in enumerate(level.jaxpr.outvars)
                if isinstance(v, Var) and k < len(outputs)}

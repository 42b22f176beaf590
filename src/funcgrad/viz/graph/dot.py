"""Emitting DOT: the model of a drawing (:mod:`.model`) as Graphviz nodes, edges and clusters.

Each node's label is HTML-like text: a bold header (the primitive and its params, or a name),
then per output its shape, value and gradient; its tooltip is the full summary of each (shape,
dtype, min/mean/max/std, zeros, NaNs, first entries). Inputs are parameters (red) or data (blue);
collapsed groups are one ``box3d`` node; the legend, with any notes, sits below the graph. What
each node stands for is kept as a :class:`~.model.NodeRecord` per node, for the interactive
renderings; :func:`emit_drill` draws one collapsed group on its own, expanded.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from typing import Any

import graphviz
from jax.extend.core import DropVar, JaxprEqn, Literal, Var

from funcgrad.interpret.errors import source_line
from funcgrad.viz.graph.digraph import JaxprGraph
from funcgrad.viz.graph.labels import (
    CONST,
    FLOWS,
    NONE,
    UNKNOWN,
    ZERO,
    combine_statuses,
    fmt_literal,
    summary_lines,
    value_text,
)
from funcgrad.viz.graph.measure import cell_width, node_width
from funcgrad.viz.graph.model import (
    Body,
    Eqn,
    Group,
    Item,
    Level,
    NodeRecord,
    boundary,
    count_eqns,
    produced,
    uses,
)
from funcgrad.viz.graph.options import DrawOptions, NodeNames
from funcgrad.viz.graph.origins import user_stack
from funcgrad.viz.graph.params import params_text
from funcgrad.viz.graph.style import (
    DATA_COLOR,
    DATA_FILL,
    EDGE_COLOR,
    FONT,
    GRAD_COLOR,
    GREY_TEXT,
    NOFLOW_EDGE,
    NOFLOW_FILL,
    OUTPUT_COLOR,
    OUTPUT_FILL,
    PARAM_COLOR,
    SHAPE_TEXT,
    ZERO_FILL,
    cluster_text_color,
    status_style,
)

__all__ = ["GradOverride", "emit_drill", "emit_graph"]

GradOverride = Callable[[Level, Any], "tuple[str, str | None] | None"]
"""``(level, var) -> (status, text)`` drawn instead of the gradient the level knows (or None)."""

_LARGE_GRAPH = 200  # nodes; past this, cap dot's layout iterations
_MARGIN_X = 0.07 * 72  # a node's margin left and right of its label, in points
_BOX3D_MARGIN_X = 0.1 * 72


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _font(text: str, color: str | None = None, size: int | None = None) -> str:
    attrs = ""
    if color:
        attrs += f' COLOR="{color}"'
    if size:
        attrs += f' POINT-SIZE="{size}"'
    return f"<FONT{attrs}>{_esc(text)}</FONT>" if attrs else _esc(text)


def _label(lines: list[str]) -> str:
    return "<" + "<BR/>".join(lines) + ">"


def _where(eqn: JaxprEqn) -> str:
    """The primitive and the line of the user's code that emitted it, when known."""
    stack = user_stack(eqn)
    if stack:
        path, func, line = stack[-1]
        return f"{eqn.primitive.name} at {os.path.basename(path)}:{line} ({func})"
    line = source_line(eqn)
    name = eqn.primitive.name
    return name if line.startswith("an unknown") else f"{name} at {line}"


def _tooltip_text(lines: list[str]) -> str:
    """Lines as one Graphviz tooltip (an escString: ``\\n`` separates lines)."""
    parts = (part.replace("\\", "/") for line in lines for part in line.split("\n"))
    return "\\n".join(parts)


_ROLES = {
    "param": "a parameter: the output is differentiated with respect to it",
    "data": "data / constant",
    "value": "computed outside this cluster",
}


def gradient_summary(level: Level, v: Any, name: str = "") -> list[str]:
    """The lines of a tooltip about ``v``'s gradient: its full summary, or why there is none."""
    status, text = level.grad(v)
    what = f"gradient of {name}" if name else "gradient"
    if status in (FLOWS, ZERO):
        summary = summary_lines(level.cotangent(v))
        if summary:
            return [f"{what}: {summary[0]}", *("    " + x for x in summary[1:])]
        return []
    if status == NONE:
        return [f"{what}: none reaches it"]
    if status == CONST:  # independent of the parameters, or stopped (stop_gradient)
        return [f"{what}: none ({(text or '').removeprefix('no grad: ')})"]
    return []


def _eqn_indices(g: Group) -> list[int]:
    """The indices of the equations a scope or phase group holds, at its own level."""
    out: list[int] = []
    for it in g.items:
        if isinstance(it, Eqn):
            out.append(it.index)
        else:
            out.extend(_eqn_indices(it))
    return out


def _box3d(attrs: dict[str, str]) -> dict[str, str]:
    """``attrs`` for a node that stands for a whole cluster: a box with a shadow."""
    attrs["shape"] = "box3d"
    attrs["margin"] = "0.1,0.07"  # the shadow takes room from the label's top and right
    attrs["style"] = attrs.get("style", "filled").replace("rounded,", "")
    return attrs


class _Emitter:
    """Writes nodes into (sub)graphs, numbering them; collects edges to add at the end."""

    def __init__(
        self, *, values: bool, grads: bool, grad_override: GradOverride | None = None
    ) -> None:
        self.values = values
        self.grads = grads
        self.grad_override = grad_override
        self.count = 0
        self.n_nodes = 0
        self.edges: dict[tuple[str, str], dict[str, str]] = {}
        self.records: dict[str, NodeRecord] = {}
        self._grad_lines: list[tuple[Any, str]] = []  # of the node being labelled

    def new_id(self, prefix: str = "n") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    # -- labels --------------------------------------------------------------------------------
    def var_lines(self, level: Level, v: Any, prefix: str = "") -> tuple[list[str], str]:
        """Shape, value and gradient lines of one variable, and its gradient status."""
        aval = v.aval
        shape = aval.str_short(short_dtypes=True) if hasattr(aval, "str_short") else str(aval)
        value = value_text(level.value(v)) if self.values else None
        if value is not None and aval.shape == ():
            lines = [_font(f"{prefix}{shape} ", SHAPE_TEXT) + _font(value)]
        else:
            lines = [_font(prefix + shape, SHAPE_TEXT)]
            if value is not None:
                lines.append(_font(value))
        status, text = self.grad_of(level, v) if self.grads else (UNKNOWN, None)
        if text is not None:
            lines.append(_font(text, GRAD_COLOR if status == FLOWS else GREY_TEXT))
            self._grad_lines.append((v, text))
        return lines, status

    def grad_of(self, level: Level, v: Any) -> tuple[str, str | None]:
        """(status, text) of ``v``'s gradient line."""
        if self.grad_override is not None:
            drawn = self.grad_override(level, v)
            if drawn is not None:
                return drawn
        return level.grad(v)

    def tooltip(self, title: str, level: Level | None, outvars: list[Any], limit: int = 6) -> str:
        """``title``, then the full summary of each output's value and gradient."""
        lines = [title]
        real = [v for v in outvars if not isinstance(v, DropVar)]
        for k, v in enumerate(real[:limit] if level is not None else []):
            name = f"output #{k}" if len(real) > 1 else "value"
            if self.values:
                summary = summary_lines(level.value(v))
                if summary:
                    lines += [f"{name}: {summary[0]}", *("    " + x for x in summary[1:])]
            if self.grads:
                lines += gradient_summary(level, v, name if len(real) > 1 else "")
        if len(real) > limit:
            lines.append(f"... {len(real) - limit} more outputs")
        return _tooltip_text(lines)

    def outputs_lines(
        self, level: Level, outvars: list[Any], limit: int = 4
    ) -> tuple[list[str], str]:
        """The lines of up to ``limit`` outputs, and the status of them all combined."""
        lines: list[str] = []
        statuses = []
        real = [v for v in outvars if not isinstance(v, DropVar)]
        for k, v in enumerate(real[:limit]):
            prefix = f"#{k} " if len(real) > 1 else ""
            ls, st = self.var_lines(level, v, prefix)
            lines += ls
            statuses.append(st)
        if len(real) > limit:
            lines.append(_font(f"... {len(real) - limit} more outputs", GREY_TEXT))
            statuses += [level.grad(v)[0] if self.grads else UNKNOWN for v in real[limit:]]
        return lines, combine_statuses(statuses)

    def header(self, item: Eqn) -> str:
        """The primitive in bold, its literal operands inline and its params."""
        eqn = item.eqn
        prim = eqn.primitive.name
        if prim == "funcgrad_tag":
            return f"<B>{_esc(eqn.params['name'])}</B> " + _font("fg.tag", GREY_TEXT)
        args = ""
        if any(isinstance(v, Literal) for v in eqn.invars):
            args = "(" + ", ".join(
                fmt_literal(v) if isinstance(v, Literal) else "·" for v in eqn.invars
            ) + ")"
        params = params_text(eqn)
        text = f"<B>{_esc(prim)}</B>{_esc(args)}"
        if params:
            text += " " + _esc(params)
        return text

    def eqn_lines(self, item: Eqn, level: Level, header: str) -> tuple[list[str], str]:
        """An equation's label: ``header``, the rule that emitted it, its outputs."""
        lines = [header]
        if item.rule:
            lines.append(_font(f"from {item.rule}", GREY_TEXT, 9))
        out_lines, status = self.outputs_lines(level, list(item.eqn.outvars))
        return lines + out_lines, status

    # -- nodes and edges -----------------------------------------------------------------------
    def node(
        self, graph: graphviz.Digraph, lines: list[str], record: NodeRecord | None = None,
        **attrs: str,
    ) -> str:
        """A node labelled ``lines``; ``record`` says what it stands for."""
        nid = self.new_id()
        self.n_nodes += 1
        margin = _BOX3D_MARGIN_X if attrs.get("shape") == "box3d" else _MARGIN_X
        width = node_width(lines, margin)
        if width is not None:
            attrs["width"] = f"{width / 72:.3f}"
        graph.node(nid, _label(lines), **attrs)
        record = record or NodeRecord(nid, "literal", None)
        record.name = nid
        record.grad_lines, self._grad_lines = self._grad_lines, []
        self.records[nid] = record
        return nid

    def edge(self, src: str | None, dst: str, level: Level | None, v: Any) -> None:
        """An edge carrying ``v`` (dashed grey when no gradient flows along it)."""
        if src is None or (src, dst) in self.edges:
            return
        attrs: dict[str, str] = {}
        if self.grads and level is not None and isinstance(v, Var):
            status = level.grad(v)[0]
            if status in (NONE, CONST):
                attrs = {"color": NOFLOW_EDGE, "style": "dashed"}
        self.edges[(src, dst)] = attrs

    def literal_node(self, graph: graphviz.Digraph, lit: Literal) -> str:
        return self.node(graph, [_font(fmt_literal(lit))], shape="plaintext", style="")

    def ref(self, graph: graphviz.Digraph, env: dict[Var, str], v: Any) -> str | None:
        """The node that holds ``v`` (a new one for a literal)."""
        if isinstance(v, Literal):
            return self.literal_node(graph, v)
        return env.get(v)

    def cluster(
        self, title: str, color: str, dashed: bool = False, record: NodeRecord | None = None
    ) -> graphviz.Digraph:
        name = self.new_id("cluster_")
        if record is not None:
            record.name = name
            self.records[name] = record
        return graphviz.Digraph(
            name=name,
            graph_attr={
                "label": title,
                "labeljust": "l",
                "fontsize": "10",
                "fontcolor": cluster_text_color(color),
                "color": color,
                "style": "rounded,dashed" if dashed else "rounded",
            },
        )

    # -- items ---------------------------------------------------------------------------------
    def emit_items(
        self, items: list[Item], level: Level, graph: graphviz.Digraph, env: dict[Var, str],
        counts: dict[Var, int],
    ) -> None:
        """Draw ``items`` of ``level`` into ``graph``; ``env`` maps each variable to its node and
        ``counts`` says how often the level reads each variable."""
        for it in items:
            if isinstance(it, Eqn):
                if it.body is not None and not it.body.collapsed:
                    self.emit_expanded(it, level, graph, env)
                else:
                    self.emit_eqn(it, level, graph, env)
            elif it.collapsed:
                self.emit_collapsed_group(it, level, graph, env, counts)
            else:
                sub = self.cluster(it.title, it.color, dashed=it.kind == "scope")
                self.emit_items(it.items, level, sub, env, counts)
                graph.subgraph(sub)

    def emit_eqn(self, it: Eqn, level: Level, graph: graphviz.Digraph, env: dict[Var, str]) -> None:
        """One node for an equation (a call or loop whose cluster is collapsed included)."""
        eqn = it.eqn
        if it.body is None:
            header = self.header(it)
        else:
            header = f"<B>{_esc(it.body.name)}</B> " + _font(
                f"{eqn.primitive.name}, {count_eqns(it.body)} ops, collapsed", GREY_TEXT
            )
        lines, status = self.eqn_lines(it, level, header)
        attrs = status_style(status, self.grads)
        title = [_where(eqn)]
        if it.body is not None:
            attrs = _box3d(attrs)
            title.append(f"{it.body.title}: {count_eqns(it.body)} equations, collapsed")
        if it.rule:
            title.append(f"emitted by the VJP rule {it.rule}")
        attrs["tooltip"] = self.tooltip("\n".join(title), level, list(eqn.outvars))
        record = NodeRecord("", "eqn", level, [it.index], group=it.body, item=it)
        nid = self.node(graph, lines, record, **attrs)
        for v in eqn.invars:
            if isinstance(v, Var):
                self.edge(env.get(v), nid, level, v)
        for v in eqn.outvars:
            if not isinstance(v, DropVar):
                env[v] = nid

    def emit_collapsed_group(
        self, g: Group, level: Level, graph: graphviz.Digraph, env: dict[Var, str],
        counts: dict[Var, int],
    ) -> None:
        """One node for a collapsed scope or phase: what it reads in, what it gives out."""
        inputs, outputs = boundary(g, counts)
        lines = [f"<B>{_esc(g.name)}</B> " + _font(f"{count_eqns(g)} ops, collapsed", GREY_TEXT)]
        if g.where:
            lines.append(_font("called at " + g.where, GREY_TEXT, 9))
        out_lines, status = self.outputs_lines(level, outputs, limit=3)
        lines += out_lines
        attrs = _box3d(status_style(status, self.grads))
        attrs["tooltip"] = self.tooltip(
            f"{g.title}\n{count_eqns(g)} equations, collapsed", level, outputs, limit=3
        )
        record = NodeRecord("", "collapsed", level, _eqn_indices(g), group=g, item=g)
        nid = self.node(graph, lines, record, **attrs)
        for v in inputs:
            self.edge(env.get(v), nid, level, v)
        for v in outputs:
            env[v] = nid
        # Values produced and consumed inside the group all live in the one node now.
        for v in produced(g):
            env.setdefault(v, nid)

    def emit_expanded(
        self, it: Eqn, level: Level, graph: graphviz.Digraph, env: dict[Var, str]
    ) -> None:
        """A call's or a loop's cluster, with its bodies drawn inside."""
        g = it.body
        eqn = it.eqn
        outer = self.cluster(g.title, g.color,
                             record=NodeRecord("", "cluster", level, [it.index], group=g, item=it))
        body_outs = [self.emit_body(body, g, outer, env) for body in g.bodies]
        if g.kind == "call":
            for ov, ref in zip(eqn.outvars, body_outs[0]):
                if not isinstance(ov, DropVar) and ref is not None:
                    env[ov] = ref
        else:  # control flow: one node for the loop's (or cond's) actual results
            lines, status = self.eqn_lines(it, level, self.header(it))
            attrs = status_style(status, self.grads)
            attrs["tooltip"] = self.tooltip(_where(eqn), level, list(eqn.outvars))
            nid = self.node(outer, lines, NodeRecord("", "control", level, [it.index], item=it),
                            **attrs)
            for refs in body_outs:
                for ref in refs:
                    self.edge(ref, nid, None, None)
            if eqn.primitive.name == "cond":
                self.edge(env.get(eqn.invars[0]), nid, level, eqn.invars[0])
            for ov in eqn.outvars:
                if not isinstance(ov, DropVar):
                    env[ov] = nid
        graph.subgraph(outer)

    def emit_body(
        self, body: Body, g: Group, outer: graphviz.Digraph, env: dict[Var, str]
    ) -> list[str | None]:
        """Draw one body of ``g`` into ``outer`` (in a cluster of its own if ``g`` has several);
        return the nodes of its outputs."""
        target = outer if len(g.bodies) == 1 else self.cluster(body.title or "", g.color, True)
        benv: dict[Var, str] = {}
        for bv, src in zip(body.level.jaxpr.invars, body.sources):
            if isinstance(src, Literal):
                benv[bv] = self.literal_node(target, src)
            elif src in env:
                benv[bv] = env[src]
        for cv, c in zip(body.level.jaxpr.constvars, body.consts):
            benv[cv] = self.input_node(target, body.level, cv, "const", role="data", value=c)
        self.emit_items(body.items, body.level, target, benv, uses(body.level.jaxpr))
        refs = [self.ref(target, benv, v) for v in body.level.jaxpr.outvars]
        if target is not outer:
            outer.subgraph(target)
        return refs

    def input_node(
        self, graph: graphviz.Digraph, level: Level, v: Var, name: str, role: str,
        value: Any = None,
    ) -> str:
        """An input (``role`` "param" or "data"), or a body's constant of value ``value``."""
        lines = [f"<B>{_esc(name)}</B>"]
        var_lines, status = self.var_lines(level, v)
        if value is not None and level.values is None and self.values:
            text = value_text(value)
            if text is not None:
                var_lines.insert(1, _font(text))
        lines += var_lines
        if role == "param":
            attrs = {"color": PARAM_COLOR, "penwidth": "2"}
            if self.grads and status == ZERO:
                attrs.update(fillcolor=ZERO_FILL)
            elif self.grads and status in (NONE, CONST):
                attrs.update(fillcolor=NOFLOW_FILL, style="rounded,filled,dashed")
        elif role == "value":
            attrs = {"color": SHAPE_TEXT, "fillcolor": NOFLOW_FILL}
        else:
            attrs = {"color": DATA_COLOR, "fillcolor": DATA_FILL}
        what = _ROLES[role]
        attrs["tooltip"] = self.tooltip(f"{name}: {what}", level, [v])
        if value is not None and level.values is None and self.values:
            attrs["tooltip"] = _tooltip_text([f"{name}: {what}", *summary_lines(value)])
        return self.node(graph, lines, NodeRecord("", "input", level), **attrs)

    def output_node(self, graph: graphviz.Digraph, level: Level, v: Any, name: str,
                    env: dict[Var, str]) -> None:
        """An output of the drawn function: its name, shape and value."""
        lines = [f"<B>{_esc(name)}</B>"]
        if isinstance(v, Literal):
            lines.append(_font(fmt_literal(v)))
            src = None
        else:
            shape = v.aval.str_short(short_dtypes=True)
            value = value_text(level.value(v)) if self.values else None
            lines.append(_font(shape, SHAPE_TEXT) + (" " + _font(value) if value else ""))
            src = env.get(v)
        tip = self.tooltip(f"output {name}", level, [v]) if isinstance(v, Var) else f"output {name}"
        nid = self.node(graph, lines, NodeRecord("", "output", level), color=OUTPUT_COLOR,
                        fillcolor=OUTPUT_FILL, penwidth="1.5", tooltip=tip)
        self.edge(src, nid, None, None)


def _cell(attrs: str, content: str) -> str:
    """A legend cell wide enough for its text as a browser draws it."""
    return f'<TD{attrs} WIDTH="{cell_width(content)}">{content}</TD>'


def _legend(grads: bool, notes: list[str]) -> str:
    """The legend below the graph (an HTML-like table), with ``notes`` under it."""
    cells = [
        _cell(f' COLOR="{PARAM_COLOR}" BGCOLOR="white"', "parameter (differentiated input)"),
        _cell(f' COLOR="{DATA_COLOR}" BGCOLOR="{DATA_FILL}"', "data / constant input"),
        _cell(' BGCOLOR="white"', "operation: value, "
              + (f'<FONT COLOR="{GRAD_COLOR}">gradient</FONT>' if grads else "shape")),
        _cell(f' COLOR="{OUTPUT_COLOR}" BGCOLOR="{OUTPUT_FILL}"', "output"),
    ]
    if grads:
        cells += [
            _cell(f' BGCOLOR="{ZERO_FILL}"',
                  f'<FONT COLOR="{GREY_TEXT}">gradient exactly 0</FONT>'),
            _cell(f' BGCOLOR="{NOFLOW_FILL}" STYLE="dashed" COLOR="{GREY_TEXT}"',
                  f'<FONT COLOR="{GREY_TEXT}">no gradient flows (data, labels, stop_gradient)'
                  "</FONT>"),
        ]
    cells.append(_cell(' BGCOLOR="white" STYLE="dashed"', "box with a shadow: a collapsed cluster"))
    rows = ["<TR>" + "".join(cells) + "</TR>"]
    for note in notes:
        rows.append("<TR>" + _cell(f' COLSPAN="{len(cells)}" BORDER="0" ALIGN="LEFT"', _esc(note))
                    + "</TR>")
    return (
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="3" CELLPADDING="3">'
        + "".join(rows)
        + "</TABLE>>"
    )


def _new_graph(rankdir: str) -> JaxprGraph:
    return JaxprGraph(
        name="funcgrad",
        graph_attr={
            "rankdir": rankdir,
            "fontname": FONT,
            "fontsize": "10",
            "nodesep": "0.12",
            "ranksep": "0.3",
            "newrank": "true",
        },
        node_attr={
            "shape": "box",
            "style": "rounded,filled",
            "fillcolor": "white",
            "fontname": FONT,
            "fontsize": "10",
            "margin": "0.07,0.03",
            "height": "0.3",
        },
        edge_attr={"color": EDGE_COLOR, "arrowsize": "0.6"},
    )


def emit_graph(
    level: Level,
    items: list[Item],
    names: NodeNames,
    options: DrawOptions,
    notes: list[str],
    grad_override: GradOverride | None = None,
) -> JaxprGraph:
    """The DOT graph of ``items`` (the top ``level``'s, collapsed groups marked), its inputs and
    outputs, and the legend with ``notes``; ``node_count`` and ``records`` set.
    ``grad_override`` replaces the text of gradient lines (the animation reserves room)."""
    jaxpr = level.jaxpr
    graph = _new_graph(options.rankdir)
    em = _Emitter(values=options.values, grads=options.grads, grad_override=grad_override)
    env: dict[Var, str] = {}
    # Inputs are not ranked together: dot then puts each next to its first consumer, so a
    # parameter sits by the layer that uses it instead of sending an edge across the graph.
    const_names = list(names.consts or [None] * len(jaxpr.constvars))
    for k, v in enumerate(jaxpr.constvars):
        name = const_names[k] if k < len(const_names) and const_names[k] else f"const[{k}]"
        env[v] = em.input_node(graph, level, v, name, role="data")
    input_names = list(names.inputs or [f"in[{k}]" for k in range(len(jaxpr.invars))])
    for k, v in enumerate(jaxpr.invars):
        name = input_names[k] if k < len(input_names) else f"in[{k}]"
        env[v] = em.input_node(graph, level, v, name, role="param")
    em.emit_items(items, level, graph, env, uses(jaxpr))
    for k, v in enumerate(jaxpr.outvars):
        name = names.outputs[k] if k < len(names.outputs) else f"output[{k}]"
        em.output_node(graph, level, v, name, env)
    for (src, dst), attrs in em.edges.items():
        graph.edge(src, dst, **attrs)
    label_notes = ([options.title] if options.title else []) + notes
    if options.legend:
        graph.attr(label=_legend(options.grads, label_notes), labelloc="b", labeljust="l")
    elif label_notes:
        graph.attr(label="\n".join(label_notes), labelloc="b", labeljust="l")
    _finish(graph, em)
    return graph


def _finish(graph: JaxprGraph, em: _Emitter) -> None:
    if em.n_nodes > _LARGE_GRAPH:
        # dot's network-simplex passes dominate on big graphs with long edges (a gradient
        # program's residuals): two iterations each keep the layout readable and take seconds,
        # not minutes.
        graph.attr(nslimit="2", nslimit1="2")
    graph.node_count = em.n_nodes
    graph.records = em.records


def emit_drill(
    level: Level,
    item: Item,
    counts: dict[Var, int],
    options: DrawOptions,
    input_names: dict[Var, tuple[str, str]],
    output_names: dict[Var, str],
) -> JaxprGraph:
    """One group of ``level`` drawn on its own, expanded: ``item`` (a scope or phase group, or
    an equation with a body) between nodes for the values it reads from outside and those it
    gives out. ``input_names`` maps an outer value to (name, role), ``output_names`` names the
    values that are outputs of the whole drawing; ``counts`` are the level's reads
    (:func:`~.model.uses`). The item's inner groups stay as collapsed as they are marked."""
    group = item.body if isinstance(item, Eqn) else item
    if isinstance(item, Eqn):
        inputs = [v for v in item.eqn.invars if isinstance(v, Var)]
        outputs = [v for v in item.eqn.outvars if not isinstance(v, DropVar)]
    else:
        inputs, outputs = boundary(item, counts)
    graph = _new_graph(options.rankdir)
    em = _Emitter(values=options.values, grads=options.grads)
    env: dict[Var, str] = {}
    for v in dict.fromkeys(inputs):
        name, role = input_names.get(v, ("outer value", "value"))
        env[v] = em.input_node(graph, level, v, name, role=role)
    em.emit_items([item], level, graph, env, counts)
    for k, v in enumerate(outputs):
        em.output_node(graph, level, v, output_names.get(v, f"result #{k}" if len(outputs) > 1
                                                      else "result"), env)
    for (src, dst), attrs in em.edges.items():
        graph.edge(src, dst, **attrs)
    title = f"{group.title if group is not None else ''}: {count_eqns(group)} equations, opened"
    graph.attr(label=title, labelloc="t", labeljust="l", fontsize="11")
    _finish(graph, em)
    return graph

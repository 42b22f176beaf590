"""Emitting DOT: the model of a drawing (:mod:`.model`) as Graphviz nodes, edges and clusters.

Each node's label is HTML-like text: a bold header (the primitive and its params, or a name),
then per output its shape, value and gradient. Inputs are parameters (red) or data (blue);
collapsed groups are one ``box3d`` node; the legend, with any notes, sits below the graph.
"""

from __future__ import annotations

import html
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
    value_text,
)
from funcgrad.viz.graph.model import (
    Body,
    Eqn,
    Group,
    Item,
    Level,
    boundary,
    count_eqns,
    produced,
    uses,
)
from funcgrad.viz.graph.options import DrawOptions, NodeNames
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

__all__ = ["emit_graph"]

_LARGE_GRAPH = 200  # nodes; past this, cap dot's layout iterations


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


def _tooltip(eqn: JaxprEqn) -> str:
    return f"{eqn.primitive.name} at {source_line(eqn)}"


def _box3d(attrs: dict[str, str]) -> dict[str, str]:
    """``attrs`` for a node that stands for a whole cluster: a box with a shadow."""
    attrs["shape"] = "box3d"
    attrs["style"] = attrs.get("style", "filled").replace("rounded,", "")
    return attrs


class _Emitter:
    """Writes nodes into (sub)graphs, numbering them; collects edges to add at the end."""

    def __init__(self, *, values: bool, grads: bool) -> None:
        self.values = values
        self.grads = grads
        self.count = 0
        self.n_nodes = 0
        self.edges: dict[tuple[str, str], dict[str, str]] = {}

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
        status, text = level.grad(v) if self.grads else (UNKNOWN, None)
        if text is not None:
            lines.append(_font(text, GRAD_COLOR if status == FLOWS else GREY_TEXT))
        return lines, status

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
    def node(self, graph: graphviz.Digraph, lines: list[str], **attrs: str) -> str:
        nid = self.new_id()
        self.n_nodes += 1
        graph.node(nid, _label(lines), **attrs)
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

    def cluster(self, title: str, color: str, dashed: bool = False) -> graphviz.Digraph:
        return graphviz.Digraph(
            name=self.new_id("cluster_"),
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
        if it.body is not None:
            attrs = _box3d(attrs)
        attrs["tooltip"] = _tooltip(eqn)
        nid = self.node(graph, lines, **attrs)
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
        attrs["tooltip"] = g.title
        nid = self.node(graph, lines, **attrs)
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
        outer = self.cluster(g.title, g.color)
        body_outs = [self.emit_body(body, g, outer, env) for body in g.bodies]
        if g.kind == "call":
            for ov, ref in zip(eqn.outvars, body_outs[0]):
                if not isinstance(ov, DropVar) and ref is not None:
                    env[ov] = ref
        else:  # control flow: one node for the loop's (or cond's) actual results
            lines, status = self.eqn_lines(it, level, self.header(it))
            attrs = status_style(status, self.grads)
            attrs["tooltip"] = _tooltip(eqn)
            nid = self.node(outer, lines, **attrs)
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
        else:
            attrs = {"color": DATA_COLOR, "fillcolor": DATA_FILL}
        attrs["tooltip"] = f"{name}: {'parameter' if role == 'param' else 'data / constant'}"
        return self.node(graph, lines, **attrs)

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
        nid = self.node(graph, lines, color=OUTPUT_COLOR, fillcolor=OUTPUT_FILL, penwidth="1.5",
                        tooltip=f"output {name}")
        self.edge(src, nid, None, None)


def _legend(grads: bool, notes: list[str]) -> str:
    """The legend below the graph (an HTML-like table), with ``notes`` under it."""
    cells = [
        f'<TD COLOR="{PARAM_COLOR}" BGCOLOR="white">parameter (differentiated input)</TD>',
        f'<TD COLOR="{DATA_COLOR}" BGCOLOR="{DATA_FILL}">data / constant input</TD>',
        '<TD BGCOLOR="white">operation: value, '
        + (f'<FONT COLOR="{GRAD_COLOR}">gradient</FONT>' if grads else "shape")
        + "</TD>",
        f'<TD COLOR="{OUTPUT_COLOR}" BGCOLOR="{OUTPUT_FILL}">output</TD>',
    ]
    if grads:
        cells += [
            f'<TD BGCOLOR="{ZERO_FILL}"><FONT COLOR="{GREY_TEXT}">gradient exactly 0</FONT></TD>',
            f'<TD BGCOLOR="{NOFLOW_FILL}" STYLE="dashed" COLOR="{GREY_TEXT}"><FONT COLOR="'
            f'{GREY_TEXT}">no gradient flows (data, labels, stop_gradient)</FONT></TD>',
        ]
    cells.append('<TD BGCOLOR="white" STYLE="dashed">box with a shadow: a collapsed cluster</TD>')
    rows = ["<TR>" + "".join(cells) + "</TR>"]
    for note in notes:
        rows.append(f'<TR><TD COLSPAN="{len(cells)}" BORDER="0" ALIGN="LEFT">'
                    f"{_esc(note)}</TD></TR>")
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
    level: Level, items: list[Item], names: NodeNames, options: DrawOptions, notes: list[str]
) -> JaxprGraph:
    """The DOT graph of ``items`` (the top ``level``'s, collapsed groups marked), its inputs and
    outputs, and the legend with ``notes``; ``node_count`` set."""
    jaxpr = level.jaxpr
    graph = _new_graph(options.rankdir)
    em = _Emitter(values=options.values, grads=options.grads)
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
    if em.n_nodes > _LARGE_GRAPH:
        # dot's network-simplex passes dominate on big graphs with long edges (a gradient
        # program's residuals): two iterations each keep the layout readable and take seconds,
        # not minutes.
        graph.attr(nslimit="2", nslimit1="2")
    graph.node_count = em.n_nodes
    return graph

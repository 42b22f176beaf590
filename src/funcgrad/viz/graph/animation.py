"""Reverse mode, step by step: the graph of a function, animated along funcgrad's backward walk.

Frame 0 is the forward graph with every value; frame k the state after the walk has transposed k
equations: the equation of step k highlighted (orange), the VJP rule that transposed it and its
one-line formula in the caption with the cotangent it received and the one it sent to each
input, the values that just received a cotangent outlined red, every cotangent that has arrived
written in red on its value (``2 of 3 summed`` while a fan-in is incomplete, ``Σ3`` on the node
once several were summed). The last frame holds every gradient, as ``draw_jaxpr(...,
grads=True)`` draws them.

The graph is laid out once, with room for the widest text each value will show; frames differ
only in texts and colours. A frame is that SVG with each changing attribute set to its value at
that frame (:class:`Prop`); the HTML player applies the same changes in the browser.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from funcgrad.interpret.trace import lookup
from funcgrad.viz.graph import page, svgtools
from funcgrad.viz.graph.captions import CAPTION_SIZES, captions
from funcgrad.viz.graph.digraph import JaxprGraph
from funcgrad.viz.graph.fonts import FONT_FAMILY, font_face_css, text_width
from funcgrad.viz.graph.labels import FLOWS, ZERO
from funcgrad.viz.graph.model import Eqn, Group, Item, Level, NodeRecord, produced
from funcgrad.viz.graph.style import GRAD_COLOR, GREY_TEXT, ZERO_FILL
from funcgrad.viz.graph.walk import GradState, Step, Walk, gradient_tip

__all__ = ["ANIMATION_NOTE", "BackwardAnimation", "Prop", "build_animation"]

CURRENT_STROKE = "#e67e00"  # the equation being transposed
CURRENT_FILL = "#fff1c4"
RECEIVED_FILL = "#fde4e1"  # a value that just received a cotangent
PENDING_COLOR = "#a8a8a8"  # "grad ?"

ANIMATION_NOTE = (
    "Backward walk, one equation per step: orange, the equation being transposed; red "
    "outline, the values that just received a cotangent; red text, the cotangents that have "
    "arrived (a fan-in shows its partial sum, then Σn once its n cotangents are summed)."
)
_TOKEN = "@@FG{}@@"
_TOKEN_RE = re.compile(r"@@FG(\d+)@@")


@dataclass(eq=False)
class Prop:
    """One attribute (or ``#text``) of one SVG element that changes from frame to frame:
    its value from each listed frame on. ``browser=False``: only in the SVG frames."""

    element: ET.Element
    attr: str
    changes: list[tuple[int, str]]
    browser: bool = True

    def at(self, frame: int) -> str:
        value = self.changes[0][1]
        for f, v in self.changes[1:]:
            if f > frame:
                break
            value = v
        return value


def _compress(values: Sequence[str]) -> list[tuple[int, str]]:
    """Per-frame values as change points [(frame, value), ...]."""
    out: list[tuple[int, str]] = []
    for k, v in enumerate(values):
        if not out or out[-1][1] != v:
            out.append((k, v))
    return out


class _FrameSequence(Sequence[str]):
    """The frames of an animation as SVG text, made when asked for."""

    def __init__(self, anim: BackwardAnimation) -> None:
        self._anim = anim

    def __len__(self) -> int:
        return len(self._anim)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self._anim.frame_svg(i) for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"frame {k} of an animation with {len(self)} frames")
        return self._anim.frame_svg(k)

    def __iter__(self) -> Iterator[str]:
        return (self._anim.frame_svg(i) for i in range(len(self)))


@dataclass(eq=False)
class BackwardAnimation:
    """The backward pass of a function, one frame per equation transposed (see the module).

    ``len(anim)`` frames: frame 0 the forward pass, frame k after step k. ``anim.frames[k]`` is
    frame k as SVG text, ``anim.steps[k - 1]`` what happened at step k (the equation's index,
    primitive, rule, formula, cotangents, the node drawn for it), ``anim.frame_of("net_out")``
    the frame at which a tagged value's (or an input's) gradient is complete,
    ``anim.captions[k]`` the lines of frame k's caption, ``anim.grads`` the
    gradients (those of ``fg.grad``), ``anim.trace`` every value and cotangent, ``anim.graph``
    the graph laid out for it. In a notebook it
    shows as a player (``_repr_html_``): play/pause, a slider, step back and forward, the arrow
    keys when it has the focus; hover a node for its values and gradient so far, click a
    collapsed cluster to open it. ``anim.save("walk.html")`` writes it as one self-contained
    page (script, style and font inline; it loads nothing).
    """

    walk: Walk
    graph: JaxprGraph
    ns: str
    template: list[str]
    props: list[Prop]
    current: list[str | None]  # the DOT name of the highlighted node or cluster, per frame
    views: list[page.View] = field(default_factory=list)
    interval: float = 0.8
    view_template: list[str] = field(default_factory=list)  # the SVG without its caption
    caption_props: list[Prop] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)  # each frame's caption lines

    # ---- what happened ------------------------------------------------------------------------
    @property
    def steps(self) -> list[Step]:
        return self.walk.steps

    @property
    def trace(self) -> Any:
        """The :class:`funcgrad.Trace` the animation shows (every value and cotangent)."""
        return self.walk.trace

    @property
    def grads(self) -> Any:
        """The gradients the walk computed, with the structure ``fg.grad`` returns."""
        return self.walk.trace.grads

    def __len__(self) -> int:
        return self.walk.n_frames

    def frame_of(self, name: str) -> int:
        """The frame at which the gradient of an input (by its path, ``"layers[0].W"``) or of
        an ``fg.tag``-ged value (``"net_out"``) is complete: its last cotangent has arrived."""
        owner, v = lookup(self.trace, name)
        if owner is not self.trace:
            reached = {s.index: s.frame for s in self.steps}
            for i, _, record in self.trace.eqn_records():
                if record is owner:
                    return reached.get(i, 0)
            raise KeyError(f"{name!r} is inside a loop body; its values are not kept")
        arrivals = self.walk.arrivals.get(v)
        if not arrivals:
            raise KeyError(f"no gradient reaches {name!r}")
        return arrivals[-1][0]

    def __repr__(self) -> str:
        return (f"<BackwardAnimation: {len(self)} frames, {len(self.steps)} equations "
                f"transposed, {self.graph.node_count} nodes>")

    # ---- SVG ----------------------------------------------------------------------------------
    @property
    def frames(self) -> Sequence[str]:
        """Every frame as SVG text (made on access)."""
        return _FrameSequence(self)

    def frame_svg(self, k: int, *, embed_font: bool = False) -> str:
        """Frame ``k`` as SVG text; ``embed_font=True`` puts the font's glyphs inside it."""
        if not 0 <= k < len(self):
            raise IndexError(f"frame {k} of an animation with {len(self)} frames")
        svg = self._fill(self.template, k)
        if embed_font:
            style = font_face_css("".join(ET.fromstring(svg).itertext()))
            svg = svg.replace(">", f"><defs><style>{style}</style></defs>", 1)
        return svg

    def _fill(self, template: list[str], k: int) -> str:
        return "".join(part if i % 2 == 0 else html.escape(self.props[int(part)].at(k))
                       for i, part in enumerate(template))

    # ---- HTML ---------------------------------------------------------------------------------
    def to_html(self, *, page_keys: bool = False, embed_font: bool = True) -> str:
        """The player as one block of HTML; ``page_keys`` lets the arrow keys step it anywhere
        on the page (for a page of its own), not only when it has the focus."""
        views = list(self.views)
        views[0] = page.View(views[0].id, views[0].title, self._fill(self.view_template, 0), None)
        props = [[p.element.get("id"), p.attr, p.changes] for p in self.props if p.browser]
        # The caption stays above the view, which scrolls: HTML lines, changed as in the SVG.
        lines = []
        for i, p in enumerate(self.caption_props):
            props.append([f"{self.ns}-cap{i}", "#text", p.changes])
            lines.append(f'<div id="{self.ns}-cap{i}" class="fg-cap{i}">'
                         f"{html.escape(p.at(0))}</div>")
        caption = f'<div class="fg-caption">{"".join(lines)}</div>'
        current = [f"{self.ns}v0-{name}" if name else None for name in self.current]
        anim = {"frames": len(self), "props": props, "current": current,
                "interval": int(self.interval * 1000), "page_keys": page_keys}
        last = len(self) - 1
        controls = (
            '<button data-act="first" title="first frame (Home)">|◀</button>'
            '<button data-act="prev" title="step back (←)">◀ back</button>'
            '<button data-act="play" title="play / pause (space)">▶ play</button>'
            '<button data-act="next" title="step forward (→)">next ▶</button>'
            '<button data-act="last" title="last frame (End)">▶|</button>'
            f'<input class="fg-slider" type="range" min="0" max="{last}" value="0" '
            'aria-label="frame">'
            f'<span class="fg-count">step 0 / {last}</span>'
        )
        return page.container_html(self.ns, views, anim=anim, controls=controls,
                                   caption=caption, embed_font=embed_font)

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path: str | os.PathLike[str], *, title: str = "funcgrad: the backward pass"
             ) -> Path:
        """Write the player as one self-contained HTML page (no network); return its path."""
        path = Path(path)
        path.write_text(page.document(self.to_html(page_keys=True), title), encoding="utf-8")
        return path


# ---- building ---------------------------------------------------------------------------------
def _nested_levels(items: list[Item], top: int | None, out: dict[int, int | None]) -> None:
    """Map each level inside a call's or loop's body to the top-level equation holding it."""
    for it in items:
        if isinstance(it, Group):
            _nested_levels(it.items, top, out)
            for body in it.bodies:
                out[id(body.level)] = top
                _nested_levels(body.items, top, out)
        elif it.body is not None:
            owner = it.index if top is None else top
            for body in it.body.bodies:
                out[id(body.level)] = owner
                _nested_levels(body.items, owner, out)


class _Builder:
    """Everything :func:`build_animation` computes, in the order it needs it."""

    def __init__(self, walk: Walk, level: Level, items: list[Item]) -> None:
        self.walk, self.level = walk, level
        owners: dict[int, int | None] = {}
        _nested_levels(items, None, owners)
        frame_of = {s.index: s.frame for s in walk.steps}
        self.reached = {lv: frame_of.get(i, -1) if i is not None else -1
                        for lv, i in owners.items()}
        self._states: dict[tuple[int, Any], list[GradState] | None] = {}

    def states(self, level: Level, v: Any) -> list[GradState] | None:
        key = (id(level), v)
        if key not in self._states:
            if level is self.level:
                found = self.walk.states(level, v, None)
            else:
                reached = self.reached.get(id(level), -1)
                found = self.walk.states(level, v, reached) if reached >= 0 else None
            self._states[key] = found
        return self._states[key]

    def override(self, level: Level, v: Any) -> tuple[str, str | None] | None:
        """The widest text ``v``'s gradient line will show: the room the layout keeps."""
        states = self.states(level, v)
        if states is None:
            return None
        return FLOWS, max((s.text for s in states), key=lambda t: text_width(t, 10))


def _state_at(states: list[GradState], k: int) -> GradState:
    current = states[0]
    for s in states[1:]:
        if s.frame > k:
            break
        current = s
    return current


def build_animation(
    walk: Walk,
    level: Level,
    items: list[Item],
    render: Callable[..., JaxprGraph],
    *,
    interval: float = 0.8,
) -> BackwardAnimation:
    """Lay out the graph of ``walk``'s trace (``render(grad_override)`` draws ``items`` as
    ``draw_jaxpr`` would), then make every frame's changes."""
    b = _Builder(walk, level, items)
    graph = render(b.override)
    records = graph.records
    n = walk.n_frames
    # Which node or cluster stands for each top-level equation, and holds each value.
    eqn_node: dict[int, str] = {}
    for kind in ("cluster", "collapsed", "control", "eqn"):  # later kinds win
        for name, rec in records.items():
            if rec.kind == kind and rec.level is level:
                eqn_node.update((i, name) for i in rec.eqns)
    holder: dict[Any, str] = {}
    for name, rec in records.items():
        if rec.level is not level:
            continue
        if rec.kind == "collapsed" and isinstance(rec.group, Group):
            holder.update((v, name) for v in produced(rec.group))
        elif rec.kind in ("eqn", "control") and isinstance(rec.item, Eqn):
            holder.update((v, name) for v in rec.item.eqn.outvars)
        holder.update((v, name) for v, _ in rec.grad_lines)
    for step in walk.steps:
        step.node = eqn_node.get(step.index, "")
    current: list[str | None] = [None] + [s.node or None for s in walk.steps]
    received: list[set[str]] = [set() for _ in range(n)]
    for v, arrivals in walk.arrivals.items():
        for frame, _ in arrivals:
            if frame and v in holder:
                received[frame].add(holder[v])
    for k in range(1, n):
        received[k].discard(current[k] or "")

    ns = page.new_namespace(graph.source)
    doc = svgtools.parse(graph.pipe(format="svg"), f"{ns}v0")
    svgtools.fit_texts(doc)
    views = page.graph_views(graph, ns, main=doc)
    props: list[Prop] = []
    maker = _Props(doc, props, n)
    for name, rec in records.items():
        node = doc.nodes.get(name)
        if node is not None:
            maker.node(name, node, rec, b, current, received)
    for name, cluster in doc.clusters.items():
        if name in current:
            maker.cluster(cluster, [name == c for c in current])
    maker.edges(current, received, records, b)
    view_template = _TOKEN_RE.split(doc.tostring())
    first_caption = len(props)
    lines = captions(walk, graph)
    maker.caption(lines)
    template = _TOKEN_RE.split(doc.tostring())
    return BackwardAnimation(walk, graph, ns, template, props, current, views, interval,
                             view_template, props[first_caption:], lines)


class _Props:
    """Collects the changing attributes of one SVG document, with an id on each element."""

    def __init__(self, doc: svgtools.SvgDoc, props: list[Prop], n: int) -> None:
        self.doc, self.props, self.n = doc, props, n

    def add(self, element: ET.Element, attr: str, values: Sequence[str],
            browser: bool = True) -> None:
        changes = _compress(values)
        if len(changes) == 1 and attr != "#text":
            element.set(attr, changes[0][1])
            return
        if element.get("id") is None:
            element.set("id", f"{self.doc.ns}-p{len(self.props)}")
        token = _TOKEN.format(len(self.props))
        if attr == "#text":
            element.text = token
        else:
            element.set(attr, token)
        self.props.append(Prop(element, attr, changes, browser))

    def style(self, shape: ET.Element, kinds: Sequence[str], zero: Sequence[bool]) -> None:
        """A node's outline per frame: ``kinds`` "current", "received" or ""; ``zero`` when
        its gradient is complete and exactly zero (filled grey as in ``draw_jaxpr``)."""
        fill, stroke = shape.get("fill", "white"), shape.get("stroke", "black")
        width = shape.get("stroke-width", "1")
        fills, strokes, widths = [], [], []
        for kind, z in zip(kinds, zero):
            if kind == "current":
                fills.append(CURRENT_FILL), strokes.append(CURRENT_STROKE), widths.append("4")
            elif kind == "received":
                fills.append(RECEIVED_FILL), strokes.append(GRAD_COLOR), widths.append("3")
            else:
                fills.append(ZERO_FILL if z else fill)
                strokes.append(GREY_TEXT if z else stroke)
                widths.append(width)
        self.add(shape, "fill", fills)
        self.add(shape, "stroke", strokes)
        self.add(shape, "stroke-width", widths)

    def node(self, name: str, node: ET.Element, rec: NodeRecord, b: _Builder,
             current: list[str | None], received: list[set[str]]) -> None:
        n = self.n
        lines = [(v, text, b.states(rec.level, v)) for v, text in rec.grad_lines
                 if rec.level is not None]
        dynamic = [(v, text, states) for v, text, states in lines if states is not None]
        kinds = ["current" if current[k] == name else "received" if name in received[k]
                 else "" for k in range(n)]
        if not dynamic and not any(kinds):
            return
        per_frame = [[_state_at(states, k) for _, _, states in dynamic] for k in range(n)]
        static_flows = any(rec.level.grad(v)[0] == FLOWS for v, _, s in lines if s is None)
        zero = [bool(dynamic) and not static_flows
                and all(s.kind == "final" and s.status == ZERO for s in row) for row in per_frame]
        base_class = node.get("class", "node")
        self.add(node, "class", [f"{base_class} fg-{kind}" if kind else base_class
                                 for kind in kinds])
        shape = svgtools.shape_of(node)
        if shape is not None:
            self.style(shape, kinds, zero)
        if not dynamic:
            return
        text_elements = list(svgtools.texts(node))
        pos = 0
        for j, (_, template_text, _) in enumerate(dynamic):
            while pos < len(text_elements) and _plain(text_elements[pos].text) != template_text:
                pos += 1
            if pos == len(text_elements):
                break
            element = text_elements[pos]
            pos += 1
            element.set("text-anchor", "middle")
            x0, _, x1, _ = svgtools.bbox(shape) if shape is not None else (0, 0, 0, 0)
            element.set("x", f"{(x0 + x1) / 2:.2f}")
            states = [row[j] for row in per_frame]
            self.add(element, "#text", [s.text for s in states])
            self.add(element, "fill", [_color(s) for s in states])
        self.sum_badge(node, shape, per_frame)
        self.tooltip(node, rec, dynamic, per_frame)

    def sum_badge(self, node: ET.Element, shape: ET.Element | None,
                  per_frame: list[list[GradState]]) -> None:
        """``Σn`` at the node's top right corner once ``n`` >= 2 cotangents have been summed."""
        counts = [max((s.arrived for s in row if s.total > 1), default=0) for row in per_frame]
        if shape is None or max(counts) < 2:
            return
        _, y0, x1, _ = svgtools.bbox(shape)
        label = f"Σ{max(counts)}"
        w = text_width(label, 10, True) + 8
        badge = ET.SubElement(node, svgtools.tag("g"), {"class": "fg-sum"})
        ET.SubElement(badge, svgtools.tag("rect"), {
            "x": f"{x1 - w + 4:.2f}", "y": f"{y0 - 8:.2f}", "width": f"{w:.2f}", "height": "14",
            "rx": "7", "fill": GRAD_COLOR, "stroke": "white"})
        text = ET.SubElement(badge, svgtools.tag("text"), {
            "x": f"{x1 - w / 2 + 4:.2f}", "y": f"{y0 + 2.5:.2f}", "text-anchor": "middle",
            "font-family": FONT_FAMILY, "font-size": "10", "font-weight": "bold",
            "fill": "white"})
        self.add(badge, "visibility", ["visible" if c >= 2 else "hidden" for c in counts])
        self.add(text, "#text", [f"Σ{c}" if c >= 2 else "" for c in counts])

    def tooltip(self, node: ET.Element, rec: NodeRecord, dynamic: list,
                per_frame: list[list[GradState]]) -> None:
        """The node's summary per frame: what it says of the values, then each gradient as far
        as the walk has got."""
        tip = node.get("data-tip")
        if not tip:
            return
        head, in_gradient = [], False
        for line in tip.split("\n"):  # keep the title and the values' summaries
            if line.startswith("gradient"):
                in_gradient = True
            elif not (in_gradient and line.startswith("    ")):
                in_gradient = False
                head.append(line)
        several = len(rec.grad_lines) > 1
        texts = []
        for row in per_frame:
            grad_lines = []
            for k, state in enumerate(row):
                grad_lines += gradient_tip(state, f"output #{k}" if several else "")
            texts.append("\n".join(head + grad_lines))
        self.add(node, "data-tip", texts)
        title = node.find(svgtools.tag("title"))
        if title is not None:
            self.add(title, "#text", texts, browser=False)

    def cluster(self, cluster: ET.Element, is_current: list[bool]) -> None:
        base_class = cluster.get("class", "cluster")
        self.add(cluster, "class", [f"{base_class} fg-current" if c else base_class
                                    for c in is_current])
        shape = svgtools.shape_of(cluster)
        if shape is None:
            return
        stroke, width = shape.get("stroke", "black"), shape.get("stroke-width", "1")
        self.add(shape, "stroke", [CURRENT_STROKE if c else stroke for c in is_current])
        self.add(shape, "stroke-width", ["4" if c else width for c in is_current])

    def edges(self, current: list[str | None], received: list[set[str]],
              records: dict[str, NodeRecord], b: _Builder) -> None:
        """Red, thick: the edges along which the step's cotangents went back."""
        inside: dict[int, set[str]] = {}
        for name, rec in records.items():
            if rec.level is not None and rec.level is not b.level:
                frame = b.reached.get(id(rec.level), -1)
                inside.setdefault(frame, set()).add(name)
        for src, dst, edge in self.doc.edges:
            hot = [k > 0 and src in received[k] and (dst == current[k] or dst in inside.get(k, ()))
                   for k in range(self.n)]
            if not any(hot):
                continue
            for part in edge:
                if part.tag == svgtools.tag("path"):
                    self.add(part, "stroke", [GRAD_COLOR if h else part.get("stroke", "black")
                                              for h in hot])
                    self.add(part, "stroke-width", ["2.5" if h else part.get("stroke-width", "1")
                                                    for h in hot])
                elif part.tag == svgtools.tag("polygon"):
                    self.add(part, "fill", [GRAD_COLOR if h else part.get("fill", "black")
                                            for h in hot])
                    self.add(part, "stroke", [GRAD_COLOR if h else part.get("stroke", "black")
                                              for h in hot])

    def caption(self, lines_per_frame: list[list[str]]) -> None:
        """The caption above the graph: what step it is, the rule and formula, the cotangents."""
        root = self.doc.root
        width, height = self.doc.size()
        n_lines = len(CAPTION_SIZES)
        line_h = 16
        room = line_h * n_lines + 12
        widest = max(
            (text_width(line, size, bold)
             for lines in lines_per_frame for line, (size, bold) in zip(lines, CAPTION_SIZES)),
            default=0.0,
        )
        new_width = max(width, widest + 20)
        root.set("viewBox", f"0 {-room} {new_width:.2f} {height + room:.2f}")
        root.set("width", f"{new_width:.0f}pt")
        root.set("height", f"{height + room:.0f}pt")
        box = ET.Element(svgtools.tag("g"), {"class": "fg-caption"})
        ET.SubElement(box, svgtools.tag("rect"), {
            "x": "0", "y": f"{-room}", "width": f"{new_width:.2f}", "height": f"{room}",
            "fill": "#fbfbf7"})
        colors = ("#222222", "#a13d2d", "#333333", "#333333")
        for i, ((size, bold), color) in enumerate(zip(CAPTION_SIZES, colors)):
            attrs = {"x": "10", "y": f"{-room + 8 + line_h * (i + 1) - 4}",
                     "font-family": FONT_FAMILY, "font-size": str(size), "fill": color}
            if bold:
                attrs["font-weight"] = "bold"
            text = ET.SubElement(box, svgtools.tag("text"), attrs)
            self.add(text, "#text", [lines[i] if i < len(lines) else ""
                                     for lines in lines_per_frame], browser=False)
        root.insert(0, box)


def _plain(text: str | None) -> str:
    """SVG text as it was written in the DOT label (Graphviz turns double spaces into a space
    and a no-break space)."""
    return (text or "").replace("\xa0", " ")


def _color(state: GradState) -> str:
    if state.kind == "pending":
        return PENDING_COLOR
    return GRAD_COLOR if state.status == FLOWS else GREY_TEXT

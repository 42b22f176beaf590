"""Graphviz's SVG made addressable: every node, cluster and edge gets an id, and a tooltip.

Graphviz writes each node as ``<g id="node3" class="node"><title>n5</title>...`` (``n5`` is its
DOT name) and wraps the content of a node with a ``tooltip`` in ``<a xlink:title="...">``.
:func:`parse` rewrites that into ``<g id="{ns}-n5" class="node" data-tip="...">`` with the
tooltip as the node's ``<title>`` (which every browser shows on hover), so that pages and
animations can find, restyle and annotate nodes by name, several graphs can share one page
(``ns`` keeps their ids apart), and the font can travel inside the file (:func:`embed_style`).
:func:`fit_texts` places each line of a node's label where a browser draws it centred (Graphviz
places it by its own, narrower, measure of the text).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field

from funcgrad.viz.graph.fonts import graphviz_width, text_width

__all__ = [
    "SVG_NS",
    "XLINK_NS",
    "SvgDoc",
    "add_class",
    "bbox",
    "embed_style",
    "fit_texts",
    "parse",
    "shape_of",
    "tag",
    "texts",
]

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)

_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>)?\s*(<!DOCTYPE[^>]*>)?\s*", re.S)


def tag(name: str) -> str:
    """An SVG element's qualified tag (``g`` -> ``{http://www.w3.org/2000/svg}g``)."""
    return f"{{{SVG_NS}}}{name}"


@dataclass
class SvgDoc:
    """A parsed Graphviz SVG: its root and its nodes, clusters and edges by DOT name."""

    root: ET.Element
    ns: str
    nodes: dict[str, ET.Element] = field(default_factory=dict)
    clusters: dict[str, ET.Element] = field(default_factory=dict)
    edges: list[tuple[str, str, ET.Element]] = field(default_factory=list)

    def tostring(self) -> str:
        """The SVG as text, without XML prolog (ready to inline in HTML or write to a file)."""
        return ET.tostring(self.root, encoding="unicode")

    def size(self) -> tuple[float, float]:
        """(width, height) of the drawing in points, from its viewBox."""
        box = [float(x) for x in self.root.get("viewBox", "0 0 0 0").split()]
        return box[2], box[3]


def add_class(element: ET.Element, name: str) -> None:
    """Add ``name`` to the element's ``class`` attribute."""
    classes = element.get("class", "").split()
    if name not in classes:
        element.set("class", " ".join([*classes, name]))


def texts(element: ET.Element) -> Iterator[ET.Element]:
    """The ``<text>`` elements under ``element``, in document order."""
    return element.iter(tag("text"))


def _unwrap_links(group: ET.Element) -> str | None:
    """Replace Graphviz's ``<g id="a_..."><a xlink:title=...>`` wrapper inside ``group`` by its
    content (keeping links that go somewhere); return the tooltip it carried."""
    tooltip = None
    for k, child in enumerate(list(group)):
        if child.tag != tag("g") or not child.get("id", "").startswith("a_"):
            continue
        link = child.find(tag("a"))
        if link is None:
            continue
        tooltip = link.attrib.pop(f"{{{XLINK_NS}}}title", None)
        if tooltip:  # Graphviz writes runs of spaces as a space and no-break spaces
            tooltip = tooltip.replace("\xa0", " ")
        if link.get(f"{{{XLINK_NS}}}href") is None:
            group.remove(child)
            for j, grandchild in enumerate(list(link)):
                group.insert(k + j, grandchild)
    return tooltip


def parse(svg: str | bytes, ns: str) -> SvgDoc:
    """Parse Graphviz's SVG output; ids become ``{ns}-{DOT name}`` (edges ``{ns}-e{k}``, with
    ``data-from``/``data-to``), tooltips become each node's ``<title>`` and ``data-tip``."""
    if isinstance(svg, bytes):
        svg = svg.decode("utf-8")
    root = ET.fromstring(_PROLOG.sub("", svg, count=1))
    doc = SvgDoc(root, ns)
    for group in root.iter(tag("g")):
        kind = group.get("class", "").split()[:1]
        if kind not in (["node"], ["cluster"], ["edge"]):
            continue
        title = group.find(tag("title"))
        name = title.text or "" if title is not None else ""
        tooltip = _unwrap_links(group)
        if kind == ["edge"]:
            src, _, dst = name.partition("->")
            group.set("id", f"{ns}-e{len(doc.edges)}")
            group.set("data-from", src)
            group.set("data-to", dst)
            doc.edges.append((src, dst, group))
            if title is not None:
                group.remove(title)
            continue
        group.set("id", f"{ns}-{name}")
        (doc.nodes if kind == ["node"] else doc.clusters)[name] = group
        if title is not None:
            if tooltip:
                title.text = tooltip
                group.set("data-tip", tooltip)
            else:
                group.remove(title)
    graph_title = root.find(f"{tag('g')}/{tag('title')}")
    if graph_title is not None:  # "funcgrad": would show as the tooltip of the whole picture
        root.find(tag("g")).remove(graph_title)
    return doc


def embed_style(doc: SvgDoc, css: str) -> None:
    """Put ``css`` (e.g. the font's ``@font-face``) in a ``<style>`` at the top of the SVG."""
    if not css:
        return
    defs = ET.Element(tag("defs"))
    style = ET.SubElement(defs, tag("style"))
    style.text = css
    doc.root.insert(0, defs)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
_SHAPES = ("path", "polygon", "ellipse", "polyline")


def shape_of(group: ET.Element) -> ET.Element | None:
    """The first outline (path, polygon, ellipse) of a node or cluster."""
    for child in group.iter():
        if child.tag in {tag(s) for s in _SHAPES}:
            return child
    return None


def bbox(shape: ET.Element) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a Graphviz outline (its coordinates are absolute)."""
    if shape.tag == tag("ellipse"):
        cx, cy = float(shape.get("cx", 0)), float(shape.get("cy", 0))
        rx, ry = float(shape.get("rx", 0)), float(shape.get("ry", 0))
        return cx - rx, cy - ry, cx + rx, cy + ry
    numbers = [float(x) for x in _NUMBER.findall(shape.get("points") or shape.get("d") or "")]
    xs, ys = numbers[0::2], numbers[1::2]
    if not xs or not ys:
        return 0.0, 0.0, 0.0, 0.0
    return min(xs), min(ys), max(xs), max(ys)


def _font(text_el: ET.Element) -> tuple[float, bool]:
    return float(text_el.get("font-size", "10")), text_el.get("font-weight") == "bold"


def fit_texts(doc: SvgDoc) -> None:
    """Centre each line of each node's label by the width a browser draws it with, and squeeze
    other texts (cluster titles, the legend) into the width Graphviz made room for."""
    in_nodes = set()
    for node in doc.nodes.values():
        shape = shape_of(node)
        if shape is None:
            continue
        x0, _, x1, _ = bbox(shape)
        centre = (x0 + x1) / 2
        lines: dict[str, list[ET.Element]] = {}
        for t in texts(node):
            in_nodes.add(id(t))
            if t.get("text-anchor") == "start":
                lines.setdefault(t.get("y", ""), []).append(t)
        for runs in lines.values():
            # SVG drops a text's leading and trailing spaces: they only move what follows.
            parts = []
            for t in runs:
                text, (size, bold) = t.text or "", _font(t)
                lead = text_width(text[: len(text) - len(text.lstrip())], size, bold)
                parts.append((lead, text_width(text.strip(), size, bold),
                              text_width(text[len(text.rstrip()):], size, bold)))
            total = sum(a + b + c for a, b, c in parts) - parts[0][0] - parts[-1][2]
            x = centre - total / 2 - parts[0][0]
            for t, (lead, drawn, trail) in zip(runs, parts):
                t.set("x", f"{x + lead:.2f}")
                x += lead + drawn + trail
    for t in texts(doc.root):
        if id(t) in in_nodes or not t.text:
            continue
        size, bold = _font(t)
        drawn, room = text_width(t.text, size, bold), graphviz_width(t.text, size, bold)
        if drawn > room:
            t.set("textLength", f"{room:.2f}")
            t.set("lengthAdjust", "spacingAndGlyphs")

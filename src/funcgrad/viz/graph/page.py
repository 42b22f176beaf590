"""Interactive HTML for a drawn graph: hover for a node's summary, click a cluster to open it.

:func:`graph_html` turns a :class:`~.digraph.JaxprGraph` into one self-contained block of HTML
(style, SVG, data and script inline; the font embedded): the graph, then one precomputed view
per collapsed cluster, drawn expanded, whose own collapsed clusters open further. Nothing is
computed when the page is shown, so a saved page works without Python, a server or a network.
:func:`document` wraps such a block into a whole page.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from funcgrad.viz.graph import svgtools
from funcgrad.viz.graph.assets import CSS, SCRIPT
from funcgrad.viz.graph.fonts import font_face_css

__all__ = ["MAX_VIEWS", "View", "container_html", "document", "graph_html", "graph_views",
           "new_namespace", "view_svg"]

MAX_VIEWS = 40
"""At most this many views (the graph and the clusters it opens into) go into one page."""

_COUNTER = itertools.count()
_DRILLABLE = ("eqn", "collapsed")
_HINT = "Hover a node for its values and gradient; click a box with a shadow to open it."


def new_namespace(seed: str) -> str:
    """A prefix for the ids of one rendering: stable for the same content, unique per call."""
    digest = hashlib.sha1(seed.encode("utf-8", "replace")).hexdigest()[:6]
    return f"fg{digest}{next(_COUNTER)}"


@dataclass
class View:
    """One view of a page: the graph, or one of its clusters opened."""

    id: str
    title: str
    svg: str
    parent: int | None = None


def drillable(record: Any) -> bool:
    """Whether a node stands for a collapsed group that can be opened."""
    return record.kind in _DRILLABLE and record.group is not None


def view_svg(graph: Any, ns: str, open_view: dict[str, int] | None = None,
             doc: svgtools.SvgDoc | None = None) -> svgtools.SvgDoc:
    """The graph's SVG, parsed with ids in ``ns``; nodes named in ``open_view`` (DOT name ->
    view index) get ``data-view`` and the class ``fg-drill``."""
    if doc is None:
        doc = svgtools.parse(graph.pipe(format="svg"), ns)
        svgtools.fit_texts(doc)
    for name, k in (open_view or {}).items():
        node = doc.nodes.get(name)
        if node is not None:
            node.set("data-view", str(k))
            svgtools.add_class(node, "fg-drill")
    return doc


def graph_views(graph: Any, ns: str, *, max_views: int = MAX_VIEWS,
                main: svgtools.SvgDoc | None = None) -> list[View]:
    """The graph and, breadth first, each collapsed cluster it (or an opened one) shows, drawn
    on its own (``graph.drawing.drill``); at most ``max_views`` views in all."""
    drawing = getattr(graph, "drawing", None)
    pending: list[tuple[Any, int | None, str, svgtools.SvgDoc | None]] = [
        (graph, None, "graph", main)
    ]
    views: list[View] = []
    while pending and len(views) < max_views:
        g, parent, title, doc = pending.pop(0)
        k = len(views)
        opens: dict[str, int] = {}
        if drawing is not None:
            for name, record in getattr(g, "records", {}).items():
                if not drillable(record):
                    continue
                if len(views) + len(pending) + 1 >= max_views:
                    break
                sub = drawing.drill(record)
                if sub is None:
                    continue
                opens[name] = len(views) + len(pending) + 1
                pending.append((sub, k, record.group.name, None))
        parsed = view_svg(g, f"{ns}v{k}", opens, doc)
        views.append(View(f"{ns}-view-{k}", title, parsed.tostring(), parent))
    return views


def container_html(
    ns: str,
    views: Sequence[View],
    *,
    anim: dict[str, Any] | None = None,
    controls: str = "",
    caption: str = "",
    embed_font: bool = True,
) -> str:
    """One interactive block: a bar (``controls``, the way back, a hint), the views (only the
    first shown), the tooltip, the data and the script; the font inlined if ``embed_font``."""
    parts = []
    for k, view in enumerate(views):
        head = (f'<div class="fg-view-title">{html.escape(view.title)} (opened)</div>'
                if k else "")
        hidden = " hidden" if k else ""
        parts.append(f'<div class="fg-view" id="{view.id}"{hidden}>{head}{view.svg}</div>')
    data = {"views": [{"id": v.id, "title": v.title, "parent": v.parent} for v in views],
            "anim": anim}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    body = (
        f'<div class="fg-bar">{controls}<button class="fg-back" hidden>back</button>'
        f'<span class="fg-where"></span><span class="fg-hint">{_HINT}</span></div>'
        f"{caption}{''.join(parts)}"
        '<div class="fg-tip" hidden></div>'
    )
    font = font_face_css(body + json.dumps(data, ensure_ascii=False)) if embed_font else ""
    return (
        f'<div class="fg-root" id="{ns}" tabindex="0"><style>{font}\n{CSS}</style>{body}'
        f'<script type="application/json" class="fg-data">{payload}</script>'
        f"<script>{SCRIPT.replace('ROOT', ns)}</script></div>"
    )


def graph_html(graph: Any, *, embed_font: bool = True, max_views: int = MAX_VIEWS) -> str:
    """The interactive block of a drawn graph: hover tooltips and its clusters' views."""
    ns = new_namespace(graph.source)
    return container_html(ns, graph_views(graph, ns, max_views=max_views),
                          embed_font=embed_font)


def document(block: str, title: str) -> str:
    """A whole HTML page around one interactive ``block``."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body { margin: 1em 2em; font-family: 'DejaVu Sans', sans-serif; }</style>"
        f"</head><body>\n{block}\n</body></html>\n"
    )

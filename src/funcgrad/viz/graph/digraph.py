"""What a drawing returns: :class:`JaxprGraph`, a ``graphviz.Digraph`` that says what it decided,
and :class:`GraphvizNotFoundError`, raised when Graphviz's ``dot`` program is missing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import graphviz

from funcgrad.viz.graph import page, svgtools
from funcgrad.viz.graph.fonts import font_face_css

__all__ = ["GraphvizNotFoundError", "JaxprGraph"]

_INSTALL_MESSAGE = (
    "Rendering a funcgrad graph needs Graphviz's layout program `{cmd}`, which was not found on "
    "PATH. The `graphviz` Python package is only the interface to it. Install Graphviz with one "
    "of:\n"
    "    apt-get install graphviz                 (Debian, Ubuntu)\n"
    "    brew install graphviz                    (macOS)\n"
    "    conda install -c conda-forge graphviz    (conda environments)\n"
    "and make sure its bin directory is on PATH. Meanwhile `graph.source` still gives the DOT "
    "text, which any Graphviz viewer can draw."
)


class GraphvizNotFoundError(graphviz.ExecutableNotFound):
    """Graphviz's ``dot`` program is not installed: says how to install it (apt, brew, conda).

    A subclass of ``graphviz.ExecutableNotFound`` (a ``RuntimeError``), so code that already
    catches that keeps working.
    """

    def __init__(self, cmd: Any = "dot") -> None:
        if isinstance(cmd, (list, tuple)) and cmd:
            cmd = cmd[0]
        RuntimeError.__init__(self, _INSTALL_MESSAGE.format(cmd=str(cmd)))


@contextlib.contextmanager
def _friendly_graphviz_errors(engine: str) -> Iterator[None]:
    try:
        yield
    except GraphvizNotFoundError:
        raise
    except graphviz.ExecutableNotFound as err:
        raise GraphvizNotFoundError(engine or "dot") from err


class JaxprGraph(graphviz.Digraph):
    """A ``graphviz.Digraph`` of a jaxpr, plus what the drawing decided.

    Everything a ``Digraph`` does works (``.source``, ``.render(path, format=...)``, ``.pipe()``,
    inline SVG in notebooks); rendering without Graphviz's ``dot`` raises
    :class:`GraphvizNotFoundError`. Extra attributes: ``notes`` (what was collapsed or left out,
    and how to change it), ``collapsed`` (names of the collapsed clusters), ``clusters`` (names of
    every cluster, collapsed or not) and ``node_count``.

    Interactive: in notebooks it shows as HTML (``_repr_html_``): hovering a node shows the full
    summary of its value and gradient, clicking a collapsed cluster (a box with a shadow) opens
    it, drawn expanded, with a way back. ``to_html()`` is that block, ``save_html(path)`` a whole
    page (self-contained: style, script and font inline); ``to_svg()`` is the plain picture with
    each summary as its node's tooltip and the font inside.
    """

    notes: tuple[str, ...] = ()
    collapsed: tuple[str, ...] = ()
    clusters: tuple[str, ...] = ()
    node_count: int = 0
    records: dict[str, Any] = {}  # noqa: RUF012  (replaced per drawing, never mutated)
    drawing: Any = None  # what the graph was drawn from, for drill-down views (see .interactive)

    def pipe(self, *args: Any, **kwargs: Any) -> Any:
        with _friendly_graphviz_errors(self.engine):
            return super().pipe(*args, **kwargs)

    def render(self, *args: Any, **kwargs: Any) -> Any:
        with _friendly_graphviz_errors(self.engine):
            return super().render(*args, **kwargs)

    def view(self, *args: Any, **kwargs: Any) -> Any:
        with _friendly_graphviz_errors(self.engine):
            return super().view(*args, **kwargs)

    def unflatten(self, *args: Any, **kwargs: Any) -> Any:
        with _friendly_graphviz_errors(self.engine):
            return super().unflatten(*args, **kwargs)

    def _repr_svg_(self) -> str:
        """The graph as SVG text, as Graphviz writes it."""
        return self._repr_image_svg_xml()

    def to_svg(self, *, embed_font: bool = True) -> str:
        """The graph as SVG text: each node's summary as its tooltip (``<title>``), ids
        ``fg-<node name>``, and DejaVu Sans embedded (the glyphs used) unless ``embed_font=False``.
        """
        with _friendly_graphviz_errors(self.engine):
            doc = svgtools.parse(self.pipe(format="svg"), "fg")
        svgtools.fit_texts(doc)
        if embed_font:
            svgtools.embed_style(doc, font_face_css("".join(doc.root.itertext())))
        return doc.tostring()

    def to_html(self, *, embed_font: bool = True, max_views: int = page.MAX_VIEWS) -> str:
        """The graph as a block of interactive HTML (see the class docstring): the graph and,
        precomputed, up to ``max_views - 1`` of its clusters opened."""
        with _friendly_graphviz_errors(self.engine):
            return page.graph_html(self, embed_font=embed_font, max_views=max_views)

    def _repr_html_(self) -> str:
        return self.to_html()

    def save_html(self, path: str | os.PathLike[str], *, title: str = "funcgrad graph") -> Path:
        """Write the interactive graph as one self-contained HTML page; return its path."""
        path = Path(path)
        path.write_text(page.document(self.to_html(), title), encoding="utf-8")
        return path

    def copy(self) -> JaxprGraph:
        new = super().copy()
        for name in ("notes", "collapsed", "clusters", "node_count", "records", "drawing"):
            setattr(new, name, getattr(self, name))
        return new

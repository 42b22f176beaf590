"""What a drawing returns: :class:`JaxprGraph`, a ``graphviz.Digraph`` that says what it decided,
and :class:`GraphvizNotFoundError`, raised when Graphviz's ``dot`` program is missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import graphviz

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
    """

    notes: tuple[str, ...] = ()
    collapsed: tuple[str, ...] = ()
    clusters: tuple[str, ...] = ()
    node_count: int = 0

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
        """The graph as SVG text (what notebooks display)."""
        return self._repr_image_svg_xml()

    def copy(self) -> JaxprGraph:
        new = super().copy()
        for name in ("notes", "collapsed", "clusters", "node_count"):
            setattr(new, name, getattr(self, name))
        return new

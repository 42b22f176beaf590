"""Room for labels: how wide a browser draws a line of a node's label, and how wide a box must be.

Graphviz measures text with Pango's hinted metrics (:func:`~.fonts.graphviz_width`), a browser
draws it with the font's true advances (:func:`~.fonts.text_width`), up to 5% wider for
numbers. Graphviz centres each line by its own width, so a line the browser draws wider spills
over the right edge of its box by the difference. :func:`node_width` is the width a node needs
so that no line does; the emitter sets it as the node's minimum ``width``.
"""

from __future__ import annotations

import html
import re

from funcgrad.viz.graph.fonts import graphviz_width, text_width

__all__ = ["cell_width", "line_widths", "node_width", "spans"]

_TAG = re.compile(r"<(/?)(B|FONT)([^>]*)>", re.I)
_POINT_SIZE = re.compile(r'POINT-SIZE="([\d.]+)"', re.I)


def spans(line: str, size: float = 10) -> list[tuple[str, bool, float]]:
    """The runs of text of one line of an HTML-like label: (text, bold, point size)."""
    out: list[tuple[str, bool, float]] = []
    bold, sizes = 0, [size]
    pos = 0
    for m in _TAG.finditer(line):
        if m.start() > pos:
            out.append((html.unescape(line[pos:m.start()]), bold > 0, sizes[-1]))
        closing, name = m.group(1) == "/", m.group(2).upper()
        if name == "B":
            bold += -1 if closing else 1
        elif closing:
            if len(sizes) > 1:
                sizes.pop()
        else:
            found = _POINT_SIZE.search(m.group(3))
            sizes.append(float(found.group(1)) if found else sizes[-1])
        pos = m.end()
    if pos < len(line):
        out.append((html.unescape(line[pos:]), bold > 0, sizes[-1]))
    return [s for s in out if s[0]]


def line_widths(line: str, size: float = 10) -> tuple[float, float]:
    """(drawn width, Graphviz's width) of one line of an HTML-like label, in points."""
    runs = spans(line, size)
    drawn = sum(text_width(t, s, b) for t, b, s in runs)
    laid_out = sum(graphviz_width(t, s, b) for t, b, s in runs)
    return drawn, laid_out


def node_width(lines: list[str], margin: float, size: float = 10) -> float | None:
    """The width (points) a node labelled ``lines`` needs, with ``margin`` each side, when that
    is more than Graphviz would give it; else None."""
    need = given = 0.0
    for line in lines:
        drawn, laid_out = line_widths(line, size)
        # Centred by Graphviz's width, the line ends (drawn - laid_out) / 2 right of where a
        # centred line of its drawn width would: the box needs twice that on top.
        need = max(need, 2 * drawn - laid_out)
        given = max(given, laid_out)
    if need <= given:
        return None
    return need + 2 * margin + 1.0


def cell_width(text: str, size: float = 10, padding: float = 3) -> int:
    """A table cell's minimum WIDTH for plain ``text`` (whole points, padding included)."""
    drawn, laid_out = line_widths(text, size)
    return int(max(2 * drawn - laid_out, laid_out) + 2 * padding + 2)

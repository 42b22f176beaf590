"""The one font of every drawing, DejaVu Sans: where it is, how wide a text is, how to embed it.

Graphviz sizes each node's box with the metrics of the font it is told to use, and a browser
draws the SVG with whatever font it finds under that name: when the two differ, labels overflow
their boxes. So graphs name ``DejaVu Sans``, which comes with Graphviz's fonts (Debian's
``fonts-dejavu-core``) and with matplotlib, and pages that show them carry the font itself: a
subset of the glyphs they use, base64 in an ``@font-face`` (a few kB), so a browser without
DejaVu draws with the same metrics too.

DejaVu's license (Bitstream Vera's, with DejaVu's changes in the public domain) allows copying,
embedding and subsetting the fonts as long as its notices travel with them: the subset keeps the
font's name table, which holds the copyright and the license text.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["FONT_FAMILY", "font_face_css", "font_path", "graphviz_width", "text_width"]

FONT_FAMILY = "DejaVu Sans"

_FILES = {False: "DejaVuSans.ttf", True: "DejaVuSans-Bold.ttf"}
_SYSTEM_DIRS = (
    "/usr/share/fonts/truetype/dejavu",  # Debian, Ubuntu: fonts-dejavu-core
    "/usr/share/fonts/dejavu",  # Fedora, Arch
    "/usr/share/fonts/TTF",
    "/usr/local/share/fonts",
    "/Library/Fonts",
    os.path.expanduser("~/Library/Fonts"),
)

_LICENSE_NOTE = (
    "DejaVu Sans, subset to the characters of this page. Copyright (c) 2003 Bitstream, Inc. "
    "(Bitstream Vera); DejaVu changes are in the public domain. License: "
    "https://dejavu-fonts.github.io/License.html (also in the font's name table)."
)


def _matplotlib_font_dir() -> str | None:
    """matplotlib's bundled fonts (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(next(iter(spec.submodule_search_locations)), "mpl-data", "fonts", "ttf")


@functools.cache
def font_path(bold: bool = False) -> Path | None:
    """The TrueType file of DejaVu Sans (or its bold), system copy first, then matplotlib's."""
    dirs = [*_SYSTEM_DIRS, _matplotlib_font_dir()]
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, _FILES[bold])):
            return Path(d) / _FILES[bold]
    return None


@functools.cache
def _metrics(bold: bool) -> tuple[dict[int, int], int, int] | None:
    """(advance width per code point, units per em, advance of '?') of the font, or None."""
    path = font_path(bold)
    if path is None:
        return None
    from fontTools.ttLib import TTFont

    font = TTFont(str(path), lazy=True)
    hmtx = font["hmtx"]
    widths = {cp: hmtx[name][0] for cp, name in font.getBestCmap().items()}
    return widths, font["head"].unitsPerEm, widths.get(ord("?"), 0)


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The advance width of ``text`` in DejaVu Sans at ``size`` points (no kerning; within a
    point of what Graphviz and browsers measure for the short lines of a graph)."""
    metrics = _metrics(bold)
    if metrics is None:  # no font file: a generous estimate for a sans-serif font
        return 0.62 * size * len(text)
    widths, per_em, fallback = metrics
    return sum(widths.get(ord(c), fallback) for c in text) * size / per_em


def graphviz_width(text: str, size: float, bold: bool = False) -> float:
    """The width Graphviz gives ``text`` when it lays out a node: Pango's metrics hinted to whole
    pixels at 96 dpi, i.e. each advance rounded to a multiple of 0.75 pt. Digits come out 5%
    narrower than a browser draws them, which is why boxes need the room :mod:`.measure` adds."""
    metrics = _metrics(bold)
    if metrics is None:
        return text_width(text, size, bold)
    widths, per_em, fallback = metrics
    scale = size * 4 / 3 / per_em
    return sum(round(widths.get(ord(c), fallback) * scale) for c in text) * 0.75


@functools.cache
def _subset_woff(bold: bool, chars: str) -> bytes | None:
    path = font_path(bold)
    if path is None:
        return None
    from fontTools import subset
    from fontTools.ttLib import TTFont

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # "FFTM not subset" and the like
    options = subset.Options()
    options.flavor = "woff"
    options.name_IDs = ["*"]  # keep the copyright and license records
    options.layout_features = ["*"]
    options.hinting = False
    font = TTFont(str(path), lazy=True)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=chars)
    subsetter.subset(font)
    buffer = io.BytesIO()
    font.flavor = "woff"
    font.save(buffer)
    return buffer.getvalue()


def font_face_css(text: str, *, bold: bool = True) -> str:
    """``@font-face`` rules for DejaVu Sans (and its bold) holding the glyphs of ``text``.

    Empty when the font files are not found (then browsers fall back to their sans-serif).
    """
    chars = "".join(sorted(set(text) | set(" ?…")))
    rules = []
    for weight_bold in (False, True) if bold else (False,):
        data: Any = _subset_woff(weight_bold, chars)
        if data is None:
            continue
        encoded = base64.b64encode(data).decode("ascii")
        weight = "bold" if weight_bold else "normal"
        rules.append(
            f'@font-face{{font-family:"{FONT_FAMILY}";font-style:normal;font-weight:{weight};'
            f'src:url(data:font/woff;base64,{encoded}) format("woff");}}'
        )
    if not rules:
        return ""
    return f"/* {_LICENSE_NOTE} */\n" + "\n".join(rules)

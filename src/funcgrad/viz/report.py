"""An HTML report: one self-contained ``index.html`` and its pictures in ``images/``.

::

    page = fg.viz.report.Report("funcgrad tour")
    page.summary([{"section": "XOR", "metric": "accuracy", "value": "100%"}])
    s = page.section("XOR", "A 2-2-1 sigmoid network learns XOR.")
    s.figure(fg.viz.plots.loss_curves(history), "xor-loss", caption="loss per epoch")
    s.graph(fg.viz.draw_jaxpr(loss, params, x, y), "xor-graph")      # rendered to SVG
    s.interactive(fg.viz.animate_backward(loss, params, x, y))       # a player, inline
    s.image("moons.gif", caption="the boundary over training")       # a file made elsewhere
    s.grad_report(fg.compare_grads(loss, params, x, y))
    page.write("funcgrad-tour")                                      # -> .../index.html

Pictures are rendered when added (a figure to PNG, a graph to SVG) and kept in memory, so the
figures can be closed at once. :meth:`Report.write` writes everything into a temporary directory
beside the target and then renames it into place: a run that fails half way leaves the previous
report (or nothing), never half a page. All text is HTML-escaped; links are relative, so the
folder can be moved, zipped or served as it is. The page needs no network: no external styles,
fonts or scripts. A small inline script records, once the page has loaded, how many of its
images decoded, as ``<body data-images-ok="12/12">`` (and the broken ones in
``data-images-broken``), which a headless browser can read back. Interactive blocks
(:meth:`Section.interactive`) are inline HTML with their own script, style and font.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "Report",
    "Section",
    "check_output_dir",
    "grad_report_html",
    "table_html",
]

MARKER = ".funcgrad-report"
"""A file in every directory written by :meth:`Report.write`: only such a directory (or an empty
one) is ever replaced."""

_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 1em 2em 4em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav ul { columns: 2; }
.subtitle { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure.graph img { max-height: 900px; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
figure.interactive { border: 1px solid #eee; padding: 0.4em; }
pre { background: #f6f8fa; padding: 0.7em 1em; overflow-x: auto; font-size: 0.85em; }
.note { border-left: 4px solid #999; background: #f6f6f6; padding: 0.5em 1em; margin: 1em 0; }
.note.warning { border-color: #d9a400; background: #fff8e1; }
.note.error { border-color: #c62828; background: #fdecea; }
.gradreport table { font-size: 0.85em; }
.gradreport td.ok { color: #070; } .gradreport td.bad { color: #b00; font-weight: bold; }
.gradreport td.muted { color: #777; }
details { margin: 0.3em 0 1.5em; } details > div { overflow-x: auto; }
summary { cursor: pointer; color: #555; }
.gradreport .fail td { background: #fde8e8; }
.ok { color: #070; } .bad { color: #b00; font-weight: bold; }
footer { margin-top: 3em; color: #777; font-size: 0.85em; }
"""

# Runs once everything (images included) has loaded or failed; a headless browser reads the
# result from <body>.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0, broken = [];
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
    else { broken.push(images[i].getAttribute("src")); }
  }
  document.body.setAttribute("data-images-ok", ok + "/" + images.length);
  document.body.setAttribute("data-images-broken", broken.join(" "));
});
"""

_MIME_SUFFIXES = {".png", ".svg", ".gif", ".jpg", ".jpeg", ".webp"}


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "item"


def _paragraphs(text: str) -> str:
    """Plain text to HTML: blank lines separate paragraphs, `code` spans become <code>."""
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        escaped = _esc(" ".join(para.split()))
        out.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped) + "</p>")
    return "\n".join(out)


def _cell(value: Any) -> str:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f'<td class="num">{_esc(value)}</td>' if number else f"<td>{_esc(value)}</td>"


def table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of ``rows`` (dicts) with ``columns`` (default: the first row's keys)."""
    if not rows:
        return "<p><i>(empty table)</i></p>"
    columns = list(columns) if columns is not None else list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pair_cell(row: Mapping[str, Any]) -> str:
    maxrel = row.get("maxrel")
    rel = f"{maxrel:.1e}" if isinstance(maxrel, int | float) and maxrel not in (0, None) else ""
    if not row["ok"]:
        return f'<td class="bad">{_esc(f"FAIL {rel}".strip())}</td>'
    if row.get("exact"):
        return '<td class="ok">exact</td>'
    if row.get("close") is None:  # e.g. finite differences that only crossed kinks
        return '<td class="muted">inconclusive</td>'
    return f'<td class="ok">{_esc(f"close {rel}".strip())}</td>'


def grad_report_html(data: Mapping[str, Any], full_html: str | None = None) -> str:
    """HTML for a GradReport's ``to_dict()``: a leaf × pair table, the verdict, the notes, and
    ``full_html`` (every statistic) in a folded ``<details>``."""
    pairs = list(data["pairs"])
    by_leaf: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in data["rows"]:
        by_leaf.setdefault(row["leaf"], {})[row["pair"]] = row
    head = "".join(f"<th>{_esc(h)}</th>" for h in ("leaf", "shape", "dtype", *pairs))
    body = []
    for leaf, rows in by_leaf.items():
        first = next(iter(rows.values()))
        shape = str(tuple(first["shape"]))
        cells = [f"<td><code>{_esc(leaf)}</code></td>", f"<td>{_esc(shape)}</td>",
                 f"<td>{_esc(first['dtype'])}</td>"]
        cells += [_pair_cell(rows[p]) if p in rows else "<td></td>" for p in pairs]
        row_class = ' class="fail"' if any(not r["ok"] for r in rows.values()) else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    verdict_class = "ok" if data["ok"] else "bad"
    notes = "".join(f"<li>{_esc(n)}</li>" for n in data.get("notes", ()))
    details = (
        f"<details><summary>every statistic (exact, close, maxabs, maxrel, ulps)</summary>"
        f"{full_html}</details>"
        if full_html
        else ""
    )
    return (
        f'<div class="gradreport"><p><b>{_esc(data["title"])}</b></p>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<p class="{verdict_class}">{_esc(data["verdict"])}</p><ul>{notes}</ul>{details}</div>'
    )


class Section:
    """One part of a :class:`Report`: a heading, then blocks (text, pictures, tables) in order.

    Made by :meth:`Report.section`; every method appends a block and returns the section.
    """

    def __init__(self, report: Report, title: str, anchor: str) -> None:
        self.title = title
        self.anchor = anchor
        self._report = report
        self._blocks: list[str] = []

    # ---- text -----------------------------------------------------------------------------------
    def text(self, text: str) -> Section:
        """Paragraphs of plain text (escaped; blank lines separate paragraphs, `x` is code)."""
        self._blocks.append(_paragraphs(text))
        return self

    def code(self, text: str) -> Section:
        """Preformatted text, e.g. printed output or a table from ``str(report)``."""
        self._blocks.append(f"<pre>{_esc(text)}</pre>")
        return self

    def note(self, text: str, kind: str = "info") -> Section:
        """A highlighted box; ``kind`` is ``"info"``, ``"warning"`` (a skipped part) or
        ``"error"``."""
        if kind not in ("info", "warning", "error"):
            raise ValueError(f"note kind must be 'info', 'warning' or 'error', got {kind!r}")
        self._blocks.append(f'<div class="note {kind}">{_paragraphs(text)}</div>')
        return self

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        *,
        caption: str | None = None,
    ) -> Section:
        """A table of ``rows`` (dicts); ``columns`` picks and orders the keys."""
        block = table_html(rows, columns)
        if caption:
            block = f"<p><b>{_esc(caption)}</b></p>" + block
        self._blocks.append(block)
        return self

    def grad_report(self, report: Any) -> Section:
        """A :class:`funcgrad.GradReport`: a compact table (one row per leaf, one column per pair
        of engines: ``exact``, ``close`` with the largest relative difference, or ``FAIL``), the
        verdict and notes, and the full statistics (the report's own HTML) folded below."""
        if not hasattr(report, "_repr_html_") or not hasattr(report, "to_dict"):
            raise TypeError(
                f"grad_report expects a funcgrad GradReport (from fg.compare_grads), got "
                f"{type(report).__name__}"
            )
        self._blocks.append(grad_report_html(report.to_dict(), report._repr_html_()))
        return self

    # ---- pictures -------------------------------------------------------------------------------
    def figure(
        self,
        fig: Any,
        name: str,
        *,
        caption: str | None = None,
        format: str = "png",
        dpi: int = 100,
    ) -> Section:
        """A matplotlib figure, rendered now to ``images/<name>.png`` (or ``format="svg"``)."""
        if format not in ("png", "svg"):
            raise ValueError(f"figure format must be 'png' or 'svg', got {format!r}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format=format, dpi=dpi)
        return self._picture(buffer.getvalue(), name, format, caption, "figure")

    def graph(self, graph: Any, name: str, *, caption: str | None = None) -> Section:
        """A graphviz graph (e.g. :func:`funcgrad.viz.draw_jaxpr`), rendered now to SVG (for a
        funcgrad graph, with its tooltips and its font inside: ``graph.to_svg()``).

        Raises :class:`funcgrad.viz.GraphvizNotFoundError` (or graphviz's ``ExecutableNotFound``)
        when Graphviz's ``dot`` is not installed.
        """
        to_svg = getattr(graph, "to_svg", None)
        svg = to_svg().encode("utf-8") if to_svg is not None else graph.pipe(format="svg")
        return self._picture(svg, name, "svg", caption, "figure graph")

    def interactive(self, obj: Any, *, caption: str | None = None) -> Section:
        """Something with ``to_html()`` (a backward animation's player, an interactive graph),
        inline in the page: its script, style and font travel with it, no file is written."""
        if not hasattr(obj, "to_html"):
            raise TypeError(f"interactive() needs an object with to_html(), got {type(obj)}")
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self._blocks.append(f'<figure class="interactive">{obj.to_html()}{cap}</figure>')
        return self

    def image(
        self,
        source: str | os.PathLike[str] | bytes,
        name: str | None = None,
        *,
        caption: str | None = None,
        suffix: str | None = None,
    ) -> Section:
        """A picture made elsewhere: a file path (copied) or bytes (with ``suffix``, e.g.
        ``".gif"``). Read now, so a temporary file may be deleted afterwards."""
        if isinstance(source, bytes):
            if suffix is None:
                raise ValueError("image(bytes) needs suffix='.png', '.gif', '.svg', ...")
            data = source
        else:
            path = Path(source)
            data = path.read_bytes()
            suffix = suffix or path.suffix
            name = name or path.stem
        suffix = suffix.lower() if suffix.startswith(".") else "." + suffix.lower()
        if suffix not in _MIME_SUFFIXES:
            raise ValueError(f"image: unsupported suffix {suffix!r}; use one of "
                             f"{sorted(_MIME_SUFFIXES)}")
        return self._picture(data, name or "image", suffix[1:], caption, "figure")

    def _picture(self, data: bytes, name: str, ext: str, caption: str | None, cls: str):
        if not data:
            raise ValueError(f"picture {name!r} is empty")
        filename = self._report._add_file(_slug(name), ext, data)
        alt = caption or name
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self._blocks.append(
            f'<figure class="{cls}"><a href="images/{_esc(filename)}">'
            f'<img src="images/{_esc(filename)}" alt="{_esc(alt)}"></a>{cap}</figure>'
        )
        return self

    def html(self) -> str:
        body = "\n".join(self._blocks)
        head = f'<section id="{_esc(self.anchor)}">\n<h2>{_esc(self.title)}</h2>'
        return f"{head}\n{body}\n</section>"


def check_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Return ``out_dir`` as an absolute path if :meth:`Report.write` may replace it (it does not
    exist, is empty, or holds an earlier report); raise ``FileExistsError`` otherwise. Call it
    before long work that ends in a write."""
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory; choose another one")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise FileExistsError(
                f"{out} exists, is not empty and was not written by funcgrad; refusing to "
                "replace it. Choose another output directory or remove it."
            )
    return out


class Report:
    """A page of sections, written by :meth:`write` as ``index.html`` plus ``images/``."""

    def __init__(self, title: str, *, subtitle: str | None = None) -> None:
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []
        self.files: dict[str, bytes] = {}  # file name in images/ -> content
        self._summary: tuple[list[dict[str, Any]], list[str] | None] | None = None
        self._footer: list[str] = []
        self._notes: list[str] = []

    def note(self, text: str, kind: str = "info") -> None:
        """A highlighted box at the top of the page (``kind``: info, warning, error)."""
        if kind not in ("info", "warning", "error"):
            raise ValueError(f"note kind must be 'info', 'warning' or 'error', got {kind!r}")
        self._notes.append(f'<div class="note {kind}">{_paragraphs(text)}</div>')

    def section(self, title: str, text: str | None = None) -> Section:
        """Append a section (with optional intro ``text``) and return it."""
        anchor = _slug(title)
        taken = {s.anchor for s in self.sections}
        base, k = anchor, 2
        while anchor in taken:
            anchor, k = f"{base}-{k}", k + 1
        section = Section(self, title, anchor)
        if text:
            section.text(text)
        self.sections.append(section)
        return section

    def summary(
        self, rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None
    ) -> None:
        """The table shown at the top of the page, before the sections."""
        self._summary = ([dict(r) for r in rows], list(columns) if columns else None)

    def footer(self, text: str) -> None:
        """A line at the bottom of the page (e.g. versions, timings)."""
        self._footer.append(text)

    def _add_file(self, stem: str, ext: str, data: bytes) -> str:
        name, k = f"{stem}.{ext}", 2
        while name in self.files:
            name, k = f"{stem}-{k}.{ext}", k + 1
        self.files[name] = data
        return name

    def html(self) -> str:
        """The whole page as one string."""
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(self.title)}</title>",
            f"<style>{_CSS}</style>",
            f"<script>{_SCRIPT}</script>",
            "</head><body>",
            f"<h1>{_esc(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f'<p class="subtitle">{_esc(self.subtitle)}</p>')
        parts += self._notes
        if self._summary is not None:
            parts.append('<h2 id="summary">Summary</h2>')
            parts.append(table_html(*self._summary))
        if self.sections:
            items = "".join(
                f'<li><a href="#{_esc(s.anchor)}">{_esc(s.title)}</a></li>' for s in self.sections
            )
            parts.append(f"<nav><ul>{items}</ul></nav>")
        parts += [s.html() for s in self.sections]
        if self._footer:
            parts.append("<footer>" + "<br>".join(_esc(t) for t in self._footer) + "</footer>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, out_dir: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None):
        """Write ``out_dir/index.html`` and ``out_dir/images/*``; return the path of index.html.

        ``extra`` is written as ``out_dir/summary.json`` (with the summary rows) for programs.
        ``out_dir`` is replaced as a whole, atomically as far as the file system allows (the
        new folder is complete before it is renamed into place). To protect other files it is
        only replaced if it is empty or was written by this method (it holds :data:`MARKER`);
        otherwise ``FileExistsError`` says so.
        """
        out = check_output_dir(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            (tmp / "images").mkdir()
            for name, data in self.files.items():
                (tmp / "images" / name).write_bytes(data)
            (tmp / "index.html").write_text(self.html(), encoding="utf-8")
            if extra is not None or self._summary is not None:
                rows = self._summary[0] if self._summary else []
                payload = {"title": self.title, "summary": rows}
                payload.update(extra or {})
                (tmp / "summary.json").write_text(
                    json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8"
                )
            (tmp / MARKER).write_text(f"written by funcgrad.viz.report at {time.ctime()}\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report is for reading
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
                os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                if old is not None:  # put the previous report back
                    os.replace(old, out)
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return out / "index.html"

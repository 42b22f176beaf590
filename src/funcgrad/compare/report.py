"""The outcome of :func:`funcgrad.compare_grads` as a table: text, notebook HTML, JSON.

``str(report)`` is an aligned table, one line per (leaf, pair) grouped under the leaf;
``report.to_string("wide")`` one line per leaf with a column per pair; in a notebook the HTML
table has one row per leaf with a column group per pair, failing rows in red. ``report.rows`` is
the same as plain data (one dict per row, see :mod:`funcgrad.compare.rows`), ``report.ok`` (and
``bool(report)``) the verdict.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["GradReport"]


def _fmt_number(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if x == 0:
        return "0"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.1e}"


def _fmt_bool(x: bool | None, failure: str = "NO") -> str:
    return "-" if x is None else ("yes" if x else failure)


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _fmt_ulps(row: dict[str, Any]) -> str:
    if row["nan_tested"] or row["nan_reference"]:
        return "nan"
    return "-" if row["ulps"] is None else str(row["ulps"])


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, complex):
        return {"real": _json_safe(x.real), "imag": _json_safe(x.imag)}
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


_COLUMNS = ("leaf", "shape", "dtype", "pair", "exact", "close", "maxabs", "maxrel", "ulps", "note")


class GradReport:
    """The outcome of :func:`compare_grads`: one row per (leaf, pair of engines).

    ``.ok`` is the verdict (every row within tolerance; ``bool(report)`` is the same, so
    ``assert report`` works), ``.rows`` the plain data (a list of dicts), ``.failures()`` the
    failing rows. ``str(report)`` is an aligned text table grouped by leaf, ``to_string("wide")``
    one line per leaf with a column per pair, ``_repr_html_`` the same in a notebook with
    failing rows highlighted, ``to_dict()``/``to_json()`` for reports.
    """

    def __init__(
        self,
        rows: list[dict[str, Any]],
        *,
        engines: Sequence[str],
        pairs: Sequence[str],
        notes: Sequence[str] = (),
        title: str = "gradient comparison",
    ) -> None:
        self.rows = rows
        self.engines = list(engines)
        self.pairs = list(pairs)
        self.notes = list(notes)
        self.title = title

    @property
    def ok(self) -> bool:
        """True if every comparison is within tolerance (and there was at least one)."""
        return bool(self.rows) and all(r["ok"] for r in self.rows)

    def __bool__(self) -> bool:
        return self.ok

    def failures(self) -> list[dict[str, Any]]:
        """The rows that are not within tolerance."""
        return [r for r in self.rows if not r["ok"]]

    def leaves(self) -> list[str]:
        """The compared leaf names, in table order."""
        return list(dict.fromkeys(r["leaf"] for r in self.rows))

    def row(self, leaf: str, pair: str) -> dict[str, Any]:
        """The row for ``leaf`` (e.g. ``"layers[0].W"``, ``"tag:logits"``) and ``pair``
        (``"fg~jax"``); ``KeyError`` listing what exists otherwise."""
        for r in self.rows:
            if r["leaf"] == leaf and r["pair"] == pair:
                return r
        raise KeyError(f"no row ({leaf!r}, {pair!r}); leaves {self.leaves()}, pairs {self.pairs}")

    def verdict(self) -> str:
        """One line: ``OK: 18 comparisons within tolerance`` or what failed."""
        if not self.rows:
            return "FAILED: nothing was compared"
        bad = self.failures()
        if not bad:
            return f"OK: all {len(self.rows)} comparisons within tolerance"
        which = ", ".join(f"{r['leaf']} ({r['pair']})" for r in bad)
        return f"FAILED: {len(bad)} of {len(self.rows)} comparisons out of tolerance: {which}"

    # ---- text ---------------------------------------------------------------------------------
    def _cells(self, row: dict[str, Any], first: bool) -> list[str]:
        dtype = row["dtype"] if row["dtype_tested"] in (None, row["dtype"]) else (
            f"{row['dtype_tested']}!={row['dtype']}"
        )
        return [
            row["leaf"] if first else "",
            _fmt_shape(row["shape"]) if first else "",
            dtype if first or dtype != row["dtype"] else "",
            row["pair"],
            _fmt_bool(row["exact"], "no"),  # not exact is no failure; not close is
            _fmt_bool(row["close"]),
            _fmt_number(row["maxabs"]),
            _fmt_number(row["maxrel"]),
            _fmt_ulps(row),
            row["note"],
        ]

    @staticmethod
    def _align(table: list[list[str]]) -> list[str]:
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]

    def to_string(self, layout: str = "long") -> str:
        """The report as text: ``"long"`` (a line per leaf and pair, the default of ``str``) or
        ``"wide"`` (a line per leaf, a column per pair: ``exact``, ``close`` or ``FAIL`` with
        the largest relative difference)."""
        if layout not in ("long", "wide"):
            raise ValueError(f"layout must be 'long' or 'wide', got {layout!r}")
        lines = [self.title]
        if layout == "long":
            table = [list(_COLUMNS)]
            previous = None
            for r in self.rows:
                table.append(self._cells(r, r["leaf"] != previous))
                previous = r["leaf"]
        else:
            table = [["leaf", "shape", "dtype", *self.pairs]]
            for leaf in self.leaves():
                mine = {r["pair"]: r for r in self.rows if r["leaf"] == leaf}
                first = next(iter(mine.values()))
                table.append(
                    [leaf, _fmt_shape(first["shape"]), first["dtype"]]
                    + [_wide_cell(mine[p]) if p in mine else "" for p in self.pairs]
                )
        lines += self._align(table)
        lines.append(self.verdict())
        lines += self.notes
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_string("long")

    def __repr__(self) -> str:
        return self.to_string("long")

    # ---- notebook ----------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        esc = html.escape
        stats = ("exact", "close", "maxabs", "maxrel", "ulps", "note")
        bad_style = ' style="background:#f8d0d0"'
        head1 = "".join(f'<th rowspan="2">{h}</th>' for h in ("leaf", "shape", "dtype"))
        head1 += "".join(f'<th colspan="{len(stats)}">{esc(p)}</th>' for p in self.pairs)
        head2 = "".join(f"<th>{s}</th>" for _ in self.pairs for s in stats)
        body = []
        for leaf in self.leaves():
            mine = {r["pair"]: r for r in self.rows if r["leaf"] == leaf}
            first = next(iter(mine.values()))
            failing = any(not r["ok"] for r in mine.values())
            cells = [
                f"<td><code>{esc(leaf)}</code></td>",
                f"<td>{esc(_fmt_shape(first['shape']))}</td>",
                f"<td>{esc(first['dtype'])}</td>",
            ]
            for p in self.pairs:
                r = mine.get(p)
                if r is None:
                    cells.append(f'<td colspan="{len(stats)}"></td>')
                    continue
                style = bad_style if not r["ok"] else ""
                values = self._cells(r, True)[4:]
                cells += [f"<td{style}>{esc(v)}</td>" for v in values]
            row_style = ' class="fail" style="background:#fde8e8"' if failing else ""
            body.append(f"<tr{row_style}>{''.join(cells)}</tr>")
        verdict_style = "color:#070" if self.ok else "color:#b00;font-weight:bold"
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        return (
            f'<div class="funcgrad-gradreport"><p><b>{esc(self.title)}</b></p>'
            f'<table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
            f'<p style="{verdict_style}">{esc(self.verdict())}</p>'
            f"<ul>{notes}</ul></div>"
        )

    # ---- data ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data: title, ok, verdict, engines, pairs, notes and rows (shapes as lists)."""
        return {
            "title": self.title,
            "ok": self.ok,
            "verdict": self.verdict(),
            "engines": list(self.engines),
            "pairs": list(self.pairs),
            "notes": list(self.notes),
            "rows": [{**r, "shape": list(r["shape"])} for r in self.rows],
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as strict JSON (non-finite numbers become ``"nan"``/``"inf"``)."""
        return json.dumps(_json_safe(self.to_dict()), allow_nan=False, **kwargs)


def _wide_cell(row: dict[str, Any]) -> str:
    if row["close"] is None:
        return "inconclusive"
    if not row["ok"]:
        return f"FAIL {_fmt_number(row['maxrel'])}"
    if row["exact"]:
        return "exact"
    return f"close {_fmt_number(row['maxrel'])}"

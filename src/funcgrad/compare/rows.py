"""The rows of a :class:`~funcgrad.compare.GradReport`: one dict per (leaf, pair of engines).

A row holds the leaf's name, kind (``argument`` or ``intermediate``), shape and dtype, the pair
(``"fg~jax"``: tested ``fg`` against reference ``jax``), the tolerances used, the statistics of
:func:`~funcgrad.compare.metrics.compare_arrays`, a note and the verdict ``ok``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from funcgrad.compare.finite_diff import LeafProbe
from funcgrad.compare.metrics import (
    compare_arrays,
    compare_with_worst,
    default_tolerance,
    index_str,
)

__all__ = ["Tolerances", "analytic_row", "engine_label", "fd_row"]

# Engine names as they appear in pair labels ("fg~jax").
_SHORT = {"funcgrad": "fg"}


def engine_label(engine: str) -> str:
    """The engine's name in pair labels: ``fg`` for funcgrad, the name itself otherwise."""
    return _SHORT.get(engine, engine)


@dataclass(frozen=True)
class Tolerances:
    """The tolerances a caller gave; None means the dtype's default from the table."""

    rtol: float | None = None
    atol: float | None = None
    fd_rtol: float | None = None
    fd_atol: float | None = None

    def for_dtype(self, dtype: Any, fd: bool = False) -> tuple[float, float]:
        """``(rtol, atol)`` for gradients of ``dtype`` (``fd=True``: finite differences)."""
        default_rtol, default_atol = default_tolerance(dtype, fd)
        rtol, atol = (self.fd_rtol, self.fd_atol) if fd else (self.rtol, self.atol)
        return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)

    def note(self, dtypes: list[str], fd: bool) -> str:
        """The report's note saying what *close* means and the tolerances of each dtype."""
        parts = []
        for d in dtypes:
            r, t = self.for_dtype(np.dtype(d))
            text = f"{d} rtol={r:g} atol={t:g}"
            if fd:
                fr, ft = self.for_dtype(np.dtype(d), fd=True)
                text += f" (fd: rtol={fr:g} atol={ft:g})"
            parts.append(text)
        return (
            "close: |tested - reference| <= atol + rtol*|reference|, the reference on the right "
            "of '~'; " + "; ".join(parts)
        )


def _row_head(leaf, kind, pair, shape, dtype, rtol, atol) -> dict[str, Any]:
    return {
        "leaf": leaf,
        "kind": kind,
        "shape": tuple(int(s) for s in shape),
        "dtype": str(np.dtype(dtype)),
        "pair": f"{engine_label(pair[0])}~{engine_label(pair[1])}",
        "tested": pair[0],
        "reference": pair[1],
        "rtol": float(rtol),
        "atol": float(atol),
        "note": "",
    }


def _failure_note(row: dict[str, Any]) -> str:
    a, b = engine_label(row["tested"]), engine_label(row["reference"])
    if row["nan_tested"] or row["nan_reference"]:
        return f"NaN: {row['nan_tested']} in {a}, {row['nan_reference']} in {b}"
    where = row["worst"]
    return (
        f"{row['n_bad']} of {row['n']} off; worst {where}: "
        f"{a} {row['worst_tested']:.6g} vs {b} {row['worst_reference']:.6g}"
    )


def analytic_row(
    leaf: str,
    kind: str,
    pair: tuple[str, str],
    tested: np.ndarray,
    reference: np.ndarray,
    rtol: float,
    atol: float,
) -> dict[str, Any]:
    """Every element of ``tested`` against ``reference``: the row of two computed gradients."""
    stats = compare_arrays(tested, reference, rtol, atol)
    row = _row_head(leaf, kind, pair, reference.shape, reference.dtype, rtol, atol)
    row.update(stats, dtype_tested=str(tested.dtype), checked=f"all {reference.size} elements")
    if tested.dtype != reference.dtype:
        row["note"] = f"dtype {tested.dtype}, expected {reference.dtype}"
    elif not stats["close"]:
        row["note"] = _failure_note(row)
    row["ok"] = row["close"]
    return row


def fd_row(
    leaf: str,
    pair: tuple[str, str],
    leaf_probe: LeafProbe,
    reference: np.ndarray,
    rtol: float,
    atol: float,
) -> dict[str, Any]:
    """Finite differences at the probed elements (and along the direction) vs a gradient.

    Probes whose roughness (the disagreement of steps h, h/2 and of the one-sided slopes) is
    beyond the same tolerance straddle a kink of ``fun`` and are skipped, with a note; a NaN
    estimate is never skipped.
    """
    ref64 = reference.astype(np.float64)
    tested = list(leaf_probe.values)
    rough = list(leaf_probe.roughness)
    wanted = list(ref64.reshape(-1)[leaf_probe.indices])
    where = [
        index_str(tuple(int(i) for i in np.unravel_index(int(k), reference.shape)))
        for k in leaf_probe.indices
    ]
    if leaf_probe.direction is not None:
        tested.append(leaf_probe.directional)
        rough.append(leaf_probe.directional_roughness)
        wanted.append(float(np.sum(leaf_probe.direction * ref64)))
        where.append("direction")
    tested_a, rough_a = np.asarray(tested), np.asarray(rough)
    with np.errstate(invalid="ignore"):
        kink = rough_a > atol + rtol * np.abs(tested_a)
    kept = np.flatnonzero(~kink | np.isnan(tested_a))
    stats, worst = compare_with_worst(tested_a[kept], np.asarray(wanted)[kept], rtol, atol)
    if worst >= 0:
        stats["worst"] = where[kept[worst]]
    row = _row_head(leaf, "argument", pair, reference.shape, reference.dtype, rtol, atol)
    row.update(stats, exact=None, ulps=None, dtype_tested=None, checked=leaf_probe.describe())
    row["skipped"] = int(len(tested) - len(kept))
    notes = [] if leaf_probe.complete else [row["checked"]]
    if row["skipped"]:
        notes.append(f"{row['skipped']} skipped: f has a kink within the step there")
    row["ok"] = row["close"]
    if not len(kept):
        # Inconclusive, not a mismatch: no estimate says anything about the gradient here.
        row.update(close=None, ok=True, worst="", worst_tested=None, worst_reference=None)
        notes.append("inconclusive: every probe straddles a kink")
    elif not stats["close"]:
        notes.append(_failure_note(row))
    row["note"] = "; ".join(notes)
    return row

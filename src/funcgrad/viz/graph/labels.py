"""The text of values and gradients on a node, and a value's gradient status.

A scalar is shown as its number, an array of at most four elements in full, a larger one as
``min … mean … max …`` (non-finite entries counted apart); a gradient likewise, in front of it
``grad``, and how many of its entries are exactly zero. Hovering a node shows the full summary
(:func:`summary_lines`): shape, dtype, min/mean/max/std, zeros, NaNs and the first entries.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.extend.core import Literal

__all__ = [
    "CONST",
    "FLOWS",
    "NONE",
    "NO_GRAD_TEXT",
    "UNKNOWN",
    "ZERO",
    "combine_statuses",
    "fmt_literal",
    "fmt_number",
    "grad_text",
    "summary_lines",
    "value_text",
]

# Gradient status of a value, from "a gradient flows" to "nothing known".
FLOWS, ZERO, NONE, CONST, UNKNOWN = "flows", "zero", "none", "const", "unknown"
_STATUS_ORDER = (FLOWS, ZERO, NONE, CONST, UNKNOWN)

NO_GRAD_TEXT = {
    NONE: "no grad reaches it",
    CONST: "no grad: independent of the parameters",
}

_SMALL = 4  # arrays with at most this many elements are shown in full


def fmt_number(x: Any) -> str:
    """One number, short: 4 significant digits, ints and bools as they are."""
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (complex, np.complexfloating)):
        return f"{complex(x):.3g}"
    x = float(x)
    if x == 0:
        return "0"
    return f"{x:.4g}"


def _as_numpy(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array, or None for tracers, keys and other things without numbers."""
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    try:
        a = np.asarray(value)
    except Exception:  # typed PRNG keys, float0, ...: nothing to summarise
        return None
    if a.dtype == object or a.dtype.kind not in "biufc":
        return None
    return a


def _stats(a: np.ndarray) -> str:
    """``min … mean … max …`` of a real array (non-finite entries counted separately)."""
    if a.dtype.kind == "c":
        return "|·| " + _stats(np.abs(a))
    if a.dtype.kind == "b":
        return f"{int(np.count_nonzero(a))} of {a.size} true"
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        bad = a.size - int(np.count_nonzero(finite))
        if bad:
            good = a[finite]
            where = f"{bad} non-finite ({fmt_number(a[~finite].ravel()[0])})"
            if good.size == 0:
                return where
            stats = (
                f"min {fmt_number(good.min())} mean {fmt_number(good.mean())} "
                f"max {fmt_number(good.max())}"
            )
            return f"{stats}, {where}"
    return f"min {fmt_number(a.min())} mean {fmt_number(a.mean())} max {fmt_number(a.max())}"


def _in_full(a: np.ndarray) -> str:
    return "[" + " ".join(fmt_number(x) for x in a.ravel()) + "]"


def value_text(value: Any) -> str | None:
    """A value, short: ``0.25``, ``[2 4 6]``, ``min 0 mean 4.5 max 9``; None if not numbers."""
    a = _as_numpy(value)
    if a is None:
        return None
    if a.size == 0:
        return "empty"
    if a.ndim == 0:
        return fmt_number(a.item())
    if a.size <= _SMALL:
        return _in_full(a)
    return _stats(a)


def grad_text(ct: Any) -> tuple[str, str | None]:
    """(status, text) for a cotangent that exists (not a symbolic zero)."""
    a = _as_numpy(ct)
    if a is None:
        return FLOWS, None
    if a.size == 0:
        return FLOWS, "grad (empty)"
    nonzero = int(np.count_nonzero(a))
    if nonzero == 0:
        return ZERO, "grad 0 (exactly)"
    if a.ndim == 0:
        return FLOWS, "grad " + fmt_number(a.item())
    if a.size <= _SMALL:
        return FLOWS, "grad " + _in_full(a)
    text = "grad " + _stats(a)
    if nonzero < a.size:
        text += f"; {a.size - nonzero} of {a.size} exactly 0"
    return FLOWS, text


def combine_statuses(statuses: list[str]) -> str:
    """A node's status from its outputs': the most gradient any of them gets."""
    for s in _STATUS_ORDER:
        if s in statuses:
            return s
    return UNKNOWN


def fmt_literal(lit: Literal) -> str:
    """A literal operand inline (``max(·, 0)``): its number, or ``const`` for anything else."""
    a = _as_numpy(lit.val)
    if a is None or a.size != 1:
        return "const"
    return fmt_number(a.item())


_FIRST = 8  # entries listed in a full summary


def summary_lines(value: Any) -> list[str]:
    """The full summary of an array, one fact a line: its shape and dtype; min, mean, max and
    std (of the finite entries); how many entries are zero, NaN and infinite; the first entries.
    Empty for what has no numbers (a tracer, a PRNG key)."""
    a = _as_numpy(value)
    if a is None:
        return []
    head = f"{a.dtype.name}{list(a.shape)}, {a.size} entr{'y' if a.size == 1 else 'ies'}"
    if a.size == 0:
        return [head]
    if a.ndim == 0:
        return [f"{head}: {fmt_number(a.item())}"]
    lines = [head]
    if a.dtype.kind == "b":
        lines.append(f"{int(np.count_nonzero(a))} true, {a.size - int(np.count_nonzero(a))} false")
    else:
        real = np.abs(a) if a.dtype.kind == "c" else a
        finite = real[np.isfinite(real)] if real.dtype.kind == "f" else real
        if finite.size:
            f64 = finite.astype(np.float64)
            prefix = "|·| " if a.dtype.kind == "c" else ""
            lines.append(
                f"{prefix}min {fmt_number(f64.min())}  mean {fmt_number(f64.mean())}  "
                f"max {fmt_number(f64.max())}  std {fmt_number(f64.std())}"
            )
        zeros = a.size - int(np.count_nonzero(a))
        counts = f"zeros {zeros} of {a.size}"
        if a.dtype.kind in "fc":
            nans = int(np.count_nonzero(np.isnan(a)))
            infs = int(np.count_nonzero(np.isinf(a)))
            counts += f", NaN {nans}, inf {infs}"
        lines.append(counts)
    first = " ".join(fmt_number(x) for x in a.ravel()[:_FIRST])
    more = " …" if a.size > _FIRST else ""
    lines.append(f"first [{first}{more}]" if a.size > _FIRST else f"entries [{first}]")
    return lines

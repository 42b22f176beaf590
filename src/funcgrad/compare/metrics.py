"""How close two arrays are: default tolerances per dtype, ULP distance, element-wise statistics.

The one table of default tolerances. ``rtol``/``atol`` of :func:`funcgrad.compare_grads`
override it for the analytic pairs, ``fd_rtol``/``fd_atol`` for finite differences::

    dtype       rtol    atol    |  fd rtol  fd atol
    float64     1e-10   1e-12   |  1e-6     1e-8
    float32     1e-5    1e-6    |  1e-2     1e-3
    bfloat16    2e-2    1e-2    |  2e-1     1e-1
    float16     1e-2    1e-3    |  1e-1     5e-2
    complex128  1e-10   1e-12   |  (fd: real inputs only)
    complex64   1e-5    1e-6    |

Two analytic gradients of the same function differ only by rounding (a few ULPs, more after
long sums), hence the tight defaults. Finite differences (:mod:`funcgrad.compare.finite_diff`)
carry the rounding noise of ``f(x ± h)`` divided by h, about 1e-4 in float32, hence the loose
ones.

Per element, for tested value ``a`` and reference value ``b``:

- *exact*: ``a == b`` as values (``-0.0 == +0.0``, ``inf == inf`` of the same sign, NaN never
  equal) and the dtypes agree;
- *close*: ``|a - b| <= atol + rtol·|b|`` (NaN never close), and the dtypes agree;
- *maxabs* ``max |a - b|``, *maxrel* ``max |a - b| / |b|`` (0 where a == b, inf where only b is 0);
- *ulps*: how many representable floats lie between ``a`` and ``b`` (adjacent floats: 1), from the
  bit patterns read as sign-magnitude integers; ``-0.0`` and ``+0.0`` are 0 apart.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = [
    "FD_TOLERANCES",
    "TOLERANCES",
    "compare_arrays",
    "compare_with_worst",
    "default_tolerance",
    "index_str",
    "ulp_distance",
]

TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(jnp.bfloat16): (2e-2, 1e-2),
    np.dtype(np.float16): (1e-2, 1e-3),
    np.dtype(np.complex128): (1e-10, 1e-12),
    np.dtype(np.complex64): (1e-5, 1e-6),
}
"""(rtol, atol) per dtype for comparing two analytic gradients."""

FD_TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float64): (1e-6, 1e-8),
    np.dtype(np.float32): (1e-2, 1e-3),
    np.dtype(jnp.bfloat16): (2e-1, 1e-1),
    np.dtype(np.float16): (1e-1, 5e-2),
}
"""(rtol, atol) per dtype for comparing a finite-difference estimate with a gradient."""

_INTS = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def default_tolerance(dtype: Any, fd: bool = False) -> tuple[float, float]:
    """The default ``(rtol, atol)`` for gradients of ``dtype`` (``fd=True``: finite differences).

    Dtypes not in the tables (float8, ...) get ``8·eps`` for both (``2·eps^(1/3)`` for fd).
    """
    dtype = np.dtype(dtype)
    table = FD_TOLERANCES if fd else TOLERANCES
    if dtype in table:
        return table[dtype]
    if fd and jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError("finite differences support real floating-point leaves only")
    eps = float(jnp.finfo(dtype).eps)
    tol = 2 * eps ** (1 / 3) if fd else 8 * eps
    return tol, tol


def _ordered_ints(x: np.ndarray) -> np.ndarray:
    """Float bit patterns as int64s ordered like the floats (sign-magnitude to two's complement)."""
    bits = x.view(_INTS[x.dtype.itemsize]).astype(np.int64)
    magnitude = bits & np.int64((1 << (8 * x.dtype.itemsize - 1)) - 1)
    return np.where(bits < 0, -magnitude, magnitude)


def ulp_distance(a: Any, b: Any) -> np.ndarray:
    """Element-wise number of representable floats between ``a`` and ``b`` (same dtype), uint64.

    Adjacent floats are 1 apart, ``-0.0`` and ``+0.0`` are 0 apart, ``inf`` is 1 above the
    largest finite float. Where either side is NaN the distance is the largest uint64: a NaN is
    not within any number of ULPs. Complex values take the larger of the real and imaginary
    distances.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype:
        raise TypeError(f"ulp_distance needs equal dtypes, got {a.dtype} and {b.dtype}")
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
        return np.maximum(ulp_distance(a.real, b.real), ulp_distance(a.imag, b.imag))
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"ulp_distance needs floating-point arrays, got {a.dtype}")
    oa, ob = _ordered_ints(a), _ordered_ints(b)
    ua, ub = oa.astype(np.uint64), ob.astype(np.uint64)
    # The true distance is < 2**64, so the wrapping uint64 subtraction is exact.
    dist = np.where(oa >= ob, ua - ub, ub - ua)
    nan = np.isnan(a.astype(np.float32)) | np.isnan(b.astype(np.float32))
    return np.where(nan, np.iinfo(np.uint64).max, dist)


def _wide(x: np.ndarray) -> np.ndarray:
    kind = np.complex128 if jnp.issubdtype(x.dtype, jnp.complexfloating) else np.float64
    return x.astype(kind)


def index_str(index: tuple[int, ...]) -> str:
    """An element's index as the report writes it: ``[3, 7]``, or ``(scalar)``."""
    return "[" + ", ".join(str(i) for i in index) + "]" if index else "(scalar)"


def compare_arrays(a: Any, b: Any, rtol: float, atol: float) -> dict[str, Any]:
    """Statistics of tested ``a`` against reference ``b`` (same shape), as plain Python data.

    Keys: exact, close, maxabs, maxrel, ulps (None when dtypes differ or a NaN is present),
    n, n_bad (elements not close), nan_tested, nan_reference, worst (index of the element
    farthest outside tolerance, e.g. ``"[3, 7]"``), worst_tested, worst_reference.
    """
    return compare_with_worst(a, b, rtol, atol)[0]


def compare_with_worst(a: Any, b: Any, rtol: float, atol: float) -> tuple[dict[str, Any], int]:
    """:func:`compare_arrays` and the flat index of the worst element (-1 when empty)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"compare_arrays needs equal shapes, got {a.shape} and {b.shape}")
    same_dtype = a.dtype == b.dtype
    a64, b64 = _wide(a), _wide(b)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    nan = nan_a | nan_b
    equal = (a64 == b64) & ~nan
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        absdiff = np.where(equal, 0.0, np.abs(a64 - b64))
        absdiff = np.where(nan, np.nan, absdiff)
        magnitude = np.abs(b64)
        rel = np.where(equal, 0.0, absdiff / magnitude)
        # An infinite difference is never within tolerance, even of an infinite reference.
        within = equal | (np.isfinite(absdiff) & (absdiff <= atol + rtol * magnitude))
        excess = np.where(nan, np.inf, absdiff - (atol + rtol * magnitude))
    n = int(a.size)
    ulps = None
    if same_dtype and n and not nan.any():
        ulps = int(ulp_distance(a, b).max())
    elif same_dtype and not n:
        ulps = 0
    out: dict[str, Any] = {
        "exact": bool(same_dtype and equal.all()),
        "close": bool(same_dtype and within.all()),
        "maxabs": float(np.max(absdiff)) if n else 0.0,
        "maxrel": float(np.max(rel)) if n else 0.0,
        "ulps": ulps,
        "n": n,
        "n_bad": int(n - within.sum()),
        "nan_tested": int(nan_a.sum()),
        "nan_reference": int(nan_b.sum()),
        "worst": "",
        "worst_tested": None,
        "worst_reference": None,
    }
    flat = -1
    if n:
        flat = int(np.argmax(np.where(np.isnan(excess), np.inf, excess)))
        index = tuple(int(i) for i in np.unravel_index(flat, a.shape))
        out["worst"] = index_str(index)
        out["worst_tested"] = _py_number(a64.reshape(-1)[flat])
        out["worst_reference"] = _py_number(b64.reshape(-1)[flat])
    return out, flat


def _py_number(x: Any) -> Any:
    x = complex(x)
    return x.real if x.imag == 0 else x

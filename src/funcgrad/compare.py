"""Compare gradients: funcgrad's interpreter, ``jax.grad``, hand-derived ones, finite differences.

``fg.compare_grads(loss, params, x, y)`` computes the gradient of ``loss`` w.r.t. ``params`` with
``fg.grad`` and ``jax.grad`` (and with each ``reference`` you give: a hand-derived gradient
function, ``"fd"`` for central finite differences) and returns a :class:`GradReport`: one
comparison per (leaf, pair of engines), each leaf named as a person writes it (``layers[0].W``).

**Pairs.** Every engine is compared with ``jax.grad``, the reference: ``fg~jax``, ``manual~jax``,
``fd~jax`` (read ``a~b`` as "a checked against b"). Measuring everything against one anchor keeps
the table short and still triangulates: if ``fg~jax`` fails and ``fd~jax`` passes, funcgrad is
wrong; if both fail, look at JAX (or the function's smoothness). ``pairs=[("manual",
"funcgrad")]`` chooses other pairs.

**Per element**, for tested value ``a`` and reference value ``b`` (the right of ``~``):

- *exact*: ``a == b`` as values (``-0.0 == +0.0``, ``inf == inf`` of the same sign, NaN never
  equal) and the dtypes agree;
- *close*: ``|a - b| <= atol + rtol·|b|`` (NaN never close), and the dtypes agree;
- *maxabs* ``max |a - b|``, *maxrel* ``max |a - b| / |b|`` (0 where a == b, inf where only b is 0);
- *ulps*: how many representable floats lie between ``a`` and ``b`` (adjacent floats: 1), from the
  bit patterns read as sign-magnitude integers; ``-0.0`` and ``+0.0`` are 0 apart.

NaN on either side (or both) is a mismatch: a NaN gradient is never "equal" to anything.

**Default tolerances** (``rtol``, ``atol`` override them for the analytic pairs; ``fd_rtol``,
``fd_atol`` for finite differences)::

    dtype       rtol    atol    |  fd rtol  fd atol
    float64     1e-10   1e-12   |  1e-6     1e-8
    float32     1e-5    1e-6    |  1e-2     1e-3
    bfloat16    2e-2    1e-2    |  2e-1     1e-1
    float16     1e-2    1e-3    |  1e-1     5e-2
    complex128  1e-10   1e-12   |  (fd: real inputs only)
    complex64   1e-5    1e-6    |

Two analytic gradients of the same function differ only by rounding (a few ULPs, more after
long sums), hence the tight defaults. Finite differences (:mod:`funcgrad.finite_diff`: steps
``h = cbrt(eps)·max(1,|x|)`` and h/2, Richardson-extrapolated) carry the rounding noise of
``f(x ± h)`` divided by h, about 1e-4 in float32, hence the loose ones; the fd atol is raised to
``10·eps^(2/3)·|f(x)|`` when the loss is large, and the report says so. Prefer float64 for
finite differences: run with ``jax.enable_x64`` and float64 inputs, or pass
``fd_dtype="float64"`` to evaluate them in float64 whatever the gradients' dtype; when they run
in float32 the report says they only catch gross errors.

A probe whose step straddles a kink of ``fun`` (a ReLU or a max switching) measures no
derivative at ``x``: estimates with steps h and h/2 and from either side disagree there, so it
is skipped and counted in the row's note (the test reads ``fun`` alone: no gradient, right or
wrong, decides it). A leaf where every probe straddles a kink is *inconclusive*, not a
mismatch. Leaves larger than ``fd_elements`` are probed at that many random elements plus one
random direction ``v`` (compared as ``<g, v>``), and the row says so.

**The report.** ``str(report)`` is an aligned table, one line per (leaf, pair) grouped under the
leaf; ``report.to_string("wide")`` one line per leaf with a column per pair; in a notebook the
HTML table has one row per leaf with a column group per pair, failing rows in red.
``report.rows`` is the same as plain data, ``report.ok`` (and ``bool(report)``) the verdict.

**Intermediates.** Mark a value inside ``fun`` with ``fg.tag(z, "logits")`` and pass
``intermediates={"logits": dlogits}``: the report then has ``tag:logits`` rows comparing your
cotangent with funcgrad's (``fg.trace(...).cotangent("logits")``) and with JAX's. JAX's cotangent
is read honestly by JAX itself (:func:`jax_tag_cotangents`): ``jax.grad`` of the function with a
zero ``δ`` added at the tag, ``∂loss/∂δ``.
"""

from __future__ import annotations

import functools
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from funcgrad import finite_diff
from funcgrad._args import arg_names as _arg_names
from funcgrad._args import argnums_tuple as _argnums_tuple
from funcgrad._paths import path_to_str

__all__ = [
    "FD_TOLERANCES",
    "TOLERANCES",
    "GradReport",
    "compare_arrays",
    "compare_grads",
    "default_tolerance",
    "jax_tag_cotangents",
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

# Engine names as they appear in pair labels ("fg~jax").
_SHORT = {"funcgrad": "fg"}
_ALIASES = {"fg": "funcgrad"}
_RESERVED = ("funcgrad", "fg", "jax")
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


# ---- element-wise comparison -------------------------------------------------------------------
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


def _index_str(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]" if index else "(scalar)"


def compare_arrays(a: Any, b: Any, rtol: float, atol: float) -> dict[str, Any]:
    """Statistics of tested ``a`` against reference ``b`` (same shape), as plain Python data.

    Keys: exact, close, maxabs, maxrel, ulps (None when dtypes differ or a NaN is present),
    n, n_bad (elements not close), nan_tested, nan_reference, worst (index of the element
    farthest outside tolerance, e.g. ``"[3, 7]"``), worst_tested, worst_reference.
    """
    return _compare(a, b, rtol, atol)[0]


def _compare(a: Any, b: Any, rtol: float, atol: float) -> tuple[dict[str, Any], int]:
    """:func:`compare_arrays` and the flat index of the worst element."""
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
        out["worst"] = _index_str(index)
        out["worst_tested"] = _py_number(a64.reshape(-1)[flat])
        out["worst_reference"] = _py_number(b64.reshape(-1)[flat])
    return out, flat


def _py_number(x: Any) -> Any:
    x = complex(x)
    return x.real if x.imag == 0 else x


# ---- naming leaves -----------------------------------------------------------------------------
class _Namer:
    """Leaf names for gradient pytrees: ``layers[0].W`` (one argnum), ``params.layers[0].W``
    (several), the argument's name for a bare array."""

    def __init__(self, fun: Callable, nargs: int, nums: tuple[int, ...], single: bool) -> None:
        self.arg_names = [_arg_names(fun, nargs)[i] for i in nums]
        self.single = single

    def name(self, path: Sequence[Any]) -> str:
        path = tuple(path)
        if self.single:
            return path_to_str(path) or self.arg_names[0]
        head = path[0] if path else None
        if isinstance(head, jax.tree_util.SequenceKey) and head.idx < len(self.arg_names):
            return self.arg_names[head.idx] + path_to_str(path[1:], lead=".")
        return path_to_str(path) or "(root)"

    def leaves(self, tree: Any) -> list[tuple[str, Any]]:
        with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
        return [(self.name(p), leaf) for p, leaf in with_paths]


# ---- engines -----------------------------------------------------------------------------------
def _parse_references(reference: Any) -> dict[str, Any]:
    """{engine name: callable or "fd"} from the ``reference`` argument."""
    if reference is None:
        return {}
    if isinstance(reference, Mapping):
        out = {}
        for name, ref in reference.items():
            if not isinstance(name, str) or not name or "~" in name or name in _RESERVED:
                raise ValueError(
                    f"reference name {name!r} must be a non-empty string without '~', and not "
                    f"one of {_RESERVED} (funcgrad and jax are always compared)"
                )
            if ref == "fd" or callable(ref):
                out[name] = ref
            else:
                raise TypeError(f"reference {name!r} must be a callable or 'fd', got {ref!r}")
        return out
    items = [reference] if isinstance(reference, str) or callable(reference) else list(reference)
    manual = [r for r in items if callable(r)]
    out, k = {}, 0
    for ref in items:
        if isinstance(ref, str) and ref in ("jax", "funcgrad", "fg"):
            continue
        if isinstance(ref, str) and ref == "fd":
            out["fd"] = "fd"
        elif callable(ref):
            out["manual" if len(manual) == 1 else f"manual{k}"] = ref
            k += 1
        else:
            raise TypeError(
                "reference must be None, 'fd', a callable with the signature of "
                f"jax.grad(fun, argnums), or a list or dict of those; got {ref!r}"
            )
    return out


def _label(engine: str) -> str:
    return _SHORT.get(engine, engine)


def _as_leaf(x: Any, like: np.ndarray) -> np.ndarray:
    # A bare Python number is weakly typed, as in JAX: it takes the reference's dtype.
    if isinstance(x, (int, float, complex)) and not isinstance(x, bool):
        return np.asarray(x, dtype=like.dtype)
    return np.asarray(x)


def _check_structure(got: Any, want: Any, engine: str, namer: _Namer) -> list[np.ndarray]:
    """``got``'s leaves in ``want``'s order; ``ValueError`` listing every path that differs."""
    want_named = namer.leaves(want)
    got_named = namer.leaves(got)
    want_tree = jax.tree_util.tree_structure(want)
    got_tree = jax.tree_util.tree_structure(got)
    problems: list[str] = []
    label = f"{engine!r}" if engine != "funcgrad" else "fg.grad"
    if want_tree != got_tree:
        want_names = [n for n, _ in want_named]
        got_names = [n for n, _ in got_named]
        missing = [n for n in want_names if n not in got_names]
        extra = [n for n in got_names if n not in want_names]
        if missing:
            problems.append(f"missing from {label} (in jax.grad's): " + ", ".join(missing))
        if extra:
            problems.append(f"only in {label} (not in jax.grad's): " + ", ".join(extra))
        if not missing and not extra:
            problems.append(
                f"same leaf paths but different containers: {label} gives {got_tree}, "
                f"jax.grad gives {want_tree}"
            )
    leaves = []
    if not problems:
        for (name, g), (_, w) in zip(got_named, want_named):
            w = np.asarray(w)
            g = _as_leaf(g, w)
            if g.shape != w.shape:
                problems.append(f"shape of {name}: {label} {g.shape}, jax.grad {w.shape}")
            leaves.append(g)
    if problems:
        raise ValueError(
            f"the gradient from {label} does not have the structure of jax.grad(fun, argnums)"
            "(*args):\n  " + "\n  ".join(problems) + "\nReturn a pytree with the same paths "
            "and shapes as the differentiated arguments (a transposed weight gradient is a "
            "shape mismatch)."
        )
    return leaves


def _float_array_args(args: tuple[Any, ...]) -> tuple[int, ...]:
    """Positions of arguments made only of arrays, at least one of them floating-point."""
    nums = []
    for i, arg in enumerate(args):
        leaves = jax.tree_util.tree_leaves(arg)
        arrays = all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
        if leaves and arrays and any(jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves):
            nums.append(i)
    return tuple(nums)


# ---- JAX's own cotangent of a tagged intermediate -------------------------------------------
_CALLS = ("jit", "pjit", "closed_call", "core_call", "call", "checkpoint", "remat", "remat2")


def _sub_jaxprs(eqn: Any) -> list[Any]:
    subs = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (ClosedJaxpr, Jaxpr)):
                subs.append(item)
    return subs


def _open(jaxpr: Any) -> tuple[Jaxpr, list[Any]]:
    if isinstance(jaxpr, ClosedJaxpr):
        return jaxpr.jaxpr, list(jaxpr.consts)
    return jaxpr, []


def _tag_sites(jaxpr: Jaxpr, inside: str | None = None) -> list[tuple[str, Any, str | None]]:
    """(tag name, aval, enclosing non-call primitive or None) for every tag in ``jaxpr``."""
    from funcgrad.interpret.tagging import tag_p

    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is tag_p:
            found.append((eqn.params["name"], eqn.outvars[0].aval, inside))
            continue
        name = eqn.primitive.name
        for sub in _sub_jaxprs(eqn):
            found.extend(_tag_sites(_open(sub)[0], inside or (None if name in _CALLS else name)))
    return found


def _eval_with_deltas(jaxpr: Jaxpr, consts: list[Any], args: list[Any], deltas: dict) -> list:
    """Evaluate ``jaxpr`` as ``jax.core.eval_jaxpr`` does, adding ``deltas[name]`` at each tag."""
    from funcgrad.interpret.tagging import tag_p

    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(v: Any) -> Any:
        return v.val if isinstance(v, Literal) else env[v]

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive is tag_p and eqn.params["name"] in deltas:
            outs = [tag_p.bind(invals[0], **eqn.params) + deltas[eqn.params["name"]]]
        elif eqn.primitive.name in _CALLS and any(
            site[0] in deltas for sub in _sub_jaxprs(eqn) for site in _tag_sites(_open(sub)[0])
        ):
            body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            outs = _eval_with_deltas(*_open(body), invals, deltas)
        else:
            bound = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = list(bound) if eqn.primitive.multiple_results else [bound]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def jax_tag_cotangents(
    fun: Callable, *args: Any, names: Sequence[str], jit: bool = False
) -> dict[str, Any]:
    """JAX's cotangent ``∂fun/∂z`` of each value ``z`` tagged ``fg.tag(z, name)`` inside ``fun``.

    ``fun`` is traced with every argument held fixed; a zero ``δ`` is added at each named tag
    and ``jax.grad`` (JAX's own rules, not funcgrad's) differentiates the scalar output w.r.t.
    the ``δ``s. Tags may sit inside ``jax.jit`` calls, not inside ``scan``/``cond``/``while``
    bodies or custom-derivative functions (``KeyError``/``ValueError`` say which). ``jit``
    compiles the differentiated program (always valid: it is a traced jaxpr).
    """
    closed = jax.make_jaxpr(lambda: fun(*args))()
    sites = _tag_sites(closed.jaxpr)
    known = [s[0] for s in sites]
    deltas = {}
    for name in names:
        count = known.count(name)
        if count == 0:
            raise KeyError(f"no fg.tag named {name!r} in the function; its tags are {known}")
        if count > 1:
            raise KeyError(
                f"fg.tag name {name!r} appears {count} times; give each tag a distinct name"
            )
        _, aval, inside = sites[known.index(name)]
        if inside is not None:
            raise ValueError(
                f"fg.tag {name!r} is inside a {inside}; JAX's cotangent can be read only for "
                "tags outside control flow and custom-derivative functions"
            )
        if not jnp.issubdtype(aval.dtype, jnp.inexact):
            raise TypeError(f"fg.tag {name!r} has dtype {aval.dtype}: it has no cotangent")
        deltas[name] = jnp.zeros(aval.shape, aval.dtype)
    if len(closed.jaxpr.outvars) != 1 or closed.jaxpr.outvars[0].aval.shape != ():
        raise TypeError("jax_tag_cotangents needs a function with a single scalar output")

    def perturbed(d: dict) -> Any:
        return _eval_with_deltas(closed.jaxpr, list(closed.consts), [], d)[0]

    grad = jax.grad(perturbed)
    return (jax.jit(grad) if jit else grad)(deltas)


# ---- the report ---------------------------------------------------------------------------------
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


# ---- compare_grads -----------------------------------------------------------------------------
def _row(
    leaf: str,
    kind: str,
    pair: tuple[str, str],
    tested: np.ndarray,
    reference: np.ndarray,
    rtol: float,
    atol: float,
) -> dict[str, Any]:
    stats = compare_arrays(tested, reference, rtol, atol)
    row = _row_head(leaf, kind, pair, reference.shape, reference.dtype, rtol, atol)
    row.update(stats, dtype_tested=str(tested.dtype), checked=f"all {reference.size} elements")
    if tested.dtype != reference.dtype:
        row["note"] = f"dtype {tested.dtype}, expected {reference.dtype}"
    elif not stats["close"]:
        row["note"] = _failure_note(row)
    row["ok"] = row["close"]
    return row


def _row_head(leaf, kind, pair, shape, dtype, rtol, atol) -> dict[str, Any]:
    return {
        "leaf": leaf,
        "kind": kind,
        "shape": tuple(int(s) for s in shape),
        "dtype": str(np.dtype(dtype)),
        "pair": f"{_label(pair[0])}~{_label(pair[1])}",
        "tested": pair[0],
        "reference": pair[1],
        "rtol": float(rtol),
        "atol": float(atol),
        "note": "",
    }


def _failure_note(row: dict[str, Any]) -> str:
    a, b = _label(row["tested"]), _label(row["reference"])
    if row["nan_tested"] or row["nan_reference"]:
        return f"NaN: {row['nan_tested']} in {a}, {row['nan_reference']} in {b}"
    where = row["worst"]
    return (
        f"{row['n_bad']} of {row['n']} off; worst {where}: "
        f"{a} {row['worst_tested']:.6g} vs {b} {row['worst_reference']:.6g}"
    )


def _fd_row(
    leaf: str,
    pair: tuple[str, str],
    leaf_probe: finite_diff.LeafProbe,
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
        _index_str(tuple(int(i) for i in np.unravel_index(int(k), reference.shape)))
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
    stats, worst = _compare(tested_a[kept], np.asarray(wanted)[kept], rtol, atol)
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


def _tolerances(dtype: np.dtype, fd: bool, rtol: float | None, atol: float | None):
    default_rtol, default_atol = default_tolerance(dtype, fd)
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


def _resolve_pairs(
    pairs: Sequence[Sequence[str]] | None, engines: Sequence[str]
) -> list[tuple[str, str]]:
    if pairs is None:
        return [(e, "jax") for e in engines if e != "jax"]
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"each pair must be (tested, reference), got {pair!r}")
        a, b = (_ALIASES.get(e, e) for e in pair)
        for e in (a, b):
            if e not in engines:
                raise ValueError(f"pair {tuple(pair)!r} names {e!r}; the engines are {engines}")
        if b == "fd":
            raise ValueError(
                f"put finite differences on the tested side: ('fd', {a!r}), not {tuple(pair)!r}"
            )
        if a == b:
            raise ValueError(f"pair {tuple(pair)!r} compares an engine with itself")
        out.append((a, b))
    if not out:
        raise ValueError("pairs is empty: nothing would be compared")
    return out


def compare_grads(
    fun: Callable,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    reference: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    intermediates: Mapping[str, Any] | None = None,
    pairs: Sequence[Sequence[str]] | None = None,
    fd_rtol: float | None = None,
    fd_atol: float | None = None,
    fd_elements: int = finite_diff.FD_ELEMENTS,
    fd_dtype: Any = None,
    seed: int = 0,
    jit: bool = False,
    title: str | None = None,
) -> GradReport:
    """Compare ``fg.grad(fun, argnums)(*args)`` with ``jax.grad`` and any references.

    ``reference``: None (funcgrad vs JAX only); a callable with the signature and output
    structure of ``jax.grad(fun, argnums)`` (a hand-derived gradient, engine ``manual``);
    ``"fd"`` (central finite differences, see :mod:`funcgrad.finite_diff`); or a list of those,
    or a dict naming them (``{"textbook": grad_fn, "fd": "fd"}``). Each engine is compared with
    ``jax.grad`` unless ``pairs`` (e.g. ``[("manual", "funcgrad")]``) says otherwise.

    ``rtol``/``atol`` override the per-dtype defaults (:data:`TOLERANCES`) for analytic pairs,
    ``fd_rtol``/``fd_atol`` for finite differences (:data:`FD_TOLERANCES`). ``intermediates``
    maps ``fg.tag`` names to hand-derived cotangents of those values (``tag:<name>`` rows, vs
    funcgrad's and JAX's; finite differences are for arguments only). ``fd_elements`` is the
    per-leaf budget of probed elements, ``seed`` picks them. ``fd_dtype="float64"`` evaluates
    the finite differences with every float argument cast to float64 (x64 enabled for the
    duration), the one precision in which they check more than gross errors, whatever the
    gradients' dtype; by default they run in the arguments' dtype. ``jit=True`` compiles each
    gradient with ``jax.jit`` (fewer, larger compilations: faster for big models; ``fun`` and
    the references must then be jittable in every argument); finite differences are always
    compiled.

    Raises ``ValueError`` listing the paths (and shapes) that differ when an engine returns a
    different structure, and whatever ``fg.grad`` raises (``fg.UnsupportedPrimitiveError``).
    """
    nums = _argnums_tuple(argnums, len(args))
    namer = _Namer(fun, len(args), nums, isinstance(argnums, int))
    refs = _parse_references(reference)
    engines = ["funcgrad", "jax", *refs]
    chosen = _resolve_pairs(pairs, engines)

    def compiled(f: Callable) -> Callable:
        return jax.jit(f) if jit else f

    want = compiled(jax.grad(fun, argnums))(*args)
    named = namer.leaves(want)
    if not named:
        raise ValueError(
            "nothing to compare: the differentiated arguments have no array leaves "
            f"(argnums={argnums!r})"
        )
    names = [n for n, _ in named]
    values: dict[str, list[np.ndarray]] = {"jax": [np.asarray(w) for _, w in named]}
    from funcgrad.interpret import grad as fg_grad

    got = compiled(fg_grad(fun, argnums))(*args)
    values["funcgrad"] = _check_structure(got, want, "funcgrad", namer)
    fd_engines = [e for e, ref in refs.items() if isinstance(ref, str)]
    for engine, ref in refs.items():
        if engine not in fd_engines:
            values[engine] = _check_structure(compiled(ref)(*args), want, engine, namer)
    fd_probe = None
    if fd_engines:
        fd_probe = _fd_probe(fun, args, nums, fd_elements, fd_dtype, seed)

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if intermediates:
        given = chosen if pairs is not None else None
        rows += _intermediate_rows(fun, args, nums, intermediates, given, rtol, atol, jit)

    # The rounding noise of f(x ± h) divided by h: no fd estimate is sharper than this.
    noise_floor, raised = 0.0, False
    if fd_probe is not None:
        noise_floor = 10 * float(jnp.finfo(fd_probe.dtype).eps) ** (2 / 3) * abs(fd_probe.value)
    for k, name in enumerate(names):
        for a, b in chosen:
            ref = values[b][k]
            if a in fd_engines:
                r, t = _tolerances(ref.dtype, True, fd_rtol, fd_atol)
                if fd_atol is None and noise_floor > t:
                    t = noise_floor
                    raised = True
                rows.append(_fd_row(name, (a, b), fd_probe.leaves[k], ref, r, t))
            else:
                r, t = _tolerances(ref.dtype, False, rtol, atol)
                rows.append(_row(name, "argument", (a, b), values[a][k], ref, r, t))

    dtypes = sorted({r["dtype"] for r in rows})
    notes.append(_tolerance_note(dtypes, bool(fd_engines), rtol, atol, fd_rtol, fd_atol))
    if fd_probe is not None:
        if any(not lp.complete for lp in fd_probe.leaves):
            notes.append(
                f"fd: leaves over {fd_elements} elements are probed at {fd_elements} random "
                f"elements (seed {seed}) plus one random direction v, compared as <g, v>"
            )
        if raised:
            notes.append(
                f"fd: atol raised to {noise_floor:.2g} = 10·eps^(2/3)·|f(x)|, the rounding noise "
                f"of the estimates for |f(x)| = {abs(fd_probe.value):.3g}"
            )
        if fd_dtype is not None and any(r["dtype"] != str(fd_probe.dtype) for r in rows):
            notes.append(
                f"fd: evaluated in {fd_probe.dtype}, every float argument cast to it; the fd "
                "tolerance is that of the gradients' dtype"
            )
        inconclusive = [r["leaf"] for r in rows if r["close"] is None]
        if inconclusive:
            notes.append(
                "fd inconclusive (every probe straddles a kink of the function) for: "
                + ", ".join(inconclusive)
            )
        if np.dtype(fd_probe.dtype).itemsize < 8:
            notes.append(
                f"note: finite differences in {fd_probe.dtype} only catch gross errors; for a "
                "sharper check run in float64: `funcgrad check --x64`, or "
                "`with jax.enable_x64(True):` and float64 inputs"
            )
    if intermediates:
        notes.append(
            "tag rows: JAX's cotangent of a tagged value is jax.grad of the loss w.r.t. a zero "
            "added at the tag; funcgrad's is fg.trace(...).cotangent(name)"
        )
    arg_names = _arg_names(fun, len(args))
    if title is None:
        fname = getattr(fun, "__name__", "fun")
        wrt = ", ".join(arg_names[i] for i in nums)
        shown = [*engines, "manual"] if intermediates and "manual" not in engines else engines
        title = f"gradients of {fname} w.r.t. {wrt}: " + ", ".join(_label(e) for e in shown)
    pair_labels = list(dict.fromkeys(r["pair"] for r in rows))
    return GradReport(rows, engines=engines, pairs=pair_labels, notes=notes, title=title)


def _fd_probe(
    fun: Callable,
    args: tuple[Any, ...],
    nums: tuple[int, ...],
    fd_elements: int,
    fd_dtype: Any,
    seed: int,
) -> finite_diff.Probe:
    """Finite differences in the arguments' dtype, or with float arguments cast to fd_dtype."""
    if fd_dtype is None:
        return finite_diff.probe(fun, *args, argnums=nums, max_elements=fd_elements, seed=seed)
    dtype = np.dtype(fd_dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"fd_dtype must be a floating-point dtype, got {fd_dtype!r}")

    def cast(x: Any) -> Any:
        is_float = isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating)
        return jnp.asarray(x, dtype) if is_float else x

    with jax.enable_x64(bool(jax.config.jax_enable_x64) or dtype.itemsize == 8):
        cast_args = tuple(jax.tree_util.tree_map(cast, a) for a in args)
        return finite_diff.probe(
            fun, *cast_args, argnums=nums, max_elements=fd_elements, seed=seed
        )


def _tolerance_note(dtypes, fd, rtol, atol, fd_rtol, fd_atol) -> str:
    parts = []
    for d in dtypes:
        r, t = _tolerances(np.dtype(d), False, rtol, atol)
        text = f"{d} rtol={r:g} atol={t:g}"
        if fd:
            fr, ft = _tolerances(np.dtype(d), True, fd_rtol, fd_atol)
            text += f" (fd: rtol={fr:g} atol={ft:g})"
        parts.append(text)
    return (
        "close: |tested - reference| <= atol + rtol*|reference|, the reference on the right of "
        "'~'; " + "; ".join(parts)
    )


def _intermediate_rows(
    fun: Callable,
    args: tuple[Any, ...],
    nums: tuple[int, ...],
    intermediates: Mapping[str, Any],
    pairs: list[tuple[str, str]] | None,
    rtol: float | None,
    atol: float | None,
    jit: bool,
) -> list[dict[str, Any]]:
    from funcgrad.interpret import trace as fg_trace
    from funcgrad.interpret.api import lookup

    names = list(intermediates)
    inactive: set[str] = set()

    def fg_cotangents(trace_nums: tuple[int, ...], *args: Any) -> dict[str, Any]:
        tr = fg_trace(fun, *args, argnums=trace_nums)
        for n in names:  # static facts, recorded while tracing
            owner, var = lookup(tr, n)
            if var not in owner.active:
                inactive.add(n)
        return {n: tr.cotangent(n) for n in names}

    def fg_run(trace_nums: tuple[int, ...]) -> dict[str, Any]:
        f = functools.partial(fg_cotangents, trace_nums)
        return (jax.jit(f) if jit else f)(*args)

    fg_cts = fg_run(nums)
    if inactive:
        # A tag that does not depend on the differentiated arguments gets no cotangent from
        # funcgrad; differentiate every float argument so that it does.
        inactive.clear()
        fg_cts = fg_run(tuple(sorted(set(nums) | set(_float_array_args(args)))))
    jax_cts = jax_tag_cotangents(fun, *args, names=names, jit=jit)
    cts = {
        "funcgrad": {k: np.asarray(v) for k, v in fg_cts.items()},
        "jax": {k: np.asarray(v) for k, v in jax_cts.items()},
        "manual": {},
    }
    for name in names:
        ref = cts["jax"][name]
        given = _as_leaf(intermediates[name], ref)
        if given.shape != ref.shape:
            raise ValueError(
                f"intermediates[{name!r}] has shape {given.shape}, but the value tagged "
                f"{name!r} has shape {ref.shape}"
            )
        cts["manual"][name] = given
    # The tagged values have three engines: funcgrad, JAX and the hand-derived "manual".
    tag_pairs = [("funcgrad", "jax"), ("manual", "jax")]
    if pairs is not None:
        tag_pairs = [p for p in pairs if p[0] in cts and p[1] in cts] or tag_pairs
    rows = []
    for name in names:
        for a, b in tag_pairs:
            ref = cts[b][name]
            r, t = _tolerances(ref.dtype, False, rtol, atol)
            rows.append(_row(f"tag:{name}", "intermediate", (a, b), cts[a][name], ref, r, t))
    return rows

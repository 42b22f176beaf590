"""Draw a jaxpr as a graph: one node per equation, labelled with its value and funcgrad's gradient.

``draw_jaxpr(fun, *args)`` traces ``fun`` with :func:`funcgrad.trace` (the VJP interpreter: every
forward value and every cotangent kept) and draws the result with Graphviz, left to right:

- an **input node** per argument leaf, named by its pytree path (``layers[0].W``): parameters
  (the differentiated arguments) outlined red, data (``x``, ``y``, other closed-over arrays) blue;
- an **operation node** per equation: the primitive, the params that matter (a ``dot_general``'s
  contraction as an einsum, reduction axes, conv strides...), literal operands inline
  (``max(·, 0)``), the output's shape/dtype, its value (the number for a scalar, min/mean/max
  for an array) and, in red, its gradient;
- an **output node** per output leaf, named after the function (``loss``) or, for a gradient
  function such as ``fg.grad(f)``, after the parameter each output is the gradient of.

Nodes whose gradient is exactly zero are filled grey; nodes no gradient flows through at all
(data, integer labels, everything before a ``stop_gradient``) are dashed grey. Sub-jaxprs become
clusters: ``jit`` and ``custom_jvp`` bodies with their values, ``scan``/``cond``/``while`` bodies as
structure (their per-iteration values are not kept). Equations are also grouped by the Python
function that emitted them (``layer_norm``, ``multi_head_attention``...), so a large model reads as
blocks; past ``node_budget`` nodes the innermost, then largest, groups are collapsed to one node
each (``collapse=False`` expands everything, ``collapse={"layer_norm"}`` picks by name).

A gradient program (``draw_jaxpr(fg.grad(f), ...)`` or ``view="backward"``) is drawn as its
forward pass and its backward pass, each equation of the latter labelled with the VJP rule that
emitted it (read from the equation's traceback) and grouped per rule application.

The result is a :class:`JaxprGraph` (a ``graphviz.Digraph``): it shows inline in notebooks as SVG,
``.source`` is the DOT text, ``.render(path, format="svg"|"png"|"pdf")`` writes a file, and a
missing ``dot`` program raises :class:`GraphvizNotFoundError` saying how to install it.
"""

from __future__ import annotations

import contextlib
import html
import os
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import graphviz
import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, DropVar, Jaxpr, JaxprEqn, Literal, Var

__all__ = [
    "DEFAULT_NODE_BUDGET",
    "GraphvizNotFoundError",
    "JaxprGraph",
    "draw_jaxpr",
    "draw_trace",
]

DEFAULT_NODE_BUDGET = 150
"""Above this many nodes, ``collapse=None`` collapses clusters (innermost, then largest, first)."""

# ---- colours -------------------------------------------------------------------------------------
PARAM_COLOR = "#d62728"  # outline of parameters (differentiated inputs)
DATA_COLOR = "#1f77b4"  # outline of data inputs and other constants
DATA_FILL = "#e8f1fa"
GRAD_COLOR = "#c0392b"  # gradient text
OUTPUT_FILL = "#fff3cd"
OUTPUT_COLOR = "#b8860b"
ZERO_FILL = "#dedede"  # gradient exactly zero
NOFLOW_FILL = "#f5f5f5"  # no gradient flows
GREY_TEXT = "#808080"
SHAPE_TEXT = "#555555"
EDGE_COLOR = "#4d4d4d"
NOFLOW_EDGE = "#b3b3b3"
SCOPE_COLOR = "#b0b0b0"  # clusters of a Python function's equations
RULE_COLOR = "#e8a8a8"  # clusters of one VJP rule's equations
_CLUSTER_TEXT = {SCOPE_COLOR: "#707070", RULE_COLOR: "#b05050"}
FONT = "Helvetica"

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
def _friendly_graphviz_errors(engine: str):
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


# ---- summaries of values and gradients -----------------------------------------------------------


def _fmt(x: Any) -> str:
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
            where = f"{bad} non-finite ({_fmt(a[~finite].ravel()[0])})"
            if good.size == 0:
                return where
            stats = f"min {_fmt(good.min())} mean {_fmt(good.mean())} max {_fmt(good.max())}"
            return f"{stats}, {where}"
    return f"min {_fmt(a.min())} mean {_fmt(a.mean())} max {_fmt(a.max())}"


_SMALL = 4  # arrays with at most this many elements are shown in full


def _value_text(value: Any) -> str | None:
    a = _as_numpy(value)
    if a is None:
        return None
    if a.size == 0:
        return "empty"
    if a.ndim == 0:
        return _fmt(a.item())
    if a.size <= _SMALL:
        return "[" + " ".join(_fmt(x) for x in a.ravel()) + "]"
    return _stats(a)


# Gradient status of a value, from "a gradient flows" to "nothing known".
FLOWS, ZERO, NONE, CONST, UNKNOWN = "flows", "zero", "none", "const", "unknown"


def _grad_text(ct: Any) -> tuple[str, str | None]:
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
        return FLOWS, "grad " + _fmt(a.item())
    if a.size <= _SMALL:
        return FLOWS, "grad [" + " ".join(_fmt(x) for x in a.ravel()) + "]"
    text = "grad " + _stats(a)
    if nonzero < a.size:
        text += f"; {a.size - nonzero} of {a.size} exactly 0"
    return FLOWS, text


_NO_GRAD_TEXT = {
    NONE: "no grad reaches it",
    CONST: "no grad: independent of the parameters",
}


# ---- primitive params that matter ----------------------------------------------------------------


def _short_dtype(dtype: Any) -> str:
    try:
        return jax.core.ShapedArray((), dtype).str_short(short_dtypes=True).split("[")[0]
    except Exception:
        return str(dtype)


def _tuple(x: Any) -> str:
    x = tuple(x)
    return "(" + ",".join(str(v) for v in x) + ")"


def _einsum(eqn: JaxprEqn) -> str:
    """dot_general's dimension numbers as an einsum: ``ij,jk->ik``."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ln, rn = eqn.invars[0].aval.ndim, eqn.invars[1].aval.ndim
    letters = iter("ijklmnopqrstuvwxyzabcdefgh")
    lhs = [next(letters) for _ in range(ln)]
    rhs: list[str | None] = [None] * rn
    for a, b in [*zip(lb, rb), *zip(lc, rc)]:
        rhs[b] = lhs[a]
    rhs = [c if c is not None else next(letters) for c in rhs]
    out = (
        [lhs[a] for a in lb]
        + [lhs[d] for d in range(ln) if d not in lb and d not in lc]
        + [rhs[d] for d in range(rn) if d not in rb and d not in rc]
    )
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def _conv_spec(spec: Sequence[int], first: str, second: str) -> str:
    chars = ["?"] * len(spec)
    chars[spec[0]], chars[spec[1]] = first, second
    spatial = {1: "W", 2: "HW", 3: "DHW"}.get(len(spec) - 2, "0123456789")
    for k, d in enumerate(spec[2:]):
        chars[d] = spatial[k]
    return "".join(chars)


def _conv(eqn: JaxprEqn) -> str:
    p = eqn.params
    parts = []
    dn = p.get("dimension_numbers")
    if dn is not None and hasattr(dn, "lhs_spec"):
        parts.append(
            f"{_conv_spec(dn.lhs_spec, 'N', 'C')},{_conv_spec(dn.rhs_spec, 'O', 'I')}"
            f"->{_conv_spec(dn.out_spec, 'N', 'C')}"
        )
    parts.append("strides " + _tuple(p["window_strides"]))
    padding = p.get("padding")
    if padding is not None and any(tuple(pp) != (0, 0) for pp in padding):
        parts.append("pad " + ",".join(f"{lo}/{hi}" for lo, hi in padding))
    for key, label in (("lhs_dilation", "lhs dil"), ("rhs_dilation", "dil")):
        if p.get(key) is not None and any(d != 1 for d in p[key]):
            parts.append(f"{label} {_tuple(p[key])}")
    if p.get("feature_group_count", 1) != 1:
        parts.append(f"groups {p['feature_group_count']}")
    if p.get("batch_group_count", 1) != 1:
        parts.append(f"batch groups {p['batch_group_count']}")
    return " ".join(parts)


def _slice(eqn: JaxprEqn) -> str:
    p = eqn.params
    shape = eqn.invars[0].aval.shape
    strides = p.get("strides") or (1,) * len(shape)
    parts = []
    for start, limit, step, size in zip(p["start_indices"], p["limit_indices"], strides, shape):
        if (start, limit, step) == (0, size, 1):
            parts.append(":")
        else:
            parts.append(f"{start}:{limit}" + (f":{step}" if step != 1 else ""))
    return "[" + ", ".join(parts) + "]"


def _window(eqn: JaxprEqn) -> str:
    p = eqn.params
    text = "window " + _tuple(p["window_dimensions"]) + " strides " + _tuple(p["window_strides"])
    padding = p.get("padding")
    if padding is not None and any(tuple(pp) != (0, 0) for pp in padding):
        text += " pad " + ",".join(f"{lo}/{hi}" for lo, hi in padding)
    return text


def _padding(eqn: JaxprEqn) -> str:
    return "pad " + ",".join(f"{lo}/{hi}/{i}" for lo, hi, i in eqn.params["padding_config"])


def _body_name(eqn: JaxprEqn) -> str:
    """The name of a call: the jit's ``name``, else the body function's name."""
    p = eqn.params
    if isinstance(p.get("name"), str):
        return p["name"]
    body = p.get("call_jaxpr", p.get("jaxpr"))
    jaxpr = body.jaxpr if isinstance(body, ClosedJaxpr) else body
    info = getattr(jaxpr, "debug_info", None)
    name = getattr(info, "func_name", None)
    if isinstance(name, str) and name:
        return name.split(".")[-1].replace("<lambda>", "lambda")
    return eqn.primitive.name


def _axes(key: str) -> Callable[[JaxprEqn], str]:
    return lambda eqn: f"{key} " + _tuple(eqn.params[key])


_PARAMS: dict[str, Callable[[JaxprEqn], str]] = {
    "dot_general": _einsum,
    "broadcast_in_dim": lambda e: "dims " + _tuple(e.params["broadcast_dimensions"]),
    "transpose": lambda e: "perm " + _tuple(e.params["permutation"]),
    "squeeze": lambda e: "dims " + _tuple(e.params["dimensions"]),
    "reshape": lambda e: "",
    "convert_element_type": lambda e: "-> " + _short_dtype(e.params["new_dtype"]),
    "integer_pow": lambda e: f"y={e.params['y']}",
    "concatenate": lambda e: f"axis {e.params['dimension']}",
    "slice": _slice,
    "dynamic_slice": lambda e: "sizes " + _tuple(e.params["slice_sizes"]),
    "gather": lambda e: "slice " + _tuple(e.params["slice_sizes"]),
    "pad": lambda e: _padding(e),
    "iota": lambda e: f"dim {e.params['dimension']}",
    "conv_general_dilated": _conv,
    "reduce_window_sum": _window,
    "reduce_window_max": _window,
    "reduce_window_min": _window,
    "reduce_window": _window,
    "select_and_scatter_add": _window,
    "split": lambda e: f"sizes {_tuple(e.params['sizes'])} axis {e.params['axis']}",
    "sort": lambda e: f"dim {e.params['dimension']}",
    "top_k": lambda e: f"k={e.params['k']}",
    "jit": _body_name,
    "closed_call": _body_name,
    "core_call": _body_name,
    "custom_jvp_call": _body_name,
    "custom_vjp_call": _body_name,
    "remat2": lambda e: "(checkpoint)",
    "scan": lambda e: f"length {e.params['length']}" + (" reverse" if e.params["reverse"] else ""),
    "cond": lambda e: f"{len(e.params['branches'])} branches",
    "while": lambda e: "",
}
for _name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
              "reduce_xor", "argmax", "argmin"):
    _PARAMS[_name] = _axes("axes")
for _name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"):
    _PARAMS[_name] = lambda e: f"axis {e.params['axis']}" + (
        " reverse" if e.params.get("reverse") else ""
    )

# Params that never help a reader: layout/sharding hints, defaults, internal thunks.
_NOISY = frozenset({
    "out_sharding", "sharding", "precision", "accuracy", "preferred_element_type",
    "indices_are_sorted", "unique_indices", "mode", "fill_value", "update_jaxpr", "update_consts",
    "in_shardings", "out_shardings", "in_layouts", "out_layouts", "donated_invars", "ctx_mesh",
    "keep_unused", "inline", "compiler_options_kvs", "jvp_jaxpr_fun", "fwd_jaxpr_thunk", "bwd",
    "out_trees", "symbolic_zeros", "num_consts", "linear", "unroll", "policy", "prevent_cse",
    "differentiated", "weak_type", "index_dtype", "algorithm", "transpose_algorithm",
})


def _generic_params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        if key in _NOISY or value is None or value is False:
            continue
        if isinstance(value, (Jaxpr, ClosedJaxpr)) or callable(value):
            continue
        text = str(value)
        if len(text) <= 28:
            parts.append(f"{key}={text}")
    return " ".join(parts)


def _params_text(eqn: JaxprEqn) -> str:
    fmt = _PARAMS.get(eqn.primitive.name)
    try:
        return fmt(eqn) if fmt is not None else _generic_params(eqn.params)
    except Exception:  # an unexpected params layout must not stop the drawing
        return _generic_params(eqn.params)


# ---- where each equation came from: user functions, forward or backward pass ---------------------


def _dir_of(module: Any) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


@dataclass(frozen=True)
class _Origins:
    skip: tuple[str, ...]
    jax_dirs: tuple[str, ...]
    backward_file: str
    rules_dir: str

    @classmethod
    def make(cls) -> _Origins:
        import jaxlib

        import funcgrad.interpret
        import funcgrad.interpret.rules

        skip = [_dir_of(jax), _dir_of(jaxlib), _dir_of(funcgrad.interpret), _dir_of_this()]
        stdlib = sysconfig.get_paths().get("stdlib")
        if stdlib:
            skip.append(os.path.abspath(stdlib) + os.sep)
        return cls(
            skip=tuple(skip),
            jax_dirs=(_dir_of(jax), _dir_of(jaxlib)),
            backward_file=os.path.join(_dir_of(funcgrad.interpret), "backward.py"),
            rules_dir=_dir_of(funcgrad.interpret.rules),
        )


def _dir_of_this() -> str:
    return os.path.dirname(os.path.abspath(__file__)) + os.sep


_ORIGINS: list[_Origins] = []


def _origins() -> _Origins:
    if not _ORIGINS:
        _ORIGINS.append(_Origins.make())
    return _ORIGINS[0]


def _frames(eqn: JaxprEqn) -> list[Any]:
    """The equation's Python stack, outermost call first (empty if JAX kept none)."""
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is None:
        return []
    try:
        return list(tb.frames)[::-1]
    except Exception:
        return []


def _user_stack(frames: list[Any], origins: _Origins) -> tuple[tuple[str, str, int], ...]:
    """(file, function, line) of the frames in user code (not JAX, not funcgrad's interpreter)."""
    out = []
    for f in frames:
        path = f.file_name
        if path.startswith("<frozen") or path.startswith(origins.skip):
            continue
        out.append((path, f.function_name, f.line_num))
    return tuple(out)


def _backward_rule(frames: list[Any], origins: _Origins) -> str | None:
    """For an equation emitted by funcgrad's backward pass, the rule that emitted it, else None."""
    inner_first = [f for f in frames[::-1] if not f.file_name.startswith(origins.jax_dirs)]
    for k, f in enumerate(inner_first):
        if f.file_name == origins.backward_file:
            caller = inner_first[k - 1] if k else f
            name = caller.function_name
            if "accumulate" in name:
                return "sum of cotangents"
            if caller.file_name.startswith(origins.rules_dir):
                return name.split(".<locals>")[0]
            return name.split(".")[-1]
    return None


# ---- the model of the drawing: levels (jaxprs), items (equations) and groups (clusters) ----------


@dataclass(eq=False)
class _Level:
    """One jaxpr being drawn, and what is known about its variables."""

    jaxpr: Jaxpr
    values: dict[Var, Any] | None  # None: structure only (scan bodies, or values=False)
    active: set[Var] | None
    cts: dict[Var, Any] | None
    grad_mode: str  # "full", "custom" (a custom rule replaced the body's gradients), "off"
    override: dict[Var, tuple[_Level, Any]] = field(default_factory=dict)

    def value(self, v: Any) -> Any:
        if isinstance(v, Literal):
            return v.val
        if self.values is None:
            return None
        return self.values.get(v)

    def grad(self, v: Any) -> tuple[str, str | None]:
        """(status, text) of ``v``'s gradient."""
        if self.grad_mode == "off" or isinstance(v, (Literal, DropVar)):
            return UNKNOWN, None
        if self.grad_mode == "custom" and v in self.override:
            outer, outer_v = self.override[v]
            return outer.grad(outer_v)
        if self.active is not None and v not in self.active:
            return CONST, _NO_GRAD_TEXT[CONST]
        if self.grad_mode == "custom":
            return UNKNOWN, None
        ct = (self.cts or {}).get(v)
        if ct is None:
            return NONE, _NO_GRAD_TEXT[NONE]
        return _grad_text(ct)


@dataclass(eq=False)
class _Eqn:
    index: int
    eqn: JaxprEqn
    body: _Group | None = None  # a call's or a control-flow primitive's sub-jaxpr(s)
    rule: str | None = None  # in a gradient program: the VJP rule that emitted this equation


@dataclass(eq=False)
class _Body:
    """One sub-jaxpr of a call or control-flow equation, and which outer values feed its inputs."""

    title: str | None
    level: _Level
    items: list[Any]
    sources: list[Any]  # outer invars (Var or Literal), one per body invar
    consts: list[Any]  # values of the body's constvars


@dataclass(eq=False)
class _Group:
    """A cluster: a call's body (kind "call"), control flow ("control"), a Python function's
    equations ("scope") or the forward/backward half of a gradient program ("phase")."""

    kind: str
    name: str
    title: str
    items: list[Any] = field(default_factory=list)  # scope/phase: items of the same level
    bodies: list[_Body] = field(default_factory=list)  # call/control: the sub-jaxprs
    owner: _Eqn | None = None
    collapsed: bool = False
    depth: int = 0
    color: str = "#999999"
    kinds: list[str] = field(default_factory=list)  # a call's primitive(s), for its title
    where: str = ""  # a scope's call site, ``model.py:12``


_CALLS = {"jit", "pjit", "closed_call", "core_call", "call", "custom_jvp_call", "custom_vjp_call",
          "remat2", "checkpoint"}
_CALL_KIND = {
    "custom_jvp_call": "custom_jvp: gradient from its JVP rule",
    "custom_vjp_call": "custom_vjp: gradient from its bwd function",
    "remat2": "checkpoint",
    "checkpoint": "checkpoint",
}


def _open(body: Any) -> tuple[Jaxpr, list[Any]]:
    if isinstance(body, ClosedJaxpr):
        return body.jaxpr, list(body.consts)
    return body, []


class _Builder:
    """Turns a trace (or a bare jaxpr) into the tree of items and groups that gets drawn."""

    def __init__(self, *, scopes: bool) -> None:
        self.scopes = scopes
        self.origins = _origins()

    # -- levels --------------------------------------------------------------------------------
    def level_of_trace(self, trace: Any, grad_mode: str) -> _Level:
        return _Level(
            jaxpr=trace.jaxpr,
            values=trace.values,
            active=trace.active if grad_mode != "off" else None,
            cts=trace.cotangents if grad_mode == "full" else None,
            grad_mode=grad_mode,
        )

    def items(self, level: _Level, records: dict[int, Any] | None) -> list[Any]:
        items = []
        for i, eqn in enumerate(level.jaxpr.eqns):
            item = _Eqn(i, eqn)
            item.body = self.body_group(item, level, (records or {}).get(i))
            items.append(item)
        return self.group(items)

    # -- sub-jaxprs ----------------------------------------------------------------------------
    def body_group(self, item: _Eqn, level: _Level, record: Any) -> _Group | None:
        eqn = item.eqn
        name = eqn.primitive.name
        p = eqn.params
        if name in _CALLS and ("jaxpr" in p or "call_jaxpr" in p):
            return self.call_group(item, level, record)
        if name == "scan":
            body = self.structure_body(None, p["jaxpr"], list(eqn.invars))
            return _Group(
                "control", "scan", f"scan × {p['length']} (body structure; values per "
                "iteration are not kept)", bodies=[body], owner=item, color="#8c564b",
            )
        if name == "cond":
            ops = list(eqn.invars[1:])
            bodies = [self.structure_body(f"branch {k}", b, ops)
                      for k, b in enumerate(p["branches"])]
            return _Group("control", "cond", f"cond: {len(bodies)} branches (structure; only the "
                          "one taken ran)", bodies=bodies, owner=item, color="#8c564b")
        if name == "while":
            cn, bn = p["cond_nconsts"], p["body_nconsts"]
            ins = list(eqn.invars)
            carry = ins[cn + bn:]
            bodies = [
                self.structure_body("condition", p["cond_jaxpr"], ins[:cn] + carry),
                self.structure_body("body", p["body_jaxpr"], ins[cn:cn + bn] + carry),
            ]
            return _Group("control", "while", "while loop (structure)", bodies=bodies,
                          owner=item, color="#8c564b")
        return None

    def structure_body(self, title: str | None, body: Any, sources: list[Any]) -> _Body:
        jaxpr, consts = _open(body)
        level = _Level(jaxpr, None, None, None, "off")
        return _Body(title, level, self.items(level, None), sources, consts)

    def call_group(self, item: _Eqn, level: _Level, record: Any) -> _Group | None:
        eqn = item.eqn
        prim = eqn.primitive.name
        body = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
        jaxpr, consts = _open(body)
        if not jaxpr.eqns:  # an identity body (a custom_vjp around x -> x): one node says it all
            return None
        name = _body_name(eqn)
        has_trace = record is not None and getattr(record, "jaxpr", None) is jaxpr
        if has_trace and level.values is not None:
            if level.grad_mode == "full" and prim in ("custom_jvp_call", "custom_vjp_call"):
                mode = "custom"
            else:
                mode = level.grad_mode
            sub = _Level(
                jaxpr,
                record.values,
                record.active if mode != "off" else None,
                (record.cotangents or {}) if mode == "full" else None,
                mode,
            )
            records = record.records
        else:
            sub = _Level(jaxpr, None, None, None, "off")
            records = None
        if sub.grad_mode == "custom":
            sub.override = {
                bv: (level, ov)
                for bv, ov in zip(jaxpr.outvars, eqn.outvars)
                if isinstance(bv, Var) and not isinstance(ov, DropVar)
            }
        items = self.items(sub, records)
        kind = _CALL_KIND.get(prim, prim)
        group = _Group("call", name, f"{name}  ({kind})", owner=item, color="#7f7f7f")
        group.kinds = [kind]
        group.bodies = [_Body(None, sub, items, list(eqn.invars), consts)]
        self._unwrap(group)
        return group

    @staticmethod
    def _unwrap(group: _Group) -> None:
        """``custom_jvp(relu) > jit(relu) > max``: draw one cluster, not two nested ones.

        (The inner level's gradients, where it does not know them, already come from the outer
        level through its ``override``.)
        """
        body = group.bodies[0]
        while (
            len(body.items) == 1
            and isinstance(body.items[0], _Eqn)
            and body.items[0].body is not None
            and body.items[0].body.kind == "call"
            and not body.consts
        ):
            inner_item = body.items[0]
            inner_group = inner_item.body
            if list(inner_item.eqn.invars) != list(body.level.jaxpr.invars) or list(
                inner_item.eqn.outvars
            ) != list(body.level.jaxpr.outvars):
                return
            names = group.name if inner_group.name == group.name else (
                f"{group.name} > {inner_group.name}"
            )
            group.kinds += [k for k in inner_group.kinds if k not in group.kinds]
            group.title = f"{names}  ({', '.join(group.kinds)})"
            inner = inner_group.bodies[0]
            body = _Body(None, inner.level, inner.items, body.sources, inner.consts)
            group.bodies = [body]

    # -- grouping by Python function and by pass -----------------------------------------------
    def group(self, items: list[_Eqn]) -> list[Any]:
        if not items:
            return items
        origins = self.origins
        frames = [_frames(it.eqn) for it in items]
        rules = [_backward_rule(f, origins) for f in frames]
        for it, rule in zip(items, rules):
            it.rule = rule
        backward = [r is not None for r in rules]
        if any(backward) and not all(backward):
            return self.phases(items, frames, backward)
        return self.scoped(items, [_user_stack(f, origins) for f in frames])

    def phases(self, items: list[_Eqn], frames: list[list[Any]], backward: list[bool]) -> list:
        """A gradient program: its forward pass, then what the VJP rules emitted (then whatever
        the function computes from the gradient), each a cluster."""
        out: list[Any] = []
        start = 0
        for k in range(1, len(items) + 1):
            if k < len(items) and backward[k] == backward[start]:
                continue
            run = items[start:k]
            if backward[start]:
                out.append(_Group("phase", "backward", "backward pass: funcgrad's VJP rules, "
                                  "last equation first", items=self.rule_runs(run),
                                  color=PARAM_COLOR))
            else:
                stacks = [_user_stack(f, self.origins) for f in frames[start:k]]
                title = ("forward pass: evaluate, keeping every value" if not out
                         else "after the backward pass")
                out.append(_Group("phase", "forward" if not out else "after", title,
                                  items=self.scoped(run, stacks), color=DATA_COLOR))
            start = k
        return out

    def rule_runs(self, items: list[_Eqn]) -> list[Any]:
        """Consecutive equations emitted by the same VJP rule, as one cluster each."""
        if not self.scopes:
            return list(items)
        out: list[Any] = []
        for it in items:
            if out and isinstance(out[-1], _Group) and out[-1].name == it.rule:
                out[-1].items.append(it)
            else:
                out.append(_Group("scope", it.rule or "backward", f"{it.rule}  (VJP rule)",
                                  items=[it], color=RULE_COLOR))
        return _simplify(out)

    def scoped(self, items: list[_Eqn], stacks: list[tuple]) -> list[Any]:
        """Group equations by the (nested) Python function calls that emitted them."""
        if not self.scopes or len(items) < 3:
            return list(items)
        common = _common_prefix(stacks)
        root: list[Any] = []
        open_: list[tuple[Any, _Group]] = []
        for item, stack in zip(items, stacks):
            rel = stack[common:]
            keys = [(*rel[:k], rel[k][:2]) for k in range(len(rel))]
            n = 0
            while n < len(open_) and n < len(keys) and open_[n][0] == keys[n]:
                n += 1
            del open_[n:]
            for k in range(n, len(keys)):
                func = rel[k][1]
                caller = rel[k - 1] if k else (stack[common - 1] if common else None)
                where = f"{os.path.basename(caller[0])}:{caller[2]}" if caller else ""
                short = func.split(".")[-1].replace("<lambda>", "lambda")
                grp = _Group("scope", short, short + (f"  (called at {where})" if where else ""),
                             color=SCOPE_COLOR, where=where)
                (open_[-1][1].items if open_ else root).append(grp)
                open_.append((keys[k], grp))
            (open_[-1][1].items if open_ else root).append(item)
        root = _simplify(root)
        while len(root) == 1 and isinstance(root[0], _Group) and root[0].kind == "scope":
            root = root[0].items
        return root


def _common_prefix(stacks: list[tuple]) -> int:
    if not stacks:
        return 0
    first = stacks[0]
    n = min(len(s) for s in stacks)
    for s in stacks[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def _simplify(items: list[Any]) -> list[Any]:
    """Drop scope groups that hold a single item (a cluster around one node says nothing)."""
    out = []
    for it in items:
        if isinstance(it, _Group) and it.kind == "scope":
            it.items = _simplify(it.items)
            if len(it.items) == 1:
                out.append(it.items[0])
                continue
        out.append(it)
    return out


# ---- sizes and collapsing ------------------------------------------------------------------------


def _walk_groups(items: Iterable[Any], depth: int = 1) -> Iterable[_Group]:
    for it in items:
        group = it.body if isinstance(it, _Eqn) else it
        if not isinstance(group, _Group):
            continue
        group.depth = depth
        yield group
        if group.kind in ("scope", "phase"):
            yield from _walk_groups(group.items, depth + 1)
        for body in group.bodies:
            yield from _walk_groups(body.items, depth + 1)


def _size(items: Iterable[Any]) -> int:
    """How many nodes drawing ``items`` takes, given which groups are collapsed."""
    total = 0
    for it in items:
        group = it.body if isinstance(it, _Eqn) else it
        if group is None or group.collapsed:
            total += 1
        else:
            total += _expanded_size(group)
    return total


def _expanded_size(group: _Group) -> int:
    if group.kind in ("scope", "phase"):
        return _size(group.items)
    n = sum(_size(b.items) + len(b.level.jaxpr.constvars) for b in group.bodies)
    return n + (1 if group.kind == "control" else 0)


def _choose_collapsed(
    items: list[Any], fixed: int, collapse: Any, node_budget: int | None
) -> list[_Group]:
    """Mark groups collapsed per ``collapse`` (and ``node_budget``); return every group."""
    groups = list(_walk_groups(items))
    for g in groups:
        g.collapsed = False
    if collapse is False or not groups:
        return groups
    if collapse is True:
        for g in groups:
            g.collapsed = True
        return groups
    if collapse is not None:
        names = {collapse} if isinstance(collapse, str) else set(collapse)
        known = {g.name for g in groups}
        unknown = names - known
        if unknown:
            raise ValueError(
                f"collapse={sorted(unknown)!r}: no cluster of that name in this graph; its "
                f"clusters are {sorted(known)}. Pass collapse=True/False or a set of those names."
            )
        for g in groups:
            g.collapsed = g.name in names
        return groups
    if node_budget is None or fixed + _size(items) <= node_budget:
        return groups
    # Innermost first (detail that matters least at a glance), then the largest; groups of the
    # same name at the same depth (every layer_norm of a model) collapse together, so that the
    # drawing stays uniform.
    classes: dict[tuple[int, str], list[_Group]] = {}
    for g in groups:
        classes.setdefault((g.depth, g.name), []).append(g)
    # In a gradient program the forward pass is context: it goes first.
    order = sorted(
        classes.values(),
        key=lambda gs: (
            not (gs[0].kind == "phase" and gs[0].name == "forward"),
            -gs[0].depth,
            -sum(_expanded_size(g) for g in gs),
        ),
    )
    for members in order:
        if fixed + _size(items) <= node_budget:
            break
        if members[0].kind == "phase" and members[0].name == "backward":
            continue  # what a gradient program is drawn for: never hidden automatically
        for g in members:
            if _expanded_size(g) > 1:
                g.collapsed = True
    return groups


# ---- emitting DOT --------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _font(text: str, color: str | None = None, size: int | None = None) -> str:
    attrs = ""
    if color:
        attrs += f' COLOR="{color}"'
    if size:
        attrs += f' POINT-SIZE="{size}"'
    return f"<FONT{attrs}>{_esc(text)}</FONT>" if attrs else _esc(text)


def _label(lines: list[str]) -> str:
    return "<" + "<BR/>".join(lines) + ">"


_STATUS_ORDER = (FLOWS, ZERO, NONE, CONST, UNKNOWN)
_LARGE_GRAPH = 200  # nodes; past this, cap dot's layout iterations


def _combine(statuses: list[str]) -> str:
    """A node's status from its outputs': the most gradient any of them gets."""
    for s in _STATUS_ORDER:
        if s in statuses:
            return s
    return UNKNOWN


def _status_style(status: str, grads: bool) -> dict[str, str]:
    if not grads or status in (FLOWS, UNKNOWN):
        return {}
    if status == ZERO:
        return {"fillcolor": ZERO_FILL, "fontcolor": GREY_TEXT, "color": GREY_TEXT}
    return {
        "style": "rounded,filled,dashed",
        "fillcolor": NOFLOW_FILL,
        "fontcolor": GREY_TEXT,
        "color": GREY_TEXT,
    }


class _Emitter:
    def __init__(self, *, values: bool, grads: bool) -> None:
        self.values = values
        self.grads = grads
        self.count = 0
        self.n_nodes = 0
        self.edges: dict[tuple[str, str], dict[str, str]] = {}

    def new_id(self, prefix: str = "n") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    # -- labels --------------------------------------------------------------------------------
    def var_lines(self, level: _Level, v: Any, prefix: str = "") -> tuple[list[str], str]:
        """Shape, value and gradient lines of one variable, and its gradient status."""
        aval = v.aval
        shape = aval.str_short(short_dtypes=True) if hasattr(aval, "str_short") else str(aval)
        value = _value_text(level.value(v)) if self.values else None
        if value is not None and aval.shape == ():
            lines = [_font(f"{prefix}{shape} ", SHAPE_TEXT) + _font(value)]
        else:
            lines = [_font(prefix + shape, SHAPE_TEXT)]
            if value is not None:
                lines.append(_font(value))
        status, text = level.grad(v) if self.grads else (UNKNOWN, None)
        if text is not None:
            lines.append(_font(text, GRAD_COLOR if status == FLOWS else GREY_TEXT))
        return lines, status

    def outputs_lines(self, level: _Level, outvars: list[Any], limit: int = 4):
        lines: list[str] = []
        statuses = []
        real = [v for v in outvars if not isinstance(v, DropVar)]
        for k, v in enumerate(real[:limit]):
            prefix = f"#{k} " if len(real) > 1 else ""
            ls, st = self.var_lines(level, v, prefix)
            lines += ls
            statuses.append(st)
        if len(real) > limit:
            lines.append(_font(f"... {len(real) - limit} more outputs", GREY_TEXT))
            statuses += [level.grad(v)[0] if self.grads else UNKNOWN for v in real[limit:]]
        return lines, _combine(statuses)

    def header(self, item: _Eqn) -> str:
        eqn = item.eqn
        prim = eqn.primitive.name
        if prim == "funcgrad_tag":
            return f"<B>{_esc(eqn.params['name'])}</B> " + _font("fg.tag", GREY_TEXT)
        args = ""
        if any(isinstance(v, Literal) for v in eqn.invars):
            args = "(" + ", ".join(
                _fmt_literal(v) if isinstance(v, Literal) else "·" for v in eqn.invars
            ) + ")"
        params = _params_text(eqn)
        text = f"<B>{_esc(prim)}</B>{_esc(args)}"
        if params:
            text += " " + _esc(params)
        return text

    # -- nodes and edges ---------------------------------------------------------------------------
    def node(self, graph: graphviz.Digraph, lines: list[str], **attrs: str) -> str:
        nid = self.new_id()
        self.n_nodes += 1
        graph.node(nid, _label(lines), **attrs)
        return nid

    def edge(self, src: str | None, dst: str, level: _Level | None, v: Any) -> None:
        if src is None or (src, dst) in self.edges:
            return
        attrs: dict[str, str] = {}
        if self.grads and level is not None and isinstance(v, Var):
            status = level.grad(v)[0]
            if status in (NONE, CONST):
                attrs = {"color": NOFLOW_EDGE, "style": "dashed"}
        self.edges[(src, dst)] = attrs

    def literal_node(self, graph: graphviz.Digraph, lit: Literal) -> str:
        return self.node(graph, [_font(_fmt_literal(lit))], shape="plaintext", style="")

    def ref(self, graph: graphviz.Digraph, env: dict[Var, str], v: Any) -> str | None:
        if isinstance(v, Literal):
            return self.literal_node(graph, v)
        return env.get(v)

    # -- items ---------------------------------------------------------------------------------
    def emit_items(self, items, level: _Level, graph, env: dict[Var, str], uses) -> None:
        for it in items:
            if isinstance(it, _Eqn):
                if it.body is not None and not it.body.collapsed:
                    self.emit_expanded(it, level, graph, env)
                else:
                    self.emit_eqn(it, level, graph, env)
            elif it.collapsed:
                self.emit_collapsed_group(it, level, graph, env, uses)
            else:
                sub = self.cluster(it.title, it.color, dashed=it.kind == "scope")
                self.emit_items(it.items, level, sub, env, uses)
                graph.subgraph(sub)

    def cluster(self, title: str, color: str, dashed: bool = False) -> graphviz.Digraph:
        return graphviz.Digraph(
            name=self.new_id("cluster_"),
            graph_attr={
                "label": title,
                "labeljust": "l",
                "fontsize": "10",
                "fontcolor": _CLUSTER_TEXT.get(color, color),
                "color": color,
                "style": "rounded,dashed" if dashed else "rounded",
            },
        )

    def emit_eqn(self, it: _Eqn, level: _Level, graph, env: dict[Var, str]) -> None:
        eqn = it.eqn
        lines = [self.header(it)]
        if it.body is not None:  # a collapsed call or control-flow equation
            n_ops = _count_eqns(it.body)
            lines[0] = (
                f"<B>{_esc(it.body.name)}</B> "
                + _font(f"{eqn.primitive.name}, {n_ops} ops, collapsed", GREY_TEXT)
            )
        if it.rule:
            lines.append(_font(f"from {it.rule}", GREY_TEXT, 9))
        out_lines, status = self.outputs_lines(level, list(eqn.outvars))
        lines += out_lines
        attrs = _status_style(status, self.grads)
        if it.body is not None:
            attrs["shape"] = "box3d"
            attrs.setdefault("style", "filled")
            attrs["style"] = attrs["style"].replace("rounded,", "")
        attrs["tooltip"] = _tooltip(eqn)
        nid = self.node(graph, lines, **attrs)
        for v in eqn.invars:
            if isinstance(v, Var):
                self.edge(env.get(v), nid, level, v)
        for v in eqn.outvars:
            if not isinstance(v, DropVar):
                env[v] = nid

    def emit_collapsed_group(self, g: _Group, level: _Level, graph, env, uses) -> None:
        inputs, outputs = _boundary(g, level, uses)
        n_ops = _count_eqns(g)
        lines = [f"<B>{_esc(g.name)}</B> " + _font(f"{n_ops} ops, collapsed", GREY_TEXT)]
        if g.where:
            lines.append(_font("called at " + g.where, GREY_TEXT, 9))
        out_lines, status = self.outputs_lines(level, outputs, limit=3)
        lines += out_lines
        attrs = _status_style(status, self.grads)
        attrs["shape"] = "box3d"
        attrs["style"] = attrs.get("style", "filled").replace("rounded,", "")
        attrs["tooltip"] = g.title
        nid = self.node(graph, lines, **attrs)
        for v in inputs:
            self.edge(env.get(v), nid, level, v)
        for v in outputs:
            env[v] = nid
        # Values produced and consumed inside the group all live in the one node now.
        for v in _produced(g):
            env.setdefault(v, nid)

    def emit_expanded(self, it: _Eqn, level: _Level, graph, env: dict[Var, str]) -> None:
        g = it.body
        eqn = it.eqn
        outer = self.cluster(g.title, g.color)
        body_outs: list[list[str | None]] = []
        for body in g.bodies:
            target = outer if len(g.bodies) == 1 else self.cluster(body.title or "", g.color, True)
            benv: dict[Var, str] = {}
            for bv, src in zip(body.level.jaxpr.invars, body.sources):
                if isinstance(src, Literal):
                    benv[bv] = self.literal_node(target, src)
                elif src in env:
                    benv[bv] = env[src]
            for cv, c in zip(body.level.jaxpr.constvars, body.consts):
                benv[cv] = self.input_node(target, body.level, cv, "const", role="data",
                                           value=c)
            self.emit_items(body.items, body.level, target, benv, _uses(body.level.jaxpr))
            body_outs.append([self.ref(target, benv, v) for v in body.level.jaxpr.outvars])
            if target is not outer:
                outer.subgraph(target)
        if g.kind == "call":
            for ov, ref in zip(eqn.outvars, body_outs[0]):
                if not isinstance(ov, DropVar) and ref is not None:
                    env[ov] = ref
        else:  # control flow: one node for the loop's (or cond's) actual results
            lines = [self.header(it)]
            if it.rule:
                lines.append(_font(f"from {it.rule}", GREY_TEXT, 9))
            out_lines, status = self.outputs_lines(level, list(eqn.outvars))
            lines += out_lines
            attrs = _status_style(status, self.grads)
            attrs["tooltip"] = _tooltip(eqn)
            nid = self.node(outer, lines, **attrs)
            for refs in body_outs:
                for ref in refs:
                    self.edge(ref, nid, None, None)
            if eqn.primitive.name == "cond":
                self.edge(env.get(eqn.invars[0]), nid, level, eqn.invars[0])
            for ov in eqn.outvars:
                if not isinstance(ov, DropVar):
                    env[ov] = nid
        graph.subgraph(outer)

    def input_node(
        self, graph, level: _Level, v: Var, name: str, role: str, value: Any = None
    ) -> str:
        lines = [f"<B>{_esc(name)}</B>"]
        var_lines, status = self.var_lines(level, v)
        if value is not None and level.values is None and self.values:
            text = _value_text(value)
            if text is not None:
                var_lines.insert(1, _font(text))
        lines += var_lines
        if role == "param":
            attrs = {"color": PARAM_COLOR, "penwidth": "2"}
            if self.grads and status == ZERO:
                attrs.update(fillcolor=ZERO_FILL)
            elif self.grads and status in (NONE, CONST):
                attrs.update(fillcolor=NOFLOW_FILL, style="rounded,filled,dashed")
        else:
            attrs = {"color": DATA_COLOR, "fillcolor": DATA_FILL}
        attrs["tooltip"] = f"{name}: {'parameter' if role == 'param' else 'data / constant'}"
        return self.node(graph, lines, **attrs)


def _fmt_literal(lit: Literal) -> str:
    a = _as_numpy(lit.val)
    if a is None or a.size != 1:
        return "const"
    return _fmt(a.item())


def _tooltip(eqn: JaxprEqn) -> str:
    from funcgrad.interpret.errors import source_line

    return f"{eqn.primitive.name} at {source_line(eqn)}"


def _uses(jaxpr: Jaxpr) -> dict[Var, int]:
    """How many times each variable is read in ``jaxpr`` (its outputs count as reads)."""
    uses: dict[Var, int] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, Var):
                uses[v] = uses.get(v, 0) + 1
    for v in jaxpr.outvars:
        if isinstance(v, Var):
            uses[v] = uses.get(v, 0) + 1
    return uses


def _group_eqns(g: _Group) -> list[JaxprEqn]:
    """The equations of this level that a scope/phase group holds (not those of nested bodies)."""
    out = []
    for it in g.items:
        if isinstance(it, _Eqn):
            out.append(it.eqn)
        elif isinstance(it, _Group):
            out.extend(_group_eqns(it))
    return out


def _produced(g: _Group) -> list[Var]:
    return [v for e in _group_eqns(g) for v in e.outvars if not isinstance(v, DropVar)]


def _boundary(g: _Group, level: _Level, uses: dict[Var, int]) -> tuple[list[Var], list[Var]]:
    """(values the group reads from outside, values it produces that are read outside)."""
    eqns = _group_eqns(g)
    produced = set(_produced(g))
    inner_uses: dict[Var, int] = {}
    inputs: list[Var] = []
    seen: set[Var] = set()
    for e in eqns:
        for v in e.invars:
            if not isinstance(v, Var):
                continue
            inner_uses[v] = inner_uses.get(v, 0) + 1
            if v not in produced and v not in seen:
                seen.add(v)
                inputs.append(v)
    outputs = [
        v for e in eqns for v in e.outvars
        if not isinstance(v, DropVar) and uses.get(v, 0) > inner_uses.get(v, 0)
    ]
    return inputs, outputs


def _count_eqns(g: _Group) -> int:
    """How many equations a group holds, nested bodies included."""
    items = list(g.items) + [it for b in g.bodies for it in b.items]
    total = 0
    for it in items:
        if isinstance(it, _Group):
            total += _count_eqns(it)
        elif it.body is not None:
            total += _count_eqns(it.body)
        else:
            total += 1
    return total


# ---- the legend ----------------------------------------------------------------------------------


def _legend(grads: bool, notes: list[str]) -> str:
    cells = [
        f'<TD COLOR="{PARAM_COLOR}" BGCOLOR="white">parameter (differentiated input)</TD>',
        f'<TD COLOR="{DATA_COLOR}" BGCOLOR="{DATA_FILL}">data / constant input</TD>',
        '<TD BGCOLOR="white">operation: value, '
        + (f'<FONT COLOR="{GRAD_COLOR}">gradient</FONT>' if grads else "shape")
        + "</TD>",
        f'<TD COLOR="{OUTPUT_COLOR}" BGCOLOR="{OUTPUT_FILL}">output</TD>',
    ]
    if grads:
        cells += [
            f'<TD BGCOLOR="{ZERO_FILL}"><FONT COLOR="{GREY_TEXT}">gradient exactly 0</FONT></TD>',
            f'<TD BGCOLOR="{NOFLOW_FILL}" STYLE="dashed" COLOR="{GREY_TEXT}"><FONT COLOR="'
            f'{GREY_TEXT}">no gradient flows (data, labels, stop_gradient)</FONT></TD>',
        ]
    cells.append('<TD BGCOLOR="white" STYLE="dashed">box with a shadow: a collapsed cluster</TD>')
    rows = ["<TR>" + "".join(cells) + "</TR>"]
    for note in notes:
        rows.append(f'<TR><TD COLSPAN="{len(cells)}" BORDER="0" ALIGN="LEFT">'
                    f"{_esc(note)}</TD></TR>")
    return (
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="3" CELLPADDING="3">'
        + "".join(rows)
        + "</TABLE>>"
    )


# ---- drawing -------------------------------------------------------------------------------------


def _leaf_paths(tree: Any) -> list[str]:
    from funcgrad._paths import path_to_str

    return [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _output_names(trace: Any, n_out: int, base: str = "output") -> list[str]:
    value = getattr(trace, "value", None)
    paths = _leaf_paths(value) if value is not None else []
    aux = getattr(trace, "aux", None)
    aux_paths = _leaf_paths(aux) if aux is not None else []
    if len(paths) + len(aux_paths) != n_out:
        return [base] if n_out == 1 else [f"{base}[{k}]" for k in range(n_out)]
    names = [base + (("" if p.startswith("[") else ".") + p if p else "") for p in paths]
    names += ["aux" + (("" if p.startswith("[") else ".") + p if p else "") for p in aux_paths]
    return names


def draw_trace(
    trace: Any,
    *,
    grads: bool | None = None,
    values: bool = True,
    collapse: bool | str | Iterable[str] | None = None,
    node_budget: int | None = DEFAULT_NODE_BUDGET,
    rankdir: str = "LR",
    scopes: bool = True,
    legend: bool = True,
    output_names: Sequence[str] | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> JaxprGraph:
    """Draw a :class:`funcgrad.Trace` (from ``fg.trace``): a node per equation, values, gradients.

    ``grads`` (default: whether the trace holds cotangents) adds each node's gradient and greys
    nodes whose gradient is exactly zero (filled) or that no gradient reaches (dashed);
    ``values=False`` leaves values out. ``collapse``: ``None`` collapses clusters only past
    ``node_budget`` nodes (innermost, then largest, first), ``True``/``False`` collapses/expands
    every cluster, a set of names (``{"layer_norm", "relu"}``) collapses those. ``scopes=False``
    stops grouping equations by the Python function that emitted them. ``rankdir="TB"`` draws top
    to bottom. ``output_names`` names the output nodes (default ``output`` plus the pytree path).
    """
    if grads is None:
        grads = trace.cotangents is not None
    if grads and trace.cotangents is None:
        raise ValueError(
            "draw_trace(grads=True) needs a trace with cotangents: make it with fg.trace(f, ...) "
            "(or pass grads=False to draw values only)"
        )
    input_names = getattr(trace, "input_names", None)
    const_names = getattr(trace, "const_names", None)
    jaxpr = trace.jaxpr
    if output_names is None:
        output_names = _output_names(trace, len(jaxpr.outvars))
    builder = _Builder(scopes=scopes)
    level = builder.level_of_trace(trace, "full" if grads else "off")
    if not values and not grads:
        level.values = None
    items = builder.items(level, trace.records)
    return _render(
        level, items, input_names, const_names, list(output_names), grads=grads, values=values,
        collapse=collapse, node_budget=node_budget, rankdir=rankdir, legend=legend, title=title,
        notes=list(notes),
    )


def _render(
    level: _Level,
    items: list[Any],
    input_names: Sequence[str] | None,
    const_names: Sequence[str | None] | None,
    output_names: list[str],
    *,
    grads: bool,
    values: bool,
    collapse: Any,
    node_budget: int | None,
    rankdir: str,
    legend: bool,
    title: str | None,
    notes: list[str],
) -> JaxprGraph:
    jaxpr = level.jaxpr
    fixed = len(jaxpr.invars) + len(jaxpr.constvars) + len(jaxpr.outvars)
    groups = _choose_collapsed(items, fixed, collapse, node_budget)
    notes = list(notes)
    parents = _parents(groups)
    collapsed = [g for g in groups if g.collapsed and not _inside_collapsed(g, parents)]
    if collapse is None and collapsed:
        counts: dict[str, int] = {}
        for g in collapsed:
            counts[g.name] = counts.get(g.name, 0) + 1
        which = ", ".join(f"{n} ×{c}" if c > 1 else n for n, c in counts.items())
        notes.append(
            f"{len(collapsed)} cluster(s) collapsed to stay within node_budget={node_budget}: "
            f"{which}. Expand them with collapse=False or a larger node_budget, or pick with "
            "collapse={names}."
        )
    total = fixed + _size(items)
    if collapse is None and node_budget is not None and total > node_budget:
        notes.append(
            f"{total} nodes, over node_budget={node_budget} even after collapsing what could be "
            "collapsed (a gradient program's backward pass never is)."
        )

    graph = JaxprGraph(
        name="funcgrad",
        graph_attr={
            "rankdir": rankdir,
            "fontname": FONT,
            "fontsize": "10",
            "nodesep": "0.12",
            "ranksep": "0.3",
            "newrank": "true",
        },
        node_attr={
            "shape": "box",
            "style": "rounded,filled",
            "fillcolor": "white",
            "fontname": FONT,
            "fontsize": "10",
            "margin": "0.07,0.03",
            "height": "0.3",
        },
        edge_attr={"color": EDGE_COLOR, "arrowsize": "0.6"},
    )
    em = _Emitter(values=values, grads=grads)
    env: dict[Var, str] = {}
    # Inputs are not ranked together: dot then puts each next to its first consumer, so a
    # parameter sits by the layer that uses it instead of sending an edge across the graph.
    inputs = graph
    const_names = list(const_names or [None] * len(jaxpr.constvars))
    for k, v in enumerate(jaxpr.constvars):
        name = const_names[k] if k < len(const_names) and const_names[k] else f"const[{k}]"
        env[v] = em.input_node(inputs, level, v, name, role="data")
    names = list(input_names or [f"in[{k}]" for k in range(len(jaxpr.invars))])
    for k, v in enumerate(jaxpr.invars):
        name = names[k] if k < len(names) else f"in[{k}]"
        env[v] = em.input_node(inputs, level, v, name, role="param")
    em.emit_items(items, level, graph, env, _uses(jaxpr))
    for k, v in enumerate(jaxpr.outvars):
        name = output_names[k] if k < len(output_names) else f"output[{k}]"
        lines = [f"<B>{_esc(name)}</B>"]
        if isinstance(v, Literal):
            lines.append(_font(_fmt_literal(v)))
            src = None
        else:
            shape = v.aval.str_short(short_dtypes=True)
            value = _value_text(level.value(v)) if values else None
            lines.append(_font(shape, SHAPE_TEXT) + (" " + _font(value) if value else ""))
            src = env.get(v)
        nid = em.node(graph, lines, color=OUTPUT_COLOR, fillcolor=OUTPUT_FILL, penwidth="1.5",
                      tooltip=f"output {name}")
        em.edge(src, nid, None, None)
    for (src, dst), attrs in em.edges.items():
        graph.edge(src, dst, **attrs)
    label_notes = ([title] if title else []) + notes
    if legend:
        graph.attr(label=_legend(grads, label_notes), labelloc="b", labeljust="l")
    elif label_notes:
        graph.attr(label="\n".join(label_notes), labelloc="b", labeljust="l")
    if em.n_nodes > _LARGE_GRAPH:
        # dot's network-simplex passes dominate on big graphs with long edges (a gradient
        # program's residuals): two iterations each keep the layout readable and take seconds,
        # not minutes.
        graph.attr(nslimit="2", nslimit1="2")
    graph.notes = tuple(notes)
    graph.collapsed = tuple(g.name for g in collapsed)
    graph.clusters = tuple(g.name for g in groups)
    graph.node_count = em.n_nodes
    return graph


def _inside_collapsed(g: _Group, parents: dict[int, _Group]) -> bool:
    """Whether ``g`` sits inside another collapsed group (then it is not drawn at all)."""
    p = parents.get(id(g))
    while p is not None:
        if p.collapsed:
            return True
        p = parents.get(id(p))
    return False


def _parents(groups: list[_Group]) -> dict[int, _Group]:
    out: dict[int, _Group] = {}
    for g in groups:
        children = list(g.items)
        for b in g.bodies:
            children += b.items
        for it in children:
            child = it.body if isinstance(it, _Eqn) else it
            if isinstance(child, _Group):
                out[id(child)] = g
    return out


def _gradient_kind(fun: Any) -> str | None:
    """"grad" / "value_and_grad" if ``fun`` was made by fg.grad or jax.grad (etc.), else None.

    Recognised by the code of the function they return (``grad_fun``, ``grad_f``...), looking
    through JAX's traceback-filtering wrapper.
    """
    marker = getattr(fun, "__funcgrad_grad__", None)
    if marker is not None:
        return marker[0]
    todo, seen = [fun], 0
    while todo and seen < 8:
        f = todo.pop(0)
        seen += 1
        name = getattr(getattr(f, "__code__", None), "co_name", None)
        if name in ("grad_fun", "grad_f", "grad_f_aux"):
            return "grad"
        if name in ("value_and_grad_fun", "value_and_grad_f"):
            return "value_and_grad"
        if name == "reraise_with_filtered_traceback":
            for cell in getattr(f, "__closure__", None) or ():
                with contextlib.suppress(ValueError):
                    if callable(cell.cell_contents):
                        todo.append(cell.cell_contents)
    return None


def _names_for_outputs(fun: Any, out_tree: Any, n_out: int) -> list[str]:
    """Output node names: the function's name and the output's pytree path; for a gradient
    function, ``grad <parameter path>``."""
    paths = _leaf_paths(jax.tree_util.tree_unflatten(out_tree, [0] * out_tree.num_leaves))
    kind = _gradient_kind(fun)
    if kind == "grad":
        return ["grad " + (p.removeprefix(".") or "") for p in paths][:n_out] or ["grad"]
    if kind == "value_and_grad" and paths and paths[0].startswith("[0]"):
        return [
            "value" + p[3:] if p.startswith("[0]") else "grad " + p[3:].removeprefix(".")
            for p in paths
        ]
    name = getattr(fun, "__name__", "")
    base = name if name.isidentifier() and name != "<lambda>" else "output"
    return [base + (("" if p.startswith("[") else ".") + p if p else "") for p in paths]


def draw_jaxpr(
    fun: Callable,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    grads: bool = True,
    values: bool = True,
    collapse: bool | str | Iterable[str] | None = None,
    node_budget: int | None = DEFAULT_NODE_BUDGET,
    rankdir: str = "LR",
    view: str = "forward",
    scopes: bool = True,
    legend: bool = True,
    has_aux: bool = False,
    out_cotangent: Any = None,
    title: str | None = None,
    jit: bool = False,
    **kwargs: Any,
) -> JaxprGraph:
    """Draw ``fun(*args, **kwargs)`` as a graph: a node per equation, with values and gradients.

    ``fun`` is traced and evaluated by funcgrad's interpreter (``fg.trace``). Inputs are named by
    pytree path; the arguments in ``argnums`` are the parameters (outlined red), everything else
    is data (blue). Each node shows its primitive and key params, the output shape/dtype, value
    and (``grads=True``) funcgrad's gradient; exactly-zero gradients are filled grey, nodes no
    gradient reaches are dashed grey. Gradients need a real scalar output (or ``out_cotangent``);
    for any other output, such as a gradient function's, the graph shows values only and says so.

    ``view="backward"`` draws the gradient program instead: the jaxpr of ``fg.grad(fun)``, its
    forward pass and the equations each VJP rule emitted, ending in one output per parameter
    (``grad layers[0].W``). ``draw_jaxpr(fg.grad(f), ...)`` draws the same program.

    ``collapse``, ``node_budget``, ``scopes``, ``rankdir``: see :func:`draw_trace`. Returns a
    :class:`JaxprGraph`, shown inline in notebooks; ``.render(path, format="svg")`` writes a file.
    ``jit=True`` evaluates through one compiled program (``fg.trace(..., jit=True)``): much
    faster for large models, values equal up to float rounding.
    """
    import funcgrad as fg

    if view not in ("forward", "backward"):
        raise ValueError(f"view must be 'forward' or 'backward', got {view!r}")
    notes: list[str] = []
    if view == "backward":
        fun = fg.grad(fun, argnums=argnums, has_aux=has_aux)
        grads, has_aux = False, False
    if view == "backward" or _gradient_kind(fun) is not None:
        grads = False
        notes.append(
            "A gradient program: funcgrad's forward pass (every value kept), then the equations "
            "its VJP rules emitted, last forward equation first; each node shows the value it "
            "computes (forward values, then cotangents)."
        )
    elif grads and out_cotangent is None:
        out = jax.eval_shape(lambda *a: fun(*a, **kwargs), *args)
        avals = jax.tree_util.tree_leaves(out[0] if has_aux else out)
        scalar = (
            len(avals) == 1
            and avals[0].shape == ()
            and np.issubdtype(avals[0].dtype, np.floating)
        )
        if not scalar:
            grads = False
            what = f"{len(avals)} outputs"
            if len(avals) == 1:
                what = f"{avals[0].dtype.name}{list(avals[0].shape)}"
            notes.append(
                f"Values only: gradients need a real scalar output, and this function returns "
                f"{what}. Pass out_cotangent=... to seed one, or grads=False to drop this note."
            )
    try:
        full = fg.trace(fun, *args, argnums=argnums, has_aux=has_aux,
                        out_cotangent=out_cotangent, backward=grads, jit=jit, **kwargs)
    except fg.UnsupportedPrimitiveError as err:
        err.add_note("funcgrad.viz.draw_jaxpr(..., grads=False) draws the graph without "
                     "gradients meanwhile.")
        raise
    n_out = full.out_tree.num_leaves
    out_names = _names_for_outputs(fun, full.out_tree, n_out)
    if has_aux:
        aux_paths = _leaf_paths(
            jax.tree_util.tree_unflatten(full.aux_tree, [0] * full.aux_tree.num_leaves)
        )
        out_names += ["aux" + (("" if p.startswith("[") else ".") + p if p else "")
                      for p in aux_paths]
    if view == "backward":
        grad_names = ["grad " + n for n in full.input_names]
        out_names = grad_names + ["aux"] * (len(out_names) - len(grad_names))
    trace = full if values else None
    builder = _Builder(scopes=scopes)
    if trace is None:
        level = _Level(full.jaxpr, None, None, None, "off")
        records = None
    else:
        level = builder.level_of_trace(trace, "full" if grads else "off")
        records = trace.records
    items = builder.items(level, records)
    return _render(
        level, items, full.input_names, full.const_names, out_names, grads=grads,
        values=values, collapse=collapse, node_budget=node_budget, rankdir=rankdir,
        legend=legend, title=title, notes=notes,
    )

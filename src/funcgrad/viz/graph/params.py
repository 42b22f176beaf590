"""The params of an equation that help a reader, as short text: a ``dot_general``'s contraction as
an einsum (``ij,jk->ik``), reduction axes, a convolution's layout and strides, a call's name.

One formatter per primitive in :data:`_PARAMS`; any other primitive shows its params as
``key=value``, leaving out layout hints, defaults and internal thunks (:data:`_NOISY`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn

from funcgrad.interpret.jaxprs import body_of_call

__all__ = ["body_name", "params_text"]


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


def body_name(eqn: JaxprEqn) -> str:
    """The name of a call: the jit's ``name``, else the body function's name."""
    p = eqn.params
    if isinstance(p.get("name"), str):
        return p["name"]
    opened = body_of_call(eqn)
    info = getattr(opened[0], "debug_info", None) if opened is not None else None
    name = getattr(info, "func_name", None)
    if isinstance(name, str) and name:
        return name.split(".")[-1].replace("<lambda>", "lambda")
    return eqn.primitive.name


def _axes(key: str) -> Callable[[JaxprEqn], str]:
    return lambda eqn: f"{key} " + _tuple(eqn.params[key])


def _cumulative(eqn: JaxprEqn) -> str:
    return f"axis {eqn.params['axis']}" + (" reverse" if eqn.params.get("reverse") else "")


_REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
               "reduce_xor", "argmax", "argmin")
_CUMULATIVE = ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")

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
    "pad": _padding,
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
    "jit": body_name,
    "closed_call": body_name,
    "core_call": body_name,
    "custom_jvp_call": body_name,
    "custom_vjp_call": body_name,
    "remat2": lambda e: "(checkpoint)",
    "scan": lambda e: f"length {e.params['length']}" + (" reverse" if e.params["reverse"] else ""),
    "cond": lambda e: f"{len(e.params['branches'])} branches",
    "while": lambda e: "",
    **{name: _axes("axes") for name in _REDUCTIONS},
    **{name: _cumulative for name in _CUMULATIVE},
}

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


def params_text(eqn: JaxprEqn) -> str:
    """The params of ``eqn`` worth reading, as one short line (may be empty)."""
    fmt = _PARAMS.get(eqn.primitive.name)
    try:
        return fmt(eqn) if fmt is not None else _generic_params(eqn.params)
    except Exception:  # an unexpected params layout must not stop the drawing
        return _generic_params(eqn.params)

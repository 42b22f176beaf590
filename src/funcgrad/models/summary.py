"""A per-layer table of parameter shapes and counts, like Keras' ``model.summary()``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

_ATTENTION_KEYS = frozenset({"wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"})


def _layer_type(arrays: dict[str, Any]) -> str:
    keys = set(arrays)
    if keys == {"W", "b"}:
        return {2: "dense", 4: "conv2d"}.get(np.ndim(arrays["W"]), "")
    if keys == {"scale", "bias"}:
        return "layer_norm"
    if keys == _ATTENTION_KEYS:
        return "attention"
    if keys in ({"tokens", "positions"}, {"positions"}):
        return "embedding"
    return ""


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _walk(node: Any, path: str, rows: list[dict[str, Any]]) -> None:
    # The arrays held directly by a dict or list form one row (a layer); containers recurse.
    items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
    arrays = {str(k): v for k, v in items if _is_array(v)}
    if arrays:
        rows.append(
            {
                "name": path or "(params)",
                "type": _layer_type(arrays),
                "shapes": {k: tuple(v.shape) for k, v in arrays.items()},
                "params": sum(math.prod(v.shape) for v in arrays.values()),
                "bytes": sum(
                    math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in arrays.values()
                ),
            }
        )
    for k, v in items:
        if isinstance(v, dict | list | tuple):
            child = f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else str(k))
            _walk(v, child, rows)


def summary_rows(params: Any) -> list[dict[str, Any]]:
    """Return one dict per layer: ``name`` (pytree path, e.g. ``"layers[0]"``), ``type`` (dense,
    conv2d, layer_norm, attention, embedding or ""), ``shapes`` ({array name: shape}),
    ``params`` (number of scalars) and ``bytes``.

    A layer is the set of arrays held directly by one dict or list of the params pytree.
    """
    rows: list[dict[str, Any]] = []
    if _is_array(params):
        params = {"": params}
    _walk(params, "", rows)
    return rows


def _format_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    # Arrays of one shape share an entry: "wq, wk, wv, wo (64, 64); bq, bk, bv, bo (64,)".
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, shape in shapes.items():
        by_shape.setdefault(shape, []).append(name)
    return "; ".join(f"{', '.join(names)} {shape}" for shape, names in by_shape.items())


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def summary(params: Any, *, print_fn: Callable[[str], Any] | None = print) -> str:
    """Print and return a table with one row per layer (path, type, array shapes, parameter
    count) and the total, like Keras' ``model.summary()``.

    For ``mlp.init(key, [784, 64, 10])`` the rows count 50240 and 650 parameters, total 50890.
    Pass ``print_fn=None`` to only get the string.
    """
    rows = summary_rows(params)
    header = ("Layer", "Type", "Shapes", "Params")
    table = [
        (
            r["name"],
            r["type"],
            _format_shapes(r["shapes"]),
            str(r["params"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        cells = [c.ljust(w) for c, w in zip(row[:3], widths)] + [row[3].rjust(widths[3])]
        return "  ".join(cells)

    rule = "=" * len(line(header))
    total = sum(r["params"] for r in rows)
    size = _human_bytes(sum(r["bytes"] for r in rows))
    text = "\n".join(
        [line(header), rule, *(line(r) for r in table), rule, f"Total params: {total} ({size})"]
    )
    if print_fn is not None:
        print_fn(text)
    return text

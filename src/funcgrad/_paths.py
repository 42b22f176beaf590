"""Pytree paths written the way a person writes them: ``layers[0].W``, ``params['w q']``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

__all__ = ["leaf_paths", "path_to_str"]


def _key_str(key: Any) -> tuple[str, bool]:
    """(text, is_attribute_style) for one path entry."""
    if isinstance(key, jax.tree_util.DictKey):
        k = key.key
        if isinstance(k, str) and k.isidentifier():
            return k, True
        return f"[{k!r}]", False
    if isinstance(key, jax.tree_util.SequenceKey):
        return f"[{key.idx}]", False
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name, True
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return f"[{key.key}]", False
    return f"[{key!s}]", False


def path_to_str(path: Sequence[Any], lead: str = "") -> str:
    """``(DictKey('layers'), SequenceKey(0), DictKey('W'))`` -> ``'layers[0].W'``.

    ``lead`` is put before a leading attribute-style key (``lead='.'`` gives ``.layers[0].W``,
    for appending to a name); a path that starts with an index never gets one.
    """
    out = []
    for i, key in enumerate(path):
        text, attr = _key_str(key)
        if attr:
            out.append(("." if i else lead) + text)
        else:
            out.append(text)
    return "".join(out)


def leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    """The path string of every leaf of ``tree``, in ``jax.tree.leaves`` order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = []
    for path, _ in leaves:
        rest = path_to_str(path, lead="." if prefix else "")
        names.append(prefix + rest if (prefix or rest) else "")
    return names

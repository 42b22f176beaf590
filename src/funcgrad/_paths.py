"""Pytree paths written the way a person writes them: ``layers[0].W``, ``params['w q']``.

Not ``jax.tree_util.keystr`` alone: by default it brackets every dict key
(``['layers'][0]['W']``), and with ``simple=True`` it joins every key with one separator
(``layers.0.W``), so neither writes ``layers[0].W``. The bracketed entries (``[0]``,
``['w q']``) are keystr's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

__all__ = ["leaf_name", "leaf_paths", "path_to_str"]


def _key_str(key: Any) -> tuple[str, bool]:
    """(text, is_attribute_style) for one path entry."""
    name = key.key if isinstance(key, jax.tree_util.DictKey) else None
    if isinstance(name, str) and name.isidentifier():
        return name, True
    if isinstance(key, (jax.tree_util.DictKey, jax.tree_util.SequenceKey)):
        return jax.tree_util.keystr((key,)), False
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


def leaf_name(arg_name: str, path: Sequence[Any], single: bool = False) -> str:
    """The display name of the leaf at ``path`` inside the argument called ``arg_name``.

    ``single`` (the only argument named): the path alone (``layers[0].W``), or ``arg_name``
    for a bare array; otherwise ``arg_name`` joined to the path (``params.layers[0].W``,
    ``x[0]``, ``params``).
    """
    if single:
        return path_to_str(path) or arg_name
    return arg_name + path_to_str(path, lead=".")


def leaf_paths(tree: Any, prefix: str = "") -> list[str]:
    """The path string of every leaf of ``tree``, in ``jax.tree.leaves`` order.

    With a ``prefix`` each is :func:`leaf_name` ``(prefix, path)`` (``aux.loss``, ``aux[0]``).
    """
    with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not prefix:
        return [path_to_str(path) for path, _ in with_paths]
    return [leaf_name(prefix, path) for path, _ in with_paths]

"""Which VJP rule transposes an equation, and the one-line formula its author wrote for it.

Every rule states its math in one line: a comment on its ``def`` line
(``def tanh_vjp(ct, x):  # d tanh(x) = 1 - tanh(x)^2``) or the first paragraph of its
docstring (``d(x . y) = ct . y^T ...``); higher-order rules (``ScanVjp``) in their class
docstring. :func:`rule_of` reads it from the rule's source, as registered in
:mod:`funcgrad.interpret.registry`, and falls back to the rule's name.
"""

from __future__ import annotations

import functools
import inspect
import io
import re
import tokenize
from typing import Any

from funcgrad.interpret.registry import lookup_higher_order, lookup_vjp

__all__ = ["MAX_FORMULA", "formula_of", "rule_of"]

MAX_FORMULA = 150
"""Formulas longer than this many characters are cut (with an ellipsis)."""


def _def_line_comment(source: str) -> str | None:
    """The comment after the colon that ends a ``def`` (or ``class``) statement, if any."""
    depth = 0
    seen_def = False
    after_colon_line = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if after_colon_line is not None:
                if tok.type == tokenize.COMMENT and tok.start[0] == after_colon_line:
                    return tok.string.lstrip("#").strip() or None
                return None
            if tok.type == tokenize.NAME and tok.string in ("def", "class") and depth == 0:
                seen_def = True
            elif tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            elif seen_def and depth == 0 and tok.type == tokenize.OP and tok.string == ":":
                after_colon_line = tok.end[0]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return None


def _first_sentence(doc: str | None) -> str | None:
    """The docstring's first sentence (of its first paragraph), on one line, without rst."""
    if not doc:
        return None
    paragraph = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    end = re.search(r"\.\s+(?=[A-Z])|;\s+see\b", paragraph)
    return (paragraph[: end.start() + 1] if end else paragraph).rstrip(";") or None


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_FORMULA else text[: MAX_FORMULA - 1].rstrip() + "…"


@functools.cache
def formula_of(rule: Any) -> str | None:
    """The one-line formula of a rule function or class (its ``def``-line comment, else the
    first paragraph of its docstring), or None when it has neither."""
    try:
        source = inspect.getsource(rule)
    except (OSError, TypeError):
        source = None
    if source is not None:
        comment = _def_line_comment(inspect.cleandoc(source) if source[:1].isspace()
                                    else source)
        if comment:
            return _shorten(comment)
    doc = _first_sentence(inspect.getdoc(rule))
    return _shorten(doc) if doc else None


def rule_of(primitive: str) -> tuple[str, str]:
    """(rule name, one-line formula) of the rule the backward walk uses for ``primitive``.

    The name is the one the walk gives it (the function's name, ``ScanVjp``'s class name); the
    formula falls back to the name when the rule states none, or says that no rule exists.
    """
    higher = lookup_higher_order(primitive)
    if higher is not None:
        name = getattr(higher, "name", type(higher).__name__)
        return name, formula_of(type(higher)) or name
    spec = lookup_vjp(primitive)
    if spec is None:
        return primitive, f"no VJP rule is registered for {primitive}"
    name = spec.fn.__name__
    if "zero" in name and formula_of(spec.fn) is None:  # registered by zero_vjp
        return name, f"d {primitive} = 0: its inputs get no cotangent"
    return name, formula_of(spec.fn) or name

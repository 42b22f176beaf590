"""Where an equation came from: the user's Python calls that emitted it.

JAX keeps each equation's traceback. Its frames in user code (not in JAX, jaxlib, the standard
library, funcgrad's interpreter or this drawing code) say which functions of the model emitted
it (``dense`` called at ``mlp.py:40``), so a large model can be drawn as blocks. Which VJP rule
emitted an equation of a gradient program is not read from here but from the interpreter itself
(:func:`funcgrad.interpret.backward.emitting_rule`).
"""

from __future__ import annotations

import functools
import os
import sysconfig
from typing import Any

import jax
import jaxlib
from jax.extend.core import JaxprEqn

import funcgrad.interpret

__all__ = ["Frame", "user_stack"]

Frame = tuple[str, str, int]
"""One user frame: (file, function, line)."""


def _dir_of(module: Any) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


@functools.cache
def _skipped_dirs() -> tuple[str, ...]:
    """Directories whose frames are not user code: JAX, jaxlib, the interpreter, funcgrad.viz,
    the standard library."""
    viz_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    skip = [_dir_of(jax), _dir_of(jaxlib), _dir_of(funcgrad.interpret), viz_dir]
    stdlib = sysconfig.get_paths().get("stdlib")
    if stdlib:
        skip.append(os.path.abspath(stdlib) + os.sep)
    return tuple(skip)


def _frames(eqn: JaxprEqn) -> list[Any]:
    """The equation's Python stack, outermost call first (empty if JAX kept none)."""
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is None:
        return []
    try:
        return list(tb.frames)[::-1]
    except Exception:
        return []


def user_stack(eqn: JaxprEqn) -> tuple[Frame, ...]:
    """(file, function, line) of each frame of ``eqn``'s stack in user code, outermost first."""
    skip = _skipped_dirs()
    out = []
    for f in _frames(eqn):
        path = f.file_name
        if path.startswith("<frozen") or path.startswith(skip):
            continue
        out.append((path, f.function_name, f.line_num))
    return tuple(out)

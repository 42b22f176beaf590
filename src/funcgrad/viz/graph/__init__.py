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
emitted it (which the interpreter records in the equation's name stack) and grouped per rule
application.

The result is a :class:`JaxprGraph` (a ``graphviz.Digraph``): in notebooks it shows as
interactive HTML (hover a node for the full summary of its value and gradient, click a collapsed
cluster to open it), ``.source`` is the DOT text, ``.render(path, format="svg"|"png"|"pdf")``
writes a file, ``.to_svg()``/``.save_html(path)`` the picture with its tooltips and font, and a
missing ``dot`` program raises :class:`GraphvizNotFoundError` saying how to install it. Labels
are set in DejaVu Sans, and boxes sized for it as browsers draw it (:mod:`.fonts`,
:mod:`.measure`).

``animate_backward(fun, *args)`` plays the backward pass: one frame per equation funcgrad's
walk transposes, with the rule, its formula and the cotangents (:class:`BackwardAnimation`).

The modules, in the order a drawing passes through them: :mod:`.api` (the entry points),
:mod:`.build` (trace to :mod:`.model`, grouped by :mod:`.origins`), :mod:`.collapse` (what to fold
under ``node_budget``), :mod:`.dot` (DOT text, with :mod:`.labels`, :mod:`.params`,
:mod:`.style` and :mod:`.measure`), :mod:`.digraph` (the returned graph), :mod:`.svgtools`,
:mod:`.page`, :mod:`.drill` and :mod:`.assets` (the interactive HTML), and for the animation
:mod:`.walk` (the walk as the interpreter reports it), :mod:`.formulas`, :mod:`.captions` and
:mod:`.animation`.
"""

from __future__ import annotations

from funcgrad.viz.graph.animation import BackwardAnimation
from funcgrad.viz.graph.api import animate_backward, draw_jaxpr, draw_trace
from funcgrad.viz.graph.digraph import GraphvizNotFoundError, JaxprGraph
from funcgrad.viz.graph.labels import CONST, FLOWS, NONE, UNKNOWN, ZERO
from funcgrad.viz.graph.options import DEFAULT_NODE_BUDGET
from funcgrad.viz.graph.style import (
    DATA_COLOR,
    DATA_FILL,
    EDGE_COLOR,
    FONT,
    GRAD_COLOR,
    GREY_TEXT,
    NOFLOW_EDGE,
    NOFLOW_FILL,
    OUTPUT_COLOR,
    OUTPUT_FILL,
    PARAM_COLOR,
    RULE_COLOR,
    SCOPE_COLOR,
    SHAPE_TEXT,
    ZERO_FILL,
)

# The drawing functions and their result; the gradient statuses and the palette, for code that
# reads a drawing's DOT text.
__all__ = [
    "CONST",
    "DATA_COLOR",
    "DATA_FILL",
    "DEFAULT_NODE_BUDGET",
    "EDGE_COLOR",
    "FLOWS",
    "FONT",
    "GRAD_COLOR",
    "GREY_TEXT",
    "NOFLOW_EDGE",
    "NOFLOW_FILL",
    "NONE",
    "OUTPUT_COLOR",
    "OUTPUT_FILL",
    "PARAM_COLOR",
    "RULE_COLOR",
    "SCOPE_COLOR",
    "SHAPE_TEXT",
    "UNKNOWN",
    "ZERO",
    "ZERO_FILL",
    "BackwardAnimation",
    "GraphvizNotFoundError",
    "JaxprGraph",
    "animate_backward",
    "draw_jaxpr",
    "draw_trace",
]

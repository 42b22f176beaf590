"""``draw_jaxpr`` and ``draw_trace``: trace (or take) a program, build its drawing, emit DOT."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from funcgrad._paths import leaf_paths
from funcgrad.interpret import UnsupportedPrimitiveError
from funcgrad.interpret import grad as funcgrad_grad
from funcgrad.interpret import trace as funcgrad_trace
from funcgrad.viz.graph.animation import ANIMATION_NOTE, BackwardAnimation, build_animation
from funcgrad.viz.graph.build import Builder, level_of_trace
from funcgrad.viz.graph.collapse import budget_notes, choose_collapsed, outermost_collapsed, size
from funcgrad.viz.graph.digraph import JaxprGraph
from funcgrad.viz.graph.dot import GradOverride, emit_graph
from funcgrad.viz.graph.drill import Drawing
from funcgrad.viz.graph.model import Item, Level
from funcgrad.viz.graph.options import DEFAULT_NODE_BUDGET, DrawOptions, NodeNames
from funcgrad.viz.graph.walk import record_walk

__all__ = ["animate_backward", "draw_jaxpr", "draw_trace"]

_GRADIENT_PROGRAM_NOTE = (
    "A gradient program: funcgrad's forward pass (every value kept), then the equations "
    "its VJP rules emitted, last forward equation first; each node shows the value it "
    "computes (forward values, then cotangents)."
)


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
    options = DrawOptions(grads=grads, values=values, collapse=collapse, node_budget=node_budget,
                          rankdir=rankdir, scopes=scopes, legend=legend, title=title)
    if output_names is None:
        output_names = _trace_output_names(trace, len(trace.jaxpr.outvars))
    names = NodeNames(
        inputs=getattr(trace, "input_names", None),
        consts=getattr(trace, "const_names", None),
        outputs=list(output_names),
    )
    level = level_of_trace(trace, "full" if grads else "off")
    if not values and not grads:
        level.values = None
    items = Builder(scopes=options.scopes).items(level, trace.records)
    return _render(level, items, names, options, list(notes))


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
    if view not in ("forward", "backward"):
        raise ValueError(f"view must be 'forward' or 'backward', got {view!r}")
    backward = view == "backward"
    if backward:
        fun = funcgrad_grad(fun, argnums=argnums, has_aux=has_aux)
        has_aux = False
    notes: list[str] = []
    if backward or _gradient_kind(fun) is not None:
        grads = False
        notes.append(_GRADIENT_PROGRAM_NOTE)
    elif grads and out_cotangent is None:
        why = _why_no_gradients(fun, args, kwargs, has_aux)
        if why is not None:
            grads = False
            notes.append(why)
    try:
        full = funcgrad_trace(fun, *args, argnums=argnums, has_aux=has_aux,
                              out_cotangent=out_cotangent, backward=grads, jit=jit, **kwargs)
    except UnsupportedPrimitiveError as err:
        err.add_note("funcgrad.viz.draw_jaxpr(..., grads=False) draws the graph without "
                     "gradients meanwhile.")
        raise
    options = DrawOptions(grads=grads, values=values, collapse=collapse, node_budget=node_budget,
                          rankdir=rankdir, scopes=scopes, legend=legend, title=title)
    names = NodeNames(
        inputs=full.input_names,
        consts=full.const_names,
        outputs=_program_output_names(fun, full, has_aux=has_aux, backward=backward),
    )
    if values:
        level = level_of_trace(full, "full" if grads else "off")
        records = full.records
    else:
        level, records = Level.structure(full.jaxpr), None
    items = Builder(scopes=options.scopes).items(level, records)
    return _render(level, items, names, options, notes)


def animate_backward(
    fun: Callable,
    *args: Any,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    out_cotangent: Any = None,
    collapse: bool | str | Iterable[str] | None = None,
    node_budget: int | None = DEFAULT_NODE_BUDGET,
    rankdir: str = "LR",
    scopes: bool = True,
    legend: bool = True,
    title: str | None = None,
    interval: float = 0.8,
) -> BackwardAnimation:
    """Watch reverse mode: ``fun(*args)``'s graph, one frame per equation funcgrad transposes.

    Frame 0 is the forward graph with every value (``draw_jaxpr``'s); frame k the state after
    the backward walk has processed k equations: the equation of step k highlighted, its VJP
    rule with the rule's one-line formula and the cotangents it received and sent back in the
    caption, the cotangents that have arrived in red on their values (a fan-in shows its
    partial sum, then ``Σn``). The last frame holds the gradients ``draw_jaxpr(...,
    grads=True)`` shows, those of ``fg.grad``. Which equation each step transposes, and what it
    sent where, is reported by the interpreter itself (``fg.trace(..., on_transpose=...)``).

    ``argnums``, ``has_aux``, ``out_cotangent`` as for ``fg.trace``; ``collapse``,
    ``node_budget``, ``rankdir``, ``scopes``, ``legend``, ``title`` as for :func:`draw_jaxpr`
    (past the node budget a step may highlight a collapsed cluster); ``interval`` is the
    player's seconds per frame. Returns a :class:`BackwardAnimation`: a player in notebooks,
    ``.save(path)`` a self-contained HTML page, ``.frames`` the SVG of each frame.
    """
    walk = record_walk(fun, args, argnums=argnums, has_aux=has_aux, out_cotangent=out_cotangent)
    full = walk.trace
    options = DrawOptions(grads=True, values=True, collapse=collapse, node_budget=node_budget,
                          rankdir=rankdir, scopes=scopes, legend=legend, title=title)
    names = NodeNames(
        inputs=full.input_names,
        consts=full.const_names,
        outputs=_program_output_names(fun, full, has_aux=has_aux, backward=False),
    )
    level = level_of_trace(full, "full")
    items = Builder(scopes=options.scopes).items(level, full.records)

    def render(grad_override: Any) -> JaxprGraph:
        return _render(level, items, names, options, [ANIMATION_NOTE], grad_override)

    return build_animation(walk, level, items, render, interval=interval)


def _render(
    level: Level,
    items: list[Item],
    names: NodeNames,
    options: DrawOptions,
    notes: list[str],
    grad_override: GradOverride | None = None,
) -> JaxprGraph:
    """Collapse what ``options`` ask for, then emit the graph with its notes."""
    jaxpr = level.jaxpr
    fixed = len(jaxpr.invars) + len(jaxpr.constvars) + len(jaxpr.outvars)
    groups = choose_collapsed(items, fixed, options.collapse, options.node_budget)
    collapsed = outermost_collapsed(groups)
    total = fixed + size(items)
    notes = [*notes, *budget_notes(collapsed, total, options.collapse, options.node_budget)]
    graph = emit_graph(level, items, names, options, notes, grad_override)
    graph.drawing = Drawing(level, items, names, options)
    graph.notes = tuple(notes)
    graph.collapsed = tuple(g.name for g in collapsed)
    graph.clusters = tuple(g.name for g in groups)
    return graph


def _why_no_gradients(fun: Callable, args: tuple, kwargs: dict, has_aux: bool) -> str | None:
    """Why ``fun`` has no gradient to draw (its output is not a real scalar), or None."""
    out = jax.eval_shape(lambda *a: fun(*a, **kwargs), *args)
    avals = jax.tree_util.tree_leaves(out[0] if has_aux else out)
    scalar = (
        len(avals) == 1
        and avals[0].shape == ()
        and np.issubdtype(avals[0].dtype, np.floating)
    )
    if scalar:
        return None
    what = f"{len(avals)} outputs"
    if len(avals) == 1:
        what = f"{avals[0].dtype.name}{list(avals[0].shape)}"
    return (
        f"Values only: gradients need a real scalar output, and this function returns "
        f"{what}. Pass out_cotangent=... to seed one, or grads=False to drop this note."
    )


def _trace_output_names(trace: Any, n_out: int, base: str = "output") -> list[str]:
    """``output`` plus each output leaf's path (``aux...`` for auxiliary outputs), when the
    trace's value and aux account for its ``n_out`` outputs."""
    value = getattr(trace, "value", None)
    aux = getattr(trace, "aux", None)
    names = leaf_paths(value, prefix=base) if value is not None else []
    names += leaf_paths(aux, prefix="aux") if aux is not None else []
    if len(names) != n_out:
        return [base] if n_out == 1 else [f"{base}[{k}]" for k in range(n_out)]
    return names


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


def _tree_of(treedef: Any) -> Any:
    """A pytree of structure ``treedef`` (zeros at the leaves), for reading its paths."""
    return jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves)


def _names_for_outputs(fun: Any, out_tree: Any, n_out: int) -> list[str]:
    """Output node names: the function's name and the output's pytree path; for a gradient
    function, ``grad <parameter path>``."""
    tree = _tree_of(out_tree)
    paths = leaf_paths(tree)
    kind = _gradient_kind(fun)
    if kind == "grad":
        return ["grad " + (p.removeprefix(".") or "") for p in paths][:n_out] or ["grad"]
    if kind == "value_and_grad" and paths and paths[0].startswith("[0]"):
        return [
            "value" + p[3:] if p.startswith("[0]") else "grad " + p[3:].removeprefix(".")
            for p in paths
        ]
    name = getattr(fun, "__name__", "")
    return leaf_paths(tree, prefix=name if name.isidentifier() and name != "<lambda>" else "output")


def _program_output_names(fun: Any, full: Any, *, has_aux: bool, backward: bool) -> list[str]:
    """The output node names of the program ``full`` traced from ``fun``; for the backward view,
    ``grad <input name>`` per differentiated input."""
    names = _names_for_outputs(fun, full.out_tree, full.out_tree.num_leaves)
    if has_aux:
        names += leaf_paths(_tree_of(full.aux_tree), prefix="aux")
    if backward:
        grad_names = ["grad " + n for n in full.input_names]
        names = grad_names + ["aux"] * (len(names) - len(grad_names))
    return names

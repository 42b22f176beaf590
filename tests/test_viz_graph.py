"""funcgrad.viz.draw_jaxpr: the jaxpr drawn as a graph, with funcgrad's values and gradients."""

from __future__ import annotations

import re
import shutil

import graphviz
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcgrad as fg
from funcgrad import losses
from funcgrad.models import mlp, transformer
from funcgrad.viz import graph as G
from funcgrad.viz.graph.labels import fmt_number, grad_text, value_text

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


# ---- reading the DOT text ------------------------------------------------------------------------


def node_lines(source: str) -> list[str]:
    """The DOT statements that declare nodes (``n12 [label=<...> ...]``)."""
    return [ln.strip() for ln in source.splitlines() if re.match(r"\s*n\d+ \[", ln)]


def node(source: str, bold: str) -> str:
    """The one node statement whose label starts with ``<B>bold</B>``."""
    found = [ln for ln in node_lines(source) if f"label=<<B>{bold}</B>" in ln]
    assert len(found) == 1, f"{len(found)} nodes labelled {bold!r}: {found}"
    return found[0]


def nodes_with(source: str, text: str) -> list[str]:
    return [ln for ln in node_lines(source) if text in ln]


def neuron_loss(params, x, y):
    """Single-neuron regression: mean((w·x + b - y)²)."""
    pred = params["w"] * x + params["b"]
    return jnp.mean((pred - y) ** 2)


NEURON = {"w": jnp.float32(2.0), "b": jnp.float32(0.5)}
X = jnp.array([1.0, 2.0, 3.0], jnp.float32)
Y = jnp.array([3.0, 4.0, 7.0], jnp.float32)


def small_mlp():
    params = mlp.init(jax.random.PRNGKey(0), [4, 8, 3])
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    y = jnp.array([0, 1, 2, 0, 1])
    return params, x, y


def mlp_loss(params, x, y):
    return losses.softmax_cross_entropy(mlp.apply(params, x), y)


# ---- structure -----------------------------------------------------------------------------------


def test_one_node_per_equation_plus_inputs_and_outputs():
    def f(w, x):
        return jnp.sum(jnp.tanh(w * x) * 3.0)

    w, x = jnp.ones(3), jnp.arange(3.0)
    jaxpr = jax.make_jaxpr(f)(w, x).jaxpr
    g = fg.viz.draw_jaxpr(f, w, x, scopes=False)
    prims = [e.primitive.name for e in jaxpr.eqns]
    assert len(node_lines(g.source)) == g.node_count == len(prims) + 2 + 1  # + w, x, output
    for prim in prims:
        assert len(nodes_with(g.source, f"<B>{prim}</B>")) == prims.count(prim)
    assert "subgraph cluster" not in g.source


def test_inputs_named_by_pytree_path_params_red_data_blue():
    params, x, y = small_mlp()
    g = fg.viz.draw_jaxpr(mlp_loss, params, x, y)
    for path in ("layers[0].W", "layers[0].b", "layers[1].W", "layers[1].b"):
        assert f'color="{G.PARAM_COLOR}"' in node(g.source, path)
    for data in ("x", "y"):
        line = node(g.source, data)
        assert f'color="{G.DATA_COLOR}"' in line and f'fillcolor="{G.DATA_FILL}"' in line
    assert f'color="{G.OUTPUT_COLOR}"' in node(g.source, "mlp_loss")


def test_argnums_decides_which_inputs_are_parameters():
    g = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y, argnums=1)
    assert f'color="{G.PARAM_COLOR}"' in node(g.source, "x")
    assert f'color="{G.DATA_COLOR}"' in node(g.source, "params.w")


def test_primitive_params_readable_and_noise_left_out():
    params, x, y = small_mlp()
    src = fg.viz.draw_jaxpr(mlp_loss, params, x, y).source
    assert "<B>dot_general</B> ij,jk-&gt;ik" in src  # the contraction as an einsum
    assert "<B>reduce_max</B> axes (1)" in src
    assert "<B>max</B>(·, 0)" in src  # relu's literal inline, not a node of its own
    for noise in ("out_sharding", "precision", "preferred_element_type", "accuracy"):
        assert noise not in src


# ---- values and gradients ------------------------------------------------------------------------


def test_values_and_gradients_match_fg_trace():
    tr = fg.trace(neuron_loss, NEURON, X, Y)
    src = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y).source
    # pred = [2.5 4.5 6.5], error = [-0.5 0.5 -0.5], loss = 0.25
    assert float(tr.value) == pytest.approx(0.25)
    for name, expected in (("w", -2.0 / 3.0), ("b", -1.0 / 3.0)):  # 2/3 Σ err·x, 2/3 Σ err
        grad = float(tr.cotangent(name))
        assert grad == pytest.approx(expected, rel=1e-6)
        assert f"grad {fmt_number(grad)}<" in node(src, name)
    assert "f32[]</FONT> 0.25" in node(src, "neuron_loss")
    (mul,) = nodes_with(src, "<B>mul</B>")
    assert "[2 4 6]" in mul  # the value of w·x, an array small enough to show in full
    assert "grad [-0.3333 0.3333 -0.3333]" in mul


def test_array_summaries_show_min_mean_max_and_exact_zero_counts():
    params, x, y = small_mlp()
    tr = fg.trace(mlp_loss, params, x, y)
    src = fg.viz.draw_jaxpr(mlp_loss, params, x, y).source
    W = np.asarray(params["layers"][0]["W"])
    stats = f"min {fmt_number(W.min())} mean {fmt_number(W.mean())} max {fmt_number(W.max())}"
    assert stats in node(src, "layers[0].W")
    gW = np.asarray(tr.grads["layers"][0]["W"])
    grad_stats = f"grad min {fmt_number(gW.min())} mean {fmt_number(gW.mean())}"
    assert grad_stats in node(src, "layers[0].W")


def test_exactly_zero_gradient_is_filled_grey():
    def f(w):
        return jnp.sum(jnp.sin(w) * 0.0 + w * w)

    g = fg.viz.draw_jaxpr(f, jnp.ones(3), scopes=False)
    (grey,) = nodes_with(g.source, f'fillcolor="{G.ZERO_FILL}"')
    assert "<B>sin</B>" in grey and "grad 0 (exactly)" in grey and "dashed" not in grey
    # the product with 0.0 itself still passes its cotangent on: only what feeds it is zero
    (times_zero,) = nodes_with(g.source, "<B>mul</B>(·, 0)")
    assert "grad [1 1 1]" in times_zero


def test_no_gradient_flows_is_dashed_grey_labels_path_and_stop_gradient():
    params, x, y = small_mlp()
    src = fg.viz.draw_jaxpr(mlp_loss, params, x, y).source
    # The integer labels feed a gather's indices: no gradient can flow there.
    for line in nodes_with(src, "i32["):
        if "<B>y</B>" in line:
            continue
        assert "dashed" in line and f'fillcolor="{G.NOFLOW_FILL}"' in line
        assert "independent of the parameters" in line
    # log_softmax subtracts stop_gradient(max): the max gets no cotangent at all.
    (reduce_max,) = nodes_with(src, "<B>reduce_max</B>")
    assert "dashed" in reduce_max and "no grad reaches it" in reduce_max
    # stop_gradient's output carries no gradient (as in JAX, its tangent is a symbolic zero),
    # and the node says why, rather than "independent of the parameters".
    (stop,) = nodes_with(src, "<B>stop_gradient</B>")
    assert "dashed" in stop and "no grad: stop_gradient passes none back" in stop
    assert "independent of the parameters" not in stop


def test_one_hot_labels_give_exact_zeros_in_the_log_probabilities_gradient():
    def ce(params, x, y_onehot):
        logits = x @ params["W"] + params["b"]
        return losses.softmax_cross_entropy(logits, y_onehot)

    params = {"W": jnp.eye(3, dtype=jnp.float32), "b": jnp.zeros(3)}
    x = jnp.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    y = jax.nn.one_hot(jnp.array([2, 0]), 3)
    src = fg.viz.draw_jaxpr(ce, params, x, y).source
    # d(-sum y log p)/d(log p) = -y: zero on the four non-target entries, the logits' not.
    logp = [ln for ln in nodes_with(src, "<B>sub</B>") if "4 of 6 exactly 0" in ln]
    assert len(logp) == 1
    assert f'color="{G.DATA_COLOR}"' in node(src, "y_onehot")


def test_grads_false_and_values_false():
    src = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y, grads=False).source
    assert "grad" not in "".join(node_lines(src))
    assert G.ZERO_FILL not in src and G.NOFLOW_FILL not in src
    assert "[2 4 6]" in src
    bare = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y, grads=False, values=False).source
    assert "[2 4 6]" not in bare and "f32[3]" in bare


def test_non_scalar_output_draws_values_and_says_why():
    g = fg.viz.draw_jaxpr(lambda w: jnp.tanh(w), jnp.ones(3))
    assert any("gradients need a real scalar output" in n for n in g.notes)
    assert "grad " not in "".join(node_lines(g.source))
    seeded = fg.viz.draw_jaxpr(lambda w: jnp.tanh(w), jnp.zeros(3), out_cotangent=jnp.ones(3))
    assert "grad [1 1 1]" in seeded.source


def test_draw_trace_draws_what_draw_jaxpr_draws():
    tr = fg.trace(neuron_loss, NEURON, X, Y)
    src = fg.viz.draw_trace(tr, output_names=["neuron_loss"]).source
    assert src == fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y).source
    assert "<B>w</B>" in fg.viz.draw_trace(tr).source
    assert "grad" not in "".join(node_lines(fg.viz.draw_trace(tr, grads=False).source))


# ---- clusters ------------------------------------------------------------------------------------


def test_jit_and_custom_jvp_bodies_are_clusters_with_values():
    @jax.jit
    def inner(h):
        return jnp.tanh(h) * 2.0

    def f(w, x):
        return jnp.sum(jax.nn.relu(inner(w * x)))

    w, x = jnp.array([1.0, -2.0]), jnp.array([1.0, 1.0])
    tr = fg.trace(f, w, x)
    g = fg.viz.draw_jaxpr(f, w, x)
    assert re.search(r'label="inner  \(jit\)"', g.source)
    assert re.search(r'label="relu  \(custom_jvp: gradient from its JVP rule', g.source)
    assert {"inner", "relu"} <= set(g.clusters)
    (tanh,) = nodes_with(g.source, "<B>tanh</B>")
    assert "[0.7616 -0.964]" in tanh  # values inside the jit body
    (mx,) = nodes_with(g.source, "<B>max</B>")
    assert "grad [1 1]" in mx  # relu's output gradient, from the enclosing trace
    assert np.allclose(tr.grads, [2 * (1 - np.tanh(1.0) ** 2), 0.0])


def scan_then_cond(w, xs):
    """A scan of tanh steps, then a cond on the carry."""

    def body(c, x):
        return jnp.tanh(c * w + x), jnp.sin(c)

    c, ys = lax.scan(body, 0.5, xs)
    return lax.cond(c > 0, lambda a: a * 2.0, lambda a: -a, c) + ys.sum()


def test_scan_and_cond_bodies_drawn_as_structure_with_real_results():
    f = scan_then_cond
    w, xs = jnp.float32(0.3), jnp.arange(3.0)
    tr = fg.trace(f, w, xs)
    g = fg.viz.draw_jaxpr(f, w, xs)
    assert "scan × 3 (body structure" in g.source and "cond: 2 branches" in g.source
    assert 'label="branch 0"' in g.source and 'label="branch 1"' in g.source
    (scan,) = nodes_with(g.source, "<B>scan</B>")
    assert f"grad {fmt_number(float(tr.grads))}" in node(g.source, "w")
    assert "length 3" in scan and "grad" in scan  # the loop's results carry values and grads
    (tanh,) = nodes_with(g.source, "<B>tanh</B>")
    assert "grad" not in tanh  # per-iteration values are not kept
    assert set(fg.viz.draw_jaxpr(f, w, xs, collapse=True).collapsed) == {"scan", "cond"}


def test_python_functions_group_equations_and_scopes_false_turns_it_off():
    params, x, y = small_mlp()
    g = fg.viz.draw_jaxpr(mlp_loss, params, x, y)
    assert {"dense", "log_softmax", "nll"} <= set(g.clusters)
    assert "called at mlp.py:" in g.source
    flat = fg.viz.draw_jaxpr(mlp_loss, params, x, y, scopes=False)
    assert "dense" not in flat.clusters and "log_softmax" not in flat.clusters
    assert "take_along_axis" in flat.clusters  # real sub-jaxprs stay clusters


def test_collapse_by_name_true_false_and_unknown_name():
    params, x, y = small_mlp()
    full = fg.viz.draw_jaxpr(mlp_loss, params, x, y, collapse=False)
    assert full.collapsed == () and "box3d" not in full.source
    some = fg.viz.draw_jaxpr(mlp_loss, params, x, y, collapse={"log_softmax"})
    assert some.collapsed == ("log_softmax",)
    (box,) = [ln for ln in node_lines(some.source) if "box3d" in ln]
    assert "<B>log_softmax</B>" in box and "ops, collapsed" in box
    assert not nodes_with(some.source, "stop_gradient")  # drawn inside the collapsed node
    assert some.node_count < full.node_count
    everything = fg.viz.draw_jaxpr(mlp_loss, params, x, y, collapse=True)
    assert everything.node_count < some.node_count
    with pytest.raises(ValueError, match=r"no cluster of that name.*log_softmax"):
        fg.viz.draw_jaxpr(mlp_loss, params, x, y, collapse={"logsoftmax"})


def test_node_budget_collapses_innermost_then_largest_and_says_how_to_expand():
    params, x, y = small_mlp()
    full = fg.viz.draw_jaxpr(mlp_loss, params, x, y, node_budget=None)
    assert full.collapsed == () and full.notes == ()
    # Innermost first: take_along_axis (inside nll) goes before anything else...
    g = fg.viz.draw_jaxpr(mlp_loss, params, x, y, node_budget=full.node_count - 3)
    assert g.collapsed == ("take_along_axis",) and g.node_count <= full.node_count - 3
    (note,) = g.notes
    assert f"node_budget={full.node_count - 3}" in note and "collapse=False" in note
    assert note in html_unescape(g.source)
    # ...then, one depth up, the largest cluster (nll, which holds take_along_axis).
    budget = full.node_count - 8
    g = fg.viz.draw_jaxpr(mlp_loss, params, x, y, node_budget=budget)
    assert g.collapsed == ("nll",) and g.node_count <= budget


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_transformer_graph_fits_the_default_budget_with_clusters_collapsed():
    params = transformer.init(
        jax.random.PRNGKey(0), 11, num_classes=3, d_model=8, num_layers=2, max_len=6
    )
    ids = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    labels = jnp.array([0, 2])

    def loss(p, ids, labels):
        return losses.softmax_cross_entropy(transformer.apply(p, ids, num_heads=2), labels)

    # Structure only: what this checks (which clusters exist, what collapses) needs no values.
    g = fg.viz.draw_jaxpr(loss, params, ids, labels, grads=False, values=False)
    full = fg.viz.draw_jaxpr(
        loss, params, ids, labels, grads=False, values=False, collapse=False
    )
    assert full.node_count > G.DEFAULT_NODE_BUDGET
    assert g.node_count <= G.DEFAULT_NODE_BUDGET
    assert {"layer_norm", "multi_head_attention", "mlp_block"} <= set(g.clusters)
    assert g.collapsed.count("layer_norm") == 5  # all five layer norms, alike
    assert "collapse=False" in g.notes[0]
    assert "<B>blocks[1].attn.wq</B>" in g.source


# ---- the backward pass as a graph ----------------------------------------------------------------


def test_gradient_program_outputs_named_and_rules_shown():
    params, x, y = small_mlp()
    grads = fg.grad(mlp_loss)(params, x, y)
    g = fg.viz.draw_jaxpr(fg.grad(mlp_loss), params, x, y)
    assert {"forward", "backward"} <= set(g.clusters)
    assert "from dot_general_vjp" in g.source and "from log_vjp" in g.source
    b1 = node(g.source, "grad layers[1].b")
    b1_grad = np.asarray(grads["layers"][1]["b"])
    assert "[" + " ".join(fmt_number(v) for v in b1_grad) + "]" in b1
    assert any("gradient program" in n for n in g.notes)
    view = fg.viz.draw_jaxpr(mlp_loss, params, x, y, view="backward")
    assert node(view.source, "grad layers[1].b") == b1
    assert view.node_count == g.node_count


def test_backward_equations_name_the_rule_that_emitted_them():
    g = fg.viz.draw_jaxpr(
        scan_then_cond, jnp.float32(0.3), jnp.arange(3.0), view="backward", node_budget=None
    )
    # Higher-order rules by their class, first-order rules by their function, and the adds
    # that sum a variable's cotangents as such.
    forward_scan, backward_scan = nodes_with(g.source, "<B>scan</B>")
    assert "from " not in forward_scan and "length 3 reverse" in backward_scan
    assert "from ScanVjp<" in backward_scan
    assert re.search(r'label="CondVjp  \(VJP rule\)"', g.source)
    assert "from sin_vjp<" in g.source
    (summed,) = nodes_with(g.source, "from sum of cotangents<")
    assert "<B>add</B>" in summed


def test_jax_grad_program_is_recognised_too():
    g = fg.viz.draw_jaxpr(jax.grad(neuron_loss), NEURON, X, Y)
    assert node(g.source, "grad w") and node(g.source, "grad b")
    vg = fg.viz.draw_jaxpr(fg.value_and_grad(neuron_loss), NEURON, X, Y)
    assert node(vg.source, "value") and node(vg.source, "grad w")


# ---- DOT text, rendering, and Graphviz missing ---------------------------------------------------


def test_source_is_dot_text_left_to_right_by_default():
    g = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y)
    assert isinstance(g, graphviz.Digraph) and isinstance(g, fg.viz.JaxprGraph)
    assert g.source.startswith("digraph funcgrad {") and "rankdir=LR" in g.source
    assert "rankdir=TB" in fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y, rankdir="TB").source
    assert "parameter (differentiated input)" in g.source  # the legend
    assert "parameter (differentiated" not in fg.viz.draw_jaxpr(
        neuron_loss, NEURON, X, Y, legend=False
    ).source


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_render_writes_svg_png_pdf(tmp_path, fmt, magic):
    g = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y)
    out = g.render(tmp_path / "neuron", format=fmt)
    assert str(out).endswith(f".{fmt}")
    with open(out, "rb") as f:
        assert f.read(16).startswith(magic)


@needs_dot
def test_notebook_display_is_svg():
    g = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y)
    svg = g._repr_svg_()
    assert "<svg" in svg and "neuron_loss" in svg
    assert "<svg" in g._repr_mimebundle_()["image/svg+xml"]


def test_without_dot_rendering_says_how_to_install_and_source_still_works(tmp_path, monkeypatch):
    g = fg.viz.draw_jaxpr(neuron_loss, NEURON, X, Y)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert g.source.startswith("digraph")
    for show in (
        lambda: g.render(tmp_path / "g", format="svg"),
        lambda: g.pipe(format="png"),
        g._repr_svg_,
        g._repr_mimebundle_,
    ):
        with pytest.raises(fg.viz.GraphvizNotFoundError) as info:
            show()
        message = str(info.value)
        for how in ("apt-get install graphviz", "brew install graphviz",
                    "conda install -c conda-forge graphviz", ".source"):
            assert how in message
        assert isinstance(info.value, graphviz.ExecutableNotFound)


# ---- summaries -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (np.float32(1.23456), "1.235"),
        (np.array(3, np.int32), "3"),
        (np.array([1.0, 2.0]), "[1 2]"),
        (np.arange(10.0), "min 0 mean 4.5 max 9"),
        (np.array([1.0, np.nan, 3.0, 5.0, 7.0]), "min 1 mean 4 max 7, 1 non-finite (nan)"),
        (np.array([True, False, True, True, False]), "3 of 5 true"),
        (np.zeros((0, 3)), "empty"),
    ],
)
def test_value_text(value, text):
    assert value_text(value) == text


def test_grad_text_statuses():
    assert grad_text(np.zeros(7)) == (G.ZERO, "grad 0 (exactly)")
    assert grad_text(np.float32(-0.5)) == (G.FLOWS, "grad -0.5")
    status, text = grad_text(np.array([0.0, 0.0, 1.0, 2.0, 3.0]))
    assert status == G.FLOWS and text.endswith("2 of 5 exactly 0")


def test_gradient_program_groups_each_rule_and_keeps_the_backward_pass_in_view():
    params, x, y = small_mlp()
    g = fg.viz.draw_jaxpr(mlp_loss, params, x, y, view="backward", node_budget=None)
    assert re.search(r'label="dot_general_vjp  \(VJP rule\)"', g.source)
    # Over budget, the forward pass (context) collapses first; the backward pass stays drawn.
    small = fg.viz.draw_jaxpr(mlp_loss, params, x, y, view="backward", node_budget=40)
    assert "forward" in small.collapsed and "backward" not in small.collapsed
    assert "backward" not in fg.viz.draw_jaxpr(
        mlp_loss, params, x, y, view="backward", node_budget=1
    ).collapsed


def test_a_training_step_is_drawn_as_forward_backward_and_update():
    def sgd_step(params, x, y):
        grads = fg.grad(neuron_loss)(params, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)

    g = fg.viz.draw_jaxpr(sgd_step, NEURON, X, Y)
    assert [c for c in g.clusters if c in ("forward", "backward", "after")] == [
        "forward", "backward", "after"
    ]
    new = sgd_step(NEURON, X, Y)
    assert f"f32[]</FONT> {fmt_number(float(new['w']))}" in node(g.source, "sgd_step.w")

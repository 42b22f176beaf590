"""fg.viz.animate_backward: the backward walk, one frame per equation it transposes; and the
interactive renderings of every drawn graph (tooltips, drill-down, the font)."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from xml.etree import ElementTree as ET

import graphviz
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcgrad as fg
from funcgrad import losses, manual, models
from funcgrad.manual import cases
from funcgrad.viz import graph as G
from funcgrad.viz.graph import fonts, measure
from funcgrad.viz.graph.formulas import formula_of, rule_of
from funcgrad.viz.graph.labels import fmt_number, summary_lines
from funcgrad.viz.graph.svgtools import SVG_NS

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")

SVG = f"{{{SVG_NS}}}"


def xor_case():
    params = manual.xor.init(jax.random.PRNGKey(0), 2)
    x, t = manual.xor.data()
    return manual.xor.loss, (params, x, t)


def softmax_ce(params, x, labels):
    return losses.softmax_cross_entropy(models.linear.apply(params, x), labels)


def softmax_case():
    params = models.linear.init(jax.random.PRNGKey(1), 2, 3)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    return softmax_ce, (params, x, jnp.array([0, 1, 2, 1]))


def observed_walk(fun, args):
    """The top-level equations the interpreter transposes, in order, as it reports them."""
    seen = []
    fg.trace(fun, *args, on_transpose=lambda i, eqn, outs, ins: seen.append(i))
    return seen


def frame_tree(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def highlighted(svg: str) -> list[str]:
    """The ids of the elements a frame marks as the equation being transposed."""
    root = frame_tree(svg)
    return [g.get("id") for g in root.iter(f"{SVG}g") if "fg-current" in g.get("class", "")]


def red_texts(svg: str) -> list[str]:
    """Every gradient written in red on a node, in document order."""
    return [t.text for g in frame_tree(svg).iter(f"{SVG}g")
            if g.get("class", "").startswith("node") for t in g.iter(f"{SVG}text")
            if t.get("fill") == G.GRAD_COLOR and (t.text or "").startswith("grad")]


# ---- the observer in the interpreter ---------------------------------------------------------


def test_on_transpose_reports_each_top_level_equation_last_first_and_changes_nothing():
    @jax.jit
    def inner(h):
        return jnp.sin(h) * h

    def f(w, x):
        return jnp.sum(jnp.tanh(inner(w * x)) * w)

    w, x = jnp.array([0.5, -1.0, 2.0]), jnp.arange(3.0)
    calls = []

    def observe(i, eqn, out_cts, in_cts):
        calls.append((i, eqn.primitive.name, out_cts, in_cts))

    tr = fg.trace(f, w, x, on_transpose=observe)
    jaxpr = tr.jaxpr
    # Every top-level equation with a cotangent on an output, last first; the jit body's own
    # equations are not reported (the jit equation is, once).
    expected = [i for i in reversed(range(len(jaxpr.eqns)))
                if any(v in tr.cotangents for v in jaxpr.eqns[i].outvars)]
    assert [c[0] for c in calls] == expected
    assert [c[1] for c in calls].count("jit") == 1 and "sin" not in [c[1] for c in calls]
    i, _, out_cts, in_cts = calls[0]  # reduce_sum: ct 1 in, ones out
    assert jaxpr.eqns[i].primitive.name == "reduce_sum"
    assert float(out_cts[0]) == 1.0 and np.array_equal(in_cts[0], np.ones(3))
    for i, _, _, ins in calls:
        assert len(ins) == len(jaxpr.eqns[i].invars)
    np.testing.assert_array_equal(tr.grads, fg.grad(f)(w, x))
    with pytest.raises(ValueError, match="on_transpose needs jit=False"):
        fg.trace(f, w, x, jit=True, on_transpose=observe)


# ---- frames ----------------------------------------------------------------------------------


def test_one_frame_per_equation_transposed_plus_the_forward_pass():
    fun, args = xor_case()
    anim = fg.viz.animate_backward(fun, *args)
    walked = observed_walk(fun, args)
    assert len(anim) == len(walked) + 1 == len(anim.frames) == len(anim.steps) + 1
    assert [s.index for s in anim.steps] == walked
    assert [s.frame for s in anim.steps] == list(range(1, len(anim)))
    assert "<BackwardAnimation: 16 frames" in repr(anim)


def test_each_frame_highlights_the_equation_the_walk_transposes_at_that_step():
    for fun, args in (xor_case(), softmax_case()):
        anim = fg.viz.animate_backward(fun, *args)
        walked = observed_walk(fun, args)
        assert highlighted(anim.frames[0]) == []
        ns = anim.ns + "v0-"
        for k, index in enumerate(walked, 1):
            (element_id,) = highlighted(anim.frames[k])
            name = element_id.removeprefix(ns)
            record = anim.graph.records[name]
            assert index in record.eqns, (k, index, name, record.eqns)
            assert anim.steps[k - 1].node == name == anim.current[k]
            primitive = anim.trace.jaxpr.eqns[index].primitive.name
            assert anim.steps[k - 1].primitive == primitive


def test_the_last_frame_has_fg_grads_gradients_as_draw_jaxpr_writes_them():
    fun, args = xor_case()
    anim = fg.viz.animate_backward(fun, *args)
    expected = fg.grad(fun)(*args)
    for got, want in zip(jax.tree_util.tree_leaves(anim.grads),
                         jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(got, want)
    drawn = fg.viz.draw_jaxpr(fun, *args)
    assert sorted(red_texts(anim.frames[-1])) == sorted(red_texts(drawn.to_svg()))
    w1 = np.asarray(expected["layers"][0]["W"])
    assert "grad [" + " ".join(fmt_number(v) for v in w1.ravel()) + "]" in red_texts(
        anim.frames[-1]
    )
    # Frame 0: the forward pass, every value, no gradient yet but the seed on the loss.
    first = anim.frames[0]
    assert red_texts(first) == ["grad 1"]
    assert first.count(">grad ?<") == len(red_texts(anim.frames[-1])) - 1


def test_the_caption_names_the_rule_its_formula_and_the_cotangents():
    fun, args = xor_case()
    anim = fg.viz.animate_backward(fun, *args)
    texts = [t.text for t in frame_tree(anim.frames[6]).iter(f"{SVG}text")]
    step = anim.steps[5]
    assert step.primitive == "logistic" and step.rule == "logistic_vjp"
    assert step.formula == "d s(x) = s(x) (1 - s(x)) = s(x) s(-x)"
    assert f"step 6 of {len(anim) - 1}: transpose equation {step.index}, logistic" in texts
    assert "rule logistic_vjp:  d s(x) = s(x) (1 - s(x)) = s(x) s(-x)" in texts
    sent = next(t for t in texts if t.startswith("sent back: "))
    assert "net_out (eqn 8) ←" not in sent and "funcgrad_tag (eqn 8) ←" in sent
    first = [t.text for t in frame_tree(anim.frames[0]).iter(f"{SVG}text")]
    assert any(t.startswith("step 0 of 15: the forward pass has run") for t in first)


def test_a_fan_in_shows_its_partial_sum_then_the_sum():
    fun, args = softmax_case()
    anim = fg.viz.animate_backward(fun, *args)
    summed = [v for v, arrivals in anim.walk.arrivals.items() if len(arrivals) == 2]
    assert summed, "log_softmax reads the shifted logits twice"
    (first, _), (second, _) = anim.walk.arrivals[summed[0]]
    assert 0 < first < second
    partial = anim.frames[first]
    assert "(1 of 2 summed)" in partial and ">Σ2<" not in partial
    done = anim.frames[second]
    assert "(1 of 2 summed)" not in done
    badge = [g for g in frame_tree(done).iter(f"{SVG}g") if g.get("class") == "fg-sum"]
    assert [g.get("visibility") for g in badge] == ["visible"]
    assert [t.text for t in badge[0].iter(f"{SVG}text")] == ["Σ2"]
    assert frame_tree(anim.frames[first]).find(f".//{SVG}g[@class='fg-sum']").get(
        "visibility") == "hidden"


@pytest.mark.parametrize("model", ["linear", "xor", "mlp", "cnn", "transformer"])
def test_every_seed_model_animates_to_fg_grads_gradients(model):
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    case = {
        "linear": lambda: cases.linear(k[0], k[1], batch=4),
        "xor": lambda: cases.xor(k[0], hidden=2),
        "mlp": lambda: cases.mlp(k[0], k[1], batch=2),
        "cnn": lambda: cases.cnn(k[0], k[1], k[2], conv_channels=(2,), dense_sizes=(4,),
                                 batch=2),
        "transformer": lambda: cases.transformer(k[0], k[1], d_model=8, seq_len=4),
    }[model]()
    budget = 60 if model == "transformer" else G.DEFAULT_NODE_BUDGET
    anim = fg.viz.animate_backward(case.loss, *case.args, node_budget=budget)
    assert len(anim) == len(observed_walk(case.loss, case.args)) + 1
    for got, want in zip(jax.tree_util.tree_leaves(anim.grads),
                         jax.tree_util.tree_leaves(fg.grad(case.loss)(*case.args))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert all(s.node for s in anim.steps)
    if model == "transformer":
        assert anim.graph.collapsed and anim.graph.node_count <= budget
        collapsed = [s for s in anim.steps if anim.graph.records[s.node].kind == "collapsed"]
        assert collapsed  # steps inside a collapsed cluster highlight the cluster's node
        assert 'data-view="1"' in anim.to_html()


# ---- the saved page --------------------------------------------------------------------------


class _Resources(HTMLParser):
    """Every attribute of a page that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "data", "poster", "action"):
                self.refs.append((tag, name, value or ""))


def test_the_saved_page_is_one_file_that_loads_nothing(tmp_path):
    fun, args = xor_case()
    anim = fg.viz.animate_backward(fun, *args)
    path = anim.save(tmp_path / "walk.html")
    text = path.read_text()
    parser = _Resources()
    parser.feed(text)
    assert [r for r in parser.refs if not r[2].startswith("#")] == []
    assert "link" not in parser.tags and "iframe" not in parser.tags
    assert "<script src" not in text and "@import" not in text
    urls = re.findall(r"url\(([^)]*)\)", text)
    assert urls and all(u.startswith("data:font/woff;base64,") for u in urls)
    assert "http://" not in text.replace("http://www.w3.org/", "")
    assert "https://" not in text.replace("https://dejavu-fonts.github.io/License.html", "")
    assert len(text) < 400_000
    assert 'data-act="play"' in text and 'class="fg-slider"' in text
    assert '"page_keys":true' in text and '"page_keys":false' in anim._repr_html_()


# ---- formulas ----------------------------------------------------------------------------------


def test_rule_formulas_come_from_the_rules_comments_and_docstrings():
    assert rule_of("tanh")[0] == "tanh_vjp"
    assert rule_of("tanh")[1].startswith("d tanh(x) = 1 - tanh(x)^2")
    assert rule_of("add") == ("add_vjp", "d(x + y) = dx + dy")  # the def line's comment
    assert rule_of("mul") == ("mul_vjp", "d(x y) = y dx + x dy.")  # the docstring's sentence
    assert rule_of("scan")[0] == "ScanVjp" and "reverse scan" in rule_of("scan")[1]
    assert rule_of("stop_gradient")[1] == "d stop_gradient = 0: its inputs get no cotangent"
    assert rule_of("no_such_primitive") == (
        "no_such_primitive", "no VJP rule is registered for no_such_primitive")

    def no_words(ct, x):
        return (ct,)

    assert formula_of(no_words) is None


# ---- hover and drill-down in every drawn graph -------------------------------------------------


def test_every_node_has_its_full_summary_as_tooltip():
    fun, args = xor_case()
    g = fg.viz.draw_jaxpr(fun, *args)
    svg = g.to_svg()
    root = frame_tree(svg)
    nodes = [n for n in root.iter(f"{SVG}g") if n.get("class", "").startswith("node")]
    assert nodes and all(n.find(f"{SVG}title") is not None for n in nodes)
    w = np.asarray(args[0]["layers"][0]["W"])
    tip = next(n.get("data-tip") for n in nodes if n.get("data-tip", "").startswith("layers[0].W"))
    value = summary_lines(w)
    grad = summary_lines(fg.grad(fun)(*args)["layers"][0]["W"])
    assert f"value: {value[0]}" in tip and f"gradient: {grad[0]}" in tip
    for line in value[1:] + grad[1:]:
        assert "    " + line in tip
    assert "std" in tip and "zeros 0 of 4, NaN 0, inf 0" in tip


def test_summary_lines_say_shape_dtype_stats_zeros_nans_and_first_entries():
    a = np.array([[0.0, 1.0, np.nan], [3.0, 0.0, 5.0], [6.0, 7.0, 8.0]], np.float32)
    assert summary_lines(a) == [
        "float32[3, 3], 9 entries",
        "min 0  mean 3.75  max 8  std 2.99",
        "zeros 2 of 9, NaN 1, inf 0",
        "first [0 1 nan 3 0 5 6 7 …]",
    ]
    assert summary_lines(np.float32(2.5)) == ["float32[], 1 entry: 2.5"]


def transformer_graph(**kwargs):
    case = cases.transformer(jax.random.PRNGKey(4), jax.random.PRNGKey(5), d_model=8, seq_len=4)
    return fg.viz.draw_jaxpr(case.loss, *case.args, node_budget=60, **kwargs)


def test_collapsed_clusters_open_in_precomputed_views_of_the_same_page(tmp_path):
    g = transformer_graph()
    assert g.collapsed
    html_text = g.to_html()
    views = re.findall(r'class="fg-view" id="(fg\w+-view-\d+)"', html_text)
    opens = re.findall(r'data-view="(\d+)"', html_text)
    assert len(views) >= 1 + len(g.collapsed)
    assert {int(k) for k in opens} == set(range(1, len(views)))  # each view is reachable
    assert html_text.count("(opened)</div>") == len(views) - 1
    sub = g.drawing.drill(next(r for r in g.records.values() if r.kind == "collapsed"))
    assert sub.node_count > 1 and "opened" in sub.source
    page = g.save_html(tmp_path / "graph.html")
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert g.collapsed == transformer_graph().collapsed  # drilling leaves the graph as it was


def test_jupyter_shows_the_interactive_html():
    fun, args = xor_case()
    g = fg.viz.draw_jaxpr(fun, *args)
    html_text = g._repr_html_()
    assert html_text.startswith('<div class="fg-root"') and "<svg" in html_text
    assert "@font-face" in html_text and "data-tip=" in html_text
    ids = re.findall(r'<div class="fg-root" id="(\w+)"', html_text + g._repr_html_())
    assert len(set(ids)) == 2  # two displays of one graph do not share ids


# ---- the font ----------------------------------------------------------------------------------


def test_graphs_name_dejavu_sans_and_nodes_make_room_for_what_a_browser_draws():
    assert G.FONT == "DejaVu Sans" and fonts.font_path() is not None
    fun, args = xor_case()
    g = fg.viz.draw_jaxpr(fun, *args)
    assert g.source.count('fontname="DejaVu Sans"') == 2
    # A line of digits: Graphviz (hinted metrics) measures it narrower than it is drawn.
    line = "grad [0.02194 0.2551 -0.1312 0.122]"
    drawn, laid_out = measure.line_widths(line)
    assert drawn > laid_out
    assert measure.node_width([line], margin=5) == pytest.approx(2 * drawn - laid_out + 11)
    # The width Graphviz gives a label is what `dot` makes of it.
    src = ('digraph { node [shape=box fontname="DejaVu Sans" fontsize=10 margin=0]; '
           f'a [label="{line}"] }}')
    svg = graphviz.Source(src).pipe(format="svg").decode()
    xs = [float(x) for x in re.search(r'<polygon fill="none"[^>]*points="([^"]+)"', svg)[1]
          .replace(",", " ").split()[0::2]]
    assert max(xs) - min(xs) == pytest.approx(laid_out, abs=1.0)


def test_the_font_is_embedded_as_a_small_subset_with_its_license():
    css = fonts.font_face_css("grad 0.25 Σ")
    assert css.count("@font-face") == 2 and "font-weight:bold" in css
    assert "Bitstream" in css and "dejavu-fonts.github.io/License.html" in css
    assert len(css) < 60_000
    svg = fg.viz.draw_jaxpr(*xor_case()[:1], *xor_case()[1]).to_svg()
    assert "@font-face" in svg and "<defs><style>" in svg


def test_to_svg_centres_each_line_by_its_drawn_width():
    g = fg.viz.draw_jaxpr(lambda w: jnp.sum(jnp.tanh(w) * 3.0), jnp.linspace(-1.0, 1.0, 4))
    root = frame_tree(g.to_svg(embed_font=False))
    for node in root.iter(f"{SVG}g"):
        if not node.get("class", "").startswith("node"):
            continue
        shape = next(e for e in node if e.tag in (f"{SVG}path", f"{SVG}polygon"))
        numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", shape.get("d")
                                                or shape.get("points"))]
        x0, x1 = min(numbers[0::2]), max(numbers[0::2])
        lines: dict[str, list] = {}
        for t in node.iter(f"{SVG}text"):
            if t.get("text-anchor") == "start":
                lines.setdefault(t.get("y"), []).append(t)
        for runs in lines.values():
            start = float(runs[0].get("x"))
            widths = [fonts.text_width((t.text or ""), float(t.get("font-size")),
                                       t.get("font-weight") == "bold") for t in runs]
            end = float(runs[-1].get("x")) + fonts.text_width(
                runs[-1].text.strip(), float(runs[-1].get("font-size")),
                runs[-1].get("font-weight") == "bold")
            assert x0 < start and end < x1, (runs[0].text, x0, start, end, x1, widths)
            assert (start - x0) == pytest.approx(x1 - end, abs=0.6)


def test_scan_bodies_and_gradient_programs_still_draw_and_open():
    def f(w, xs):
        def body(c, x):
            return jnp.tanh(c * w + x), jnp.sin(c)

        c, ys = lax.scan(body, 0.5, xs)
        return c + ys.sum()

    g = fg.viz.draw_jaxpr(f, jnp.float32(0.3), jnp.arange(3.0), collapse=True)
    assert "scan" in g.collapsed
    assert 'data-view="1"' in g.to_html()
    program = fg.viz.draw_jaxpr(f, jnp.float32(0.3), jnp.arange(3.0), view="backward",
                                collapse={"forward"})
    assert "forward" in program.collapsed and "<svg" in program.to_html()

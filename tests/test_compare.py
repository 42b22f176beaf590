"""fg.compare_grads: a readable report that flags exactly the wrong leaves and cannot be fooled."""

from __future__ import annotations

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive
from jax.interpreters import ad, mlir

import funcgrad as fg
from funcgrad.compare import (
    FD_TOLERANCES,
    TOLERANCES,
    compare_arrays,
    default_tolerance,
    finite_diff,
    jax_tag_cotangents,
    ulp_distance,
)

N = 8
KEYS = jax.random.split(jax.random.PRNGKey(0), 6)
# layers[0].W is (3, 4): transposing it changes its shape; layers[1].W is (4, 4): it does not.
PARAMS = {
    "layers": [
        {"W": jax.random.normal(KEYS[0], (3, 4)), "b": jax.random.normal(KEYS[1], (4,)) * 0.1},
        {"W": jax.random.normal(KEYS[2], (4, 4)) * 0.5, "b": jnp.zeros(4)},
    ]
}
X = jax.random.normal(KEYS[3], (N, 3))
Y = jax.random.normal(KEYS[4], (N, 4))


def loss(params, x, y):
    """A tanh MLP with MSE: dot_general, add, tanh, sub, integer_pow, reduce_sum, div."""
    (l0, l1) = params["layers"]
    h = fg.tag(jnp.tanh(x @ l0["W"] + l0["b"]), "h")
    out = h @ l1["W"] + l1["b"]
    return jnp.sum((out - y) ** 2) / x.shape[0]


def manual_grad(params, x, y):
    """The textbook backward pass of ``loss``."""
    (l0, l1) = params["layers"]
    h = jnp.tanh(x @ l0["W"] + l0["b"])
    dout = 2 * (h @ l1["W"] + l1["b"] - y) / x.shape[0]
    dh = dout @ l1["W"].T
    dz = dh * (1 - h**2)
    return {
        "layers": [
            {"W": x.T @ dz, "b": jnp.sum(dz, axis=0)},
            {"W": h.T @ dout, "b": jnp.sum(dout, axis=0)},
        ]
    }


def manual_dh(params, x, y):
    (l0, l1) = params["layers"]
    h = jnp.tanh(x @ l0["W"] + l0["b"])
    return (2 * (h @ l1["W"] + l1["b"] - y) / x.shape[0]) @ l1["W"].T


def planted(change):
    """A hand-derived gradient with one deliberate mistake, made by ``change(grads)``."""

    def wrong(params, x, y):
        g = manual_grad(params, x, y)
        change(g)
        return g

    return wrong


def failing(report):
    return [(r["leaf"], r["pair"]) for r in report.failures()]


# ---- the default comparison -------------------------------------------------------------------
def test_funcgrad_is_compared_with_jax_leaf_by_leaf():
    report = fg.compare_grads(loss, PARAMS, X, Y)
    assert report.ok and bool(report)
    assert report.leaves() == ["layers[0].W", "layers[0].b", "layers[1].W", "layers[1].b"]
    assert report.pairs == ["fg~jax"]
    row = report.row("layers[0].W", "fg~jax")
    assert row["shape"] == (3, 4) and row["dtype"] == "float32"
    assert row["tested"] == "funcgrad" and row["reference"] == "jax"
    assert (row["rtol"], row["atol"]) == TOLERANCES[np.dtype(np.float32)]
    for key in ("exact", "close", "maxabs", "maxrel", "ulps", "n", "n_bad", "worst"):
        assert key in row


def test_a_correct_hand_derived_gradient_passes_and_every_engine_is_measured_against_jax():
    report = fg.compare_grads(loss, PARAMS, X, Y, reference=manual_grad)
    assert report.ok, report
    assert report.pairs == ["fg~jax", "manual~jax"]
    assert report.engines == ["funcgrad", "jax", "manual"]
    assert len(report.rows) == 8


# ---- planted mistakes: exactly the wrong leaf is flagged ----------------------------------------
def test_a_transposed_square_weight_gradient_is_flagged_alone():
    def transpose(g):
        g["layers"][1]["W"] = g["layers"][1]["W"].T

    report = fg.compare_grads(loss, PARAMS, X, Y, reference=planted(transpose))
    assert not report.ok
    assert failing(report) == [("layers[1].W", "manual~jax")]
    assert "layers[1].W (manual~jax)" in report.verdict()


def test_a_transposed_non_square_weight_gradient_is_a_shape_mismatch_naming_the_leaf():
    def transpose(g):
        g["layers"][0]["W"] = g["layers"][0]["W"].T

    with pytest.raises(ValueError, match=r"shape of layers\[0\]\.W: 'manual' \(4, 3\), "
                                         r"jax\.grad \(3, 4\)"):
        fg.compare_grads(loss, PARAMS, X, Y, reference=planted(transpose))


def test_a_missing_one_over_n_is_flagged_alone():
    def forget_mean(g):
        g["layers"][1]["b"] = g["layers"][1]["b"] * N  # summed over the batch, not averaged

    report = fg.compare_grads(loss, PARAMS, X, Y, reference=planted(forget_mean))
    assert failing(report) == [("layers[1].b", "manual~jax")]
    row = report.row("layers[1].b", "manual~jax")
    assert row["n_bad"] == 4 and row["maxrel"] == pytest.approx(N - 1, rel=1e-4)


def test_one_wrong_sign_on_one_element_is_flagged_at_that_element():
    def flip(g):
        g["layers"][0]["W"] = g["layers"][0]["W"].at[2, 1].multiply(-1)

    report = fg.compare_grads(loss, PARAMS, X, Y, reference=planted(flip))
    assert failing(report) == [("layers[0].W", "manual~jax")]
    row = report.row("layers[0].W", "manual~jax")
    assert (row["n_bad"], row["n"], row["worst"]) == (1, 12, "[2, 1]")
    assert row["worst_tested"] == pytest.approx(-row["worst_reference"], rel=1e-5)
    assert "1 of 12 off; worst [2, 1]" in row["note"]
    assert "1 of 12 off; worst [2, 1]" in str(report)


def test_a_different_structure_is_an_error_listing_the_paths_that_differ():
    def renamed(params, x, y):
        g = manual_grad(params, x, y)
        g["layers"][1]["bias"] = g["layers"][1].pop("b")
        return g

    with pytest.raises(ValueError) as err:
        fg.compare_grads(loss, PARAMS, X, Y, reference=renamed)
    message = str(err.value)
    assert "missing from 'manual' (in jax.grad's): layers[1].b" in message
    assert "only in 'manual' (not in jax.grad's): layers[1].bias" in message


def test_a_missing_layer_and_a_different_container_are_listed_too():
    def one_layer(params, x, y):
        return {"layers": manual_grad(params, x, y)["layers"][:1]}

    with pytest.raises(ValueError, match=r"layers\[1\]\.W, layers\[1\]\.b"):
        fg.compare_grads(loss, PARAMS, X, Y, reference=one_layer)

    def as_tuple(params, x, y):
        return {"layers": tuple(manual_grad(params, x, y)["layers"])}

    with pytest.raises(ValueError, match="same leaf paths but different containers"):
        fg.compare_grads(loss, PARAMS, X, Y, reference=as_tuple)


# ---- NaN, zeros, infinities, ULPs -------------------------------------------------------------
@pytest.mark.parametrize(
    "tested, reference",
    [([1.0, np.nan], [1.0, 2.0]), ([1.0, 2.0], [1.0, np.nan]), ([np.nan], [np.nan])],
    ids=["nan-tested", "nan-reference", "nan-both"],
)
def test_nan_on_either_side_is_a_mismatch_never_equal(tested, reference):
    stats = compare_arrays(np.float32(tested), np.float32(reference), rtol=1.0, atol=1.0)
    assert not stats["exact"] and not stats["close"]
    assert stats["n_bad"] == 1 and stats["ulps"] is None


def test_a_nan_gradient_fails_the_report():
    def nan_grad(params, x, y):
        g = manual_grad(params, x, y)
        g["layers"][0]["b"] = g["layers"][0]["b"].at[0].set(jnp.nan)
        return g

    report = fg.compare_grads(loss, PARAMS, X, Y, reference=nan_grad)
    assert failing(report) == [("layers[0].b", "manual~jax")]
    row = report.row("layers[0].b", "manual~jax")
    assert row["nan_tested"] == 1 and "NaN: 1 in manual, 0 in jax" in row["note"]
    assert "nan" in str(report)


def test_negative_zero_equals_positive_zero_exactly():
    stats = compare_arrays(np.float32([-0.0, 1.0]), np.float32([0.0, 1.0]), rtol=0, atol=0)
    assert stats["exact"] and stats["close"] and stats["ulps"] == 0 and stats["maxabs"] == 0


def test_equal_infinities_are_equal_and_opposite_ones_are_not():
    same = compare_arrays(np.float32([np.inf, -np.inf]), np.float32([np.inf, -np.inf]), 0, 0)
    assert same["exact"] and same["ulps"] == 0
    opposite = compare_arrays(np.float32([np.inf]), np.float32([-np.inf]), 1.0, 1.0)
    assert not opposite["close"]


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16, np.float32, np.float64])
def test_adjacent_floats_are_one_ulp_apart(dtype):
    x = np.asarray([1.0, -3.5, 1e-3, 0.0], dtype)
    up = np.asarray([np.nextafter(v, np.inf, dtype=np.float64) for v in x.astype(np.float64)])
    # nextafter in float64 is not adjacent in float16/bfloat16: step by the bit pattern instead.
    bits = x.view(np.int16 if x.dtype.itemsize == 2 else np.int32 if x.dtype.itemsize == 4
                  else np.int64)
    neighbour = np.where(bits >= 0, bits + 1, bits - 1).astype(bits.dtype).view(x.dtype)
    assert ulp_distance(x, neighbour).tolist() == [1, 1, 1, 1]
    if dtype == np.float64:
        assert ulp_distance(x, up).tolist() == [1, 1, 1, 1]


def test_ulp_distance_across_zero_and_to_infinity():
    tiny = np.float32(np.nextafter(np.float32(0), np.float32(1)))
    assert ulp_distance(np.float32([tiny]), np.float32([-tiny])).tolist() == [2]
    biggest = np.finfo(np.float32).max
    assert ulp_distance(np.float32([biggest]), np.float32([np.inf])).tolist() == [1]
    assert ulp_distance(np.float32([np.nan]), np.float32([1.0]))[0] == np.iinfo(np.uint64).max
    big = ulp_distance(np.float64([-np.inf]), np.float64([np.inf]))[0]
    assert big == 2 * 0x7FF0000000000000  # exact, no int64 overflow


def test_close_is_measured_relative_to_the_reference_side():
    # |10 - 5| = 5 > 0.6·5 but < 0.6·10: close only when 10 is the reference.
    assert not compare_arrays(np.float32([10]), np.float32([5]), 0.6, 0)["close"]
    assert compare_arrays(np.float32([5]), np.float32([10]), 0.6, 0)["close"]


def test_default_tolerances_per_dtype_and_overrides():
    assert default_tolerance(np.float32) == (1e-5, 1e-6)
    assert default_tolerance(np.float64) == (1e-10, 1e-12)
    assert default_tolerance(np.float32, fd=True) == FD_TOLERANCES[np.dtype(np.float32)]
    assert default_tolerance(jnp.bfloat16) == (2e-2, 1e-2)
    report = fg.compare_grads(loss, PARAMS, X, Y, rtol=0.5, atol=0.25)
    assert {(r["rtol"], r["atol"]) for r in report.rows} == {(0.5, 0.25)}
    assert "float32 rtol=0.5 atol=0.25" in str(report)


def test_a_gradient_of_the_wrong_dtype_fails_its_row():
    def float16_grad(params, x, y):
        g = manual_grad(params, x, y)
        g["layers"][1]["b"] = g["layers"][1]["b"].astype(jnp.float16)
        return g

    report = fg.compare_grads(loss, PARAMS, X, Y, reference=float16_grad)
    assert failing(report) == [("layers[1].b", "manual~jax")]
    assert report.row("layers[1].b", "manual~jax")["note"] == "dtype float16, expected float32"


def test_float64_tolerances_apply_under_x64():
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: a.astype(jnp.float64), PARAMS)
        report = fg.compare_grads(loss, params64, X.astype(jnp.float64), Y.astype(jnp.float64),
                                  reference=manual_grad)
    assert report.ok, report
    assert {r["dtype"] for r in report.rows} == {"float64"}
    assert {(r["rtol"], r["atol"]) for r in report.rows} == {(1e-10, 1e-12)}


# ---- finite differences -----------------------------------------------------------------------
def small_loss(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2) + jnp.sum(jnp.sin(w))


W_SMALL = jax.random.normal(KEYS[5], (3, 4)) * 0.5


def test_finite_differences_agree_in_float32_and_recommend_float64():
    report = fg.compare_grads(small_loss, W_SMALL, X, reference="fd")
    assert report.ok, report
    assert report.pairs == ["fg~jax", "fd~jax"]
    fd_row = report.row("w", "fd~jax")
    assert fd_row["exact"] is None and fd_row["ulps"] is None
    assert fd_row["checked"] == "all 12 elements"
    table_rtol, table_atol = FD_TOLERANCES[np.dtype(np.float32)]
    # |f(x)| is about 15 here: the atol is raised to the estimates' rounding noise, and says so.
    noise = 10 * float(jnp.finfo(jnp.float32).eps) ** (2 / 3) * abs(float(small_loss(W_SMALL, X)))
    assert fd_row["rtol"] == table_rtol and fd_row["atol"] == pytest.approx(noise, rel=1e-5)
    assert noise > table_atol
    assert any(n.startswith(f"fd: atol raised to {noise:.2g}") for n in report.notes)
    assert any("float32 only catch gross errors" in n and "--x64" in n for n in report.notes)


def test_finite_differences_in_float64_are_tight():
    with jax.enable_x64(True):
        w, x = W_SMALL.astype(jnp.float64), X.astype(jnp.float64)
        report = fg.compare_grads(small_loss, w, x, reference="fd")
        numerical = finite_diff.numerical_grad(small_loss, w, x)
        exact = jax.grad(small_loss)(w, x)
    assert report.ok, report
    assert report.row("w", "fd~jax")["maxabs"] < 1e-9
    assert not any("gross errors" in n for n in report.notes)
    np.testing.assert_allclose(numerical, exact, rtol=1e-8, atol=1e-10)


def test_large_leaves_are_sampled_plus_one_direction_and_the_report_says_so():
    report = fg.compare_grads(small_loss, W_SMALL, X, reference="fd", fd_elements=5)
    row = report.row("w", "fd~jax")
    assert row["checked"] == "5 of 12 elements + 1 direction" and row["n"] == 6
    assert "5 of 12 elements + 1 direction" in row["note"]
    assert any("probed at 5 random elements (seed 0) plus one random direction" in n
               for n in report.notes)
    again = fg.compare_grads(small_loss, W_SMALL, X, reference="fd", fd_elements=5)
    assert again.rows == report.rows  # the sample is fixed by the seed


@jax.custom_jvp
def wrong_sin(x):
    return jnp.sin(x)


@wrong_sin.defjvp
def _wrong_sin_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.sin(x), -jnp.cos(x) * t  # the wrong sign: JAX itself is now wrong


def test_finite_differences_catch_a_wrong_gradient_that_jax_and_funcgrad_agree_on():
    with jax.enable_x64(True):
        w = W_SMALL.astype(jnp.float64)
        report = fg.compare_grads(lambda w: jnp.sum(wrong_sin(w) * w), w, reference="fd")
    assert report.row("w", "fg~jax")["ok"]  # funcgrad honours the (wrong) custom rule
    assert failing(report) == [("w", "fd~jax")]


def test_a_probe_across_a_kink_is_skipped_not_trusted():
    # |w| at w = 1e-9: the central difference is ~0 while both gradients say +1; this is f's
    # kink, not a wrong gradient, and the report says so instead of failing.
    with jax.enable_x64(True):
        w = jnp.array([1e-9, 2.0])
        report = fg.compare_grads(lambda w: jnp.sum(jnp.abs(w)), w, reference="fd")
    row = report.row("w", "fd~jax")
    assert report.ok and row["skipped"] == 1 and row["n"] == 1
    assert "1 skipped: f has a kink within the step there" in row["note"]


def test_a_kink_does_not_hide_a_wrong_gradient_elsewhere():
    def wrong(w):
        return jnp.sign(w) * jnp.array([1.0, -1.0])  # the second element has the wrong sign

    with jax.enable_x64(True):
        w = jnp.array([1e-9, 2.0])
        report = fg.compare_grads(lambda w: jnp.sum(jnp.abs(w)), w,
                                  reference={"manual": wrong, "fd": "fd"},
                                  pairs=[("fd", "manual")])
    row = report.row("w", "fd~manual")
    assert not report.ok and row["n_bad"] == 1 and row["worst"] == "[1]"


def test_finite_differences_can_run_in_float64_for_float32_gradients():
    report = fg.compare_grads(small_loss, W_SMALL, X, reference="fd", fd_dtype="float64")
    assert report.ok, report
    assert report.row("w", "fd~jax")["maxabs"] < 1e-5
    assert any("fd: evaluated in float64" in n for n in report.notes)
    assert not jax.config.jax_enable_x64  # restored


# ---- tagged intermediates ---------------------------------------------------------------------
def test_hand_derived_cotangents_of_tagged_intermediates_are_compared():
    report = fg.compare_grads(loss, PARAMS, X, Y, intermediates={"h": manual_dh(PARAMS, X, Y)})
    assert report.ok, report
    assert report.leaves()[0] == "tag:h"
    assert [r["pair"] for r in report.rows if r["leaf"] == "tag:h"] == ["fg~jax", "manual~jax"]
    assert report.row("tag:h", "fg~jax")["kind"] == "intermediate"

    wrong = manual_dh(PARAMS, X, Y).at[3, 0].add(1.0)
    report = fg.compare_grads(loss, PARAMS, X, Y, intermediates={"h": wrong})
    assert failing(report) == [("tag:h", "manual~jax")]
    assert report.row("tag:h", "manual~jax")["worst"] == "[3, 0]"


def test_jax_cotangent_of_a_tag_is_jaxs_own_and_matches_the_trace():
    names = ["h"]
    jax_ct = jax_tag_cotangents(loss, PARAMS, X, Y, names=names)["h"]
    fg_ct = fg.trace(loss, PARAMS, X, Y).cotangent("h")
    np.testing.assert_allclose(jax_ct, manual_dh(PARAMS, X, Y), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax_ct, fg_ct, rtol=1e-6, atol=1e-7)


def test_tags_inside_jit_are_found_and_bad_names_are_refused():
    @jax.jit
    def inner(x):
        return fg.tag(jnp.sin(x), "s") * 2

    def f(x):
        return jnp.sum(inner(x) ** 2)

    x = jnp.linspace(-1.0, 1.0, 5)
    ct = jax_tag_cotangents(f, x, names=["s"])["s"]
    np.testing.assert_allclose(ct, 8 * jnp.sin(x), rtol=1e-6)
    with pytest.raises(KeyError, match=r"no fg.tag named 'nope'.*\['s'\]"):
        jax_tag_cotangents(f, x, names=["nope"])

    def twice(x):
        return jnp.sum(fg.tag(x, "t") * fg.tag(x * 2, "t"))

    with pytest.raises(KeyError, match="appears 2 times"):
        jax_tag_cotangents(twice, x, names=["t"])

    def in_scan(x):
        return jax.lax.scan(lambda c, xi: (c + fg.tag(xi, "step"), None), 0.0, x)[0]

    with pytest.raises(ValueError, match="inside a scan"):
        jax_tag_cotangents(in_scan, x, names=["step"])


def test_a_tag_on_the_data_path_gets_its_cotangent_too():
    def f(w, x):
        z = fg.tag(x * 2.0, "z")  # depends on x only, not on the differentiated w
        return jnp.sum(jnp.tanh(z) @ w)

    z = X * 2.0
    dz = (1 - jnp.tanh(z) ** 2) * jnp.sum(W_SMALL, axis=1)
    report = fg.compare_grads(f, W_SMALL, X, intermediates={"z": dz})
    assert report.ok, report
    assert report.row("tag:z", "fg~jax")["maxabs"] < 1e-6


def test_an_intermediate_of_the_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match=r"intermediates\['h'\] has shape \(4, 8\)"):
        fg.compare_grads(loss, PARAMS, X, Y, intermediates={"h": manual_dh(PARAMS, X, Y).T})


# ---- the report -------------------------------------------------------------------------------
def table_lines(report):
    lines = str(report).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("leaf "))
    end = next(i for i, line in enumerate(lines) if line.startswith(("OK", "FAILED")))
    return lines[start:end]


def test_the_text_table_is_aligned_and_groups_pairs_under_their_leaf():
    report = fg.compare_grads(loss, PARAMS, X, Y, reference=[manual_grad, "fd"])
    lines = table_lines(report)
    header = lines[0]
    assert header.split() == ["leaf", "shape", "dtype", "pair", "exact", "close", "maxabs",
                              "maxrel", "ulps", "note"]
    pair_col = header.index("pair")
    for line in lines[1:]:
        assert re.match(r"(fg|manual|fd)~jax ", line[pair_col:]), line
    assert lines[1].startswith("layers[0].W") and lines[2].startswith(" " * pair_col)
    assert len(lines) == 1 + 4 * 3


def test_the_wide_layout_has_one_line_per_leaf_and_a_column_per_pair():
    report = fg.compare_grads(loss, PARAMS, X, Y, reference=[manual_grad, "fd"])
    text = report.to_string("wide")
    assert "leaf         shape   dtype    fg~jax  manual~jax" in text
    assert len([line for line in text.splitlines() if line.startswith("layers[")]) == 4


def test_html_highlights_failing_rows_and_escapes_names():
    params = {"<b>w</b>": W_SMALL}

    def f(p):
        return jnp.sum(jnp.tanh(p["<b>w</b>"]) ** 2)

    def wrong(p):
        return {"<b>w</b>": jnp.zeros_like(p["<b>w</b>"])}

    html = fg.compare_grads(f, params, reference=wrong)._repr_html_()
    assert "&lt;b&gt;w&lt;/b&gt;" in html and "<b>w</b>" not in html
    assert html.count('class="fail"') == 1 and "background:#f8d0d0" in html
    ok_html = fg.compare_grads(f, params)._repr_html_()
    assert 'class="fail"' not in ok_html and "OK: all 1 comparisons" in ok_html


def test_rows_are_plain_data_and_json_is_strict():
    def nan_grad(params, x, y):
        return jax.tree.map(lambda g: g * jnp.nan, manual_grad(params, x, y))

    report = fg.compare_grads(loss, PARAMS, X, Y, reference=nan_grad)
    data = json.loads(report.to_json())  # allow_nan=False inside: NaN became a string
    assert data["ok"] is False and data["pairs"] == ["fg~jax", "manual~jax"]
    assert data["rows"][0]["shape"] == [3, 4]
    assert {r["maxabs"] for r in data["rows"] if r["pair"] == "manual~jax"} == {"nan"}
    assert report.to_dict()["verdict"].startswith("FAILED: 4 of 8")


def test_assert_report_fails_on_a_mismatch():
    bad = fg.compare_grads(loss, PARAMS, X, Y, reference=lambda *a: jax.tree.map(
        jnp.zeros_like, PARAMS))
    assert not bad and not bad.ok
    with pytest.raises(AssertionError):
        assert bad


# ---- arguments --------------------------------------------------------------------------------
def test_several_references_at_once_and_chosen_pairs():
    report = fg.compare_grads(
        loss, PARAMS, X, Y, reference={"textbook": manual_grad, "fd": "fd"},
        pairs=[("textbook", "fg"), ("fd", "textbook")],
    )
    assert report.ok, report
    assert report.pairs == ["textbook~fg", "fd~textbook"]
    with pytest.raises(ValueError, match="put finite differences on the tested side"):
        fg.compare_grads(loss, PARAMS, X, Y, reference="fd", pairs=[("jax", "fd")])
    with pytest.raises(ValueError, match="names 'manual'"):
        fg.compare_grads(loss, PARAMS, X, Y, pairs=[("manual", "jax")])
    with pytest.raises(ValueError, match="reference name 'jax'"):
        fg.compare_grads(loss, PARAMS, X, Y, reference={"jax": manual_grad})
    with pytest.raises(TypeError, match="reference must be None, 'fd', a callable"):
        fg.compare_grads(loss, PARAMS, X, Y, reference="finite differences")


def test_argnums_tuple_names_leaves_by_argument():
    def grads(params, x, y):
        dx = jax.grad(loss, 1)(params, x, y)  # stands in for a hand-derived input gradient
        return manual_grad(params, x, y), dx

    report = fg.compare_grads(loss, PARAMS, X, Y, argnums=(0, 1), reference=grads)
    assert report.ok, report
    assert report.leaves() == ["params.layers[0].W", "params.layers[0].b", "params.layers[1].W",
                               "params.layers[1].b", "x"]
    bare = fg.compare_grads(small_loss, W_SMALL, X)
    assert bare.leaves() == ["w"]


def test_a_key_that_is_not_an_identifier_is_quoted_in_the_leaf_name():
    def f(p, w):
        return jnp.sum(p["w q"] * p["b"][0] * w)

    p, w = {"w q": jnp.ones(2), "b": [jnp.full(2, 2.0)]}, jnp.arange(2.0)
    assert fg.compare_grads(f, p, w).leaves() == ["b[0]", "['w q']"]
    assert fg.compare_grads(f, p, w, argnums=(0, 1)).leaves() == ["p.b[0]", "p['w q']", "w"]


def test_nothing_to_compare_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="nothing to compare"):
        fg.compare_grads(lambda p, x: jnp.sum(x), {}, X)


def test_jit_compiles_each_engine_and_gives_the_same_verdicts():
    def flip(g):
        g["layers"][0]["W"] = g["layers"][0]["W"].at[2, 1].multiply(-1)

    report = fg.compare_grads(loss, PARAMS, X, Y, reference=planted(flip), jit=True,
                              intermediates={"h": manual_dh(PARAMS, X, Y)})
    assert failing(report) == [("layers[0].W", "manual~jax")]


fancy_p = Primitive("fancy_square")
fancy_p.def_impl(lambda x: x * x)
fancy_p.def_abstract_eval(lambda aval: aval)
ad.defjvp(fancy_p, lambda t, x: 2 * x * t)
mlir.register_lowering(fancy_p, mlir.lower_fun(lambda x: x * x, multiple_results=False))


def test_an_unsupported_primitive_raises_rather_than_reporting_anything():
    with pytest.raises(fg.UnsupportedPrimitiveError, match="fancy_square"):
        fg.compare_grads(lambda x: jnp.sum(fancy_p.bind(x)), jnp.ones(3))


def test_compare_grads_accepts_partial_and_reports_the_functions_name():
    f = functools.partial(loss, y=Y)
    report = fg.compare_grads(f, PARAMS, X)
    assert report.ok and report.title.startswith("gradients of fun w.r.t. params: fg, jax")
    named = fg.compare_grads(loss, PARAMS, X, Y, reference="fd")
    assert named.title == "gradients of loss w.r.t. params: fg, jax, fd"

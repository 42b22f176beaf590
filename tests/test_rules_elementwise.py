"""Elementwise VJP rules, held against jax.grad / jax.vjp.

Each primitive is exercised through the lax op that binds it (``lax.add`` on (2,3) and (1,3)
shapes broadcasts implicitly; ``jnp`` would insert an explicit ``broadcast_in_dim``), over scalars,
zero-size arrays, float32 and float64, and at the kinks and ties where JAX picks a convention.

CASES holds one or more cases per primitive on float32 (2, 3) inputs, which test_rules_table.py
checks against jax.grad, eagerly and under jit. Eager runs compile one small XLA program per new
(primitive, shape, dtype), which dominates the time on CPU; the float64 and multi-shape checks here
therefore run funcgrad and JAX side by side under one ``jax.jit`` (``assert_vjps_match_jit``), and
the eager path is also covered by the scalar, float64, kink and composite tests. Comparisons,
bitwise and PRNG ops (no cotangent flows through them) are test_rules_nondiff.py's.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import (
    Case,
    assert_grads_match,
    assert_trees_close,
    assert_vjp_matches,
    assert_vjp_matches_jit,
    assert_vjps_match_jit,
)
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.layout import Layout, with_layout_constraint
from jax.extend.core import ClosedJaxpr, Jaxpr

import funcgrad as fg

HIGHEST = lax.AccuracyMode.HIGHEST


def _uniform(shape, lo, hi, dtype=np.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), dtype)


# name -> (function of one array, (low, high) of a domain where it is smooth and well-conditioned)
UNARY = {
    "neg": (lax.neg, (-2, 2)),
    "abs": (lax.abs, (0.1, 2)),  # the kink at 0 is tested separately
    "abs_negative": (lax.abs, (-2, -0.1)),
    "square": (lax.square, (-2, 2)),
    "integer_pow_0": (lambda x: lax.integer_pow(x, 0), (-2, 2)),
    "integer_pow_1": (lambda x: lax.integer_pow(x, 1), (-2, 2)),
    "integer_pow_2": (lambda x: lax.integer_pow(x, 2), (-2, 2)),
    "integer_pow_3": (lambda x: lax.integer_pow(x, 3), (-2, 2)),
    "integer_pow_-2": (lambda x: lax.integer_pow(x, -2), (0.5, 2)),
    "sqrt": (lax.sqrt, (0.1, 3)),
    "rsqrt": (lax.rsqrt, (0.1, 3)),
    "cbrt": (lax.cbrt, (0.2, 3)),
    "cbrt_negative": (lax.cbrt, (-3, -0.2)),
    "exp": (lax.exp, (-2, 2)),
    "exp2": (lax.exp2, (-2, 2)),
    "expm1": (lax.expm1, (-2, 2)),
    "log": (lax.log, (0.2, 3)),
    "log1p": (lax.log1p, (-0.5, 2)),
    "logistic": (lax.logistic, (-4, 4)),
    "tanh": (lax.tanh, (-2, 2)),
    "sin": (lax.sin, (-3, 3)),
    "cos": (lax.cos, (-3, 3)),
    "tan": (lax.tan, (-1.2, 1.2)),
    "asin": (lax.asin, (-0.9, 0.9)),
    "acos": (lax.acos, (-0.9, 0.9)),
    "atan": (lax.atan, (-3, 3)),
    "sinh": (lax.sinh, (-2, 2)),
    "cosh": (lax.cosh, (-2, 2)),
    "asinh": (lax.asinh, (-3, 3)),
    "acosh": (lax.acosh, (1.1, 3)),
    "atanh": (lax.atanh, (-0.9, 0.9)),
    "erf": (lax.erf, (-2, 2)),
    "erfc": (lax.erfc, (-2, 2)),
    "erf_inv": (lax.erf_inv, (-0.9, 0.9)),
    "lgamma": (lax.lgamma, (0.5, 4)),
    "lgamma_negative": (lax.lgamma, (-1.9, -1.1)),
    "digamma": (lax.digamma, (0.5, 4)),
    "floor": (lax.floor, (-3, 3)),
    "ceil": (lax.ceil, (-3, 3)),
    "round": (lax.round, (-3, 3)),
    "round_even": (lambda x: lax.round(x, lax.RoundingMethod.TO_NEAREST_EVEN), (-3, 3)),
    "sign": (lax.sign, (-3, 3)),
    "stop_gradient": (lax.stop_gradient, (-3, 3)),
    "copy": (lax.copy_p.bind, (-3, 3)),
    "reduce_precision": (lambda x: lax.reduce_precision(x, 5, 10), (-3, 3)),
}

# rules whose zero-size behaviour is not just "the same formula on no elements"
ZERO_SIZE_UNARY = ["abs", "integer_pow_0", "integer_pow_3", "square", "tanh", "round", "copy"]


def _unary_input(name, shape, dtype=np.float32):
    lo, hi = UNARY[name][1]
    return _uniform(shape, lo, hi, dtype)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_float64(name):
    """The float32 (2, 3) case of each is in CASES, which test_rules_table.py checks."""
    with jax.enable_x64(True):
        assert_vjp_matches_jit(UNARY[name][0], _unary_input(name, (2, 3), np.float64))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_scalar_eager(name):
    assert_grads_match(UNARY[name][0], _unary_input(name, ()), jit=False)


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)], ids=str)
@pytest.mark.parametrize("name", ZERO_SIZE_UNARY)
def test_unary_zero_size(name, shape):
    assert_vjp_matches(UNARY[name][0], _unary_input(name, shape))


# ops that take an `accuracy` param; with HIGHEST, JAX switches the tanh/logistic/expm1 formulas
ACCURACY = {
    "exp": lax.exp, "exp2": lax.exp2, "expm1": lax.expm1, "log": lax.log, "log1p": lax.log1p,
    "logistic": lax.logistic, "tanh": lax.tanh, "sin": lax.sin, "cos": lax.cos, "tan": lax.tan,
    "sqrt": lax.sqrt, "rsqrt": lax.rsqrt, "cbrt": lax.cbrt,
}  # fmt: skip
ACCURACY_CASES = [(n, HIGHEST) for n in sorted(ACCURACY)] + [
    (n, lax.AccuracyMode.DEFAULT) for n in ("expm1", "logistic", "tanh")
]


@pytest.mark.parametrize(("name", "accuracy"), ACCURACY_CASES, ids=lambda v: getattr(v, "name", v))
def test_accuracy_param(name, accuracy):
    op = ACCURACY[name]
    lo, hi = UNARY[name][1]
    x = _uniform((7,), lo, hi)
    if name in ("tanh", "logistic", "expm1"):  # the tails, where the HIGHEST formulas differ
        x = jnp.concatenate([x, jnp.array([-12.0, 9.0, 15.0], jnp.float32)])
    assert_vjp_matches_jit(lambda x: op(x, accuracy=accuracy), x)


@pytest.mark.parametrize("name", ["tanh", "exp", "sqrt", "logistic", "erf", "cbrt", "atanh"])
def test_unary_bfloat16(name):
    """Constants in the rules take the operand's dtype: a bf16 input gets a bf16 gradient."""
    assert_vjp_matches(UNARY[name][0], _unary_input(name, (5,), jnp.bfloat16))


def test_mul_out_dtype():
    # a bf16 product accumulated in f32: each cotangent comes back in its operand's dtype
    x = _uniform((2, 3), -1, 1, jnp.bfloat16, seed=1)
    y = _uniform((1, 3), -1, 1, jnp.bfloat16, seed=2)
    w = _uniform((2, 3), -1, 1, seed=3)

    def f(x, y):
        return jnp.sum(lax.mul(x, y, out_dtype=jnp.float32) * w)

    assert_grads_match(f, x, y, argnums=(0, 1))


def test_literal_operands():
    # Python scalars become literals in the jaxpr: `pow 2.0:f32[] y`, `clamp 0.0 x 1.0`, ...
    def f(y):
        return jnp.sum(
            lax.pow(2.0, y) + lax.pow(y, 3) + lax.atan2(1.0, y) + lax.rem(3.0, y)
            + lax.max(y, 0.5) + lax.clamp(0.0, y, 1.0) + lax.select_n(True, y, 2.0 * y)
        )  # fmt: skip

    assert_grads_match(f, _uniform((4,), 0.2, 1.5), jit=False)


# ---- binary ops and implicit broadcasting -------------------------------------------------------

# name -> (op, x domain, y domain)
BINARY = {
    "add": (lax.add, (-2, 2), (-2, 2)),
    "sub": (lax.sub, (-2, 2), (-2, 2)),
    "mul": (lax.mul, (-2, 2), (-2, 2)),
    "div": (lax.div, (-2, 2), (0.5, 2)),
    "rem": (lax.rem, (-3, 3), (0.7, 1.9)),
    "max": (lax.max, (-2, 2), (-2, 2)),
    "min": (lax.min, (-2, 2), (-2, 2)),
    "pow": (lax.pow, (0.5, 2), (-2, 2)),
    "atan2": (lax.atan2, (-2, 2), (-2, 2)),
    "complex_abs": (lambda x, y: lax.abs(lax.complex(x, y)), (-2, 2), (-2, 2)),
}

SHAPE_PAIRS = [
    ((2, 3), (2, 3)),
    ((2, 3), (1, 3)),
    ((2, 1), (1, 3)),
    ((2, 3), ()),
    ((), (2, 3)),
    ((0, 3), (1, 3)),
]


def _binary_inputs(name, xshape, yshape, dtype=np.float32):
    _, (xlo, xhi), (ylo, yhi) = BINARY[name]
    return _uniform(xshape, xlo, xhi, dtype, seed=1), _uniform(yshape, ylo, yhi, dtype, seed=2)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_broadcasting(name):
    """Every shape pair in SHAPE_PAIRS in float32, and (2,3) & (1,3) in float64."""
    op = BINARY[name][0]
    cases = [(f"{xs}&{ys}", op, _binary_inputs(name, xs, ys)) for xs, ys in SHAPE_PAIRS]
    with jax.enable_x64(True):
        cases.append(("float64", op, _binary_inputs(name, (2, 3), (1, 3), np.float64)))
        assert_vjps_match_jit(cases)


@pytest.mark.parametrize("name", ["add", "div", "max", "pow", "atan2"])
def test_binary_eager_float64(name):
    with jax.enable_x64(True):
        assert_vjp_matches(BINARY[name][0], *_binary_inputs(name, (2, 3), (1, 3), np.float64))


def test_binary_eager_scalars_and_zero_size():
    for name in ("div", "max", "pow"):
        op = BINARY[name][0]
        assert_grads_match(op, *_binary_inputs(name, (), ()), argnums=(0, 1), jit=False)
        assert_vjp_matches(op, *_binary_inputs(name, (2, 0, 3), ()))


def test_nextafter_refuses_like_jax():
    x, y = jnp.array([1.0, -2.0]), jnp.array([2.0, -3.0])

    def f(x, y):
        return jnp.sum(lax.nextafter(x, y))

    with pytest.raises(NotImplementedError):
        jax.grad(f)(x, y)
    with pytest.raises(fg.UnsupportedPrimitiveError, match="nextafter"):
        fg.grad(f, (0, 1))(x, y)


@pytest.mark.parametrize(
    "shapes", [((2, 3), (2, 3)), ((2, 3), (1, 3)), ((), (4,))], ids=lambda s: f"{s[0]}&{s[1]}"
)
def test_pow_integer_exponent(shapes):
    x = _uniform(shapes[0], 0.5, 2, seed=3)
    y = jnp.asarray(np.random.default_rng(4).integers(-3, 4, shapes[1]), jnp.int32)
    assert_vjp_matches_jit(lambda x: lax.pow(x, y), x)


def test_pow_integer_exponent_at_zero_base():
    # slope of 0^n: 0 for n = 0 (not NaN), 1 for n = 1, 0 for n = 2, as JAX
    y = jnp.array([0, 1, 2, -1], jnp.int32)

    def f(x):
        return jnp.sum(lax.pow(x, y))

    x = jnp.zeros(4)
    got = fg.grad(f)(x)
    np.testing.assert_array_equal(got, jax.grad(f)(x))
    np.testing.assert_array_equal(got[:3], np.float32([0.0, 1.0, 0.0]))


def test_pow_exponent_grad_at_zero_base():
    # d/dy x^y = log(x) x^y, with log(0) read as 0 (JAX's _replace_zero)
    x = jnp.array([0.0, 0.0, 2.0])

    def f(y):
        return jnp.sum(lax.pow(x, y))

    y = jnp.array([0.5, 2.0, 1.5])
    got = fg.grad(f)(y)
    np.testing.assert_array_equal(got, jax.grad(f)(y))
    np.testing.assert_array_equal(got[:2], np.float32([0.0, 0.0]))


# ---- clamp and select_n -------------------------------------------------------------------------

CLAMP_X = jnp.array([-1.0, 0.0, 0.3, 0.5, 1.0, 2.0, 0.7])
CLAMP_W = jnp.arange(1.0, 8.0)


def _clamp_loss(lo, x, hi):
    return jnp.sum(lax.clamp(lo, x, hi) * CLAMP_W)


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(0.0, 1.0), (jnp.full(7, 0.0), jnp.full(7, 1.0)), (0.5, 0.2)],
    ids=["rank0", "arrays", "lo>hi"],
)
def test_clamp_operand(lo, hi):
    assert_grads_match(_clamp_loss, lo, CLAMP_X, hi, argnums=1)


def test_clamp_array_bounds():
    lo = jnp.array([0.0, 0.5, -2.0, 0.5, 0.9, 3.0, 0.8])
    hi = jnp.array([1.0, 0.2, 2.0, 0.6, 1.0, 4.0, 0.75])  # lo > hi in two places
    assert_grads_match(_clamp_loss, lo, CLAMP_X, hi, argnums=(0, 1, 2))


def test_clamp_rank0_bounds():
    """JAX cannot differentiate a rank-0 bound of an array clamp; funcgrad sums its cotangent."""

    def broadcast_loss(lo, x, hi):
        return _clamp_loss(jnp.broadcast_to(lo, x.shape), x, jnp.broadcast_to(hi, x.shape))

    for lo, hi in [(0.1, 0.9), (0.0, 1.0), (0.8, 0.2)]:
        lo, hi = jnp.float32(lo), jnp.float32(hi)
        got = fg.grad(_clamp_loss, (0, 2))(lo, CLAMP_X, hi)
        assert_trees_close(got, jax.grad(broadcast_loss, (0, 2))(lo, CLAMP_X, hi))


def test_select_n_bool():
    which = jnp.array([[True, False, True], [False, False, True]])
    a, b = _uniform((2, 3), -1, 1, seed=5), _uniform((2, 3), -1, 1, seed=6)
    assert_vjp_matches(lambda a, b: lax.select_n(which, a, b), a, b)
    assert_vjp_matches(lambda a, b: jnp.where(which, a, b), a, b)


def test_select_n_int32_three_cases():
    which = jnp.array([[0, 1, 2], [2, 2, 0]], jnp.int32)
    cases = [_uniform((2, 3), -1, 1, seed=s) for s in (7, 8, 9)]
    assert_vjp_matches(lambda a, b, c: lax.select_n(which, a, b, c), *cases)


@pytest.mark.parametrize("which", [True, False, 0, 1, 2], ids=repr)
def test_select_n_scalar_which(which):
    which = jnp.asarray(which, jnp.bool_ if isinstance(which, bool) else jnp.int32)
    ncases = 2 if which.dtype == jnp.bool_ else 3
    cases = [_uniform((2, 3), -1, 1, seed=s) for s in range(ncases)]
    assert_vjp_matches(lambda *c: lax.select_n(which, *c), *cases)


def test_select_n_single_case_and_zero_size():
    assert_vjp_matches(lambda x: lax.select_n(jnp.int32(0), x), _uniform((3,), -1, 1))
    e = jnp.zeros((2, 0, 3))
    assert_vjp_matches(lambda a, b: lax.select_n(jnp.zeros((2, 0, 3), bool), a, b), e, e)


# ---- kinks and ties (JAXPR_NOTES §2.2): funcgrad must put the same values there, NaN included ---

KINKS = {
    "max_tie": (lambda x: lax.max(x, jnp.array([0.0, 1.0, 2.0])), [0.0, 0.0, 3.0], [0.5, 0, 1]),
    "min_tie": (lambda x: lax.min(x, jnp.array([0.0, 1.0, 2.0])), [0.0, 0.0, 3.0], [0.5, 1, 0]),
    "maximum_0": (lambda x: jnp.maximum(x, 0.0), [-1.0, 0.0, 2.0], [0, 0.5, 1]),
    "clip_at_bounds": (lambda x: jnp.clip(x, 0.0, 1.0), [0.0, 0.5, 1.0], [0.5, 1, 0.5]),
    "lax_clamp_at_bounds": (lambda x: lax.clamp(0.0, x, 1.0), [0.0, 0.5, 1.0], [0, 1, 0]),
    "abs_at_0": (lax.abs, [-1.0, 0.0, 1.0], [-1, 1, 1]),
    "sqrt_at_0": (lax.sqrt, [0.0, 1.0, 4.0], [np.inf, 0.5, 0.25]),
    "pow_float_0_at_0": (lambda x: lax.pow(x, 0.0), [0.0, 1.0, 2.0], [np.nan, 0, 0]),
    "where_sqrt_at_neg": (
        lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0),
        [-1.0, 0.0, 4.0],
        [np.nan, np.nan, 0.25],
    ),
    "double_where_sqrt": (
        lambda x: jnp.where(x > 0, jnp.sqrt(jnp.where(x > 0, x, 1.0)), 0.0),
        [-1.0, 0.0, 4.0],
        [0, 0, 0.25],
    ),
    "floor": (jnp.floor, [-1.5, 0.0, 2.0], [0, 0, 0]),
    "ceil": (jnp.ceil, [-1.5, 0.0, 2.0], [0, 0, 0]),
    "round": (jnp.round, [-1.5, 0.5, 2.0], [0, 0, 0]),
    "sign": (jnp.sign, [-1.5, 0.0, 2.0], [0, 0, 0]),
    "log_at_0": (jnp.log, [0.0, 1.0, 2.0], [np.inf, 1, 0.5]),
    "cbrt_at_0": (lax.cbrt, [0.0, 1.0, -8.0], [np.inf, 1 / 3, 1 / 12]),
    "reciprocal_at_0": (lambda x: lax.integer_pow(x, -1), [0.0, 1.0, 2.0], [-np.inf, -1, -0.25]),
    "div_by_0": (
        lambda x: lax.div(jnp.array([1.0, 0.0, 1.0]), x),
        [0.0, 0.0, 2.0],
        [-np.inf, np.nan, -0.25],
    ),
    "tanh_tails": (jnp.tanh, [-30.0, 0.0, 30.0], [0, 1, 0]),
}


@pytest.mark.parametrize("name", sorted(KINKS))
def test_kink_conventions(name):
    f, x, expected = KINKS[name]
    x = jnp.asarray(x, jnp.float32)

    def loss(x):
        return jnp.sum(f(x))

    want = jax.grad(loss)(x)
    np.testing.assert_array_equal(want, np.asarray(expected, np.float32))  # the convention itself
    np.testing.assert_array_equal(fg.grad(loss)(x), want)
    np.testing.assert_array_equal(jax.jit(fg.grad(loss))(x), want)


def test_complex_abs_at_0():
    def f(x, y):
        return jnp.sum(lax.abs(lax.complex(x, y)))

    x, y = jnp.array([0.0, 3.0]), jnp.array([0.0, 4.0])
    got = fg.grad(f, (0, 1))(x, y)
    assert_trees_close(got, jax.grad(f, (0, 1))(x, y))
    np.testing.assert_array_equal(got[0], np.float32([0.0, 0.6]))


# ---- complex parts ------------------------------------------------------------------------------


def test_complex_parts_real_inputs():
    def f(x, y):
        z = lax.complex(x, y)
        w = lax.exp(z) * lax.conj(lax.complex(y, x)) + lax.sin(z) * z
        return jnp.sum(lax.real(w) * 2.0 + lax.imag(w) - lax.abs(z))

    x, y = _uniform((2, 3), -1, 1, seed=10), _uniform((1, 3), -1, 1, seed=11)
    assert_grads_match(f, x, y, argnums=(0, 1), jit=False)


def test_complex_vjp_complex_inputs():
    z = jnp.asarray(np.array([1 + 2j, -0.5 + 0.3j, 0.2 - 1j]), jnp.complex64)
    assert_vjp_matches(lambda z: lax.exp(z) * lax.conj(z) + lax.sqrt(z) * lax.tanh(z), z)
    assert_vjp_matches(lambda z: lax.abs(z) * lax.real(z), z)
    # conj of a real input: its output is complex, the cotangent is the real part
    assert_vjp_matches(lambda x: lax.conj(x) * jnp.complex64(1 + 2j), _uniform((3,), -1, 1))


# ---- the cases: user code reaching each primitive ------------------------------------------------
def primitive_of(name: str) -> str:
    """The primitive a UNARY or BINARY entry reaches: its name without a variant suffix."""
    return "complex" if name == "complex_abs" else re.sub(r"_(negative|even|-?\d+)$", "", name)


def device_put_pair(x, y):
    dev = jax.devices()[0]
    return jnp.sin(jax.device_put(x, dev)) * jax.device_put(y)


def device_put_tuple(x):  # several arrays in one device_put; the integer one gets no cotangent
    a, b, n = jax.device_put((x, 2 * x, jnp.arange(4)), jax.devices()[0])
    return (a + b + n) * x


def barrier(x, y):
    a, b, n = lax.optimization_barrier((jnp.sin(x), x * y, jnp.arange(3)))
    return a * b + jnp.sum(n) * y


CLAMP_LO = jnp.array([0.0, 0.5, -2.0, 0.5, 0.9, 3.0, 0.8])
CLAMP_HI = jnp.array([1.0, 0.2, 2.0, 0.6, 1.0, 4.0, 0.75])  # lo > hi in two places
SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])

# Every elementwise primitive on float32 (2, 3) inputs, binary ones broadcasting (2, 3) with (1, 3);
# test_rules_table.py checks each against jax.grad, eagerly and under jit.
# (erf, lgamma, digamma, ... are UNARY's too, for the float64, bf16 and scalar checks here; their
# cases belong to the special family, in test_rules_special.py)
SPECIAL = {"erf", "erfc", "erf_inv", "lgamma", "digamma"}
CASES = [
    *(Case(name, primitive_of(name), f, lambda name=name: (_unary_input(name, (2, 3)),))
      for name, (f, _) in UNARY.items() if primitive_of(name) not in SPECIAL),
    *(Case(f"{name} (2,3)&(1,3)", primitive_of(name), op,
           lambda name=name: _binary_inputs(name, (2, 3), (1, 3)), argnums=(0, 1))
      for name, (op, _, _) in BINARY.items()),
    Case("jax.grad inside", "add_any", jax.grad(lambda x: jnp.sum(jnp.sin(x) * x * x)),
         lambda: (_uniform((2, 3), -1, 1),)),
    Case("clamp array bounds", "clamp", lax.clamp, lambda: (CLAMP_LO, CLAMP_X, CLAMP_HI),
         argnums=(0, 1, 2)),
    Case("where(x > 0, x * x, sin x)", "select_n", lambda x: jnp.where(x > 0, x * x, jnp.sin(x)),
         lambda: (_uniform((5,), -1, 1),)),
    Case("select_n int32 three cases", "select_n",
         lambda a, b, c: lax.select_n(jnp.array([[0, 1, 2], [2, 2, 0]], jnp.int32), a, b, c),
         lambda: tuple(_uniform((2, 3), -1, 1, seed=s) for s in (7, 8, 9)), argnums=(0, 1, 2)),
    Case("is_finite", "is_finite", lambda x: jnp.where(jnp.isfinite(1.0 / x), x * x, 0.0),
         lambda: (_uniform((6,), -1, 1),)),
    Case("log_softmax (stop_gradient)", "stop_gradient",
         lambda x: jax.nn.log_softmax(x) * jnp.arange(6.0), lambda: (_uniform((6,), -1, 1),)),
    Case("real(exp(complex))", "real", lambda x, y: lax.real(lax.exp(lax.complex(x, y))),
         lambda: (_uniform((2, 3), -1, 1, seed=10), _uniform((1, 3), -1, 1, seed=11)),
         argnums=(0, 1)),
    Case("imag(sin(complex))", "imag", lambda x, y: lax.imag(lax.sin(lax.complex(x, y))),
         lambda: (_uniform((2, 3), -1, 1, seed=10), _uniform((1, 3), -1, 1, seed=11)),
         argnums=(0, 1)),
    Case("conj", "conj",
         lambda x, y: lax.real(lax.conj(lax.complex(x, y)) * lax.complex(y, x * x)),
         lambda: (_uniform((2, 3), -1, 1, seed=10), _uniform((1, 3), -1, 1, seed=11)),
         argnums=(0, 1)),
    Case("device_put", "device_put", device_put_pair,
         lambda: (_uniform((4,), -1, 1), _uniform((4,), -1, 1, seed=1)), argnums=(0, 1)),
    Case("device_put tuple with an int", "device_put", device_put_tuple,
         lambda: (_uniform((4,), -1, 1),)),
    Case("with_sharding_constraint", "sharding_constraint",
         lambda x: lax.with_sharding_constraint(jnp.tanh(x), SHARDING) ** 2,
         lambda: (_uniform((2, 3), -1, 1),)),
    Case("optimization_barrier", "optimization_barrier", barrier,
         lambda: (_uniform((3,), -1, 1), _uniform((3,), -1, 1, seed=3)), argnums=(0, 1)),
    Case("checkpoint_name", "name", lambda x: jnp.sin(checkpoint_name(x * 2.0, "h")) * x,
         lambda: (_uniform((2, 3), -1, 1),)),
    Case("with_layout_constraint", "layout_constraint",
         lambda x: jnp.sin(with_layout_constraint(x * 2.0, Layout(major_to_minor=(1, 0)))),
         lambda: (_uniform((2, 3), -1, 1),)),
]


# ---- identity-like: copy, placement, layout and scheduling hints --------------------------------


def test_optimization_barrier_stays_in_the_backward_pass():
    x, y = _uniform((3,), -1, 1), _uniform((3,), -1, 1, seed=3)
    backward = jax.make_jaxpr(fg.grad(lambda x, y: jnp.sum(barrier(x, y))))(x, y)
    assert "optimization_barrier" in {e.primitive.name for e in backward.jaxpr.eqns[1:]}


# ---- jit, vmap, second order, closure -----------------------------------------------------------


def _composite(x):
    """A scalar function of a vector that touches most elementwise rules."""
    a = lax.tanh(x) * lax.exp(-lax.square(x)) + lax.logistic(2.0 * x)
    b = lax.pow(lax.abs(x) + 1.0, lax.sin(x)) + lax.atan2(x, 1.5 - x) - lax.rem(x, 0.7)
    c = lax.max(a, b) - lax.min(lax.cos(x), 0.2) + lax.clamp(-0.5, x, 0.5)
    d = lax.sqrt(lax.square(x) + 1.0) * lax.rsqrt(x * x + 2.0) + lax.log1p(lax.expm1(x * 0.3))
    e = lax.erf(x) * lax.erfc(x) + lax.asinh(x) * lax.atan(x) + lax.cbrt(x + 3.0)
    f = jnp.where(x > 0, lax.sinh(x), lax.cosh(x)) / (1.0 + lax.integer_pow(x, 4))
    g = lax.lgamma(x + 3.0) + lax.digamma(x + 3.0) + lax.erf_inv(x * 0.4) + lax.exp2(x)
    h = lax.asin(x * 0.5) + lax.acos(x * 0.5) + lax.atanh(x * 0.5) + lax.acosh(x * x + 1.5)
    return jnp.sum(c * d + e * f + g - h + lax.tan(x * 0.5))


def _small(x):
    """A smaller composite, with a max tie at x = 0 and a clamp, for vmap and the hessian."""
    y = lax.max(lax.sin(x), x * 0.5) * lax.exp(-x * x) + lax.clamp(-0.5, x, 0.5)
    z = jnp.where(x > 0.2, lax.pow(x + 2.0, x), lax.tanh(x)) / (1.0 + lax.square(x))
    return jnp.sum(y * z + lax.sqrt(lax.abs(x) + 1.0) - lax.log1p(x * x))


X4 = jnp.array([-0.7, -0.1, 0.35, 0.9], jnp.float32)


def test_composite_jit():
    assert_trees_close(jax.jit(fg.grad(_composite))(X4), jax.jit(jax.grad(_composite))(X4))


def test_binary_broadcasting_grad_jit():
    def f(x, y):
        return jnp.sum(lax.add(x, y) * lax.div(x, y) - lax.max(x, y) * lax.pow(y, x))

    x, y = _uniform((2, 3), -1, 1, seed=1), _uniform((1, 3), 0.5, 2, seed=2)
    assert_grads_match(f, x, y, argnums=(0, 1))


def test_vmap_of_grad():
    def f(x):  # scalar -> scalar
        return _small(jnp.stack([x, 0.5 * x]))

    xs = jnp.array([-0.7, -0.2, 0.0, 0.3, 0.8], jnp.float32)
    got = jax.jit(jax.vmap(fg.grad(f)))(xs)
    assert_trees_close(got, jax.jit(jax.vmap(jax.grad(f)))(xs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_hessian(dtype):
    with jax.enable_x64(dtype == np.float64):
        x = jnp.array([-0.7, 0.0, 0.35, 0.9], dtype)
        rtol = 2e-5 if dtype == np.float32 else 1e-10
        got = jax.jit(fg.hessian(_small))(x)
        assert_trees_close(got, jax.jit(jax.hessian(_small))(x), rtol=rtol)


def _scalar_fn(name):
    special = {
        "pow_xy": lambda x: lax.pow(x + 1.0, x),
        "max_min": lambda x: lax.max(lax.sin(x), x * x) * lax.min(x, lax.cos(x)),
        "clamp": lambda x: lax.clamp(-0.2, x * x, 0.8) * x,
        "select_n": lambda x: lax.select_n(x > 0.5, x * x * x, lax.exp(x)),
        "div_atan2_rem": lambda x: lax.div(x, 2.0 + x) + lax.atan2(x, 1.0 - x) + lax.rem(3.0, x),
    }
    return special[name] if name in special else UNARY[name][0]


SECOND_ORDER = [*sorted(UNARY), "pow_xy", "max_min", "clamp", "select_n", "div_atan2_rem"]


def _primitives(jaxpr) -> set[str]:
    """Every primitive name in ``jaxpr``, sub-jaxprs included."""
    if isinstance(jaxpr, ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, (ClosedJaxpr, Jaxpr)):
                    names |= _primitives(sub)
    return names


def _assert_closed(jaxpr):
    emitted = _primitives(jaxpr)
    assert emitted <= fg.supported_primitives(), emitted - fg.supported_primitives()


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_second_order_and_closure(name):
    """fg.grad(fg.grad(f)) equals JAX's, and every primitive the first- and second-order backward
    passes emit has a rule of its own (so a third derivative works too)."""
    f = _scalar_fn(name)
    lo, hi = UNARY[name][1] if name in UNARY else (0.2, 0.9)
    with jax.enable_x64(True):
        x = jnp.float64(lo + 0.37 * (hi - lo))
        df, ddf = fg.grad(f), fg.grad(fg.grad(f))
        assert_trees_close(ddf(x), jax.grad(jax.grad(f))(x), rtol=1e-9, atol=1e-12)
        _assert_closed(jax.make_jaxpr(df)(x))
        _assert_closed(jax.make_jaxpr(ddf)(x))


def test_closure_of_composite_and_broadcasting():
    def f(x, y):
        return _composite(x) + jnp.sum(lax.pow(x[:, None], y) * lax.atan2(y, x[:, None]))

    def g(x, y):
        return jnp.sum(fg.grad(f)(x, y) ** 2)

    y = jnp.array([[0.5, 1.5, 2.0]])
    _assert_closed(jax.make_jaxpr(fg.grad(f))(X4, y))
    _assert_closed(jax.make_jaxpr(fg.grad(g))(X4, y))

"""Primitives no cotangent flows through (comparisons, logical and bitwise ops, iota and
arg-reductions, the PRNG, debug effects): the gradient flows around them, as in jax.grad.

The float piecewise-constant functions (floor, sign, stop_gradient, ...) are elementwise rules and
test_rules_elementwise.py's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from gradcheck import Case, assert_grads_match, randint, randn
from jax import lax
from jax.experimental import checkify, io_callback
from jax.extend.random import threefry_2x32

import funcgrad as fg


def _uniform(shape, lo, hi, dtype=np.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), dtype)


# ---- the cases: the gradient flows around them ---------------------------------------------
def _dropout(x):
    return x * jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, x.shape) / 0.5


def _ints(x):
    """Small non-negative integers computed from x: the float gradient flows around them."""
    return lax.convert_element_type(jnp.abs(x) * 10, jnp.int32)


def _grad_of_cond(x):
    """jax.grad of a cond whose branches keep different residuals: JAX fills the missing ones
    with ``empty2``."""
    branches = (lambda x: jnp.sum(jnp.sin(x) * x), lambda x: jnp.sum(x * x))
    return jax.grad(lambda x: lax.cond(x[0, 0] > 0, *branches, x))(x)


def _debug_print(x):
    jax.debug.print("y={y}", y=jnp.sin(x))
    return x * x


def _debug_callback(x):
    jax.debug.callback(lambda v: None, jnp.sin(x))
    return x * x


def x6():
    return (_uniform((6,), -1, 1),)


def x23():
    return (randn(3, 2, 3),)


def tied_xy():
    """x (2, 3) and y (1, 3), small integers: x == y in places."""
    return randint(1, 2, 3), randint(2, 1, 3)


COMPARISONS = {"eq": jnp.equal, "ne": jnp.not_equal, "lt": jnp.less, "le": jnp.less_equal,
               "gt": jnp.greater, "ge": jnp.greater_equal}
TOTAL_ORDER = {"eq_to": lax.eq_to_p, "lt_to": lax.lt_to_p, "le_to": lax.le_to_p}

# Each case multiplies a float input by the primitive's (integer, boolean or random) output, so
# the primitive is in the program while a float gradient flows through the other operations;
# test_rules_table.py checks every case against jax.grad, eagerly and under jit.
def _dce_sink(x):
    lax.dce_sink(x * 3.0)
    return jnp.sin(x)


def _inspect_sharding(x):
    jax.debug.inspect_array_sharding(x, callback=lambda sharding: None)
    return jnp.sin(x) * x


def _pure_callback(x):
    y = jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return y * x


def _io_callback(x):
    y = io_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return y * x


def _ffi_call(x):  # traced only (no such target is registered): both refuse while tracing
    y = jax.ffi.ffi_call("funcgrad_no_such_target", jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
    return y * x


CASES = [
    *(Case(f"x * {name}(x, y)", name, lambda x, y, op=op: x * op(x, y), tied_xy, argnums=(0, 1))
      for name, op in COMPARISONS.items()),
    *(Case(f"x * {name}(x, y) (total order)", name,
           lambda x, y, p=p: x * p.bind(x, jnp.broadcast_to(y, x.shape)), tied_xy, argnums=(0, 1))
      for name, p in TOTAL_ORDER.items()),
    Case("x * ((x > 0) & (y > 0))", "and", lambda x, y: x * ((x > 0) & (y > 0)), tied_xy,
         argnums=(0, 1)),
    Case("x * ((x > 0) | (y > 0))", "or", lambda x, y: x * ((x > 0) | (y > 0)), tied_xy,
         argnums=(0, 1)),
    Case("x * ~(x > y)", "not", lambda x, y: x * ~(x > y), tied_xy, argnums=(0, 1)),
    Case("comparisons & | ^ ~", "xor",
         lambda x: x * ((x > 0) & (x >= 0.1) | (x < -0.5) ^ (x <= -0.7) | (x == 0.3) | ~(x != 0.2)),
         x6),
    Case("bitwise", "population_count",
         lambda x: x * (
             lax.population_count(lax.clz(lax.convert_element_type(x * 10, jnp.int32)))
             + lax.shift_left(1, 2)
             + lax.shift_right_arithmetic(-8, 1)
             + lax.reduce_xor_p.bind(jnp.arange(4) > 1, axes=(0,))
         ), x6),
    Case("x * clz(n)", "clz", lambda x: x * lax.clz(_ints(x)), x23),
    Case("x * shift_left(n, 2)", "shift_left", lambda x: x * lax.shift_left(_ints(x), 2), x23),
    Case("x * shift_right_logical(n, 1)", "shift_right_logical",
         lambda x: x * lax.shift_right_logical(_ints(x), 1), x23),
    Case("x * shift_right_arithmetic(-n, 1)", "shift_right_arithmetic",
         lambda x: x * lax.shift_right_arithmetic(-_ints(x), 1), x23),
    Case("x * mulhi(n, 2**30)", "mulhi", lambda x: x * lax.mulhi(_ints(x), jnp.int32(1 << 30)),
         x23),
    Case("bitcast", "bitcast_convert_type",
         lambda x: x * lax.bitcast_convert_type(
             lax.shift_right_logical(lax.bitcast_convert_type(x, jnp.uint32), jnp.uint32(1)),
             jnp.float32,
         ), x6),
    Case("x * all(x > -0.5, axis=0)", "reduce_and", lambda x: x * jnp.all(x > -0.5, axis=0), x23),
    Case("x * any(x > 0.5) * all(x > -2)", "reduce_or",
         lambda x: x * jnp.any(x > 0.5) * jnp.all(x > -2.0), x6),
    Case("x * reduce_xor(x > 0, axis 1)", "reduce_xor",
         lambda x: x * lax.reduce_xor(x > 0, (1,))[:, None], x23),
    Case("x * iota", "iota", lambda x: x * lax.iota(jnp.float32, 6), x6),
    Case("x * one_hot(argmax + argmin)", "argmax",
         lambda x: x * jax.nn.one_hot(jnp.argmax(x) + jnp.argmin(x), 6), x6),
    Case("x * one_hot(argmin(x, axis=1))", "argmin",
         lambda x: x * jax.nn.one_hot(jnp.argmin(x, axis=1), 3), x23),
    Case("x * normal(key(1))", "random_seed",
         lambda x: x * jax.random.normal(jax.random.key(1), x.shape), x23),
    Case("x * uniform(key) (key an argument)", "random_bits",
         lambda x, key: x * jax.random.uniform(key, x.shape),
         lambda: (randn(4, 2, 3), jax.random.key(3))),
    Case("x * uniform(split(key)[1])", "random_split",
         lambda x, key: x * jax.random.uniform(jax.random.split(key)[1], x.shape),
         lambda: (randn(5, 2, 3), jax.random.key(4))),
    Case("split and fold_in", "random_fold_in",
         lambda x: x * jax.random.uniform(
             jax.random.fold_in(jax.random.split(jax.random.key(1))[0], 3), x.shape
         ), x6),
    Case("dropout with a PRNGKey", "random_wrap", _dropout, x6),
    Case("wrap_key_data(key_data(key))", "random_unwrap",
         lambda x: x * jax.random.normal(
             jax.random.wrap_key_data(jax.random.key_data(jax.random.key(2))), x.shape
         ), x6),
    Case("x * uniform(clone(key))", "random_clone",
         lambda x: x * jax.random.uniform(jax.random.clone(jax.random.key(5)), x.shape), x23),
    Case("rng_bit_generator", "rng_bit_generator",
         lambda x: x * lax.rng_bit_generator(jnp.zeros(4, jnp.uint32), x.shape)[1].astype(
             jnp.float32
         ), x6),
    Case("threefry_2x32", "threefry2x32",
         lambda x: x * threefry_2x32(
             jnp.zeros(2, jnp.uint32), jnp.arange(6, dtype=jnp.uint32)
         ).astype(jnp.float32), x6),
    Case("jax.debug.print", "debug_print", _debug_print, x23),
    Case("jax.debug.callback", "debug_callback", _debug_callback, x23),
    Case("jax.grad of a cond", "empty2", _grad_of_cond, x23),
    Case("jax.lax.dce_sink", "dce_sink", _dce_sink, x23),
    Case("lu_solve's pivots", "lu_pivots_to_permutation",
         lambda a, b: jsl.lu_solve(jsl.lu_factor(a), b),
         lambda: (randn(7, 4, 4) + 4 * jnp.eye(4), randn(8, 4, 2)), argnums=(0, 1)),
    Case("jax.debug.inspect_array_sharding", "inspect_sharding", _inspect_sharding, x23),
    # refused, as jax.grad refuses: the code a callback runs has no derivative funcgrad can see
    Case("jax.pure_callback", "pure_callback", _pure_callback, x23, refused=ValueError),
    Case("jax.experimental.io_callback", "io_callback", _io_callback, x23, refused=ValueError),
    Case("jax.ffi.ffi_call", "ffi_call", _ffi_call, x23, eager=False, refused=ValueError),
]


def test_checkify_check_is_an_effect_with_no_cotangent():
    """checkify.check runs eagerly or under checkify.checkify (which removes it before jit)."""

    def f(x):
        checkify.check(jnp.all(x > 0), "x must be positive")
        return jnp.sum(jnp.log(x) * x)

    x = _uniform((3,), 0.5, 2.0)
    assert "check" in {e.primitive.name for e in jax.make_jaxpr(f)(x).jaxpr.eqns}
    assert_grads_match(f, x, jit=False)
    for bad in (x, -x):
        want_err, want = checkify.checkify(jax.grad(f))(bad)
        got_err, got = checkify.checkify(fg.grad(f))(bad)
        assert got_err.get() == want_err.get()
        np.testing.assert_allclose(got, want, rtol=1e-6)
        jit_err, jitted = jax.jit(checkify.checkify(fg.grad(f)))(bad)
        assert jit_err.get() == want_err.get()
        np.testing.assert_allclose(jitted, want, rtol=1e-6)


# ---- bitcasts and registration -------------------------------------------------------------
def test_bitcast_between_floats_is_zero():
    # a float-valued bitcast of a differentiated input: JAX defines the derivative as zero
    def f(x):
        return jnp.sum(lax.bitcast_convert_type(x, jnp.bfloat16).astype(jnp.float32) + x)

    assert_grads_match(f, _uniform((3,), -1, 1).astype(jnp.float16))


NONDIFF_NAMES = [
    *("eq", "ne", "lt", "le", "gt", "ge", "eq_to", "lt_to", "le_to"),
    *("and", "or", "not", "xor", "population_count", "clz", "shift_left", "shift_right_logical"),
    *("shift_right_arithmetic", "reduce_and", "reduce_or", "reduce_xor", "iota", "argmax"),
    *("argmin", "random_bits", "random_seed", "random_wrap", "random_unwrap", "random_fold_in"),
    *("random_split", "threefry2x32", "rng_bit_generator", "bitcast_convert_type"),
    *("debug_print", "debug_callback", "floor", "ceil", "round", "sign", "is_finite"),
    *("stop_gradient",),
]


def test_nondiff_primitives_registered():
    assert set(NONDIFF_NAMES) <= fg.supported_primitives()


# ---- effects -------------------------------------------------------------------------------
def test_debug_effects_pass_through(capsys):
    def f(x):
        y = jnp.sin(x)
        jax.debug.print("y={y}", y=y)
        jax.debug.callback(lambda v: None, y)
        return jnp.sum(y * y)

    x = _uniform((3,), -1, 1)
    np.testing.assert_allclose(fg.grad(f)(x), jax.grad(f)(x), rtol=1e-6)
    assert "y=" in capsys.readouterr().out

"""Primitives no cotangent flows through (comparisons, logical and bitwise ops, iota and
arg-reductions, the PRNG, debug effects): the gradient flows around them, as in jax.grad.

The float piecewise-constant functions (floor, sign, stop_gradient, ...) are elementwise rules and
test_rules_elementwise.py's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import assert_grads_match, assert_vjp_matches_jit
from jax import lax
from jax.extend.random import threefry_2x32

import funcgrad as fg


def _uniform(shape, lo, hi, dtype=np.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), dtype)


def _dropout(x):
    return x * jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, x.shape) / 0.5


# ---- the gradient flows around them -----------------------------------------------------------
NONDIFF = {
    "comparisons": lambda x: (
        x * ((x > 0) & (x >= 0.1) | (x < -0.5) ^ (x <= -0.7) | (x == 0.3) | ~(x != 0.2))
    ),
    "total_order_compare": lambda x: x * lax.lt_to_p.bind(x, jnp.full_like(x, 0.1)),
    "argmax_onehot": lambda x: x * jax.nn.one_hot(jnp.argmax(x) + jnp.argmin(x), 6),
    "is_finite": lambda x: jnp.where(jnp.isfinite(1.0 / x), x * x, 0.0),
    "any_all": lambda x: x * jnp.any(x > 0.5) * jnp.all(x > -2.0),
    "bitwise": lambda x: (
        x
        * (
            lax.population_count(lax.clz(lax.convert_element_type(x * 10, jnp.int32)))
            + lax.shift_left(1, 2)
            + lax.shift_right_arithmetic(-8, 1)
            + lax.reduce_xor_p.bind(jnp.arange(4) > 1, axes=(0,))
        )
    ),
    "bitcast": lambda x: (
        x
        * lax.bitcast_convert_type(
            lax.shift_right_logical(lax.bitcast_convert_type(x, jnp.uint32), jnp.uint32(1)),
            jnp.float32,
        )
    ),
    "dropout_prngkey": _dropout,
    "typed_key_split_fold_in": lambda x: (
        x
        * jax.random.uniform(jax.random.fold_in(jax.random.split(jax.random.key(1))[0], 3), x.shape)
    ),
    "key_wrap_unwrap": lambda x: (
        x
        * jax.random.normal(
            jax.random.wrap_key_data(jax.random.key_data(jax.random.key(2))), x.shape
        )
    ),
    "rng_bit_generator": lambda x: (
        x * lax.rng_bit_generator(jnp.zeros(4, jnp.uint32), x.shape)[1].astype(jnp.float32)
    ),
    "threefry": lambda x: (
        x
        * threefry_2x32(jnp.zeros(2, jnp.uint32), jnp.arange(6, dtype=jnp.uint32)).astype(
            jnp.float32
        )
    ),
    "iota": lambda x: x * lax.iota(jnp.float32, 6),
    "stop_gradient_log_softmax": lambda x: jax.nn.log_softmax(x) * jnp.arange(6.0),
}


@pytest.mark.parametrize("name", sorted(NONDIFF))
def test_nondiff(name):
    assert_vjp_matches_jit(NONDIFF[name], _uniform((6,), -1, 1))


def test_nondiff_eager():
    f = NONDIFF["comparisons"]
    assert_grads_match(lambda x: jnp.sum(f(x)), _uniform((6,), -1, 1), jit=False)


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


# ---- effects ---------------------------------------------------------------------------------
def test_debug_effects_pass_through(capsys):
    def f(x):
        y = jnp.sin(x)
        jax.debug.print("y={y}", y=y)
        jax.debug.callback(lambda v: None, y)
        return jnp.sum(y * y)

    x = _uniform((3,), -1, 1)
    np.testing.assert_allclose(fg.grad(f)(x), jax.grad(f)(x), rtol=1e-6)
    assert "y=" in capsys.readouterr().out

"""Primitives no cotangent flows through: their outputs are booleans, integers or PRNG keys.

Comparisons, logical and bitwise ops, index generators (``iota``, ``argmax``), the PRNG machinery
and effect-only primitives (``debug_print``) all get the zero rule: none of their inputs receives a
cotangent, as in JAX (``defjvp_zero``, or no tangent at all). The interpreter never gives a
cotangent to an integer, boolean or key value, so the backward walk skips these equations; what
registering them does is declare them supported (``fg.supported_primitives()``, closure checks),
and give the rare float-valued output (``bitcast_convert_type`` between float types) its zero.

Piecewise-constant *float* functions (``floor``, ``sign``, ``stop_gradient``, ...) are zero too;
they live with their elementwise relatives in ``elementwise.py``.
"""

from __future__ import annotations

from jax import lax
from jax.extend.core import primitives as prims

from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.registry import vjp_rule, zero_vjp

# comparisons (the ``*_to`` forms compare totally ordered floats, NaNs included)
zero_vjp(
    prims.eq_p,
    prims.ne_p,
    prims.lt_p,
    prims.le_p,
    prims.gt_p,
    prims.ge_p,
    prims.eq_to_p,
    prims.lt_to_p,
    prims.le_to_p,
)

# logical and bitwise ops on booleans and integers
zero_vjp(
    prims.and_p,
    prims.or_p,
    prims.not_p,
    prims.xor_p,
    prims.population_count_p,
    prims.clz_p,
    prims.shift_left_p,
    prims.shift_right_logical_p,
    prims.shift_right_arithmetic_p,
    "mulhi",
    prims.reduce_and_p,
    prims.reduce_or_p,
    prims.reduce_xor_p,
)


@vjp_rule(prims.bitcast_convert_type_p)
def bitcast_convert_type_vjp(ct, x):
    """Zero: reinterpreting bits is not a numeric conversion, and JAX defines it so.

    Its output can be a float carrying a cotangent (bfloat16 <-> float16), so the rule does get
    called, with ``new_dtype``; ``zero_vjp`` rules cannot take params yet, hence ``vjp_rule``.
    """
    return (None,)


# index generators and arg-reductions
zero_vjp(prims.iota_p, prims.argmax_p, prims.argmin_p)

# PRNG keys and random bits
zero_vjp(
    prims.random_seed_p,
    prims.random_bits_p,
    prims.random_split_p,
    prims.random_fold_in_p,
    "random_wrap",
    "random_unwrap",
    "random_clone",
    prims.threefry2x32_p,
    prims.rng_bit_generator_p,
)

# integer permutations from LU pivots (jax.scipy.linalg.lu_solve reaches it)
zero_vjp(lax.linalg.lu_pivots_to_permutation_p)

# effects without outputs (printing, sharding inspection, checkify.check), and uninitialised
# buffers (cond residuals in jax.grad jaxprs)
zero_vjp(
    "debug_print", "debug_callback", "inspect_sharding", "dce_sink", "check", prims.empty2_p
)


# ---- refused, as jax.grad refuses: a callback is opaque code, with no derivative to transpose


@vjp_rule("pure_callback", "io_callback", "ffi_call")
def callback_vjp(ct, *args, **params):
    """No rule can be written: the callback's derivative is unknown (wrap it in custom_jvp/vjp)."""
    raise NotDifferentiableError(
        "Pure callbacks, IO callbacks and FFI calls cannot be differentiated (jax.grad refuses "
        "them too): funcgrad cannot see inside the code they call. Wrap the call in "
        "jax.custom_jvp or jax.custom_vjp with its derivative, or stop the gradient before it."
    )

"""VJP rules for elementwise arithmetic and transcendental functions.

Each rule is the derivative of its primitive, times the output cotangent, summed back over any
implicit broadcasting (``unbroadcast``). Formulas follow JAX's conventions literally (e.g.
``max`` splits ties 0.5/0.5) so that funcgrad and ``jax.grad`` agree bit for bit where they can.
"""

from __future__ import annotations

from jax import lax

from funcgrad.interpret.rules import vjp_rule
from funcgrad.interpret.rules.broadcasting import unbroadcast


@vjp_rule(lax.add_p)
def add_vjp(ct, x, y):  # d(x + y) = dx + dy
    return (unbroadcast(ct, x), unbroadcast(ct, y))


@vjp_rule(lax.sub_p)
def sub_vjp(ct, x, y):  # d(x - y) = dx - dy
    return (unbroadcast(ct, x), unbroadcast(lax.neg(ct), y))


@vjp_rule(lax.mul_p)
def mul_vjp(ct, x, y, *, needs):  # d(x y) = y dx + x dy
    return (
        unbroadcast(lax.mul(ct, y), x) if needs[0] else None,
        unbroadcast(lax.mul(x, ct), y) if needs[1] else None,
    )


@vjp_rule(lax.neg_p)
def neg_vjp(ct, x):  # d(-x) = -dx
    return (lax.neg(ct),)


@vjp_rule(lax.tanh_p)
def tanh_vjp(ct, x, *, out):  # d tanh(x) = 1 - tanh(x)^2
    return (lax.mul(ct, lax.sub(lax.full_like(out, 1), lax.mul(out, out))),)


@vjp_rule(lax.exp_p)
def exp_vjp(ct, x, *, out):  # d exp(x) = exp(x)
    return (lax.mul(ct, out),)


@vjp_rule(lax.log_p)
def log_vjp(ct, x):  # d log(x) = 1/x
    return (lax.div(ct, x),)


@vjp_rule(lax.div_p)
def div_vjp(ct, x, y, *, needs):  # d(x / y) = dx / y - x dy / y^2
    return (
        unbroadcast(lax.div(ct, y), x) if needs[0] else None,
        unbroadcast(lax.mul(lax.neg(ct), lax.div(lax.div(x, y), y)), y) if needs[1] else None,
    )


@vjp_rule(lax.integer_pow_p)
def integer_pow_vjp(ct, x, *, y):  # d x^n = n x^(n-1)
    if y == 0:
        return (lax.full_like(x, 0),)
    if y == 1:
        return (ct,)
    slope = lax.mul(lax.full_like(x, y), lax.integer_pow(x, y - 1) if y != 2 else x)
    return (lax.mul(ct, slope),)

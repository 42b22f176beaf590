"""VJP rules for elementwise primitives: arithmetic, powers, exponentials, trigonometric and
hyperbolic functions, piecewise-constant rounding, complex parts, and identity-like layout hints.
(The special functions, ``erf`` to ``igamma``, are in ``special.py``.)

Each rule is the derivative of its primitive times the output cotangent, summed back over any
implicit broadcasting of n-ary ops (``unbroadcast``: rank-0 operands and size-1 dims). The formulas
are JAX's own (``jax/_src/lax/lax.py``), transposed by hand and written with the
same grouping of operations, so that funcgrad and ``jax.grad`` agree to the last few ULPs and put
their NaNs and infinities in the same places: ``max`` splits ties 0.5/0.5, ``abs'(0) = 1``,
``sqrt'(0) = inf``, ``pow(x, 0.0)`` at 0 is NaN, ``clamp`` is strict at its bounds.

A constant in a rule is a NumPy scalar of the operand's dtype (``const``): it becomes a literal
that lax ops broadcast implicitly, as in JAX's rules, rather than a materialised array.

Rules taking ``accuracy`` (the transcendental ops of JAX 0.10) switch formulas where JAX does:
with ``accuracy=AccuracyMode.HIGHEST``, ``tanh``, ``logistic`` and ``expm1`` use the forms that
stay accurate in the tails (``4 s(2x) s(-2x)``, ``s(x) s(-x)``, ``exp(x)``), and ``sin``/``cos``
pass the accuracy on to the ``cos``/``sin`` they emit.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import dtypes, lax
from jax.experimental.layout import with_layout_constraint
from jax.extend.core import primitives as prims

from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.registry import vjp_rule, zero_vjp
from funcgrad.interpret.rules._common import (
    balanced_eq,
    const,
    dtype_of,
    is_complex,
    select,
    unbroadcast,
    zeros_like,
)

_HIGHEST = lax.AccuracyMode.HIGHEST
_HOST = jax.memory.Space.Host


def _replace_zero(x):
    """``x`` with its zeros replaced by ones (JAX's guard for log(0) and 0/0)."""
    return select(lax.eq(x, const(x, 0)), lax.full_like(x, 1), x)


# ---- arithmetic ---------------------------------------------------------------------------------


@vjp_rule(lax.add_p, reads=())
def add_vjp(ct, x, y, *, needs):  # d(x + y) = dx + dy
    return (
        unbroadcast(ct, x) if needs[0] else None,
        unbroadcast(ct, y) if needs[1] else None,
    )


@vjp_rule("add_any", reads=())
def add_any_vjp(ct, x, y):  # jax.grad's cotangent accumulator: d(x + y) = dx + dy, same shapes
    return (ct, ct)


@vjp_rule(lax.sub_p, reads=())
def sub_vjp(ct, x, y, *, needs):  # d(x - y) = dx - dy
    return (
        unbroadcast(ct, x) if needs[0] else None,
        unbroadcast(lax.neg(ct), y) if needs[1] else None,
    )


@vjp_rule(lax.mul_p)
def mul_vjp(ct, x, y, *, needs, out_dtype=None):
    """d(x y) = y dx + x dy. With ``out_dtype`` (a bf16 product accumulated in f32, say) each
    cotangent is produced in its operand's dtype, as JAX's transpose does."""
    x_dtype, y_dtype = (None, None) if out_dtype is None else (dtype_of(x), dtype_of(y))
    return (
        unbroadcast(lax.mul(ct, y, out_dtype=x_dtype), x) if needs[0] else None,
        unbroadcast(lax.mul(x, ct, out_dtype=y_dtype), y) if needs[1] else None,
    )


@vjp_rule(lax.neg_p, reads=())
def neg_vjp(ct, x):  # d(-x) = -dx
    return (lax.neg(ct),)


@vjp_rule(lax.div_p)
def div_vjp(ct, x, y, *, needs):  # d(x / y) = dx / y - x y^-2 dy
    return (
        unbroadcast(lax.div(ct, y), x) if needs[0] else None,
        unbroadcast(lax.neg(lax.mul(lax.mul(ct, lax.integer_pow(y, -2)), x)), y)
        if needs[1]
        else None,
    )


@vjp_rule(lax.rem_p)
def rem_vjp(ct, x, y, *, needs):
    """rem(x, y) = x - y trunc(x / y): d rem = dx - sign(x / y) floor(|x / y|) dy."""
    if not needs[1]:
        return (unbroadcast(ct, x), None)
    q = lax.div(x, y)
    trunc = lax.mul(lax.sign(q), lax.floor(lax.abs(q)))
    return (
        unbroadcast(ct, x) if needs[0] else None,
        unbroadcast(lax.neg(lax.mul(ct, trunc)), y),
    )


@vjp_rule(lax.max_p, lax.min_p)
def max_min_vjp(ct, x, y, *, out, needs):
    """d max(x, y) = [x wins] dx + [y wins] dy; a tie sends half of ct to each (as JAX does)."""
    return (
        unbroadcast(lax.mul(ct, balanced_eq(x, out, y)), x) if needs[0] else None,
        unbroadcast(lax.mul(ct, balanced_eq(y, out, x)), y) if needs[1] else None,
    )


@vjp_rule(lax.clamp_p)
def clamp_vjp(ct, lo, x, hi, *, needs):
    """clamp(lo, x, hi): ct goes to x strictly inside (lo, hi), to lo where lo > x (and lo < hi),
    to hi where hi < x; at a bound nobody gets it (JAX's strict convention).

    A rank-0 bound gets the sum of its cotangent (JAX itself fails to differentiate a rank-0
    bound of a non-scalar clamp).
    """
    zeros = zeros_like(ct)
    return (
        unbroadcast(select(lax.bitwise_and(lax.gt(lo, x), lax.lt(lo, hi)), ct, zeros), lo)
        if needs[0]
        else None,
        select(lax.bitwise_and(lax.gt(x, lo), lax.lt(x, hi)), ct, zeros) if needs[1] else None,
        unbroadcast(select(lax.lt(hi, x), ct, zeros), hi) if needs[2] else None,
    )


@vjp_rule(lax.select_n_p, reads=(0,))
def select_n_vjp(ct, which, *cases, needs):
    """select_n(which, *cases): case i gets ct where which == i, zero elsewhere; which gets none."""
    if len(cases) == 1:
        return (None, ct)
    return (None, *(_case_ct(which, ct, i) if need else None for i, need in enumerate(needs[1:])))


def _case_ct(which, ct, i):
    """``ct`` where ``which == i``, zero elsewhere."""
    zeros = zeros_like(ct)
    if dtype_of(which) == np.bool_:  # False picks case 0, True case 1
        return lax.select_n(which, *((ct, zeros) if i == 0 else (zeros, ct)))
    return select(lax.eq(which, const(which, i)), ct, zeros)


@vjp_rule(lax.abs_p)
def abs_vjp(ct, x, *, out):
    """d|x| = sign(x) dx with abs'(0) = +1 as in JAX; complex x: ct conj(x) / |x| (0 at 0)."""
    if is_complex(x):
        unit = lax.div(lax.conj(x), _replace_zero(lax.convert_element_type(out, dtype_of(x))))
        return (lax.mul(lax.complex(ct, zeros_like(ct)), unit),)
    return (select(lax.ge(x, const(x, 0)), ct, lax.neg(ct)),)


# ---- powers and roots ---------------------------------------------------------------------------


@vjp_rule(lax.integer_pow_p)
def integer_pow_vjp(ct, x, *, y):  # d x^n = n x^(n-1)
    if y == 0:
        return (None,)
    if y == 1:
        return (ct,)
    if y == 2:
        return (lax.mul(ct, lax.mul(const(x, 2), x)),)
    return (lax.mul(ct, lax.mul(const(x, y), lax.integer_pow(x, y - 1))),)


@vjp_rule(lax.square_p)
def square_vjp(ct, x):  # d x^2 = 2x
    return (lax.mul(ct, lax.mul(const(x, 2), x)),)


def _broadcast_to(a, shape):
    """``a`` broadcast (rank-0 or size-1 dims) to ``shape``."""
    if np.shape(a) == tuple(shape):
        return a
    return lax.broadcast_in_dim(a, shape, tuple(range(np.ndim(a))))


@vjp_rule(lax.pow_p)
def pow_vjp(ct, x, y, *, out, needs):
    """d x^y = y x^(y-1) dx + log(x) x^y dy.

    As in JAX: an integer exponent 0 has slope exactly 0 (so 0^0 is differentiable), a float
    exponent 0 at x = 0 gives 0 * inf = NaN, and log(0) is read as log(1) = 0 for dy.
    """
    dx = dy = None
    if needs[0]:
        if dtypes.issubdtype(dtype_of(y), np.integer):
            yf = _broadcast_to(lax.convert_element_type(y, out.dtype), out.shape)
            xb = _broadcast_to(x, out.shape)
            slope = select(
                lax.eq(yf, const(yf, 0)),
                zeros_like(yf),
                lax.mul(_replace_zero(yf), lax.pow(xb, lax.sub(yf, const(yf, 1)))),
            )
        else:
            slope = lax.mul(y, lax.pow(x, lax.sub(y, const(y, 1))))
        dx = unbroadcast(lax.mul(ct, slope), x)
    if needs[1]:
        dy = unbroadcast(lax.mul(ct, lax.mul(lax.log(_replace_zero(x)), out)), y)
    return (dx, dy)


@vjp_rule(lax.sqrt_p)
def sqrt_vjp(ct, x, *, out, accuracy=None):  # d sqrt(x) = 0.5 / sqrt(x)  (inf at 0)
    return (lax.mul(ct, lax.div(const(x, 0.5), out)),)


@vjp_rule(lax.rsqrt_p)
def rsqrt_vjp(ct, x, *, out, accuracy=None):  # d x^-1/2 = -0.5 x^-1/2 / x
    return (lax.mul(ct, lax.mul(const(x, -0.5), lax.div(out, x))),)


@vjp_rule(lax.cbrt_p)
def cbrt_vjp(ct, x, *, out, accuracy=None):  # d x^1/3 = (1/3) cbrt(x)^-2
    return (lax.mul(ct, lax.mul(const(x, 1 / 3), lax.integer_pow(out, -2))),)


# ---- exponentials and logarithms ----------------------------------------------------------------


@vjp_rule(lax.exp_p)
def exp_vjp(ct, x, *, out, accuracy=None):  # d exp(x) = exp(x)
    return (lax.mul(ct, out),)


@vjp_rule(prims.exp2_p)
def exp2_vjp(ct, x, *, out, accuracy=None):  # d 2^x = log(2) 2^x
    return (lax.mul(lax.mul(lax.log(const(x, 2)), ct), out),)


@vjp_rule(lax.expm1_p)
def expm1_vjp(ct, x, *, out, accuracy=None):  # d (exp(x) - 1) = expm1(x) + 1 = exp(x)
    if accuracy is _HIGHEST:
        return (lax.mul(ct, lax.exp(x, accuracy=accuracy)),)
    return (lax.mul(ct, lax.add(out, const(out, 1))),)


@vjp_rule(lax.log_p)
def log_vjp(ct, x, *, accuracy=None):  # d log(x) = 1/x
    return (lax.div(ct, x),)


@vjp_rule(lax.log1p_p)
def log1p_vjp(ct, x, *, accuracy=None):  # d log(1 + x) = 1 / (1 + x)
    return (lax.div(ct, lax.add(x, const(x, 1))),)


@vjp_rule(lax.logistic_p)
def logistic_vjp(ct, x, *, out, accuracy=None):  # d s(x) = s(x) (1 - s(x)) = s(x) s(-x)
    if accuracy is _HIGHEST:
        return (lax.mul(ct, lax.mul(out, lax.logistic(lax.neg(x)))),)
    return (lax.mul(ct, lax.mul(out, lax.sub(const(out, 1), out))),)


# ---- trigonometric and hyperbolic ---------------------------------------------------------------


@vjp_rule(lax.sin_p)
def sin_vjp(ct, x, *, accuracy=None):  # d sin(x) = cos(x)
    return (lax.mul(ct, lax.cos(x, accuracy=accuracy)),)


@vjp_rule(lax.cos_p)
def cos_vjp(ct, x, *, accuracy=None):  # d cos(x) = -sin(x)
    return (lax.mul(lax.neg(ct), lax.sin(x, accuracy=accuracy)),)


@vjp_rule(lax.tan_p)
def tan_vjp(ct, x, *, out, accuracy=None):  # d tan(x) = 1 + tan(x)^2
    return (lax.mul(ct, lax.add(const(x, 1), lax.square(out))),)


@vjp_rule(lax.asin_p)
def asin_vjp(ct, x):  # d asin(x) = 1 / sqrt(1 - x^2)
    return (lax.mul(ct, lax.rsqrt(lax.sub(const(x, 1), lax.square(x)))),)


@vjp_rule(lax.acos_p)
def acos_vjp(ct, x):  # d acos(x) = -1 / sqrt(1 - x^2)
    return (lax.mul(ct, lax.neg(lax.rsqrt(lax.sub(const(x, 1), lax.square(x))))),)


@vjp_rule(lax.atan_p)
def atan_vjp(ct, x):  # d atan(x) = 1 / (1 + x^2)
    return (lax.div(ct, lax.add(const(x, 1), lax.square(x))),)


@vjp_rule(lax.atan2_p)
def atan2_vjp(ct, x, y, *, needs):  # d atan2(x, y) = (y dx - x dy) / (x^2 + y^2)
    r2 = lax.add(lax.square(x), lax.square(y))
    return (
        unbroadcast(lax.mul(ct, lax.div(y, r2)), x) if needs[0] else None,
        unbroadcast(lax.mul(ct, lax.div(lax.neg(x), r2)), y) if needs[1] else None,
    )


@vjp_rule(lax.tanh_p)
def tanh_vjp(ct, x, *, out, accuracy=None):
    """d tanh(x) = 1 - tanh(x)^2, computed as JAX does: (1 + t)(1 - t), or 4 s(2x) s(-2x)."""
    if accuracy is _HIGHEST:
        slope = lax.mul(
            const(x, 4),
            lax.mul(
                lax.logistic(lax.mul(const(x, 2), x), accuracy=accuracy),
                lax.logistic(lax.mul(const(x, -2), x), accuracy=accuracy),
            ),
        )
        return (lax.mul(ct, slope),)
    scaled = lax.mul(ct, lax.sub(const(out, 1), out))
    return (lax.add(scaled, lax.mul(scaled, out)),)


@vjp_rule(lax.sinh_p)
def sinh_vjp(ct, x):  # d sinh(x) = cosh(x)
    return (lax.mul(ct, lax.cosh(x)),)


@vjp_rule(lax.cosh_p)
def cosh_vjp(ct, x):  # d cosh(x) = sinh(x)
    return (lax.mul(ct, lax.sinh(x)),)


@vjp_rule(lax.asinh_p)
def asinh_vjp(ct, x):  # d asinh(x) = 1 / sqrt(x^2 + 1)
    return (lax.mul(ct, lax.rsqrt(lax.add(lax.square(x), const(x, 1)))),)


@vjp_rule(lax.acosh_p)
def acosh_vjp(ct, x):  # d acosh(x) = 1 / sqrt(x^2 - 1)
    return (lax.mul(ct, lax.rsqrt(lax.sub(lax.square(x), const(x, 1)))),)


@vjp_rule(lax.atanh_p)
def atanh_vjp(ct, x):  # d atanh(x) = 1 / ((1 + x)(1 - x))
    one = const(x, 1)
    return (lax.div(lax.mul(lax.integer_pow(lax.add(one, x), -1), ct), lax.sub(one, x)),)


# ---- piecewise constant: zero cotangent (JAX defines the derivative as zero) --------------------

zero_vjp(
    lax.floor_p,
    lax.ceil_p,
    lax.sign_p,
    lax.is_finite_p,
    prims.stop_gradient_p,
    lax.round_p,
)
# nextafter(x, y) has no rule on purpose: jax.grad raises for it, and calling it piecewise
# constant would be a silent wrong gradient (it moves x by one ulp, so d/dx is 1 almost
# everywhere). funcgrad raises UnsupportedPrimitiveError instead.


# ---- complex parts ------------------------------------------------------------------------------


@vjp_rule(lax.real_p)
def real_vjp(ct, x):  # d Re(z) = Re(dz): ct goes to the real part
    return (lax.complex(ct, zeros_like(ct)),)


@vjp_rule(lax.imag_p)
def imag_vjp(ct, x):  # d Im(z) = Im(dz): ct goes to the imaginary part (JAX: complex(0, -ct))
    return (lax.complex(zeros_like(ct), lax.neg(ct)),)


@vjp_rule(lax.complex_p)
def complex_vjp(ct, x, y, *, needs):  # complex(x, y) = x + i y
    return (
        unbroadcast(lax.real(ct), x) if needs[0] else None,
        unbroadcast(lax.imag(lax.neg(ct)), y) if needs[1] else None,
    )


@vjp_rule(lax.conj_p)
def conj_vjp(ct, x, *, input_dtype=None):  # conj is linear: its transpose is conj (real input: Re)
    if input_dtype is not None and not dtypes.issubdtype(input_dtype, np.complexfloating):
        return (lax.real(ct),)
    return (lax.conj(ct),)


# ---- identity-like: copies, placement and layout hints ------------------------------------------


@vjp_rule(lax.copy_p, reads=())
def copy_vjp(ct, x):  # a copy is the identity
    return (ct,)


@vjp_rule("name", reads=())
def checkpoint_name_vjp(ct, x, *, name):
    """``checkpoint_name`` is the identity on values (it names x for remat policies): d x."""
    return (ct,)


@vjp_rule("layout_constraint", reads=())
def layout_constraint_vjp(ct, x, *, layout):
    """A layout hint, the identity on values: the cotangent gets the same layout, as in JAX."""
    return (with_layout_constraint(ct, layout),)


@vjp_rule(lax.reduce_precision_p)
def reduce_precision_vjp(ct, x, *, exponent_bits, mantissa_bits):
    """Linear in JAX's view: the cotangent is rounded to the same precision (JAX's transpose)."""
    return (lax.reduce_precision(ct, exponent_bits=exponent_bits, mantissa_bits=mantissa_bits),)


@vjp_rule(prims.sharding_constraint_p)
def sharding_constraint_vjp(ct, x, **params):
    """A layout hint, the identity on values: the cotangent gets the same constraint."""
    return (prims.sharding_constraint_p.bind(ct, **params),)


@vjp_rule(prims.device_put_p)
def device_put_vjp(cts, *xs, devices, srcs, copy_semantics, needs):
    """device_put moves arrays: each cotangent moves back, from ``devices`` to ``srcs``.

    As JAX does, a reused input becomes a copy in the backward pass, a donated one is an error,
    and an unspecified source of a host-memory array means host memory.
    """
    moved = [i for i, (ct, need) in enumerate(zip(cts, needs)) if need and ct is not None]
    if not moved:
        return [None] * len(xs)
    semantics = type(copy_semantics[0])
    if any(copy_semantics[i] == semantics.DONATE_INPUT for i in moved):
        raise NotDifferentiableError("funcgrad: cannot differentiate device_put(..., donate=True)")
    back_to = []
    for i in moved:
        space = jax.typeof(xs[i]).memory_space
        host = srcs[i] is None and space == _HOST
        back_to.append(space if host else srcs[i])
    outs = prims.device_put_p.bind(
        *(cts[i] for i in moved),
        devices=tuple(back_to),
        srcs=tuple(devices[i] for i in moved),
        copy_semantics=(semantics.ALWAYS_COPY,) * len(moved),
    )
    result = [None] * len(xs)
    for i, y in zip(moved, outs):
        result[i] = y
    return result


@vjp_rule("optimization_barrier")
def optimization_barrier_vjp(cts, *xs, needs):
    """The identity on values; the cotangents pass through a barrier of their own, as in JAX."""
    through = [i for i, (ct, need) in enumerate(zip(cts, needs)) if need and ct is not None]
    outs = lax.optimization_barrier([cts[i] for i in through]) if through else []
    result = [None] * len(xs)
    for i, y in zip(through, outs):
        result[i] = y
    return result

"""VJP rules for special functions: error functions, log-gamma and its derivatives, the scaled
Bessel functions, the regularized incomplete gamma and beta functions, and gamma sampling.

Each rule is the derivative JAX defines (``jax/_src/lax/special.py``, ``jax/_src/random``), times
the output cotangent, summed back over implicit broadcasting (``unbroadcast``). Where JAX has no
derivative, funcgrad refuses in the same way: the order ``m`` of ``polygamma``, the parameters
``a`` and ``b`` of the incomplete beta function (``ValueError``, as JAX raises), and the second
derivative of ``igamma`` in ``a``: its rule emits ``igamma_grad_a``, which has no rule in JAX
either, so differentiating it raises ``UnsupportedPrimitiveError``. ``zeta`` has no rule of its
own: ``jax.scipy.special.zeta`` is a ``custom_jvp`` function, handled by the custom-JVP rule.
"""

from __future__ import annotations

import numpy as np
from jax import dtypes, lax
from jax.extend.core import primitives as prims

from funcgrad.interpret.errors import NotDifferentiableError
from funcgrad.interpret.registry import vjp_rule
from funcgrad.interpret.rules._common import const, dtype_of, select, unbroadcast

# ---- error functions ----------------------------------------------------------------------------


@vjp_rule(lax.erf_p)
def erf_vjp(ct, x):  # d erf(x) = 2/sqrt(pi) exp(-x^2)
    gauss = lax.exp(lax.neg(lax.square(x)))
    return (lax.mul(lax.mul(const(x, 2.0 / np.sqrt(np.pi)), ct), gauss),)


@vjp_rule(lax.erfc_p)
def erfc_vjp(ct, x):  # d erfc(x) = -2/sqrt(pi) exp(-x^2)
    gauss = lax.exp(lax.neg(lax.square(x)))
    return (lax.mul(lax.mul(const(x, -2.0 / np.sqrt(np.pi)), ct), gauss),)


@vjp_rule(lax.erf_inv_p)
def erf_inv_vjp(ct, x, *, out):  # d erf^-1(x) = sqrt(pi)/2 exp(erf^-1(x)^2)
    return (lax.mul(lax.mul(const(x, np.sqrt(np.pi) / 2.0), ct), lax.exp(lax.square(out))),)


# ---- log-gamma and its derivatives --------------------------------------------------------------


@vjp_rule(lax.lgamma_p)
def lgamma_vjp(ct, x):  # d log|Gamma(x)| = digamma(x)
    return (lax.mul(ct, lax.digamma(x)),)


@vjp_rule(lax.digamma_p)
def digamma_vjp(ct, x):  # d digamma(x) = polygamma(1, x)
    return (lax.mul(ct, lax.polygamma(const(x, 1), x)),)


@vjp_rule(lax.polygamma_p)
def polygamma_vjp(ct, m, x, *, needs):
    """d polygamma(m, x) / dx = polygamma(m + 1, x); the order m is not differentiable."""
    if needs[0]:
        raise NotDifferentiableError(
            "polygamma(m, x) is not differentiable with respect to its order m (JAX raises too); "
            "pass m as a constant or wrap it in lax.stop_gradient"
        )
    return (None, unbroadcast(lax.mul(ct, lax.polygamma(lax.add(m, const(m, 1)), x)), x))


# ---- exponentially scaled modified Bessel functions ---------------------------------------------


@vjp_rule(prims.bessel_i0e_p)
def bessel_i0e_vjp(ct, x, *, out):
    """i0e(x) = exp(-|x|) I0(x): d i0e(x) = i1e(x) - sign(x) i0e(x)  (I0' = I1)."""
    return (lax.mul(ct, lax.sub(lax.bessel_i1e(x), lax.mul(lax.sign(x), out))),)


@vjp_rule(prims.bessel_i1e_p)
def bessel_i1e_vjp(ct, x, *, out):
    """i1e(x) = exp(-|x|) I1(x): d i1e(x) = i0e(x) - i1e(x) (sign(x) + 1/x)  (I1' = I0 - I1/x).

    At |x| <= eps, where 1/x is useless, the slope is its limit 1/2, as in JAX.
    """
    eps = const(x, dtypes.finfo(dtype_of(x)).eps)
    not_tiny = lax.gt(lax.abs(x), eps)
    safe_x = select(not_tiny, x, lax.full_like(x, eps))
    slope = lax.sub(
        lax.bessel_i0e(safe_x), lax.mul(out, lax.add(lax.sign(safe_x), lax.reciprocal(safe_x)))
    )
    return (lax.mul(ct, select(not_tiny, slope, lax.full_like(x, 0.5))),)


# ---- incomplete gamma and beta functions --------------------------------------------------------


def _gamma_density(a, x):
    """d igamma(a, x) / dx = x^(a-1) exp(-x) / Gamma(a), computed in log space as JAX does."""
    return lax.exp(
        lax.sub(lax.add(lax.neg(x), lax.mul(lax.sub(a, const(a, 1)), lax.log(x))), lax.lgamma(a))
    )


def _igamma_cts(ct, a, x, needs, sign: float):
    """Cotangents of (a, x) for ``sign * igamma(a, x)`` (+ constant)."""
    ct = lax.mul(ct, const(ct, sign)) if sign < 0 else ct
    return (
        unbroadcast(lax.mul(ct, lax.igamma_grad_a(a, x)), a) if needs[0] else None,
        unbroadcast(lax.mul(ct, _gamma_density(a, x)), x) if needs[1] else None,
    )


@vjp_rule(prims.igamma_p)
def igamma_vjp(ct, a, x, *, needs):
    """P(a, x) = gamma(a, x) / Gamma(a): d/dx = x^(a-1) e^-x / Gamma(a); d/da = igamma_grad_a(a, x).

    ``igamma_grad_a`` has no derivative in JAX, so neither has d/da here (no second order in a).
    """
    return _igamma_cts(ct, a, x, needs, 1.0)


@vjp_rule(prims.igammac_p)
def igammac_vjp(ct, a, x, *, needs):
    """Q(a, x) = 1 - P(a, x): both derivatives are those of igamma, negated."""
    return _igamma_cts(ct, a, x, needs, -1.0)


@vjp_rule(prims.regularized_incomplete_beta_p)
def regularized_incomplete_beta_vjp(ct, a, b, x, *, needs):
    """I_x(a, b): d/dx = x^(a-1) (1-x)^(b-1) / B(a, b); like JAX, none with respect to a or b."""
    if needs[0] or needs[1]:
        raise NotDifferentiableError(
            "betainc(a, b, x) (the regularized incomplete beta function) is differentiable only "
            "with respect to x; JAX refuses d/da and d/db too. Pass a and b as constants or wrap "
            "them in lax.stop_gradient"
        )
    log_beta = lax.sub(lax.add(lax.lgamma(a), lax.lgamma(b)), lax.lgamma(lax.add(a, b)))
    log_density = lax.sub(
        lax.add(
            lax.mul(lax.sub(b, const(b, 1)), lax.log1p(lax.neg(x))),
            lax.mul(lax.sub(a, const(a, 1)), lax.log(x)),
        ),
        log_beta,
    )
    return (None, None, unbroadcast(lax.mul(lax.exp(log_density), ct), x))


# ---- gamma sampling -----------------------------------------------------------------------------


@vjp_rule(prims.random_gamma_p, reads=(1,))
def random_gamma_vjp(ct, key, a, *, out, log_space):
    """A Gamma(a, 1) sample x moves with a at a fixed CDF level: dx/da = -(dP/da) / (dP/dx).

    Implicit reparameterization (Figurnov et al. 2018, "Implicit Reparameterization Gradients"),
    evaluated by ``lax.random_gamma_grad`` (a series in ``while`` loops, so no second reverse-mode
    derivative, as in JAX). In log space (``loggamma``) d log x = dx / x, with an x that
    underflowed to 0 read as the smallest normal number, as JAX does. The key gets none.
    """
    if log_space:
        sample = lax.exp(out)
        tiny = lax.full_like(sample, dtypes.finfo(dtype_of(sample)).tiny)
        sample = select(lax.eq(sample, const(sample, 0)), tiny, sample)
        slope = lax.div(lax.random_gamma_grad(a, sample), sample)
    else:
        slope = lax.random_gamma_grad(a, out)
    return (None, lax.mul(ct, slope))

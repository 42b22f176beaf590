"""Special-function rules held against jax.grad: error functions, log-gamma and its derivatives,
the scaled Bessel functions, the incomplete gamma and beta functions, and gamma sampling.

Cases are user code (``jax.scipy.special``, ``jax.scipy.stats``, ``jax.random``) and name the
primitive they must reach. The refusals are JAX's: no derivative of ``betainc`` in ``a``/``b``,
no second derivative of ``gammainc`` in ``a`` (JAX has no rule for ``igamma_grad_a``), and no
second reverse-mode derivative of a gamma sample (its slope is a ``while`` loop).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import (
    Case,
    assert_grads_match,
    assert_trees_close,
    assert_uses,
    check,
    primitives_of,
    randn,
    weighted_sum,
)
from jax import lax
from jax.scipy import special, stats

import funcgrad as fg
from funcgrad.interpret.errors import UnsupportedPrimitiveError


def positive(seed: int, *shape: int, low: float = 0.3):
    """Random values in (low, low + ~3): the domain of the gamma-family functions."""
    return jnp.abs(randn(seed, *shape)) * 1.5 + low


def unit(seed: int, *shape: int):
    """Random values in (0.05, 0.95)."""
    return 0.5 + 0.45 * jnp.tanh(randn(seed, *shape))


def key():
    return jax.random.key(7)


CASES = [
    # error functions
    Case("erf", "erf", special.erf, lambda: (randn(0, 3, 4),)),
    Case("erfc", "erfc", special.erfc, lambda: (randn(1, 5),)),
    Case("erfinv", "erf_inv", special.erfinv, lambda: (0.9 * jnp.tanh(randn(2, 2, 3)),)),
    Case("norm.cdf", "erfc", stats.norm.cdf, lambda: (randn(3, 6),)),
    # log-gamma and its derivatives
    Case("gammaln", "lgamma", special.gammaln, lambda: (positive(4, 3, 4),)),
    Case("lgamma-negative", "lgamma", lax.lgamma, lambda: (-1.5 + 0.3 * jnp.tanh(randn(5, 4)),)),
    Case("digamma", "digamma", special.digamma, lambda: (positive(6, 5),)),
    Case("polygamma-2", "polygamma", lambda x: special.polygamma(2, x), lambda: (positive(7, 4),)),
    Case("t.logpdf-df", "digamma", lambda df: stats.t.logpdf(0.7, df) + 0 * lax.digamma(df),
         lambda: (positive(8, 3, low=1.0),)),
    # scaled Bessel functions (negative x, and 0, included)
    Case("i0e", "bessel_i0e", special.i0e, lambda: (2 * randn(9, 3, 4),)),
    Case("i1e", "bessel_i1e", special.i1e, lambda: (2 * randn(10, 3, 4),)),
    Case("i0", "bessel_i0e", special.i0, lambda: (randn(11, 6),)),
    Case("i1", "bessel_i1e", special.i1, lambda: (randn(12, 6),)),
    Case("i1e-at-zero", "bessel_i1e", special.i1e,
         lambda: (jnp.array([0.0, -0.0, 1e-30, -1e-9, 0.4]),)),
    # incomplete gamma
    Case("gammainc-x", "igamma", lambda x: special.gammainc(2.5, x), lambda: (positive(13, 3, 4),)),
    Case("gammainc-a-x", "igamma", special.gammainc, lambda: (positive(14, 5), positive(15, 5)),
         (0, 1)),
    Case("gammainc-scalar-a", "igamma", lambda a, x: lax.igamma(a, x),
         lambda: (jnp.float32(1.7), positive(16, 2, 3)), (0, 1)),
    Case("gammaincc-a-x", "igammac", special.gammaincc, lambda: (positive(17, 5), positive(18, 5)),
         (0, 1)),
    Case("gamma.cdf", "igamma", lambda x, a: stats.gamma.cdf(x, a),
         lambda: (positive(19, 4), positive(20, 4)), (0, 1)),
    Case("chi2.cdf", "igamma", lambda x: stats.chi2.cdf(x, 3.0), lambda: (positive(21, 4),)),
    Case("poisson.cdf-rate", "igammac", lambda mu: stats.poisson.cdf(2, mu),
         lambda: (positive(22, 4),)),
    # incomplete beta (x only, as JAX)
    Case("betainc-x", "regularized_incomplete_beta", lambda x: special.betainc(2.0, 3.5, x),
         lambda: (unit(23, 3, 4),)),
    Case("beta.cdf", "regularized_incomplete_beta", lambda x: stats.beta.cdf(x, 1.5, 0.7),
         lambda: (unit(24, 5),)),
    # gamma sampling, differentiated with respect to the shape parameters
    Case("random.gamma", "random_gamma", lambda a: jax.random.gamma(key(), a),
         lambda: (jnp.exp(1.2 * randn(25, 3, 4)),)),  # a from ~0.05 to ~20
    Case("random.gamma-shape", "random_gamma",
         lambda a: jax.random.gamma(key(), a, shape=(4, 3)), lambda: (positive(27, 3),)),
    Case("random.loggamma", "random_gamma", lambda a: jax.random.loggamma(key(), a),
         lambda: (positive(28, 5),)),
    Case("random.beta", "random_gamma", lambda a, b: jax.random.beta(key(), a, b),
         lambda: (positive(29, 4), positive(30, 4)), (0, 1)),
    Case("random.dirichlet", "random_gamma", lambda alpha: jax.random.dirichlet(key(), alpha),
         lambda: (positive(31, 2, 5),)),
]
IDS = [c.id for c in CASES]
BY_ID = {c.id: c for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rule_matches_jax(case):
    check(case, eager=False, jit=True)


FLOAT64 = [c.id for c in CASES if not c.id.startswith("random.")] + [
    "random.gamma", "random.beta", "random.dirichlet"]


@pytest.mark.parametrize("name", FLOAT64)
def test_rule_matches_jax_in_float64(name):
    case = BY_ID[name]
    with jax.enable_x64(True):
        args = case.args(np.float64)
        assert all(a.dtype == np.float64 for a in args if jnp.issubdtype(a.dtype, jnp.floating))
        check(case, np.float64, eager=False, jit=True)


EAGER = ["erfinv", "lgamma-negative", "polygamma-2", "i0e", "i1e-at-zero", "gammainc-a-x",
         "gammainc-scalar-a", "gammaincc-a-x", "betainc-x", "random.loggamma"]


@pytest.mark.parametrize("name", EAGER)
def test_rule_matches_jax_eagerly(name):
    check(BY_ID[name], eager=True, jit=False)


def test_i1e_slope_at_zero_is_one_half():
    """|x| <= eps uses the limit 1/2 of d i1e/dx (1/x is useless there), as JAX does."""
    x = jnp.array([0.0, 1e-30, -1e-9])
    np.testing.assert_array_equal(fg.grad(lambda x: jnp.sum(special.i1e(x)))(x), [0.5] * 3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=["bf16", "f16"])
def test_bessel_in_low_precision(dtype):
    """eps (the i1e guard) is the input dtype's: bfloat16 and float16 have their own."""
    x = jnp.array([0.0, 0.004, 0.5, -2.0, 7.0], dtype)
    assert_grads_match(lambda x: jnp.sum(special.i0e(x) * special.i1e(x)), x)


# ---- vmap ------------------------------------------------------------------------------------
def special_mix(x):
    """One scalar function of x reaching every special-function rule that is smooth in x."""
    a = special.i0e(x) + special.i1e(x) + special.erf(x) * special.erfc(0.5 * x)
    b = special.gammainc(2.0, x * x + 0.5) + special.gammaincc(1.5, x * x + 0.5)
    c = special.betainc(1.5, 2.0, jax.nn.sigmoid(x)) + special.gammaln(x * x + 1.0)
    d = special.digamma(x * x + 1.0) + special.erfinv(0.5 * jnp.tanh(x))
    return jnp.sum(a * b + c * d)


def test_vmap_of_grad():
    xs = randn(40, 4, 3)
    want = jax.jit(jax.vmap(jax.grad(special_mix)))(xs)
    assert_trees_close(jax.jit(jax.vmap(fg.grad(special_mix)))(xs), want)


def test_vmap_over_keys_of_gamma_samples():
    """Per-key gamma samples under vmap: the batched random_gamma equation's rule."""
    keys = jax.random.split(key(), 3)
    a = positive(41, 4)

    def loss(a, k):
        return jnp.sum(jax.random.gamma(k, a) * jnp.arange(1.0, 5.0))

    want = jax.jit(jax.vmap(jax.grad(loss), (None, 0)))(a, keys)
    assert_trees_close(jax.jit(jax.vmap(fg.grad(loss), (None, 0)))(a, keys), want)


# ---- second order ----------------------------------------------------------------------------
def test_hessian():
    with jax.enable_x64(True):
        x = jnp.array([-0.8, 0.1, 0.6, 1.3], np.float64)
        want = jax.jit(jax.hessian(special_mix))(x)
        assert_trees_close(jax.jit(fg.hessian(special_mix))(x), want)


@pytest.mark.parametrize("name", ["i0e", "i1e", "gammainc-x", "betainc-x", "polygamma-2"])
def test_grad_of_grad(name):
    case = BY_ID[name]
    with jax.enable_x64(True):
        (x,) = case.args(np.float64)

        def slope(x):
            return jnp.sum(jnp.sin(fg.grad(weighted_sum(case.f))(x)))

        def jax_slope(x):
            return jnp.sum(jnp.sin(jax.grad(weighted_sum(case.f))(x)))

        assert_trees_close(fg.grad(slope)(x), jax.grad(jax_slope)(x))


# ---- refusals, as JAX's ----------------------------------------------------------------------
def test_polygamma_refuses_the_order_like_jax():
    """d/dx polygamma(m, x) is a CASES entry; d/dm is undefined and both refuse it."""
    x = positive(8, 2, 3)
    m = jnp.array([[1.0, 2.0, 3.0]])

    def f(m, x):
        return jnp.sum(lax.polygamma(m, x))

    with pytest.raises(ValueError, match="order m"):
        fg.grad(f)(m, x)
    with pytest.raises(ValueError):
        jax.grad(f)(m, x)


def test_betainc_refuses_a_and_b_like_jax():
    for argnums in (0, 1):
        f = lambda a, b: special.betainc(a, b, 0.3)  # noqa: E731
        with pytest.raises(ValueError, match="Betainc gradient"):
            jax.grad(f, argnums)(1.5, 2.0)
        with pytest.raises(ValueError, match="only with respect to x"):
            fg.grad(f, argnums)(1.5, 2.0)


def test_gammainc_second_derivative_in_a_refused_like_jax():
    """d/da gammainc is igamma_grad_a, which neither JAX nor funcgrad differentiates."""
    f = lambda a: special.gammainc(a, 1.5)  # noqa: E731
    with pytest.raises(NotImplementedError, match="igamma_grad_a"):
        jax.grad(jax.grad(f))(2.0)
    with pytest.raises(UnsupportedPrimitiveError, match="igamma_grad_a"):
        fg.grad(fg.grad(f))(2.0)


def test_gamma_sample_second_derivative_refused_like_jax_grad():
    """The sample's slope runs a while loop: neither reverse mode differentiates it again."""
    f = lambda a: jax.random.gamma(key(), a)  # noqa: E731
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        jax.grad(jax.grad(f))(2.0)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work"):
        fg.grad(fg.grad(f))(2.0)


def test_zeta_is_a_custom_jvp_function():
    """zeta has no rule of its own: jax.scipy.special.zeta's custom JVP rule is honoured."""
    x = positive(42, 4, low=1.5)
    f = weighted_sum(lambda x: special.zeta(x, 2.0))
    assert_uses("custom_jvp_call", f, x)
    assert_grads_match(f, x, eager=False)


# ---- more user-level functions, float64, against jax.grad ---------------------------------------
# (those built on the rules above; the CASES cover i0e, i1e, i0, i1, gammainc, gammaincc,
# betainc, gammaln, digamma, polygamma, random.gamma/beta/dirichlet and the stats cdfs)
USER_LEVEL = {
    "xlogy": (special.xlogy, lambda: (randn(69, 5), positive(70, 5))),
    "xlog1py": (special.xlog1py, lambda: (randn(71, 5), positive(72, 5))),
    "entr": (special.entr, lambda: (positive(73, 5),)),
    "erfcx": (special.erfcx, lambda: (randn(74, 5),)),
    "logsumexp": (lambda x: special.logsumexp(x, axis=1), lambda: (randn(75, 3, 4),)),
    "zeta": (lambda x: special.zeta(x, 1.5), lambda: (positive(78, 5, low=1.5),)),
    "gammainc-same-arg": (lambda x: special.gammainc(x, x), lambda: (positive(79, 5),)),
    "stats.t.logpdf": (lambda x, df: stats.t.logpdf(x, df), lambda: (randn(87, 5),
                                                                     positive(88, 5))),
    "stats.gamma.logcdf": (lambda x, a: stats.gamma.logcdf(x, a), lambda: (positive(84, 5),
                                                                           positive(85, 5))),
    "stats.gamma.sf": (lambda x, a: stats.gamma.sf(x, a), lambda: (positive(86, 5),
                                                                   positive(87, 5))),
}


@pytest.mark.parametrize("name", USER_LEVEL)
def test_user_level_function_in_float64(name):
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        args = tuple(a.astype(np.float64) for a in make_args())
        argnums = tuple(range(len(args)))
        assert_grads_match(weighted_sum(f), *args, argnums=argnums, eager=False, jit=True)


@pytest.mark.parametrize("name", USER_LEVEL)
def test_user_level_function_in_float64_eagerly(name):
    f, make_args = USER_LEVEL[name]
    with jax.enable_x64(True):
        args = tuple(a.astype(np.float64) for a in make_args())
        argnums = tuple(range(len(args)))
        assert_grads_match(weighted_sum(f), *args, argnums=argnums, eager=True, jit=False)


def test_entr_of_a_python_float_eagerly():
    """A weak-typed Python float reaches the eager select_n shortcut as a literal."""
    assert_trees_close(fg.grad(special.entr)(0.7), jax.grad(special.entr)(0.7))


def test_closure_backward_pass_uses_only_supported_primitives():
    """Every primitive these rules emit has a rule, but for d/da igamma's igamma_grad_a, which
    JAX does not differentiate either."""
    supported = fg.supported_primitives() | {"igamma_grad_a"}
    for case in CASES:
        grad_jaxpr = jax.make_jaxpr(fg.grad(weighted_sum(case.f), case.argnums))(*case.args())
        missing = primitives_of(grad_jaxpr.jaxpr) - supported
        assert not missing, f"{case.id}: no rule for {sorted(missing)}"
    assert "igamma_grad_a" not in fg.supported_primitives()

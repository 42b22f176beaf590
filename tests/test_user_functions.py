"""Public functions a user differentiates, through fg.grad, equal to jax.grad at float64.

One row per function: the function, its inputs (well inside its domain) and which of them are
differentiated. The loss is a weighted sum of the outputs with fixed random weights, so every
output element gets its own cotangent. Agreement is required to float64 rounding: rtol 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
import jax.scipy.stats as jst
import numpy as np
import pytest
from gradcheck import assert_trees_close, weighted_sum
from jax.experimental.ode import odeint
from jax.scipy.sparse import linalg as jsparse

import funcgrad as fg


def _rand(seed: int, *shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape)


def _spd(seed: int, n: int = 4) -> np.ndarray:
    a = _rand(seed, n, n)
    return a @ a.T + n * np.eye(n)


def _square(seed: int, n: int = 4) -> np.ndarray:
    return _rand(seed, n, n) + n * np.eye(n)


def _pos(seed: int, *shape: int) -> np.ndarray:
    return _rand(seed, *shape, low=0.5, high=2.5)


def _unit(seed: int, *shape: int) -> np.ndarray:
    return _rand(seed, *shape, low=0.1, high=0.9)


def _odeint_decay(k, y0):
    ts = jnp.array([0.0, 0.5, 1.0])
    return odeint(lambda y, t, k: -k * y + jnp.sin(t), y0, ts, k)


def _cg(a, b):
    spd = a @ a.T + 4 * jnp.eye(a.shape[0])
    return jsparse.cg(lambda v: spd @ v, b, tol=1e-13)[0]


def _gmres(a, b):
    return jsparse.gmres(lambda v: a @ v, b, tol=1e-13, solve_method="batched")[0]


def _bicgstab(a, b):
    return jsparse.bicgstab(lambda v: a @ v, b, tol=1e-13)[0]


def _gamma_sample(a):
    return jax.random.gamma(jax.random.key(0), a, (3, *a.shape))


def _beta_sample(a, b):
    return jax.random.beta(jax.random.key(1), a, b, (3, *a.shape))


def _dirichlet_sample(alpha):
    return jax.random.dirichlet(jax.random.key(2), alpha, (3,))


def _gaussian_log_likelihood(a, x):
    cov = a @ a.T + 4 * jnp.eye(a.shape[0])
    chol = jnp.linalg.cholesky(cov)
    z = jsl.solve_triangular(chol, x.T, lower=True)
    return -0.5 * jnp.sum(z**2) - x.shape[0] * jnp.sum(jnp.log(jnp.diag(chol)))


ROWS: dict[str, tuple[Callable, Callable[[], tuple], tuple[int, ...]]] = {
    # jax.numpy
    "jnp.tanh": (jnp.tanh, lambda: (_rand(0, 5),), (0,)),
    "jnp.arcsinh": (jnp.arcsinh, lambda: (_rand(1, 5),), (0,)),
    "jnp.power": (jnp.power, lambda: (_pos(2, 5), _rand(3, 5)), (0, 1)),
    "jnp.hypot": (jnp.hypot, lambda: (_rand(4, 5), _rand(5, 5)), (0, 1)),
    "jnp.logaddexp": (jnp.logaddexp, lambda: (_rand(6, 5), _rand(7, 5)), (0, 1)),
    "jnp.sinc": (jnp.sinc, lambda: (_rand(8, 5),), (0,)),
    "jnp.cumprod": (lambda x: jnp.cumprod(x, axis=1), lambda: (_rand(9, 3, 4),), (0,)),
    "jnp.sort": (lambda x: jnp.sort(x, axis=0), lambda: (_rand(10, 4, 3),), (0,)),
    "jnp.linalg.norm(fro)": (jnp.linalg.norm, lambda: (_rand(11, 3, 4),), (0,)),
    "jnp.einsum": (lambda a, b: jnp.einsum("ij,jk->ik", a, b),
                   lambda: (_rand(12, 2, 3), _rand(13, 3, 4)), (0, 1)),
    "jnp.interp": (lambda x: jnp.interp(x, jnp.linspace(-1, 1, 5), jnp.arange(5.0) ** 2),
                   lambda: (_rand(14, 6),), (0,)),
    "jnp.convolve": (jnp.convolve, lambda: (_rand(15, 6), _rand(16, 3)), (0, 1)),
    "jnp.polyval": (jnp.polyval, lambda: (_rand(17, 4), _rand(18, 5)), (0, 1)),
    "jnp.trapezoid": (jnp.trapezoid, lambda: (_rand(19, 7),), (0,)),
    # jax.numpy.linalg
    "jnp.linalg.solve": (jnp.linalg.solve, lambda: (_square(20), _rand(21, 4, 2)), (0, 1)),
    "jnp.linalg.inv": (jnp.linalg.inv, lambda: (_square(22),), (0,)),
    "jnp.linalg.det": (jnp.linalg.det, lambda: (_square(23),), (0,)),
    "jnp.linalg.slogdet": (lambda a: jnp.linalg.slogdet(a)[1], lambda: (_square(24),), (0,)),
    "jnp.linalg.cholesky": (jnp.linalg.cholesky, lambda: (_spd(25),), (0,)),
    "jnp.linalg.qr": (lambda a: jnp.linalg.qr(a)[1], lambda: (_rand(26, 5, 3),), (0,)),
    "jnp.linalg.eigh": (lambda a: jnp.linalg.eigh(a + a.T)[0], lambda: (_rand(27, 4, 4),), (0,)),
    "jnp.linalg.eigvalsh": (lambda a: jnp.linalg.eigvalsh(a @ a.T), lambda: (_rand(28, 3, 3),),
                            (0,)),
    "jnp.linalg.svd": (lambda a: jnp.linalg.svd(a, compute_uv=False), lambda: (_rand(29, 4, 3),),
                       (0,)),
    "jnp.linalg.norm(ord=2)": (lambda a: jnp.linalg.norm(a, ord=2), lambda: (_rand(30, 4, 3),),
                               (0,)),
    "jnp.linalg.norm(ord=nuc)": (lambda a: jnp.linalg.norm(a, ord="nuc"),
                                 lambda: (_rand(31, 3, 4),), (0,)),
    "jnp.linalg.pinv": (jnp.linalg.pinv, lambda: (_rand(32, 4, 3),), (0,)),
    "jnp.linalg.lstsq": (lambda a, b: jnp.linalg.lstsq(a, b)[0],
                         lambda: (_rand(33, 5, 3), _rand(34, 5)), (0, 1)),
    "jnp.linalg.matrix_power": (lambda a: jnp.linalg.matrix_power(a, 3),
                                lambda: (_rand(35, 3, 3),), (0,)),
    # jax.numpy.fft
    "jnp.fft.fft": (lambda x: jnp.fft.fft(x).real, lambda: (_rand(36, 6),), (0,)),
    "jnp.fft.ifft": (lambda x: jnp.abs(jnp.fft.ifft(x)), lambda: (_rand(37, 5),), (0,)),
    "jnp.fft.rfft": (lambda x: jnp.abs(jnp.fft.rfft(x)), lambda: (_rand(38, 7),), (0,)),
    "jnp.fft.irfft": (lambda x: jnp.fft.irfft(x, n=8), lambda: (_rand(39, 5),), (0,)),
    "jnp.fft.fft2": (lambda x: jnp.fft.fft2(x).imag, lambda: (_rand(40, 3, 4),), (0,)),
    "jnp.fft.rfftn": (lambda x: jnp.abs(jnp.fft.rfftn(x)), lambda: (_rand(41, 2, 3, 4),), (0,)),
    # jax.scipy.linalg
    "jsl.solve_triangular": (lambda a, b: jsl.solve_triangular(jnp.tril(a), b, lower=True),
                             lambda: (_square(42), _rand(43, 4)), (0, 1)),
    "jsl.cho_solve": (lambda a, b: jsl.cho_solve(jsl.cho_factor(a), b),
                      lambda: (_spd(44), _rand(45, 4)), (0, 1)),
    "jsl.lu_solve": (lambda a, b: jsl.lu_solve(jsl.lu_factor(a), b),
                     lambda: (_square(46), _rand(47, 4)), (0, 1)),
    "jsl.expm": (jsl.expm, lambda: (_rand(48, 3, 3) * 0.5,), (0,)),
    "jsl.solve(assume_a=pos)": (lambda a, b: jsl.solve(a, b, assume_a="pos"),
                                lambda: (_spd(49), _rand(50, 4)), (0, 1)),
    "gaussian log-likelihood": (_gaussian_log_likelihood,
                                lambda: (_rand(51, 3, 3), _rand(52, 5, 3)), (0, 1)),
    # jax.scipy.special
    "jss.i0e": (jss.i0e, lambda: (_rand(53, 5, low=-3, high=3),), (0,)),
    "jss.i1e": (jss.i1e, lambda: (_rand(54, 5, low=-3, high=3),), (0,)),
    "jss.gammainc": (jss.gammainc, lambda: (_pos(55, 4), _pos(56, 4)), (0, 1)),
    "jss.gammaincc": (jss.gammaincc, lambda: (_pos(57, 4), _pos(58, 4)), (0, 1)),
    "jss.betainc": (lambda x: jss.betainc(2.0, 3.0, x), lambda: (_unit(59, 4),), (0,)),
    "jss.xlogy": (jss.xlogy, lambda: (_rand(60, 4), _pos(61, 4)), (0, 1)),
    "jss.xlog1py": (jss.xlog1py, lambda: (_rand(62, 4), _pos(63, 4)), (0, 1)),
    "jss.gammaln": (jss.gammaln, lambda: (_pos(64, 5),), (0,)),
    "jss.digamma": (jss.digamma, lambda: (_pos(65, 5),), (0,)),
    "jss.logsumexp": (lambda x: jss.logsumexp(x, axis=1), lambda: (_rand(66, 3, 4),), (0,)),
    "jss.erf": (jss.erf, lambda: (_rand(67, 5),), (0,)),
    "jss.ndtri": (jss.ndtri, lambda: (_unit(68, 5),), (0,)),
    "jss.zeta": (lambda q: jss.zeta(3.0, q), lambda: (_pos(69, 4),), (0,)),
    "jss.log_ndtr": (jss.log_ndtr, lambda: (_rand(70, 5, low=-4, high=4),), (0,)),
    # jax.scipy.stats
    "jst.norm.logpdf": (jst.norm.logpdf, lambda: (_rand(71, 5), _rand(72, 5), _pos(73, 5)),
                        (0, 1, 2)),
    "jst.norm.cdf": (jst.norm.cdf, lambda: (_rand(74, 5),), (0,)),
    "jst.gamma.logpdf": (jst.gamma.logpdf, lambda: (_pos(75, 4), _pos(76, 4)), (0, 1)),
    "jst.gamma.cdf": (jst.gamma.cdf, lambda: (_pos(77, 4), _pos(78, 4)), (0, 1)),
    "jst.beta.logpdf": (jst.beta.logpdf, lambda: (_unit(79, 4), _pos(80, 4), _pos(81, 4)),
                        (0, 1, 2)),
    "jst.t.logpdf": (jst.t.logpdf, lambda: (_rand(82, 4), _pos(83, 4)), (0, 1)),
    "jst.multivariate_normal.logpdf": (
        lambda x, mean: jst.multivariate_normal.logpdf(x, mean, jnp.array(_spd(84, 3))),
        lambda: (_rand(85, 5, 3), _rand(86, 3)), (0, 1)),
    # jax.nn
    "jax.nn.gelu": (jax.nn.gelu, lambda: (_rand(87, 5),), (0,)),
    "jax.nn.softmax": (jax.nn.softmax, lambda: (_rand(88, 3, 4),), (0,)),
    "jax.nn.log_softmax": (jax.nn.log_softmax, lambda: (_rand(89, 3, 4),), (0,)),
    "jax.nn.silu": (jax.nn.silu, lambda: (_rand(90, 5),), (0,)),
    "jax.nn.relu": (jax.nn.relu, lambda: (_rand(91, 5),), (0,)),
    "jax.nn.softplus": (jax.nn.softplus, lambda: (_rand(92, 5),), (0,)),
    "jax.nn.standardize": (jax.nn.standardize, lambda: (_rand(93, 3, 4),), (0,)),
    "jax.nn.dot_product_attention": (
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v),
        lambda: (_rand(94, 1, 3, 2, 4), _rand(95, 1, 3, 2, 4), _rand(96, 1, 3, 2, 4)),
        (0, 1, 2)),
    # jax.random, with respect to the distributions' parameters
    "jax.random.gamma": (_gamma_sample, lambda: (_pos(97, 2),), (0,)),
    "jax.random.beta": (_beta_sample, lambda: (_pos(98, 2), _pos(99, 2)), (0, 1)),
    "jax.random.dirichlet": (_dirichlet_sample, lambda: (_pos(100, 3),), (0,)),
    # jax.scipy.sparse.linalg
    "jsparse.cg": (_cg, lambda: (_rand(101, 4, 4), _rand(102, 4)), (0, 1)),
    "jsparse.gmres": (_gmres, lambda: (_square(103), _rand(104, 4)), (0, 1)),
    "jsparse.bicgstab": (_bicgstab, lambda: (_square(105), _rand(106, 4)), (0, 1)),
    # jax.experimental.ode
    "odeint": (_odeint_decay, lambda: (np.float64(0.7), _rand(107, 2)), (0, 1)),
}

# Iterative solvers stop at a tolerance: their derivatives (implicit, through another solve)
# agree to the solver's accuracy, not to the last bit.
LOOSER = {"jsparse.cg": 1e-8, "jsparse.gmres": 1e-8, "jsparse.bicgstab": 1e-8, "odeint": 1e-8}


def test_the_table_spans_the_public_modules():
    assert len(ROWS) >= 60
    prefixes = ("jnp.", "jnp.linalg", "jnp.fft", "jsl.", "jss.", "jst.", "jax.nn", "jax.random",
                "jsparse", "odeint")
    assert all(any(name.startswith(p) for name in ROWS) for p in prefixes)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_fg_grad_equals_jax_grad_in_float64(name):
    f, make_args, argnums = ROWS[name]
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in make_args())
        loss = weighted_sum(f)
        want = jax.grad(loss, argnums)(*args)
        got = fg.grad(loss, argnums)(*args)
        rtol = LOOSER.get(name, 1e-10)
        assert_trees_close(got, want, rtol=rtol, atol=rtol * 1e-2)

"""The fft rule held against jax.grad and jax.vjp: FFT, IFFT, RFFT and IRFFT, 1-D to 3-D.

Cases are user code (``jnp.fft.*``, ``lax.fft``): odd and even lengths (the RFFT/IRFFT Nyquist
bin exists only for even ones), ``n=`` padding and cropping, other axes, ``norm=``, batch
dimensions. Complex values enter as real and imaginary parts and leave as both, so that the
scalar loss is real; complex64/complex128 primals are compared through ``jax.vjp``, which fixes
JAX's conjugation convention for complex cotangents.
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
    assert_vjp_matches,
    check,
    primitives_of,
    randn,
    weighted_sum,
)
from jax import lax

import funcgrad as fg


def parts(z):
    """A complex array as (real part, imaginary part): a real loss can weigh both."""
    return jnp.real(z), jnp.imag(z)


def of_complex(transform):
    """``transform`` applied to ``re + i im``, its result split into parts."""
    return lambda re, im: parts(transform(lax.complex(re, im)))


def half_spectrum(seed: int, *shape: int):
    """Real and imaginary parts of a random half spectrum (the input of an inverse real FFT)."""
    return randn(seed, *shape), randn(seed + 1, *shape)


CASES = [
    # complex-to-complex
    Case("fft-complex", "fft", of_complex(jnp.fft.fft), lambda: half_spectrum(0, 3, 8), (0, 1)),
    Case("fft-real-input-odd", "fft", lambda x: parts(jnp.fft.fft(x)), lambda: (randn(2, 2, 7),)),
    Case("fft-n-pads", "fft", lambda x: parts(jnp.fft.fft(x, n=9)), lambda: (randn(3, 5),)),
    Case("fft-n-crops-axis0", "fft", lambda x: parts(jnp.fft.fft(x, n=3, axis=0)),
         lambda: (randn(4, 6, 2),)),
    Case("ifft-complex", "fft", of_complex(jnp.fft.ifft), lambda: half_spectrum(5, 2, 6), (0, 1)),
    Case("ifft-ortho", "fft", of_complex(lambda z: jnp.fft.ifft(z, norm="ortho")),
         lambda: half_spectrum(7, 5), (0, 1)),
    Case("fft2", "fft", of_complex(jnp.fft.fft2), lambda: half_spectrum(9, 2, 3, 4), (0, 1)),
    Case("fftn-3d", "fft", of_complex(jnp.fft.fftn), lambda: half_spectrum(11, 2, 3, 5), (0, 1)),
    Case("ifftn-axes", "fft", of_complex(lambda z: jnp.fft.ifftn(z, axes=(0, 2))),
         lambda: half_spectrum(13, 3, 2, 4), (0, 1)),
    Case("fftshift-of-fft", "fft", lambda x: parts(jnp.fft.fftshift(jnp.fft.fft(x))),
         lambda: (randn(15, 6),)),
    # real-to-complex
    Case("rfft-even", "fft", lambda x: parts(jnp.fft.rfft(x)), lambda: (randn(16, 3, 8),)),
    Case("rfft-odd", "fft", lambda x: parts(jnp.fft.rfft(x)), lambda: (randn(17, 3, 7),)),
    Case("rfft-length-1", "fft", lambda x: parts(jnp.fft.rfft(x)), lambda: (randn(18, 4, 1),)),
    Case("rfft-n-pads", "fft", lambda x: parts(jnp.fft.rfft(x, n=10)), lambda: (randn(19, 7),)),
    Case("rfft-n-crops", "fft", lambda x: parts(jnp.fft.rfft(x, n=5)), lambda: (randn(20, 2, 8),)),
    Case("rfft-axis0-ortho", "fft", lambda x: parts(jnp.fft.rfft(x, axis=0, norm="ortho")),
         lambda: (randn(21, 6, 3),)),
    Case("rfft2", "fft", lambda x: parts(jnp.fft.rfft2(x)), lambda: (randn(22, 2, 4, 6),)),
    Case("rfftn-3d-odd", "fft", lambda x: parts(jnp.fft.rfftn(x)), lambda: (randn(23, 3, 4, 5),)),
    Case("rfft-power-spectrum", "fft", lambda x: jnp.abs(jnp.fft.rfft(x)) ** 2,
         lambda: (randn(24, 2, 9),)),
    # complex-to-real
    Case("irfft-even", "fft", of_complex(jnp.fft.irfft), lambda: half_spectrum(25, 3, 5), (0, 1)),
    Case("irfft-odd", "fft", of_complex(lambda z: jnp.fft.irfft(z, n=7)),
         lambda: half_spectrum(27, 3, 4), (0, 1)),
    Case("irfft-n-pads", "fft", of_complex(lambda z: jnp.fft.irfft(z, n=12)),
         lambda: half_spectrum(29, 4), (0, 1)),
    Case("irfft-n-crops", "fft", of_complex(lambda z: jnp.fft.irfft(z, n=4)),
         lambda: half_spectrum(31, 2, 6), (0, 1)),
    Case("irfft2", "fft", of_complex(jnp.fft.irfft2), lambda: half_spectrum(33, 2, 4, 3), (0, 1)),
    Case("irfftn-3d-odd", "fft", of_complex(lambda z: jnp.fft.irfftn(z, s=(2, 3, 5))),
         lambda: half_spectrum(35, 2, 3, 3), (0, 1)),
    Case("irfft-of-rfft", "fft", lambda x: jnp.fft.irfft(jnp.fft.rfft(x) * jnp.arange(5.0), n=9),
         lambda: (randn(37, 2, 9),)),
    Case("hfft", "fft", of_complex(jnp.fft.hfft), lambda: half_spectrum(38, 5), (0, 1)),
    Case("ihfft", "fft", lambda x: parts(jnp.fft.ihfft(x)), lambda: (randn(40, 6),)),
]
IDS = [c.id for c in CASES]
BY_ID = {c.id: c for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rule_matches_jax(case):
    check(case, eager=False, jit=True)


EAGER = ["fft-complex", "fft-n-crops-axis0", "ifft-ortho", "rfft-even", "rfft-odd",
         "rfft-length-1", "rfftn-3d-odd", "irfft-even", "irfft-odd", "irfftn-3d-odd"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", EAGER)
def test_rule_matches_jax_eagerly(name, dtype):
    with jax.enable_x64(dtype == np.float64):
        check(BY_ID[name], dtype, eager=True, jit=False)


FLOAT64 = ["fft-complex", "fft-n-pads", "ifft-complex", "fft2", "fftn-3d", "ifftn-axes",
           "rfft-even", "rfft-odd", "rfft-n-crops", "rfft2", "rfftn-3d-odd", "irfft-even",
           "irfft-odd", "irfft-n-pads", "irfft2", "irfftn-3d-odd", "hfft"]


@pytest.mark.parametrize("name", FLOAT64)
def test_rule_matches_jax_in_float64(name):
    with jax.enable_x64(True):
        case = BY_ID[name]
        assert all(a.dtype == np.float64 for a in case.args(np.float64))
        check(case, np.float64, eager=False, jit=True)


# ---- complex primals: jax.vjp's conjugation convention ----------------------------------------
LAX_FFTS = [  # (fft_type, fft_lengths, input shape)
    ("FFT", (6,), (2, 6)),
    ("FFT", (3, 4), (2, 3, 4)),
    ("FFT", (2, 3, 5), (2, 3, 5)),
    ("IFFT", (5,), (3, 5)),
    ("IFFT", (4, 3), (4, 3)),
    ("RFFT", (8,), (3, 8)),
    ("RFFT", (7,), (3, 7)),
    ("RFFT", (3, 6), (2, 3, 6)),
    ("RFFT", (2, 3, 5), (2, 3, 5)),
    ("IRFFT", (8,), (3, 5)),
    ("IRFFT", (7,), (3, 4)),
    ("IRFFT", (3, 6), (2, 3, 4)),
    ("IRFFT", (2, 4, 5), (2, 4, 3)),
]


def lax_fft_input(fft_type: str, shape, dtype):
    """A random input of the transform's kind: real for RFFT, complex for the others."""
    re = np.random.default_rng(sum(shape)).standard_normal(shape)
    if fft_type == "RFFT":
        return jnp.asarray(re, dtype)
    im = np.random.default_rng(len(shape)).standard_normal(shape)
    complex_dtype = jnp.complex64 if dtype == np.float32 else jnp.complex128
    return jnp.asarray(re + 1j * im, complex_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["c64", "c128"])
@pytest.mark.parametrize("fft_type, lengths, shape", LAX_FFTS,
                         ids=[f"{t}-{n}" for t, n, _ in LAX_FFTS])
def test_vjp_of_complex_primals(fft_type, lengths, shape, dtype):
    """fg.vjp equals jax.vjp for every fft_type, 1-D to 3-D, complex64 and complex128, with
    random complex cotangents (imaginary parts of the DC and Nyquist bins included)."""
    with jax.enable_x64(dtype == np.float64):
        x = lax_fft_input(fft_type, shape, dtype)

        def f(x):
            return lax.fft(x, fft_type, lengths)

        assert_uses("fft", f, x)
        assert_vjp_matches(f, x)
        assert_vjp_matches(jax.jit(f), x)


def test_irfft_ignores_imaginary_dc_and_nyquist():
    """IRFFT reads only the real parts of the DC and (even n) Nyquist bins: their imaginary parts
    get a zero cotangent, as in jax.vjp; every other bin's counts twice."""
    with jax.enable_x64(True):
        z = lax_fft_input("IRFFT", (5,), np.float64)
        ct = jnp.asarray(np.random.default_rng(0).standard_normal(8))
        (got,) = fg.vjp(lambda z: jnp.fft.irfft(z, n=8), z)[1](ct)
        assert float(jnp.imag(got[0])) == 0.0 and float(jnp.imag(got[-1])) == 0.0
        assert_trees_close(got, jax.vjp(lambda z: jnp.fft.irfft(z, n=8), z)[1](ct)[0])


# ---- vmap and second order ---------------------------------------------------------------------
def spectral_loss(x):
    """A nonlinear function of every kind of transform of x: its Hessian is not trivial."""
    spectrum = jnp.fft.rfft(jnp.sin(x))
    smooth = jnp.fft.irfft(spectrum * jnp.exp(-0.3 * jnp.arange(spectrum.shape[-1])), n=x.shape[-1])
    full = jnp.fft.ifft(jnp.fft.fft(x * x) * (1.0 + 0.5j))
    power = jnp.sum(jnp.abs(spectrum) ** 2 * 0.1)
    return power + jnp.sum(smooth * x) + jnp.sum(jnp.real(full) ** 3)


def test_vmap_of_grad():
    xs = randn(50, 4, 7)
    got = jax.jit(jax.vmap(fg.grad(spectral_loss)))(xs)
    assert_trees_close(got, jax.jit(jax.vmap(jax.grad(spectral_loss)))(xs))


@pytest.mark.parametrize("n", [6, 7], ids=["even", "odd"])
def test_second_order(n):
    with jax.enable_x64(True):
        x = randn(51, n, dtype=np.float64)
        want = jax.jit(jax.hessian(spectral_loss))(x)
        assert_trees_close(jax.jit(fg.hessian(spectral_loss))(x), want)
        grad_norm = lambda x: jnp.sum(fg.grad(spectral_loss)(x) ** 2)  # noqa: E731
        want = jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(spectral_loss)(x) ** 2)))(x)
        assert_trees_close(jax.jit(fg.grad(grad_norm))(x), want)


def test_second_order_of_2d_real_transforms():
    with jax.enable_x64(True):
        x = randn(52, 3, 4, dtype=np.float64)

        def f(x):
            return jnp.sum(jnp.abs(jnp.fft.irfft2(jnp.fft.rfft2(x) ** 2, s=(3, 4))) ** 1.5)

        assert_trees_close(jax.jit(fg.hessian(f))(x), jax.jit(jax.hessian(f))(x))


def test_float32_batch_of_signals_under_jit():
    x = randn(53, 5, 3, 16)
    loss = weighted_sum(lambda x: jnp.abs(jnp.fft.rfftn(x, axes=(1, 2))))
    assert_grads_match(loss, x)


def test_closure_backward_pass_uses_only_supported_primitives():
    """Every primitive the fft rule emits has a rule: fg.grad of fg.grad works."""
    supported = fg.supported_primitives()
    for case in CASES:
        grad_jaxpr = jax.make_jaxpr(fg.grad(weighted_sum(case.f), case.argnums))(*case.args())
        missing = primitives_of(grad_jaxpr.jaxpr) - supported
        assert not missing, f"{case.id}: no rule for {sorted(missing)}"

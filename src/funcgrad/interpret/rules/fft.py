"""VJP rule for ``fft``: the four discrete Fourier transforms (FFT, IFFT, RFFT, IRFFT), 1-D to 3-D.

Every transform is linear, so its VJP is the transpose of a linear map, in JAX's convention for
complex cotangents: a complex-linear map ``z -> A z`` sends ``ct`` to ``A^T ct`` (the transpose,
not the conjugate transpose), and a map into a real space keeps the real part. Over the last
``len(fft_lengths)`` axes, with ``F`` the DFT matrix (symmetric) and ``N = prod(fft_lengths)``:

- FFT, ``y = F x``: ``ct_x = F ct``, an FFT again; IFFT, ``y = F^-1 x``: ``ct_x = F^-1 ct``.
- RFFT keeps the first ``m = n // 2 + 1`` bins of the last axis of the FFT of a real ``x``,
  ``y = P F x``: ``ct_x = Re(F P^T ct)``, the FFT of ``ct`` zero-padded back to ``n`` bins.
- IRFFT is the real signal whose half spectrum is ``z``: ``y = Re(F^-1 P^T (w z))``, where ``w``
  counts each bin as often as the full spectrum holds it (1 for DC and, for even ``n``, Nyquist;
  2 for the others, which stand for their mirror image too). So ``ct_z = w P F^-1 ct``, which for
  real ``ct`` is ``(w / N) conj(RFFT(ct))``.

The imaginary parts of the DC and Nyquist bins are ignored by IRFFT (they are zero in any
Hermitian spectrum), and the formulas above give them no cotangent from IRFFT, nor from the
RFFT's DC/Nyquist bins beyond their real parts, exactly as ``jax.vjp`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jax import lax
from jax.extend.core.primitives import fft_p

from funcgrad.interpret.registry import vjp_rule
from funcgrad.interpret.rules._common import dtype_of

_FftType = lax.FftType


def _fft(x, fft_type: _FftType, fft_lengths: Sequence[int]):
    """One ``fft`` equation (``lax.fft`` would wrap it in a ``jit``)."""
    return fft_p.bind(x, fft_type=fft_type, fft_lengths=tuple(fft_lengths))


def _bin_weights(n: int) -> np.ndarray:
    """How many bins of the full length-``n`` spectrum each of the ``n // 2 + 1`` kept bins is."""
    weights = np.full(n // 2 + 1, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return weights


def _along_last_axis(v: np.ndarray, like):
    """The vector ``v`` broadcast along the last axis of ``like``."""
    return lax.broadcast_in_dim(v, like.shape, (like.ndim - 1,))


@vjp_rule(fft_p, reads=())
def fft_vjp(ct, x, *, fft_type, fft_lengths):
    """Linear: FFT/IFFT transpose to themselves, RFFT to Re(FFT(pad(ct))), IRFFT to w/N conj(RFFT).

    d FFT(x) = F dx (F symmetric); d RFFT(x) = P F dx; d IRFFT(z) = Re(F^-1 P^T (w dz)).
    """
    if fft_type in (_FftType.FFT, _FftType.IFFT):
        return (_fft(ct, fft_type, fft_lengths),)
    n = fft_lengths[-1]
    if fft_type == _FftType.RFFT:
        padding = [(0, 0, 0)] * (ct.ndim - 1) + [(0, n - ct.shape[-1], 0)]
        full = lax.pad(ct, np.zeros((), ct.dtype), padding)
        return (lax.real(_fft(full, _FftType.FFT, fft_lengths)),)
    # IRFFT: ct is real, x is the complex half spectrum
    half = _fft(ct, _FftType.RFFT, fft_lengths)
    scale = (_bin_weights(n) / np.prod(fft_lengths)).astype(dtype_of(half))
    return (lax.mul(lax.conj(half), _along_last_axis(scale, half)),)

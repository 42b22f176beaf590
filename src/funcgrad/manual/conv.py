"""A conv2d layer and 2×2 max pooling, differentiated by hand (NHWC images, HWIO kernels).

Convolution (a cross-correlation, as in every deep-learning library), with xp the input
zero-padded by (pt, pb) rows and (pl, pr) columns and s the stride::

    y[n, i, j, o] = Σ_{di, dj, c} xp[n, s·i + di, s·j + dj, c] · W[di, dj, c, o] + b[o]

Each kernel offset (di, dj) is one matrix product over channels, so the forward pass is a loop
over the kh·kw offsets, and so is the backward pass::

    db[o]             = Σ_{n, i, j} dy[n, i, j, o]
    dW[di, dj, c, o]  = Σ_{n, i, j} xp[n, s·i + di, s·j + dj, c] · dy[n, i, j, o]
    dxp[n, s·i + di, s·j + dj, c] += Σ_o dy[n, i, j, o] · W[di, dj, c, o]
    dx                = dxp without its padding

2×2 max pooling, stride 2 (rows and columns beyond an even size are dropped, as with
"VALID" padding)::

    y[n, i, j, c] = max_{a, b ∈ {0, 1}} x[n, 2i + a, 2j + b, c]
    dx[n, 2i + a, 2j + b, c] = dy[n, i, j, c] · [x is the window's max] / (number of maxima)

The maximum gets the whole gradient; tied maxima share it equally, as ``jax.grad`` of
``layers.max_pool`` (a reshape and ``reduce_max``) does. (``lax.reduce_window``'s gradient
gives it all to the first maximum instead; after a ReLU the only ties are all-zero windows,
whose gradient the ReLU zeroes either way.)

Losses to check them on: :func:`conv2d_loss` (input, weight and bias gradients, as
``jax.grad(conv2d_loss, argnums=(0, 1))``) and :func:`max_pool_loss` (input gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from funcgrad import losses

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_loss",
    "conv2d_loss_grad",
    "max_pool_2x2",
    "max_pool_2x2_backward",
    "max_pool_loss",
    "max_pool_loss_grad",
]

Params = dict[str, jax.Array]


def _geometry(x: jax.Array, W: jax.Array, stride: int, padding: str):
    """Padding pairs and output size for ``x`` (N, H, W, C) and kernel ``W`` (kh, kw, C, O)."""
    kh, kw = W.shape[:2]
    (pt, pb), (pl, pr) = lax.padtype_to_pads(x.shape[1:3], (kh, kw), (stride, stride), padding)
    ho = (x.shape[1] + pt + pb - kh) // stride + 1
    wo = (x.shape[2] + pl + pr - kw) // stride + 1
    return ((pt, pb), (pl, pr)), ho, wo


def _window(di: int, dj: int, ho: int, wo: int, s: int) -> tuple:
    """The rows s·i + di and columns s·j + dj of the padded input that kernel offset (di, dj)
    meets, for every output position (i, j)."""
    return (slice(None), slice(di, di + s * (ho - 1) + 1, s), slice(dj, dj + s * (wo - 1) + 1, s))


def conv2d(params: Params, x: jax.Array, *, stride: int = 1, padding: str = "SAME") -> jax.Array:
    """y = conv(x, W) + b, one matrix product per kernel offset; equals ``layers.conv2d``."""
    W, b = params["W"], params["b"]
    pads, ho, wo = _geometry(x, W, stride, padding)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    y = jnp.zeros((x.shape[0], ho, wo, W.shape[3]), x.dtype)
    for di in range(W.shape[0]):
        for dj in range(W.shape[1]):
            patch = xp[_window(di, dj, ho, wo, stride)]  # (n, ho, wo, c)
            y = y + jnp.einsum("nhwc,co->nhwo", patch, W[di, dj])
    return y + b


def conv2d_backward(
    params: Params, x: jax.Array, dy: jax.Array, *, stride: int = 1, padding: str = "SAME"
) -> tuple[Params, jax.Array]:
    """``({"W": dW, "b": db}, dx)`` for y = conv2d(params, x), given dy = ∂L/∂y."""
    W = params["W"]
    pads, ho, wo = _geometry(x, W, stride, padding)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    dxp = jnp.zeros_like(xp)
    dW_rows = []
    for di in range(W.shape[0]):
        dW_row = []
        for dj in range(W.shape[1]):
            where = _window(di, dj, ho, wo, stride)
            # dW[di, dj] = Σ_{n,i,j} patchᵀ dy: the input each weight met, times the gradient.
            dW_row.append(jnp.einsum("nhwc,nhwo->co", xp[where], dy))
            # Each input pixel collects dy through every weight it met: dxp += dy Wᵀ.
            dxp = dxp.at[where].add(jnp.einsum("nhwo,co->nhwc", dy, W[di, dj]))
        dW_rows.append(jnp.stack(dW_row))
    (pt, _), (pl, _) = pads
    dx = dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]
    return {"W": jnp.stack(dW_rows), "b": jnp.sum(dy, axis=(0, 1, 2))}, dx


def _windows_2x2(x: jax.Array) -> jax.Array:
    """(n, H, W, c) -> (n, H//2, W//2, 4, c): each 2×2 window's elements in row-major order."""
    n, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    x = x[:, : 2 * ho, : 2 * wo].reshape(n, ho, 2, wo, 2, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, ho, wo, 4, c)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """y[n, i, j, c] = max of the 2×2 window at (2i, 2j): equals ``layers.max_pool(x, 2)``."""
    return jnp.max(_windows_2x2(x), axis=3)


def max_pool_2x2_backward(x: jax.Array, dy: jax.Array) -> jax.Array:
    """dx: each window's ``dy`` goes to its maximum (shared equally on a tie), 0 elsewhere."""
    n, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    windows = _windows_2x2(x)  # (n, ho, wo, 4, c)
    is_max = (windows == jnp.max(windows, axis=3, keepdims=True)).astype(dy.dtype)
    routed = is_max / jnp.sum(is_max, axis=3, keepdims=True) * dy[:, :, :, None, :]
    dx = routed.reshape(n, ho, wo, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    dx = dx.reshape(n, 2 * ho, 2 * wo, c)
    return jnp.pad(dx, ((0, 0), (0, h - 2 * ho), (0, w - 2 * wo), (0, 0)))  # dropped rows: 0


def conv2d_loss(params: Params, x: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error of one conv layer (stride 1, SAME): mean((conv2d(x) - target)²)."""
    return losses.mse(conv2d(params, x), target)


def conv2d_loss_grad(
    params: Params, x: jax.Array, target: jax.Array
) -> tuple[Params, jax.Array]:
    """``(dparams, dx)``, as ``jax.grad(conv2d_loss, argnums=(0, 1))(params, x, target)``."""
    y = conv2d(params, x)
    dy = 2 * (y - target) / y.size  # d mean(e²) / dy
    return conv2d_backward(params, x, dy)


def max_pool_loss(x: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error of 2×2 max pooling: mean((max_pool_2x2(x) - target)²)."""
    return losses.mse(max_pool_2x2(x), target)


def max_pool_loss_grad(x: jax.Array, target: jax.Array) -> jax.Array:
    """dx, as ``jax.grad(max_pool_loss)(x, target)``."""
    y = max_pool_2x2(x)
    return max_pool_2x2_backward(x, 2 * (y - target) / y.size)

"""Reusable building blocks: each layer is an ``*_init`` returning a dict of arrays and a pure
function ``layer(params, x, ...)``.

Layers take batched inputs with any number of leading batch axes where that is natural (dense,
layer norm, attention); the convolution and pooling layers take NHWC images. The models in this
package check their input once with :func:`check_input` and then call these functions.

Everything here is written with ``jax.numpy`` / ``jax.lax`` / ``jax.nn`` only, so it is jit-, vmap-
and grad-able, and it differentiates with funcgrad's interpreter (dot_general,
conv_general_dilated, reduce_window, gather, custom_jvp, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import DTypeLike

from funcgrad.models import initializers
from funcgrad.models.initializers import Initializer

Params = dict[str, jax.Array]
Dim = int | str | None

# ----------------------------------------------------------------------------------------------
# Input validation (runs at trace time on static shapes: free under jit)


def _format_shape(dims: Sequence[Dim]) -> str:
    names = ["?" if d is None else str(d) for d in dims]
    return "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"


def _dims_match(shape: Sequence[int], expected: Sequence[Dim]) -> bool:
    return len(shape) == len(expected) and all(
        not isinstance(e, int) or s == e for s, e in zip(shape, expected)
    )


_DTYPE_KINDS = {
    "float": (jnp.floating, "a floating dtype", "Cast it with x.astype(jnp.float32)."),
    "int": (jnp.integer, "an integer dtype", "Token ids must be integers: x.astype(jnp.int32)."),
}


def check_input(
    x: jax.Array,
    expected: Sequence[Dim],
    *,
    where: str,
    dtype_kind: str = "float",
    allow_unbatched: bool = True,
    hint: str | None = None,
) -> jax.Array:
    """Return ``x`` as an array if it has shape ``(batch, *expected)`` (or ``expected``) and the
    right dtype kind; otherwise raise a ``ValueError`` naming the layer and both shapes.

    ``expected`` lists the per-example dimensions: an ``int`` must match exactly, a ``str`` (a
    name such as ``"seq"``) or ``None`` matches any size. A single unbatched example of shape
    ``expected`` is accepted when ``allow_unbatched`` (so ``jax.vmap(apply)`` over examples works).
    ``dtype_kind`` is ``"float"`` or ``"int"``. The check reads static shapes only, so it runs
    once at trace time and costs nothing under ``jax.jit``.

    Example message: ``mlp layers[0] (dense): expected input of shape (batch, 784) or (784,) with
    a floating dtype, got shape (128, 28, 28) float32. Flatten to (batch, 784) first: ...``
    """
    if dtype_kind not in _DTYPE_KINDS:
        raise ValueError(f"dtype_kind must be one of {sorted(_DTYPE_KINDS)}, got {dtype_kind!r}")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    expected = tuple(expected)
    kind, kind_text, kind_fix = _DTYPE_KINDS[dtype_kind]
    shape = tuple(x.shape)
    shape_ok = _dims_match(shape[1:], expected) or (
        allow_unbatched and _dims_match(shape, expected)
    )
    dtype_ok = jnp.issubdtype(x.dtype, kind)
    if shape_ok and dtype_ok:
        return x

    wanted = _format_shape(("batch", *expected))
    if allow_unbatched:
        wanted += f" or {_format_shape(expected)}"
    message = (
        f"{where}: expected input of shape {wanted} with {kind_text}, "
        f"got shape {_format_shape(shape)} {jnp.dtype(x.dtype).name}."
    )
    if hint is None:
        hint = kind_fix if shape_ok else _shape_hint(shape, expected)
    if hint:
        message += " " + hint
    raise ValueError(message)


def _shape_hint(shape: tuple[int, ...], expected: tuple[Dim, ...]) -> str:
    fixed = [e for e in expected if isinstance(e, int)]
    if len(fixed) == len(expected) and len(shape) >= 2 and math.prod(shape[1:]) == math.prod(fixed):
        target = _format_shape(("batch", *expected))
        verb = "Flatten" if len(shape) > len(expected) + 1 else "Reshape"
        return f"{verb} to {target} first: x.reshape(x.shape[0], {', '.join(map(str, fixed))})."
    return ""


# ----------------------------------------------------------------------------------------------
# Dense


def dense_init(
    key: jax.Array,
    fan_in: int,
    fan_out: int,
    *,
    w_init: str | Initializer = "glorot_uniform",
    b_init: str | Initializer = "zeros",
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Return ``{"W": (fan_in, fan_out), "b": (fan_out,)}`` for :func:`dense`."""
    w_key, b_key = jax.random.split(key)
    return {
        "W": initializers.get(w_init)(w_key, (fan_in, fan_out), dtype),
        "b": initializers.get(b_init)(b_key, (fan_out,), dtype),
    }


def dense(params: Params, x: jax.Array) -> jax.Array:
    """Affine map over the last axis: y = x @ W + b, for any leading (batch) axes."""
    return x @ params["W"] + params["b"]


# ----------------------------------------------------------------------------------------------
# Convolution and pooling (NHWC images, HWIO kernels)

_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


def _padding(padding: str) -> str:
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    return padding.upper()


def conv2d_init(
    key: jax.Array,
    kernel_size: int | Sequence[int],
    c_in: int,
    c_out: int,
    *,
    w_init: str | Initializer = "glorot_uniform",
    b_init: str | Initializer = "zeros",
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Return ``{"W": (kh, kw, c_in, c_out), "b": (c_out,)}`` for :func:`conv2d` (HWIO kernel)."""
    kh, kw = _pair(kernel_size, "kernel_size")
    w_key, b_key = jax.random.split(key)
    return {
        "W": initializers.get(w_init)(w_key, (kh, kw, c_in, c_out), dtype),
        "b": initializers.get(b_init)(b_key, (c_out,), dtype),
    }


CONV_IMPLS = ("im2col", "im2col_vjp", "winograd", "xla")
POOL_IMPLS = ("reshape", "argmax_vjp", "xla")


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def conv2d(
    params: Params,
    x: jax.Array,
    *,
    stride: int | Sequence[int] = 1,
    padding: str = "SAME",
    impl: str = "im2col",
    bias: bool = True,
) -> jax.Array:
    """2-D cross-correlation of NHWC images with an HWIO kernel, plus bias.

    y[n, i, j, o] = Σ_{di, dj, c} x[n, s·i + di, s·j + dj, c] · W[di, dj, c, o] + b[o]
    ``padding="SAME"`` keeps ceil(H / stride) rows; ``"VALID"`` uses only full windows.
    ``bias=False`` leaves ``+ b`` out (for a caller that adds it later, after pooling).

    ``impl`` chooses how it is computed; all give the same numbers up to float rounding:

    - ``"im2col"`` (default): the kh·kw shifted (strided) slices of the padded image are
      concatenated on the channel axis into patches ``(n, H', W', kh·kw·c_in)`` and multiplied
      by W reshaped to ``(kh·kw·c_in, c_out)``: one ``dot_general``. Its gradient is derived
      primitive by primitive (matmuls, slices and pads: every step visible to ``fg.grad`` and
      ``fg.trace``), and XLA's CPU backend trains it far faster than ``"xla"``.
    - ``"im2col_vjp"``: the same function with a hand-written backward pass
      (``jax.custom_vjp``, see :func:`_im2col_conv_bwd`): differentiated, the forward pass is
      patches @ W and keeps the patches; the input gradient is one convolution of dY with the
      flipped kernel (a forward convolution, which XLA:CPU runs fast) instead of patch
      gradients summed back into the image; the kernel gradient is patchesᵀ·dY in two
      half-batch matmuls. Not differentiated (an evaluation), it is XLA's convolution. Stride 1
      only (other strides use ``"im2col"``). Being a ``custom_vjp`` it has no forward-mode
      derivative (``jax.jvp``, ``jax.jacfwd`` and ``jax.hessian`` raise); reverse mode, ``grad``
      of ``grad``, ``jit`` and ``vmap`` work, and ``fg.grad`` calls the same backward function.
    - ``"winograd"``: 3×3 kernels at stride 1 with at least 8 input channels use Winograd's
      minimal filtering F(2×2, 3×3) (:func:`_winograd_conv`): 2.25 times fewer multiplications
      than the direct convolution, in 16 batched matmuls between linear transforms of the
      input tiles, the kernel and the output; its gradient is derived primitive by primitive.
      Other layers (a grayscale input's first convolution, other kernels or strides) compute
      as ``"im2col_vjp"``.
    - ``"xla"``: one ``lax.conv_general_dilated``. XLA's CPU backend runs the convolutions of
      its gradient (above all the weight gradient) slowly; on GPU/TPU it is the natural choice.

    ``scripts/bench_conv.py`` times the formulations and profiles the CNN's training step.
    """
    impl = _choice(impl, CONV_IMPLS, "conv2d impl")
    strides = _pair(stride, "stride")
    padding = _padding(padding)
    if impl == "xla":
        y = lax.conv_general_dilated(
            x,
            params["W"],
            window_strides=strides,
            padding=padding,
            dimension_numbers=_CONV_DIMS,
        )
    else:
        _check_conv_input(x, params["W"])
        if impl == "winograd" and _winograd_applies(params["W"], strides):
            y = _winograd_conv(x, params["W"], padding)
        elif impl in ("im2col_vjp", "winograd") and strides == (1, 1):
            y = _im2col_conv(x, params["W"], padding)
        else:
            y = _conv2d_im2col(x, params["W"], strides, padding)
    return y + params["b"] if bias else y


def _check_conv_input(x: jax.Array, w: jax.Array) -> None:
    if x.ndim != 4 or x.shape[-1] != w.shape[2]:
        raise ValueError(
            f"conv2d: expected NHWC images with {w.shape[2]} channels, got shape {tuple(x.shape)}"
        )


def _patches(x: jax.Array, kh: int, kw: int, strides: tuple[int, int], padding: str) -> jax.Array:
    """im2col: ``(n, H', W', kh·kw·c)``, the kh·kw shifted (strided) slices of the padded image
    concatenated on the channel axis in (di, dj, c) order, the row order of
    ``W.reshape(kh·kw·c, c_out)``."""
    (top, bottom), (left, right) = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding)
    if top or bottom or left or right:
        zero = jnp.zeros((), x.dtype)
        x = lax.pad(x, zero, [(0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)])
    n, height, width, c_in = x.shape
    sh, sw = strides
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    columns = [
        lax.slice(
            x,
            (0, di, dj, 0),
            (n, di + (out_h - 1) * sh + 1, dj + (out_w - 1) * sw + 1, c_in),
            (1, sh, sw, 1),
        )
        for di in range(kh)
        for dj in range(kw)
    ]
    return columns[0] if len(columns) == 1 else lax.concatenate(columns, 3)


def _conv2d_im2col(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
    """conv_general_dilated(NHWC, HWIO) as patches @ W: static slices, concatenate, one dot."""
    return _patches(x, *w.shape[:2], strides, padding) @ _kernel_matrix(w)


def _kernel_matrix(w: jax.Array) -> jax.Array:
    """HWIO kernel as the ``(kh·kw·c_in, c_out)`` matrix the patches multiply."""
    kh, kw, c_in, c_out = w.shape
    return w.reshape(kh * kw * c_in, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _im2col_conv(x: jax.Array, w: jax.Array, padding: str) -> jax.Array:
    """Stride-1 convolution with the hand-written backward pass of ``"im2col_vjp"``.

    Not differentiated (an evaluation), it is XLA's own convolution, which XLA:CPU runs fast
    forward (an im2col product whose patches feed only the matmul is fused into it, slowly);
    differentiated, the forward pass is patches @ W, keeping the patches for the kernel
    gradient."""
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_CONV_DIMS)


def _im2col_conv_fwd(
    x: jax.Array, w: jax.Array, padding: str
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    patches = _patches(x, *w.shape[:2], (1, 1), padding)
    return patches @ _kernel_matrix(w), (patches, w)


def _im2col_conv_bwd(
    padding: str, residuals: tuple[jax.Array, jax.Array], dy: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(dX, dW) of the stride-1 im2col convolution: :func:`_input_grad_as_conv` and
    :func:`_kernel_grad_in_halves`."""
    patches, w = residuals
    dx = _input_grad_as_conv(dy, w, padding)
    return dx.astype(patches.dtype), _kernel_grad_in_halves(patches, dy, w.shape).astype(w.dtype)


def _input_grad_as_conv(dy: jax.Array, w: jax.Array, padding: str) -> jax.Array:
    """dX = conv(dY padded (kh-1-top, kh-1-bottom), W flipped in space with in/out swapped).

    With stride 1, dX[p] = Σ_{i + d = p + top} dY[i] W[d] is a correlation of the padded dY with
    the reversed kernel: a forward convolution, which XLA:CPU runs with its fast convolution
    kernels. The pads come from dY's shape: with stride 1, "SAME" gives the same pads for input
    and output sizes, "VALID" none."""
    kh, kw = w.shape[:2]
    (top, bottom), (left, right) = lax.padtype_to_pads(dy.shape[1:3], (kh, kw), (1, 1), padding)
    return lax.conv_general_dilated(
        dy,
        jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2),
        window_strides=(1, 1),
        padding=[(kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)],
        dimension_numbers=_CONV_DIMS,
    )


def _kernel_grad_in_halves(
    patches: jax.Array, dy: jax.Array, w_shape: tuple[int, ...]
) -> jax.Array:
    """dW = patchesᵀ·dY, contracted over every (example, row, column), as two half-batch
    matmuls (one batched dot_general, then a sum): it runs better than one long, thin matmul."""
    chunks = 2 if patches.shape[0] % 2 == 0 else 1
    rows = patches.reshape(chunks, -1, patches.shape[-1])
    dw = lax.dot_general(rows, dy.reshape(chunks, -1, dy.shape[-1]), (((1,), (1,)), ((0,), (0,))))
    return jnp.sum(dw, axis=0).reshape(w_shape)


_im2col_conv.defvjp(_im2col_conv_fwd, _im2col_conv_bwd)


# Winograd's F(2x2, 3x3) (Lavin & Gray 2016): a 2x2 output tile y of a 4x4 input tile d and a 3x3
# kernel g is y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A, a cross-correlation as conv2d computes.
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_WINOGRAD_GG = np.kron(_WINOGRAD_G, _WINOGRAD_G)  # (16, 9): U = G g Gᵀ for every (c_in, c_out)
_WINOGRAD_AA = np.kron(*[np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)] * 2)  # (4, 16)
# Below this many input channels the 16 batched matmuls are too thin to pay for the transforms.
_WINOGRAD_MIN_CHANNELS = 8


def _winograd_applies(w: jax.Array, strides: tuple[int, int]) -> bool:
    return w.shape[:2] == (3, 3) and strides == (1, 1) and w.shape[2] >= _WINOGRAD_MIN_CHANNELS


def _winograd_input(r0: jax.Array, r1: jax.Array, r2: jax.Array, r3: jax.Array) -> list:
    """Bᵀ d along one axis, Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    return [r0 - r2, r1 + r2, r2 - r1, r1 - r3]


def _winograd_conv(x: jax.Array, w: jax.Array, padding: str) -> jax.Array:
    """Stride-1 3x3 cross-correlation of NHWC images, F(2x2, 3x3) Winograd.

    The padded image is cut into 4x4 tiles overlapping by 2 (one per 2x2 output tile; the
    image is padded with zeros at the bottom and right to whole tiles and the output cropped),
    transformed to V = Bᵀ d B (16 arrays of (tiles, c_in)); the kernel to U = G g Gᵀ (16
    matrices (c_in, c_out)); M = V U is one batched matmul over the 16 positions, and
    Y = Aᵀ M A (Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]; a matmul by Aᵀ ⊗ Aᵀ over the positions)
    gives each tile's 2x2 outputs. Every step is linear in x and in W, so the
    gradient is derived by the rules of its primitives (slices, adds, pads, the matmuls)."""
    n, height, width, c_in = x.shape
    c_out = w.shape[-1]
    (top, bottom), (left, right) = lax.padtype_to_pads((height, width), (3, 3), (1, 1), padding)
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    th, tw = -(-out_h // 2), -(-out_w // 2)
    x = jnp.pad(x, ((0, 0), (top, 2 * th + 2 - height - top), (left, 2 * tw + 2 - width - left),
                    (0, 0)))  # fmt: skip
    rows = x.reshape(n, th + 1, 2, 2 * tw + 2, c_in)  # padded row 2s + q at [:, s, q]
    v = []
    for e in _winograd_input(rows[:, :th, 0], rows[:, :th, 1], rows[:, 1:, 0], rows[:, 1:, 1]):
        cols = e.reshape(n, th, tw + 1, 2, c_in)
        v += _winograd_input(cols[:, :, :tw, 0], cols[:, :, :tw, 1], cols[:, :, 1:, 0],
                             cols[:, :, 1:, 1])  # fmt: skip
    v = jnp.stack(v).reshape(16, n * th * tw, c_in)
    u = (jnp.asarray(_WINOGRAD_GG, w.dtype) @ w.reshape(9, c_in * c_out)).reshape(16, c_in, c_out)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # (16, tiles, c_out)
    y = jnp.asarray(_WINOGRAD_AA, m.dtype) @ m.reshape(16, -1)  # Aᵀ ⊗ Aᵀ: (4, tiles · c_out)
    y = y.reshape(2, 2, n, th, tw, c_out).transpose(2, 3, 0, 4, 1, 5)
    return y.reshape(n, 2 * th, 2 * tw, c_out)[:, :out_h, :out_w]


def _window(x: jax.Array, size: tuple[int, int]) -> tuple[int, ...]:
    # Pool over H and W of (..., H, W, C): size 1 on every other axis.
    return (1,) * (x.ndim - 3) + (*size, 1)


def max_pool(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    stride: int | Sequence[int] | None = None,
    padding: str = "VALID",
    impl: str = "reshape",
) -> jax.Array:
    """Max over each ``window`` of the H and W axes of ``(..., H, W, C)``; stride = window by
    default. y[i, j, c] = max_{di, dj} x[s·i + di, s·j + dj, c].

    ``impl`` chooses how it is computed when the windows tile the image (stride = window,
    ``"VALID"`` padding; the image is cropped to whole windows); the values are identical:

    - ``"reshape"`` (default): reshaped to ``(..., H/k, k, W/k, k, C)`` and reduced with
      ``max`` over the two window axes; its gradient, derived by the rules of its primitives,
      is elementwise and shares a window's cotangent equally among tied maxima.
    - ``"argmax_vjp"``: the same values, with a hand-written backward pass
      (``jax.custom_vjp``): the forward pass also records which element of each window is the
      first maximum (an int8 index) and the backward pass sends the cotangent there, reading
      neither the input nor the output again. No forward mode, as any ``custom_vjp``.
    - ``"xla"``: ``lax.reduce_window`` (also used for other geometries), whose ``jax.grad`` is
      XLA's select-and-scatter, a slow loop on CPU.

    The gradients differ only at ties inside a window: ``"reshape"`` shares the cotangent,
    ``"argmax_vjp"`` and ``reduce_window`` give it all to the first maximum (row-major order).
    After a relu the only ties are all-zero windows, whose gradient the relu zeroes anyway.
    """
    size = _pair(window, "window")
    strides = size if stride is None else _pair(stride, "stride")
    padding = _padding(padding)
    impl = _choice(impl, POOL_IMPLS, "max_pool impl")
    if impl != "xla" and strides == size and padding == "VALID":
        *lead, height, width, channels = x.shape
        out_h, out_w = height // size[0], width // size[1]
        x = x[..., : out_h * size[0], : out_w * size[1], :]
        x = x.reshape(*lead, out_h, size[0], out_w, size[1], channels)
        return _argmax_pool(x, size) if impl == "argmax_vjp" else jnp.max(x, axis=(-4, -2))
    return lax.reduce_window(x, -jnp.inf, lax.max, _window(x, size), _window(x, strides), padding)


def _window_elements(windows: jax.Array) -> list[jax.Array]:
    """The kh·kw elements of each window of ``(..., H', kh, W', kw, C)``, in row-major order."""
    kh, kw = windows.shape[-4], windows.shape[-2]
    return [windows[..., :, di, :, dj, :] for di in range(kh) for dj in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _argmax_pool(windows: jax.Array, size: tuple[int, int]) -> jax.Array:
    """max over the window axes of ``(..., H', kh, W', kw, C)``, with a hand-written VJP."""
    del size
    return jnp.max(windows, axis=(-4, -2))


def _argmax_pool_fwd(windows: jax.Array, size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """The max and the index (row-major, int8) of the first maximal element of each window."""
    del size
    elements = _window_elements(windows)
    best, index = elements[0], jnp.zeros(elements[0].shape, jnp.int8)
    for k, element in enumerate(elements[1:], start=1):
        better = (element > best) | (jnp.isnan(element) & ~jnp.isnan(best))
        best = jnp.where(better, element, best)
        index = jnp.where(better, jnp.int8(k), index)
    return best, index


def _argmax_pool_bwd(size: tuple[int, int], index: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
    """d max-pool: dX[window element k] = dY where k is the window's first maximum, else 0."""
    kh, kw = size
    k = np.arange(kh * kw, dtype=np.int8).reshape(kh, 1, kw, 1)
    hit = index[..., :, None, :, None, :] == k
    return (jnp.where(hit, dy[..., :, None, :, None, :], jnp.zeros((), dy.dtype)),)


_argmax_pool.defvjp(_argmax_pool_fwd, _argmax_pool_bwd)


def avg_pool(
    x: jax.Array,
    window: int | Sequence[int] = 2,
    stride: int | Sequence[int] | None = None,
    padding: str = "VALID",
) -> jax.Array:
    """Mean over each ``window`` of the H and W axes of ``(..., H, W, C)``; stride = window by
    default. With ``"SAME"`` padding the padded cells are not counted (as in Keras/TensorFlow).
    y[i, j, c] = Σ_{di, dj} x[s·i + di, s·j + dj, c] / (number of real cells in the window)."""
    size = _pair(window, "window")
    strides = size if stride is None else _pair(stride, "stride")
    padding = _padding(padding)
    sums = lax.reduce_window(x, 0.0, lax.add, _window(x, size), _window(x, strides), padding)
    counts = _window_counts(x.shape[-3:-1], size, strides, padding)
    return sums / counts[:, :, None].astype(sums.dtype)


def _window_counts(
    hw: tuple[int, int], size: tuple[int, int], strides: tuple[int, int], padding: str
) -> np.ndarray:
    # How many real (unpadded) cells each window covers: a static numpy constant.
    pads = lax.padtype_to_pads(hw, size, strides, padding)
    ones = np.pad(np.ones(hw, np.float32), pads)
    windows = np.lib.stride_tricks.sliding_window_view(ones, size)
    return windows[:: strides[0], :: strides[1]].sum(axis=(-2, -1))


def flatten(x: jax.Array) -> jax.Array:
    """Flatten every axis but the first (the batch): (batch, H, W, C) -> (batch, H·W·C)."""
    return x.reshape(x.shape[0], -1)


def image_patches(x: jax.Array, size: int | Sequence[int]) -> jax.Array:
    """Cut NHWC images into non-overlapping patches, row by row: ``(batch, H, W, C) -> (batch,
    (H/ph)·(W/pw), ph·pw·C)``, each patch flattened in (row, column, channel) order (the input
    of a patch transformer). H and W must be multiples of the patch size ``(ph, pw)``."""
    ph, pw = _pair(size, "size")
    *lead, height, width, channels = x.shape
    if height % ph or width % pw:
        raise ValueError(
            f"image_patches: image size {height}x{width} is not a multiple of the patch size "
            f"{ph}x{pw}"
        )
    x = x.reshape(*lead, height // ph, ph, width // pw, pw, channels)
    x = jnp.moveaxis(x, -4, -3)  # (..., H/ph, W/pw, ph, pw, C)
    return x.reshape(*lead, (height // ph) * (width // pw), ph * pw * channels)


# ----------------------------------------------------------------------------------------------
# Normalisation, dropout, embeddings


def layer_norm_init(dim: int, *, dtype: DTypeLike = jnp.float32) -> Params:
    """Return ``{"scale": ones (dim,), "bias": zeros (dim,)}`` for :func:`layer_norm`."""
    return {"scale": jnp.ones((dim,), dtype), "bias": jnp.zeros((dim,), dtype)}


def layer_norm(params: Params, x: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """Normalise the last axis to zero mean and unit variance, then scale and shift.

    y = (x - mean(x)) / sqrt(var(x) + eps) · scale + bias   (Ba et al. 2016)
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    return centered * lax.rsqrt(var + eps) * params["scale"] + params["bias"]


def dropout(
    x: jax.Array,
    rate: float,
    *,
    key: jax.Array | None,
    train: bool,
    where: str = "dropout",
) -> jax.Array:
    """Inverted dropout: zero each element with probability ``rate`` and scale the rest by
    1 / (1 - rate) when ``train``; the identity when not ``train`` or ``rate == 0``.

    ``rate`` and ``train`` are Python values (static under jit). ``train=True`` with a positive
    rate needs an explicit ``key``; without one this raises ``ValueError``.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{where}: dropout rate must be in [0, 1), got {rate!r}")
    if not train or rate == 0.0:
        return x
    if key is None:
        raise ValueError(
            f"{where}: dropout with train=True needs a random key: pass key=jax.random.key(seed) "
            "(a fresh one each step), or train=False to evaluate without dropout."
        )
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


EMBEDDING_INIT = initializers.normal(0.02)


def embedding_init(
    key: jax.Array,
    num_embeddings: int,
    dim: int,
    *,
    init: str | Initializer = EMBEDDING_INIT,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Return an embedding table of shape ``(num_embeddings, dim)``, N(0, 0.02²) by default."""
    return initializers.get(init)(key, (num_embeddings, dim), dtype)


def embed(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Look up rows of ``table`` (num_embeddings, dim) at integer ``ids``: y[..., :] = table[ids].

    Negative ids count from the end as in numpy; ids >= num_embeddings (or < -num_embeddings)
    give NaN rows (``jnp.take``'s "fill" mode), never a silently clamped row.
    """
    return jnp.take(table, ids, axis=0)


# ----------------------------------------------------------------------------------------------
# Multi-head self-attention


def attention_init(
    key: jax.Array,
    d_model: int,
    *,
    w_init: str | Initializer = "glorot_uniform",
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Return the query, key, value and output projections ``{"wq", "bq", "wk", "bk", "wv",
    "bv", "wo", "bo"}``, each weight ``(d_model, d_model)`` and bias ``(d_model,)``.

    The number of heads is not stored: it is an argument of :func:`multi_head_attention`.
    """
    keys = jax.random.split(key, 4)
    params = {}
    for name, k in zip("qkvo", keys):
        layer = dense_init(k, d_model, d_model, w_init=w_init, dtype=dtype)
        params[f"w{name}"], params[f"b{name}"] = layer["W"], layer["b"]
    return params


def causal_mask(seq: int) -> np.ndarray:
    """Boolean ``(seq, seq)`` mask, True where query i may attend to key j (j <= i)."""
    return np.tril(np.ones((seq, seq), dtype=bool))


def multi_head_attention(
    params: Params,
    x: jax.Array,
    *,
    num_heads: int,
    causal: bool = False,
    where: str = "attention",
) -> jax.Array:
    """Multi-head scaled dot-product self-attention over ``x`` of shape ``(..., seq, d_model)``.

    head_h = softmax(Q_h K_hᵀ / sqrt(d_head) + mask) V_h,  y = concat_h(head_h) @ wo + bo,
    with Q = x @ wq + bq (likewise K, V) split into ``num_heads`` heads of d_head = d_model /
    num_heads. ``causal=True`` lets position i attend only to positions j <= i (Vaswani et al.
    2017).
    """
    d_model = params["wq"].shape[0]
    if num_heads < 1 or d_model % num_heads:
        raise ValueError(
            f"{where}: num_heads={num_heads} must be a positive divisor of d_model={d_model}"
        )
    d_head = d_model // num_heads
    seq = x.shape[-2]

    def split_heads(t: jax.Array) -> jax.Array:  # (..., seq, d_model) -> (..., seq, heads, d_head)
        return t.reshape(*t.shape[:-1], num_heads, d_head)

    q = split_heads(x @ params["wq"] + params["bq"])
    k = split_heads(x @ params["wk"] + params["bk"])
    v = split_heads(x @ params["wv"] + params["bv"])
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(d_head)
    if causal:
        # A large finite negative, not -inf: exp() of it is 0 and no row is ever all -inf.
        scores = jnp.where(causal_mask(seq), scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    heads = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return heads.reshape(*heads.shape[:-2], d_model) @ params["wo"] + params["bo"]

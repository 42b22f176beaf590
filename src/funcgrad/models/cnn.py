"""Convolutional network as a pure function: conv → activation → pool blocks, flatten, dense head.

Params: ``{"convs": [{"W": (kh, kw, c_in, c_out), "b": (c_out,)}, ...],
"head": [{"W": (fan_in, fan_out), "b": (fan_out,)}, ...]}``. Images are NHWC, kernels HWIO.

``init(key)`` with default arguments gives the classic MNIST CNN on (28, 28, 1) images:
conv 3×3×32 → relu → max-pool 2 → conv 3×3×64 → relu → max-pool 2 → flatten (7·7·64 = 3136)
→ dense 128 → relu → dense 10 (logits).

The architecture arguments that are not arrays (``stride``, ``padding``, ``pool``,
``pool_window``) are keyword arguments of both :func:`init` (which needs them to size the head)
and :func:`apply`, with the same defaults; pass the same values to both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from funcgrad.models import activations, layers
from funcgrad.models.activations import Activation
from funcgrad.models.initializers import Initializer

Params = dict[str, list[dict[str, jax.Array]]]
T = TypeVar("T")

INPUT_SHAPE = (28, 28, 1)
CONV_CHANNELS = (32, 64)
DENSE_SIZES = (128, 10)
KERNEL_SIZE = 3
STRIDE = 1
PADDING = "SAME"
POOL = "max"
POOL_WINDOW = 2

_POOLS = {"max": layers.max_pool, "avg": layers.avg_pool, None: None}

FAST = {"conv_impl": "winograd", "pool_impl": "argmax_vjp", "pool_first": True}
"""The fastest formulation for training on CPU: ``cnn.apply(params, x, **cnn.FAST)``, e.g.
``train.classifier_loss(cnn.apply, **cnn.FAST)``. Hand-written backward passes for the
convolutions and the pooling (checked against the derived ones in the tests), bias and
activation after pooling; the same function as the default formulation."""


def _per_conv(value: T | Sequence[T], n: int, name: str, scalar: type | tuple) -> list[T]:
    """One value for every conv layer: a scalar is repeated, a sequence must have length n."""
    if value is None or isinstance(value, scalar):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"cnn: {name} has {len(value)} entries for {n} conv layers: {value}")
    return value


def _conv_settings(n, stride, padding, pool, pool_window) -> list[tuple]:
    pools = _per_conv(pool, n, "pool", str)
    for p in pools:
        if p not in _POOLS:
            raise ValueError(f"cnn: pool must be 'max', 'avg' or None, got {p!r}")
    return list(
        zip(
            _per_conv(stride, n, "stride", int),
            _per_conv(padding, n, "padding", str),
            pools,
            _per_conv(pool_window, n, "pool_window", int),
        )
    )


def init(
    key: jax.Array,
    input_shape: Sequence[int] = INPUT_SHAPE,
    *,
    conv_channels: Sequence[int] = CONV_CHANNELS,
    dense_sizes: Sequence[int] = DENSE_SIZES,
    kernel_size: int | Sequence[int] = KERNEL_SIZE,
    stride: int | Sequence[int] = STRIDE,
    padding: str | Sequence[str] = PADDING,
    pool: str | Sequence[str | None] | None = POOL,
    pool_window: int | Sequence[int] = POOL_WINDOW,
    w_init: str | Initializer = "glorot_uniform",
    b_init: str | Initializer = "zeros",
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Return ``{"convs": [...], "head": [...]}`` for images of ``input_shape = (H, W, C)``.

    ``conv_channels`` lists the output channels of each conv layer; ``dense_sizes`` the sizes of
    the head's dense layers (the last is the number of classes). ``kernel_size``, ``stride``,
    ``padding`` ("SAME"/"VALID"), ``pool`` ("max", "avg" or None) and ``pool_window`` are one
    value for every conv layer, or a list with one value per conv layer (where an entry may be
    an ``(h, w)`` pair for a non-square kernel, stride or window). The head's input size is
    computed from ``input_shape`` with :func:`jax.eval_shape`, so no FLOPs are spent.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"cnn: input_shape must be (height, width, channels), got {tuple(input_shape)}; "
            "for grayscale images use (H, W, 1)"
        )
    height, width, c_in = (int(d) for d in input_shape)
    conv_channels = [int(c) for c in conv_channels]
    dense_sizes = [int(s) for s in dense_sizes]
    if not dense_sizes:
        raise ValueError("cnn: dense_sizes needs at least the output size, e.g. (10,)")
    n = len(conv_channels)
    kernel_sizes = _per_conv(kernel_size, n, "kernel_size", int)
    settings = _conv_settings(n, stride, padding, pool, pool_window)
    conv_key, head_key = jax.random.split(key)

    convs = [
        layers.conv2d_init(k, ks, cin, cout, w_init=w_init, b_init=b_init, dtype=dtype)
        for k, ks, cin, cout in zip(
            jax.random.split(conv_key, max(n, 1)),
            kernel_sizes,
            [c_in, *conv_channels],
            conv_channels,
        )
    ]
    shape = jax.eval_shape(
        lambda c, x: _features(c, x, settings, activations.relu),
        convs,
        jax.ShapeDtypeStruct((1, height, width, c_in), dtype),
    ).shape
    sizes = [shape[-1], *dense_sizes]
    head = [
        layers.dense_init(k, fan_in, fan_out, w_init=w_init, b_init=b_init, dtype=dtype)
        for k, fan_in, fan_out in zip(jax.random.split(head_key, len(sizes) - 1), sizes, sizes[1:])
    ]
    return {"convs": convs, "head": head}


# Activations that commute with max-pooling exactly, in floating point: monotone non-decreasing
# and piecewise linear, so act(max(z) + b) = max(act(z + b)) bit for bit.
_POOL_FIRST_ACTIVATIONS = (activations.relu, activations.leaky_relu, activations.identity)


def _features(
    convs: list[dict[str, jax.Array]],
    x: jax.Array,
    settings: list[tuple],
    act: Activation,
    conv_impl: str = "im2col",
    pool_impl: str = "reshape",
    pool_first: bool = False,
) -> jax.Array:
    """(batch, H, W, C) images -> (batch, F) flattened features of the conv stack."""
    if pool_first and act not in _POOL_FIRST_ACTIVATIONS:
        raise ValueError(
            "cnn: pool_first=True needs an activation that commutes with max-pooling exactly "
            f"(relu, leaky_relu or identity), got {getattr(act, '__name__', act)!r}"
        )
    for conv, (stride, padding, pool, window) in zip(convs, settings):
        if pool_first and pool == "max":
            # act(max_pool(conv(x)) + b): bias and activation on the pooled (smaller) output.
            z = layers.conv2d(
                conv, x, stride=stride, padding=padding, impl=conv_impl, bias=False
            )
            x = act(layers.max_pool(z, window, impl=pool_impl) + conv["b"])
            continue
        x = act(layers.conv2d(conv, x, stride=stride, padding=padding, impl=conv_impl))
        if pool == "max":
            x = layers.max_pool(x, window, impl=pool_impl)
        elif pool is not None:
            x = _POOLS[pool](x, window)
    return layers.flatten(x)


def features(
    params: Params,
    x: jax.Array,
    *,
    stride: int | Sequence[int] = STRIDE,
    padding: str | Sequence[str] = PADDING,
    pool: str | Sequence[str | None] | None = POOL,
    pool_window: int | Sequence[int] = POOL_WINDOW,
    activation: str | Activation = "relu",
    conv_impl: str = "im2col",
    pool_impl: str = "reshape",
    pool_first: bool = False,
) -> jax.Array:
    """Return the flattened output of the conv stack: ``(batch, H, W, C) -> (batch, F)`` (or
    ``(H, W, C) -> (F,)``), the input of the dense head. Arguments as in :func:`apply`."""
    convs = params["convs"]
    c_in = convs[0]["W"].shape[2] if convs else None
    hint = None
    x_shape = getattr(x, "shape", ())
    if convs and c_in == 1 and len(x_shape) == 3 and x_shape[-1] != 1:
        hint = "Add a channel axis first: x[..., None]."
    x = layers.check_input(x, ("height", "width", c_in), where="cnn convs[0] (conv2d)", hint=hint)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    settings = _conv_settings(len(convs), stride, padding, pool, pool_window)
    feats = _features(
        convs, x, settings, activations.get(activation), conv_impl, pool_impl, pool_first
    )
    return feats[0] if unbatched else feats


def apply(
    params: Params,
    x: jax.Array,
    *,
    stride: int | Sequence[int] = STRIDE,
    padding: str | Sequence[str] = PADDING,
    pool: str | Sequence[str | None] | None = POOL,
    pool_window: int | Sequence[int] = POOL_WINDOW,
    activation: str | Activation = "relu",
    output_activation: str | Activation = "identity",
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
    conv_impl: str = "im2col",
    pool_impl: str = "reshape",
    pool_first: bool = False,
) -> jax.Array:
    """Run the CNN: NHWC images ``(batch, H, W, C) -> (batch, n_classes)`` logits, or one image
    ``(H, W, C) -> (n_classes,)``.

    Each conv block is act(conv2d(x)) followed by pooling; then flatten and the dense head with
    ``activation`` between its layers and ``output_activation`` (identity: logits) at the end.
    ``stride``, ``padding``, ``pool`` and ``pool_window`` must be the values given to
    :func:`init`. Dropout (``dropout_rate``, needs ``key`` when ``train=True``) follows each
    hidden dense layer of the head. Raises ``ValueError`` naming the layer on a wrong input shape
    or dtype (e.g. (batch, 28, 28) without the channel axis).

    How it is computed, the same function up to float rounding: ``conv_impl`` ("im2col",
    "im2col_vjp" or "xla") and ``pool_impl`` ("reshape", "argmax_vjp" or "xla") choose the
    formulations of the convolutions and the max-pooling (see :func:`layers.conv2d` and
    :func:`layers.max_pool`); ``pool_first=True`` computes each block as act(max_pool(conv(x))
    + b), bias and activation on the pooled output, bit for bit the same values for relu,
    leaky_relu and identity (which commute with max; other activations raise ``ValueError``).
    The defaults derive every gradient step with the VJP rules of their primitives; :data:`FAST`
    (hand-written ``custom_vjp`` backward passes, no forward mode) trains fastest on CPU.
    """
    feats = features(
        params,
        x,
        stride=stride,
        padding=padding,
        pool=pool,
        pool_window=pool_window,
        activation=activation,
        conv_impl=conv_impl,
        pool_impl=pool_impl,
        pool_first=pool_first,
    )
    head = params["head"]
    expected = head[0]["W"].shape[0]
    if feats.shape[-1] != expected:
        raise ValueError(
            f"cnn head[0] (dense): expected {expected} flattened features, got {feats.shape[-1]} "
            f"from input of shape {tuple(jnp.shape(x))}. The image height/width, or the stride/"
            "padding/pool arguments, differ from the ones the params were initialised with."
        )
    act = activations.get(activation)
    keys = jax.random.split(key, len(head)) if key is not None else [None] * len(head)
    h = feats
    for i, layer in enumerate(head[:-1]):
        h = act(layers.dense(layer, h))
        h = layers.dropout(
            h, dropout_rate, key=keys[i], train=train, where=f"cnn head[{i}] (dropout)"
        )
    return activations.get(output_activation)(layers.dense(head[-1], h))

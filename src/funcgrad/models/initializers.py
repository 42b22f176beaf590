"""Weight initialisation schemes, in one place, each deterministic from its key.

Every initializer has the signature ``init(key, shape, dtype=jnp.float32) -> jax.Array`` (the same
as ``jax.nn.initializers``), so a model's ``w_init="he_normal"`` argument and a user's own function
are interchangeable.

Fans follow the usual convention: for a dense kernel of shape ``(fan_in, fan_out)`` they are the two
dimensions; for a convolution kernel ``(kh, kw, c_in, c_out)`` (HWIO) they are multiplied by the
receptive field ``kh · kw``. The "normal" schemes draw from a plain (not truncated) normal, so the
variance is exactly the textbook one (e.g. He: Var[W] = 2 / fan_in).

References: Glorot & Bengio 2010 (Xavier), He et al. 2015 (He / Kaiming), LeCun et al. 1998.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

Initializer = Callable[..., jax.Array]
Shape = Sequence[int]


def fans(shape: Shape) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight of this shape.

    ``(n,)`` -> ``(n, n)``; ``(..., fan_in, fan_out)`` -> both times prod(leading dims), the
    receptive field of a convolution kernel in HWIO layout.
    """
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def zeros(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All zeros (biases, layer-norm offsets); the key is ignored."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All ones (layer-norm scales); the key is ignored."""
    del key
    return jnp.ones(shape, dtype)


# Draws are made flat and reshaped: the same numbers as drawing the shape directly, and XLA on CPU
# compiles a one-dimensional sampler faster than one of the full shape.


def _uniform(key: jax.Array, shape: Shape, dtype: DTypeLike, limit: float) -> jax.Array:
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, minval=-limit, maxval=limit)
    return flat.reshape(tuple(shape))


def _normal(key: jax.Array, shape: Shape, dtype: DTypeLike, stddev: float) -> jax.Array:
    return stddev * jax.random.normal(key, (math.prod(shape),), dtype).reshape(tuple(shape))


def glorot_uniform(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """Glorot/Xavier uniform: W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return _uniform(key, shape, dtype, math.sqrt(6.0 / (fan_in + fan_out)))


def glorot_normal(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """Glorot/Xavier normal: W ~ N(0, σ²), σ² = 2 / (fan_in + fan_out)."""
    fan_in, fan_out = fans(shape)
    return _normal(key, shape, dtype, math.sqrt(2.0 / (fan_in + fan_out)))


def he_uniform(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """He/Kaiming uniform (for ReLU layers): W ~ U(-a, a), a = sqrt(6 / fan_in)."""
    fan_in, _ = fans(shape)
    return _uniform(key, shape, dtype, math.sqrt(6.0 / fan_in))


def he_normal(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """He/Kaiming normal (for ReLU layers): W ~ N(0, σ²), σ² = 2 / fan_in."""
    fan_in, _ = fans(shape)
    return _normal(key, shape, dtype, math.sqrt(2.0 / fan_in))


def lecun_uniform(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """LeCun uniform: W ~ U(-a, a), a = sqrt(3 / fan_in), so Var[W] = 1 / fan_in."""
    fan_in, _ = fans(shape)
    return _uniform(key, shape, dtype, math.sqrt(3.0 / fan_in))


def lecun_normal(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """LeCun normal (for SELU/tanh layers): W ~ N(0, σ²), σ² = 1 / fan_in."""
    fan_in, _ = fans(shape)
    return _normal(key, shape, dtype, math.sqrt(1.0 / fan_in))


def normal(stddev: float = 0.02) -> Initializer:
    """Return an initializer drawing W ~ N(0, stddev²) (GPT-2 style embeddings use 0.02)."""

    def init(key: jax.Array, shape: Shape, dtype: DTypeLike = jnp.float32) -> jax.Array:
        return _normal(key, shape, dtype, stddev)

    init.__name__ = f"normal({stddev})"
    return init


INITIALIZERS: dict[str, Initializer] = {
    "zeros": zeros,
    "ones": ones,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
}


def get(init: str | Initializer) -> Initializer:
    """Return the initializer called ``init``; a callable ``(key, shape, dtype)`` is returned as is.

    Raises ``ValueError`` naming the known schemes if the name is unknown.
    """
    if callable(init):
        return init
    if isinstance(init, str) and init in INITIALIZERS:
        return INITIALIZERS[init]
    raise ValueError(
        f"unknown initializer {init!r}; expected one of {sorted(INITIALIZERS)} "
        "or a callable (key, shape, dtype) -> array"
    )

"""Small synthetic data sets for seeing what a network learns: 2-D classification and regression.

Every generator takes an explicit ``jax.random`` key (raw ``PRNGKey`` or typed ``jax.random.key``)
as its first argument, so the same key gives the same data on every run and platform; there is no
global random state. Each returns ``(x, y)`` as ``jax.Array``: ``x`` float32 of shape ``(n, 2)``
(or ``(n, dim)`` for regression), ``y`` int32 class indices of shape ``(n,)`` for the classification
sets (ready for ``jax.nn.one_hot`` or integer-label cross-entropy; ``y.astype(jnp.float32)`` for a
sigmoid/binary loss) and float32 targets for regression. Classes are balanced: with ``k`` classes,
class ``c`` gets ``n // k`` examples plus one if ``c < n % k``; examples are ordered by class
(shuffle with ``funcgrad.data.batches`` or ``train_val_split``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["circles", "linear_regression", "spirals", "two_moons", "xor"]


def _class_sizes(n: int, num_classes: int) -> list[int]:
    if n < num_classes:
        raise ValueError(f"n={n} is too small for {num_classes} classes: need n >= {num_classes}.")
    return [n // num_classes + (c < n % num_classes) for c in range(num_classes)]


def _labels(sizes: list[int]) -> jax.Array:
    return jnp.asarray(np.repeat(np.arange(len(sizes), dtype=np.int32), sizes))


def _check_noise(noise: float) -> None:
    if noise < 0:
        raise ValueError(f"noise is a standard deviation and must be >= 0, got {noise}.")


def two_moons(key: jax.Array, n: int = 200, *, noise: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Return two interleaving half circles ``(x (n, 2) float32, y (n,) int32)`` with noise.

    Class 0 is the upper moon, ``(cos t, sin t)`` for t in [0, π]; class 1 the lower one,
    ``(1 - cos t, 0.5 - sin t)``; then N(0, noise²) is added to every coordinate. Not linearly
    separable: a hidden layer is needed to classify it perfectly.
    """
    _check_noise(noise)
    return _two_moons(key, noise, n=n)


@functools.partial(jax.jit, static_argnames="n")
def _two_moons(key: jax.Array, noise: float, *, n: int) -> tuple[jax.Array, jax.Array]:
    n0, n1 = _class_sizes(n, 2)
    k_angle, k_noise = jax.random.split(key)
    t = jax.random.uniform(k_angle, (n,), minval=0.0, maxval=jnp.pi)
    upper = jnp.stack([jnp.cos(t[:n0]), jnp.sin(t[:n0])], axis=1)
    lower = jnp.stack([1 - jnp.cos(t[n0:]), 0.5 - jnp.sin(t[n0:])], axis=1)
    x = jnp.concatenate([upper, lower]) + noise * jax.random.normal(k_noise, (n, 2))
    return x.astype(jnp.float32), _labels([n0, n1])


def xor(key: jax.Array, n: int = 200, *, noise: float = 0.25) -> tuple[jax.Array, jax.Array]:
    """Return XOR as four clusters ``(x (n, 2) float32, y (n,) int32)``: label 1 iff x₀·x₁ < 0.

    Points are spread over the four corners (±1, ±1), a quarter each, plus N(0, noise²) per
    coordinate; the label is that of the corner (1 for (1, -1) and (-1, 1)). With ``noise=0`` the
    set is the XOR truth table (on ±1 inputs) repeated, the classic problem no linear model solves.
    """
    _check_noise(noise)
    return _xor(key, noise, n=n)


@functools.partial(jax.jit, static_argnames="n")
def _xor(key: jax.Array, noise: float, *, n: int) -> tuple[jax.Array, jax.Array]:
    n0, n1 = _class_sizes(n, 2)
    corners0 = jnp.array([[1.0, 1.0], [-1.0, -1.0]])
    corners1 = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    centres = jnp.concatenate([corners0[jnp.arange(n0) % 2], corners1[jnp.arange(n1) % 2]], axis=0)
    x = centres + noise * jax.random.normal(key, (n, 2))
    return x.astype(jnp.float32), _labels([n0, n1])


def linear_regression(
    key: jax.Array,
    n: int = 100,
    *,
    dim: int = 1,
    noise: float = 0.1,
    w: jax.Array | None = None,
    b: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Return ``(x (n, dim) float32, y (n,) float32)`` with ``y = x @ w + b + N(0, noise²)``.

    ``x`` is standard normal. ``w`` defaults to ``[2, -1, 0.5, -0.25, ...]`` (``2·(-1/2)^i``) so the
    true parameters are known without asking; pass ``w`` (shape ``(dim,)``) and ``b`` to choose
    them. The least-squares fit recovers ``w`` and ``b`` to within about ``noise/√n``.
    """
    _check_noise(noise)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}.")
    if w is None:
        w = 2.0 * (-0.5) ** np.arange(dim, dtype=np.float32)
    w = jnp.asarray(w, dtype=jnp.float32)
    if w.shape != (dim,):
        raise ValueError(f"w must have shape (dim,) = ({dim},), got {w.shape}.")
    return _linear_regression(key, noise, w, b, n=n)


@functools.partial(jax.jit, static_argnames="n")
def _linear_regression(
    key: jax.Array, noise: float, w: jax.Array, b: float, *, n: int
) -> tuple[jax.Array, jax.Array]:
    k_x, k_noise = jax.random.split(key)
    x = jax.random.normal(k_x, (n, w.shape[0]), dtype=jnp.float32)
    y = x @ w + b + noise * jax.random.normal(k_noise, (n,), dtype=jnp.float32)
    return x, y.astype(jnp.float32)


def spirals(
    key: jax.Array,
    n: int = 300,
    *,
    num_classes: int = 2,
    turns: float = 1.0,
    noise: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """Return ``num_classes`` interleaved spiral arms ``(x (n, 2) float32, y (n,) int32)``.

    Arm ``c`` is ``r·(sin θ, cos θ)`` with radius r going evenly from 0 to 1 and angle
    ``θ = 2π·(turns·r + c/num_classes) + N(0, noise²)``: the noise is on the angle, as in the
    CS231n spiral set, so it blurs the arms most far from the centre.
    """
    _check_noise(noise)
    if num_classes < 2:
        raise ValueError(f"spirals needs num_classes >= 2, got {num_classes}.")
    return _spirals(key, noise, turns, n=n, num_classes=num_classes)


@functools.partial(jax.jit, static_argnames=("n", "num_classes"))
def _spirals(
    key: jax.Array, noise: float, turns: float, *, n: int, num_classes: int
) -> tuple[jax.Array, jax.Array]:
    sizes = _class_sizes(n, num_classes)
    r = jnp.concatenate([jnp.linspace(0.0, 1.0, s) for s in sizes])
    y = _labels(sizes)
    theta = 2 * jnp.pi * (turns * r + y / num_classes) + noise * jax.random.normal(key, (n,))
    x = jnp.stack([r * jnp.sin(theta), r * jnp.cos(theta)], axis=1)
    return x.astype(jnp.float32), y


def circles(
    key: jax.Array,
    n: int = 200,
    *,
    noise: float = 0.05,
    factor: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Return two concentric circles ``(x (n, 2) float32, y (n,) int32)`` plus Gaussian noise.

    Class 0 is the unit circle, class 1 the circle of radius ``factor`` (0 < factor < 1) inside it;
    angles are uniform, then N(0, noise²) is added to every coordinate. Separable by radius, not by
    any line: a network must learn a closed boundary.
    """
    _check_noise(noise)
    if not 0 < factor < 1:
        raise ValueError(f"factor is the inner radius and must be in (0, 1), got {factor}.")
    return _circles(key, noise, factor, n=n)


@functools.partial(jax.jit, static_argnames="n")
def _circles(key: jax.Array, noise: float, factor: float, *, n: int) -> tuple[jax.Array, jax.Array]:
    y = _labels(_class_sizes(n, 2))
    k_angle, k_noise = jax.random.split(key)
    t = jax.random.uniform(k_angle, (n,), minval=0.0, maxval=2 * jnp.pi)
    radius = jnp.where(y == 0, 1.0, factor)
    x = radius[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    x = x + noise * jax.random.normal(k_noise, (n, 2))
    return x.astype(jnp.float32), y

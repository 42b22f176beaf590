"""Activation functions by name: the ones a model's ``activation="..."`` argument accepts.

Every function is elementwise and built from ``jax.nn`` / ``jax.numpy``, so it is jit-, vmap- and
grad-able and made of primitives funcgrad's interpreter differentiates.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def relu(x: jax.Array) -> jax.Array:
    """Rectified linear unit: relu(x) = max(x, 0)."""
    return jax.nn.relu(x)


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """Leaky ReLU: leaky_relu(x) = x if x >= 0 else negative_slope * x (slope 0.01 by default)."""
    return jax.nn.leaky_relu(x, negative_slope)


def tanh(x: jax.Array) -> jax.Array:
    """Hyperbolic tangent: tanh(x) = (e^x - e^-x) / (e^x + e^-x)."""
    return jnp.tanh(x)


def sigmoid(x: jax.Array) -> jax.Array:
    """Logistic sigmoid: sigmoid(x) = 1 / (1 + e^-x)."""
    return jax.nn.sigmoid(x)


def gelu(x: jax.Array) -> jax.Array:
    """GELU, tanh approximation (JAX's and GPT-2's default).

    gelu(x) = x/2 · (1 + tanh(sqrt(2/π) · (x + 0.044715 x³)))
    """
    return jax.nn.gelu(x, approximate=True)


def softplus(x: jax.Array) -> jax.Array:
    """Softplus, a smooth ReLU: softplus(x) = log(1 + exp(x))."""
    return jax.nn.softplus(x)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """Exponential linear unit: elu(x) = x if x > 0 else alpha · (exp(x) - 1), alpha = 1."""
    return jax.nn.elu(x, alpha)


def identity(x: jax.Array) -> jax.Array:
    """The identity: identity(x) = x (a linear layer, e.g. the logits of a classifier)."""
    return x


ACTIVATIONS: dict[str, Activation] = {
    "relu": relu,
    "leaky_relu": leaky_relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "gelu": gelu,
    "softplus": softplus,
    "elu": elu,
    "identity": identity,
}


def get(activation: str | Activation) -> Activation:
    """Return the activation function called ``activation``; a callable is returned unchanged.

    Raises ``ValueError`` naming the known activations if the name is unknown.
    """
    if callable(activation):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ValueError(
        f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)} "
        "or a callable taking and returning an array"
    )

"""Linear regression with mean squared error, differentiated by hand.

One neuron with two inputs: ŷ = x @ W + b, params ``{"W": (2, 1), "b": (1,)}`` as from
``fg.models.linear.init(key, 2)``. For N examples with targets y of shape (N, 1)::

    L   = (1/N) Σ_n (ŷ_n - y_n)²      mean squared error
    dŷ  = 2·(ŷ - y) / N               ∂L/∂ŷ_n
    dW  = xᵀ @ dŷ                     ∂L/∂W_i = Σ_n x_ni · dŷ_n
    db  = Σ_n dŷ_n                    ∂L/∂b   = Σ_n dŷ_n

The same formulas hold for any number of inputs and outputs, with N·n_out in place of N (the
mean runs over every element).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcgrad import losses
from funcgrad.models import linear as linear_model

__all__ = ["data", "grad", "init", "loss"]

Params = dict[str, jax.Array]


def init(key: jax.Array, n_in: int = 2, *, dtype=jnp.float32) -> Params:
    """One linear neuron: ``fg.models.linear.init(key, n_in)``, W (n_in, 1) and b (1,)."""
    return linear_model.init(key, n_in, 1, dtype=dtype)


def data(key: jax.Array, n: int = 32, *, noise: float = 0.1, dtype=jnp.float32):
    """``(x, y)``: x (n, 2) uniform in [-1, 1]², y = 2·x₁ + x₂ + 1 + noise of shape (n, 1)."""
    x_key, e_key = jax.random.split(key)
    x = jax.random.uniform(x_key, (n, 2), dtype, -1.0, 1.0)
    y = 2 * x[:, :1] + x[:, 1:] + 1 + noise * jax.random.normal(e_key, (n, 1), dtype)
    return x, y


def loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of the linear model: mean((x @ W + b - y)²)."""
    return losses.mse(linear_model.apply(params, x), y)


def grad(params: Params, x: jax.Array, y: jax.Array) -> Params:
    """∂loss/∂params by hand, the structure ``jax.grad(loss)(params, x, y)`` returns."""
    y_hat = x @ params["W"] + params["b"]
    d_y_hat = 2 * (y_hat - y) / y_hat.size  # d mean(e²) / d ŷ = 2e / (number of elements)
    return {
        "W": x.T @ d_y_hat,  # each weight sees its input, summed over the batch
        "b": jnp.sum(d_y_hat, axis=0),  # the bias sees 1
    }

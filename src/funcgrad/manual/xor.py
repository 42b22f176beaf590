"""The XOR network 2-n-1 with sigmoid units and ½·MSE, differentiated with the classic δ-terms.

The generalised delta rule (Rumelhart, Hinton & Williams, 1986). Params are those of
``fg.models.mlp.init(key, [2, n, 1])``: ``layers[0]`` the hidden layer (W1 (2, n), b1 (n,)),
``layers[1]`` the output unit (W2 (n, 1), b2 (1,)). For N patterns x with targets t::

    net_h = x @ W1 + b1,   h = σ(net_h)           hidden units
    net_o = h @ W2 + b2,   o = σ(net_o)           output unit
    E     = 1/(2N) Σ_n (o_n - t_n)²               half the mean squared error

    δ_o = (o - t) ⊙ o(1 - o) / N                  ∂E/∂net_o, with σ'(z) = σ(z)(1 - σ(z))
    δ_h = (δ_o @ W2ᵀ) ⊙ h(1 - h)                  ∂E/∂net_h: the output δ sent back through W2
    dW2 = hᵀ @ δ_o,   db2 = Σ_n δ_o               a weight's gradient: its input times the δ
    dW1 = xᵀ @ δ_h,   db1 = Σ_n δ_h

The net inputs are tagged ``"net_hidden"`` and ``"net_out"``, so the δ-terms are checked as
intermediates: ``fg.compare_grads(loss, params, x, t, intermediates=deltas(params, x, t))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcgrad.interpret.tagging import tag
from funcgrad.models import mlp as mlp_model

__all__ = ["data", "deltas", "forward", "grad", "init", "loss"]

Params = dict[str, list[dict[str, jax.Array]]]


def init(key: jax.Array, hidden: int = 2, *, dtype=jnp.float32) -> Params:
    """A 2-``hidden``-1 network: ``fg.models.mlp.init(key, [2, hidden, 1])``."""
    return mlp_model.init(key, [2, hidden, 1], dtype=dtype)


def data(dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """The four XOR patterns: x of shape (4, 2), targets t = x₁ xor x₂ of shape (4, 1)."""
    x = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype)
    t = jnp.array([[0], [1], [1], [0]], dtype)
    return x, t


def forward(params: Params, x: jax.Array) -> dict[str, jax.Array]:
    """Every value of the forward pass: net_hidden, h, net_out, o (net inputs tagged)."""
    (hidden, out) = params["layers"]
    net_h = tag(x @ hidden["W"] + hidden["b"], "net_hidden")
    h = jax.nn.sigmoid(net_h)
    net_o = tag(h @ out["W"] + out["b"], "net_out")
    o = jax.nn.sigmoid(net_o)
    return {"net_hidden": net_h, "h": h, "net_out": net_o, "o": o}


def loss(params: Params, x: jax.Array, t: jax.Array) -> jax.Array:
    """E = 1/(2N) Σ (o - t)²: half the mean squared error of the sigmoid output."""
    o = forward(params, x)["o"]
    return 0.5 * jnp.mean((o - t) ** 2)


def deltas(params: Params, x: jax.Array, t: jax.Array) -> dict[str, jax.Array]:
    """The δ-terms ``{"net_out": δ_o, "net_hidden": δ_h}``: ∂E/∂(net input) of each layer."""
    v = forward(params, x)
    h, o = v["h"], v["o"]
    delta_out = (o - t) * o * (1 - o) / o.size  # error times σ' at the output
    delta_hidden = (delta_out @ params["layers"][1]["W"].T) * h * (1 - h)  # back through W2, σ'
    return {"net_out": delta_out, "net_hidden": delta_hidden}


def grad(params: Params, x: jax.Array, t: jax.Array) -> Params:
    """∂E/∂params from the δ-terms, the structure ``jax.grad(loss)(params, x, t)`` returns."""
    d = deltas(params, x, t)
    h = forward(params, x)["h"]
    return {
        "layers": [
            {"W": x.T @ d["net_hidden"], "b": jnp.sum(d["net_hidden"], axis=0)},
            {"W": h.T @ d["net_out"], "b": jnp.sum(d["net_out"], axis=0)},
        ]
    }

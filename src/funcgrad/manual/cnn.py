"""The CNN of :mod:`funcgrad.models.cnn`, backpropagated by hand from the pieces in :mod:`.conv`.

Params ``{"convs": [{"W", "b"}, ...], "head": [{"W", "b"}, ...]}`` as from
``fg.models.cnn.init(key, input_shape, conv_channels=..., dense_sizes=...)`` with its default
stride 1, "SAME" padding and 2×2 max pooling. Forward, for each conv block k and then the head::

    z_k = conv2d(a_{k-1}, W_k) + b_k     a_k = act(z_k)     p_k = max_pool_2x2(a_k)
    f = flatten(p_K)
    u_l = g_{l-1} @ V_l + c_l            g_l = act(u_l)     (no activation after the last)
    loss = softmax cross-entropy of the logits u_L, averaged over the batch

Backward, in reverse::

    du_L = (softmax(u_L) - onehot(y)) / n                  softmax + NLL fused
    dV_l = g_{l-1}ᵀ du_l,  dc_l = Σ du_l,  dg_{l-1} = du_l V_lᵀ,  du_{l-1} = act'(u_{l-1}) · dg
    dp_K = unflatten(df)
    da_k = max_pool_2x2_backward(a_k, dp_k)                 the window's max takes it all
    dz_k = act'(z_k) · da_k                                 relu' = [z > 0], tanh' = 1 - tanh²
    dW_k, db_k, dp_{k-1} = conv2d_backward(a_{k-1}, dz_k)

``activation`` is "relu" (the model's default) or "tanh".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcgrad import losses
from funcgrad.manual import conv
from funcgrad.models import cnn as cnn_model

__all__ = ["ACTIVATIONS", "grad", "loss"]

Params = dict[str, list[dict[str, jax.Array]]]

# activation -> (function, derivative from the pre-activation z and the output a)
ACTIVATIONS = {
    "relu": (jax.nn.relu, lambda z, a: (z > 0).astype(z.dtype)),
    "tanh": (jnp.tanh, lambda z, a: 1 - a**2),
}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"manual.cnn supports activation {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def loss(params: Params, x: jax.Array, y: jax.Array, activation: str = "relu") -> jax.Array:
    """Average softmax cross-entropy of ``fg.models.cnn.apply`` on images x and labels y."""
    _activation(activation)
    logits = cnn_model.apply(params, x, activation=activation)
    return losses.softmax_cross_entropy(logits, y)


def grad(params: Params, x: jax.Array, y: jax.Array, activation: str = "relu") -> Params:
    """∂loss/∂params by hand, the structure of ``jax.grad(loss)(params, x, y)``."""
    act, act_grad = _activation(activation)
    # Forward, keeping what the backward pass needs.
    blocks, a = [], x
    for layer in params["convs"]:
        z = conv.conv2d(layer, a)
        out = act(z)
        blocks.append((a, z, out))
        a = conv.max_pool_2x2(out)
    pooled_shape = a.shape
    dense, g = [], a.reshape(a.shape[0], -1)
    head = params["head"]
    for k, layer in enumerate(head):
        u = g @ layer["W"] + layer["b"]
        out = u if k == len(head) - 1 else act(u)
        dense.append((g, u, out))
        g = out

    # Backward.
    n = x.shape[0]
    du = (jax.nn.softmax(g) - jax.nn.one_hot(y, g.shape[1], dtype=g.dtype)) / n
    head_grads = [None] * len(head)
    for k in reversed(range(len(head))):
        g_in, _, _ = dense[k]
        head_grads[k] = {"W": g_in.T @ du, "b": jnp.sum(du, axis=0)}
        dg = du @ head[k]["W"].T
        if k > 0:
            _, u_prev, out_prev = dense[k - 1]
            du = act_grad(u_prev, out_prev) * dg
    dp = dg.reshape(pooled_shape)
    conv_grads = [None] * len(params["convs"])
    for k in reversed(range(len(params["convs"]))):
        a_in, z, out = blocks[k]
        dz = act_grad(z, out) * conv.max_pool_2x2_backward(out, dp)
        conv_grads[k], dp = conv.conv2d_backward(params["convs"][k], a_in, dz)
    return {"convs": conv_grads, "head": head_grads}

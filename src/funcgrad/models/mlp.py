"""Multi-layer perceptron as a pure function: dense layers with an activation between them.

Params: ``{"layers": [{"W": (fan_in, fan_out), "b": (fan_out,)}, ...]}``, one entry per dense
layer, so ``init(key, [784, 64, 10])`` has ``layers[0].W`` of shape (784, 64) and ``layers[1].W``
of shape (64, 10). Activations, dropout rate and train flag are arguments of :func:`apply`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from funcgrad.models import activations, layers
from funcgrad.models.activations import Activation
from funcgrad.models.initializers import Initializer

Params = dict[str, list[dict[str, jax.Array]]]


def init(
    key: jax.Array,
    sizes: Sequence[int],
    *,
    w_init: str | Initializer = "glorot_uniform",
    b_init: str | Initializer = "zeros",
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Return ``{"layers": [dense, ...]}`` for layer sizes ``[n_in, hidden..., n_out]``.

    Weights default to Glorot uniform (Keras' default; pass ``w_init="he_normal"`` for deep ReLU
    nets), biases to zeros. Each layer gets its own key split from ``key``.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp sizes must be at least [n_in, n_out] of positive ints, got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        "layers": [
            layers.dense_init(k, fan_in, fan_out, w_init=w_init, b_init=b_init, dtype=dtype)
            for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:])
        ]
    }


def _hidden_activations(
    activation: str | Activation | Sequence[str | Activation], n_hidden: int
) -> list[Activation]:
    if isinstance(activation, str) or callable(activation):
        return [activations.get(activation)] * n_hidden
    activation = list(activation)
    if len(activation) != n_hidden:
        raise ValueError(
            f"mlp: got {len(activation)} activations for {n_hidden} hidden layers; pass one name "
            "per hidden layer (the last layer uses output_activation), or a single name"
        )
    return [activations.get(a) for a in activation]


def _check_layer_chain(params: Params) -> None:
    # Shapes come from params: catch a hand-edited or mismatched pytree before XLA does.
    dense_layers = params["layers"]
    for i, (prev, layer) in enumerate(itertools.pairwise(dense_layers), start=1):
        if layer["W"].shape[0] != prev["W"].shape[1]:
            raise ValueError(
                f"mlp layers[{i}] (dense): W has shape {tuple(layer['W'].shape)} but "
                f"layers[{i - 1}] outputs {prev['W'].shape[1]} features"
            )


def layer_outputs(
    params: Params,
    x: jax.Array,
    *,
    activation: str | Activation | Sequence[str | Activation] = "relu",
    output_activation: str | Activation = "identity",
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
) -> list[jax.Array]:
    """Return the output of every layer (after its activation and dropout); the last is the
    model's output. Same arguments as :func:`apply`; useful to plot hidden feature spaces."""
    dense_layers = params["layers"]
    _check_layer_chain(params)
    n_hidden = len(dense_layers) - 1
    hidden_fns = _hidden_activations(activation, n_hidden)
    output_fn = activations.get(output_activation)
    x = layers.check_input(x, (dense_layers[0]["W"].shape[0],), where="mlp layers[0] (dense)")
    keys = jax.random.split(key, max(n_hidden, 1)) if key is not None else [None] * n_hidden

    outputs = []
    h = x
    for i, layer in enumerate(dense_layers[:-1]):
        h = hidden_fns[i](layers.dense(layer, h))
        h = layers.dropout(
            h, dropout_rate, key=keys[i], train=train, where=f"mlp layers[{i}] (dropout)"
        )
        outputs.append(h)
    outputs.append(output_fn(layers.dense(dense_layers[-1], h)))
    return outputs


def apply(
    params: Params,
    x: jax.Array,
    *,
    activation: str | Activation | Sequence[str | Activation] = "relu",
    output_activation: str | Activation = "identity",
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Run the MLP: ``(batch, n_in) -> (batch, n_out)``, or one example ``(n_in,) -> (n_out,)``.

    h_0 = x,  h_{l+1} = act_l(h_l @ W_l + b_l),  y = output_activation(h_{L-1} @ W_{L-1} + b_{L-1})

    ``activation`` is one name for every hidden layer or a sequence with one name per hidden
    layer: relu, leaky_relu, tanh, sigmoid, gelu, softplus, elu, identity (or a callable).
    ``output_activation`` defaults to identity, so the output is logits. Dropout (rate
    ``dropout_rate``) follows each hidden layer when ``train=True`` and needs ``key``; with
    ``train=False`` (the default) it is off. Raises ``ValueError`` on a wrong input shape or dtype.
    """
    return layer_outputs(
        params,
        x,
        activation=activation,
        output_activation=output_activation,
        dropout_rate=dropout_rate,
        key=key,
        train=train,
    )[-1]

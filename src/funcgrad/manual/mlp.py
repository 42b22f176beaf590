"""The 784-100-100-10 tanh MLP with softmax and average NLL, backpropagated by hand, step by step.

The exercise of "becoming a backprop ninja" (Karpathy, makemore part 4): write the forward pass
as small steps, then derive the gradient of every step in reverse, and check each one. Params are
those of ``fg.models.mlp.init(key, [784, 100, 100, 10])``: W1, b1 = ``layers[0].W``,
``layers[0].b``; W2, b2 = ``layers[1]``; W3, b3 = ``layers[2]``. For a batch of n images x
(n, 784) with integer labels y::

    hpre1 = x @ W1 + b1         h1 = tanh(hpre1)
    hpre2 = h1 @ W2 + b2        h2 = tanh(hpre2)
    logits = h2 @ W3 + b3
    logit_maxes = max_j logits            (subtracted for stability; it cancels)
    norm_logits = logits - logit_maxes
    counts = exp(norm_logits)
    counts_sum = Σ_j counts               counts_sum_inv = 1 / counts_sum
    probs = counts · counts_sum_inv       logprobs = log(probs)
    loss = -(1/n) Σ_i logprobs[i, y_i]

Backward, each line the chain rule for one step (``d<v>`` is ∂loss/∂v, summed over every use
of v)::

    dlogprobs[i, y_i]  = -1/n, 0 elsewhere
    dprobs             = dlogprobs / probs                        log'(p) = 1/p
    dcounts_sum_inv    = Σ_j counts · dprobs                      broadcast over classes: sum
    dcounts_sum        = -dcounts_sum_inv / counts_sum²           (1/s)' = -1/s²
    dcounts            = counts_sum_inv · dprobs + dcounts_sum    two uses: probs and counts_sum
    dnorm_logits       = counts · dcounts                         exp' = exp
    dlogit_maxes       = -Σ_j dnorm_logits                        ≈ 0: the max cancels
    dlogits            = dnorm_logits + [logits == max] · dlogit_maxes / #max
    dh2 = dlogits @ W3ᵀ     dW3 = h2ᵀ @ dlogits     db3 = Σ_i dlogits
    dhpre2 = (1 - h2²) · dh2                                      tanh' = 1 - tanh²
    dh1 = dhpre2 @ W2ᵀ      dW2 = h1ᵀ @ dhpre2      db2 = Σ_i dhpre2
    dhpre1 = (1 - h1²) · dh1
    dW1 = xᵀ @ dhpre1       db1 = Σ_i dhpre1

and the shortcut that fuses the softmax and the NLL:
``dlogits = (softmax(logits) - onehot(y)) / n``.

Every intermediate is tagged with ``fg.tag`` under its name, so each ``d<name>`` is checked
against funcgrad's and JAX's cotangents:
``fg.compare_grads(loss, params, x, y, reference=grad, intermediates=intermediates(params, x, y))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from funcgrad.interpret.tagging import tag
from funcgrad.models import mlp as mlp_model

__all__ = [
    "SIZES",
    "TAGS",
    "backward",
    "data",
    "forward",
    "grad",
    "grad_fused",
    "init",
    "intermediates",
    "loss",
]

SIZES = (784, 100, 100, 10)

#: The tagged intermediates, in the order of the backward pass.
TAGS = (
    "logprobs",
    "probs",
    "counts_sum_inv",
    "counts_sum",
    "counts",
    "norm_logits",
    "logit_maxes",
    "logits",
    "h2",
    "hpre2",
    "h1",
    "hpre1",
)

Params = dict[str, list[dict[str, jax.Array]]]


def init(key: jax.Array, sizes: Sequence[int] = SIZES, *, dtype=jnp.float32) -> Params:
    """``fg.models.mlp.init(key, sizes)``: layers[k].W (fan_in, fan_out), layers[k].b zeros."""
    return mlp_model.init(key, sizes, dtype=dtype)


def data(key: jax.Array, n: int = 32, n_in: int = 784, n_classes: int = 10, *, dtype=jnp.float32):
    """A random batch ``(x, y)``: x (n, n_in) standard normal, integer labels y (n,)."""
    x_key, y_key = jax.random.split(key)
    x = jax.random.normal(x_key, (n, n_in), dtype)
    return x, jax.random.randint(y_key, (n,), 0, n_classes)


def _weights(params: Params) -> list[tuple[jax.Array, jax.Array]]:
    layers = params["layers"]
    if len(layers) != 3:
        raise ValueError(
            f"manual.mlp is the 3-layer MLP (784-100-100-10 by default); params have "
            f"{len(layers)} layers"
        )
    return [(layer["W"], layer["b"]) for layer in layers]


def forward(params: Params, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    """Every value of the forward pass by name (each tagged with ``fg.tag``), and the loss."""
    (W1, b1), (W2, b2), (W3, b3) = _weights(params)
    n = x.shape[0]
    v = {}
    v["hpre1"] = tag(x @ W1 + b1, "hpre1")
    v["h1"] = tag(jnp.tanh(v["hpre1"]), "h1")
    v["hpre2"] = tag(v["h1"] @ W2 + b2, "hpre2")
    v["h2"] = tag(jnp.tanh(v["hpre2"]), "h2")
    v["logits"] = tag(v["h2"] @ W3 + b3, "logits")
    v["logit_maxes"] = tag(jnp.max(v["logits"], axis=1, keepdims=True), "logit_maxes")
    v["norm_logits"] = tag(v["logits"] - v["logit_maxes"], "norm_logits")
    v["counts"] = tag(jnp.exp(v["norm_logits"]), "counts")
    v["counts_sum"] = tag(jnp.sum(v["counts"], axis=1, keepdims=True), "counts_sum")
    v["counts_sum_inv"] = tag(v["counts_sum"] ** -1, "counts_sum_inv")
    v["probs"] = tag(v["counts"] * v["counts_sum_inv"], "probs")
    v["logprobs"] = tag(jnp.log(v["probs"]), "logprobs")
    v["loss"] = -jnp.mean(v["logprobs"][jnp.arange(n), y])
    return v


def loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Average negative log-likelihood of labels ``y`` under the MLP's softmax."""
    return forward(params, x, y)["loss"]


def backward(params: Params, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    """Every gradient of the backward pass, from ``dlogprobs`` down to ``dW1``, by hand.

    Keys are ``"d" + name``: dlogprobs, dprobs, ..., dhpre1 for the intermediates (as in
    :data:`TAGS`), then dW3, db3, dW2, db2, dW1, db1.
    """
    _, (W2, _), (W3, _) = _weights(params)  # no dx is computed, so W1 is not needed
    v = forward(params, x, y)
    n = x.shape[0]
    rows = jnp.arange(n)
    d = {}
    d["dlogprobs"] = jnp.zeros_like(v["logprobs"]).at[rows, y].set(-1.0 / n)
    d["dprobs"] = d["dlogprobs"] / v["probs"]
    d["dcounts_sum_inv"] = jnp.sum(v["counts"] * d["dprobs"], axis=1, keepdims=True)
    d["dcounts_sum"] = -d["dcounts_sum_inv"] / v["counts_sum"] ** 2
    d["dcounts"] = v["counts_sum_inv"] * d["dprobs"] + d["dcounts_sum"]
    d["dnorm_logits"] = v["counts"] * d["dcounts"]
    d["dlogit_maxes"] = -jnp.sum(d["dnorm_logits"], axis=1, keepdims=True)
    # The max passes its gradient to the maximal logits, shared equally on ties (as jax.grad).
    is_max = (v["logits"] == v["logit_maxes"]).astype(v["logits"].dtype)
    d["dlogits"] = d["dnorm_logits"] + is_max / jnp.sum(is_max, 1, keepdims=True) * d[
        "dlogit_maxes"
    ]
    d["dh2"] = d["dlogits"] @ W3.T
    d["dhpre2"] = (1 - v["h2"] ** 2) * d["dh2"]
    d["dh1"] = d["dhpre2"] @ W2.T
    d["dhpre1"] = (1 - v["h1"] ** 2) * d["dh1"]
    d["dW3"], d["db3"] = v["h2"].T @ d["dlogits"], jnp.sum(d["dlogits"], axis=0)
    d["dW2"], d["db2"] = v["h1"].T @ d["dhpre2"], jnp.sum(d["dhpre2"], axis=0)
    d["dW1"], d["db1"] = x.T @ d["dhpre1"], jnp.sum(d["dhpre1"], axis=0)
    return d


def _as_params(d: dict[str, jax.Array]) -> Params:
    return {
        "layers": [
            {"W": d["dW1"], "b": d["db1"]},
            {"W": d["dW2"], "b": d["db2"]},
            {"W": d["dW3"], "b": d["db3"]},
        ]
    }


def grad(params: Params, x: jax.Array, y: jax.Array) -> Params:
    """∂loss/∂params by the step-by-step backward, the structure of ``jax.grad(loss)``."""
    return _as_params(backward(params, x, y))


def intermediates(params: Params, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    """``{tag name: hand-derived cotangent}`` for ``compare_grads(..., intermediates=...)``."""
    d = backward(params, x, y)
    return {name: d["d" + name] for name in TAGS}


def grad_fused(params: Params, x: jax.Array, y: jax.Array) -> Params:
    """∂loss/∂params with the fused softmax + NLL step: dlogits = (softmax(logits) - onehot) / n.

    The first eight lines of :func:`backward` collapse to one: for loss = -log softmax(z)[y],
    ∂loss/∂z_j = softmax(z)_j - [j = y].
    """
    _, (W2, _), (W3, _) = _weights(params)
    v = forward(params, x, y)
    n = x.shape[0]
    onehot = jax.nn.one_hot(y, v["logits"].shape[1], dtype=v["logits"].dtype)
    dlogits = (v["probs"] - onehot) / n
    dhpre2 = (1 - v["h2"] ** 2) * (dlogits @ W3.T)
    dhpre1 = (1 - v["h1"] ** 2) * (dhpre2 @ W2.T)
    return _as_params(
        {
            "dW3": v["h2"].T @ dlogits,
            "db3": jnp.sum(dlogits, axis=0),
            "dW2": v["h1"].T @ dhpre2,
            "db2": jnp.sum(dhpre2, axis=0),
            "dW1": x.T @ dhpre1,
            "db1": jnp.sum(dhpre1, axis=0),
        }
    )

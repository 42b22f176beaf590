"""Textbook examples learn with plain jax.grad + optax: XOR to 100%, y = 2·x1 + x2 + 1."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcgrad import losses
from funcgrad.models import linear, mlp


def fit(loss_fn, params, optimizer, steps):
    """Full-batch training: ``steps`` updates of ``params`` with ``jax.grad(loss_fn)``."""

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params


XOR_X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = jnp.array([0, 1, 1, 0])


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_mlp_fits_xor_to_100_percent(head):
    # One logit with sigmoid cross-entropy, or two logits with softmax cross-entropy.
    n_out = 1 if head == "sigmoid" else 2
    apply = functools.partial(mlp.apply, activation="tanh")
    if head == "sigmoid":

        def loss(p):
            return losses.sigmoid_binary_cross_entropy(apply(p, XOR_X), XOR_Y[:, None] * 1.0)

    else:

        def loss(p):
            return losses.softmax_cross_entropy(apply(p, XOR_X), XOR_Y)

    params = mlp.init(jax.random.key(0), [2, 8, n_out])
    params = fit(loss, params, optax.adam(0.05), steps=300)

    logits = apply(params, XOR_X)
    assert float(losses.accuracy(logits, XOR_Y, from_logits=True)) == 1.0
    assert float(loss(params)) < 0.05


def test_linear_regression_recovers_2_1_1():
    # f(x1, x2) = 2·x1 + x2 + 1, with a little noise.
    x = jax.random.uniform(jax.random.key(1), (256, 2), minval=-1.0, maxval=1.0)
    noise = 0.01 * jax.random.normal(jax.random.key(2), (256, 1))
    y = 2.0 * x[:, :1] + x[:, 1:] + 1.0 + noise

    def loss(p):
        return losses.mse(linear.apply(p, x), y)

    params = fit(loss, linear.init(jax.random.key(0), 2), optax.sgd(0.1), steps=600)

    np.testing.assert_allclose(params["W"][:, 0], [2.0, 1.0], atol=1e-2)
    np.testing.assert_allclose(params["b"], [1.0], atol=1e-2)
    assert float(loss(params)) < 2e-4  # the noise variance is 1e-4

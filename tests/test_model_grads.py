"""Every model with every loss: funcgrad's gradient equals jax.grad's.

Tolerances (tests/gradcheck.py): float32 rtol 1e-5 / atol 1e-6, float64 rtol 1e-10 / atol 1e-12.
Both implementations compute the same formulas, but XLA may order a reduction differently for two
different programs, so float32 agreement is "a few ULPs of the largest partial sum", not bitwise;
float64 shows the formulas agree to ~1e-13.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import pytest
from gradcheck import assert_grads_match

from funcgrad import losses
from funcgrad.models import cnn, linear, mlp, transformer

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "softplus", "elu", "identity"]


def _targets(kind: str, logits_shape: tuple[int, ...], key: jax.Array, dtype) -> jax.Array:
    n_classes = logits_shape[-1]
    if kind == "int":
        return jax.random.randint(key, logits_shape[:-1], 0, n_classes)
    if kind == "onehot":
        return jax.nn.one_hot(jax.random.randint(key, logits_shape[:-1], 0, n_classes), n_classes,
                              dtype=dtype)
    if kind == "binary":
        return jax.random.bernoulli(key, 0.5, logits_shape).astype(dtype)
    return jax.random.normal(key, logits_shape, dtype)


# loss name -> (loss(outputs, targets), target kind)
LOSSES: dict[str, tuple[Callable, str]] = {
    "mse": (losses.mse, "real"),
    "bce_probs": (lambda o, t: losses.binary_cross_entropy(jax.nn.sigmoid(o), t), "binary"),
    "bce_logits": (losses.sigmoid_binary_cross_entropy, "binary"),
    "softmax_ce_int": (losses.softmax_cross_entropy, "int"),
    "softmax_ce_onehot": (losses.softmax_cross_entropy, "onehot"),
    "nll": (lambda o, t: losses.nll(losses.log_softmax(o), t), "int"),
}


def _model(name: str, dtype) -> tuple[Callable, object, jax.Array]:
    """(apply(params, x), params, x) for a small instance of each model."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    if name == "linear":
        params = linear.init(k1, 3, 4, dtype=dtype)
        return linear.apply, params, jax.random.normal(k2, (6, 3), dtype)
    if name == "mlp_dropout":
        params = mlp.init(k1, [5, 7, 4], dtype=dtype)
        apply = partial(mlp.apply, dropout_rate=0.3, key=jax.random.PRNGKey(7), train=True)
        return apply, params, jax.random.normal(k2, (6, 5), dtype)
    if name.startswith("mlp_"):
        act = name.removeprefix("mlp_")
        params = mlp.init(k1, [5, 7, 6, 4], dtype=dtype)
        return partial(mlp.apply, activation=act), params, jax.random.normal(k2, (6, 5), dtype)
    if name.startswith("cnn_"):
        pool = name.removeprefix("cnn_")
        kw = dict(conv_channels=[3, 4], dense_sizes=[8, 4], pool=pool)
        params = cnn.init(k1, (8, 8, 2), dtype=dtype, **kw)
        return partial(cnn.apply, pool=pool), params, jax.random.normal(k2, (3, 8, 8, 2), dtype)
    if name == "transformer":
        params = transformer.init(k1, 11, num_classes=4, d_model=8, num_layers=2, max_len=6,
                                  dtype=dtype)
        tokens = jax.random.randint(k2, (3, 6), 0, 11)
        return partial(transformer.apply, num_heads=2), params, tokens
    if name == "transformer_patches":
        params = transformer.init(k1, patch_dim=5, num_classes=4, d_model=8, num_layers=1,
                                  max_len=6, dtype=dtype)
        patches = jax.random.normal(k2, (3, 6, 5), dtype)
        return partial(transformer.apply, num_heads=2), params, patches
    if name == "transformer_lm":
        params = transformer.init(k1, 11, d_model=8, num_layers=1, max_len=6, dtype=dtype)
        tokens = jax.random.randint(k2, (3, 6), 0, 11)
        return partial(transformer.apply, num_heads=2), params, tokens
    raise ValueError(name)


MODELS = [
    "linear",
    *[f"mlp_{a}" for a in ACTIVATIONS],
    "mlp_dropout",
    "cnn_max",
    "cnn_avg",
    "transformer",
    "transformer_patches",
    "transformer_lm",
]


def _case(model_name: str, loss_name: str, dtype):
    apply, params, x = _model(model_name, dtype)
    loss_fn, kind = LOSSES[loss_name]
    out_shape = jax.eval_shape(apply, params, x).shape
    t = _targets(kind, out_shape, jax.random.PRNGKey(1), dtype)

    def loss(params, x, t):
        return loss_fn(apply(params, x), t)

    return loss, params, x, t


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("model_name", MODELS)
def test_model_loss_grad_float32(model_name, loss_name):
    loss, params, x, t = _case(model_name, loss_name, jnp.float32)
    # jit only a representative subset: each jit compiles, and the eager path is the one that
    # exercises every rule through the interpreter.
    jit = loss_name == "softmax_ce_int"
    assert_grads_match(loss, params, x, t, jit=jit)


@pytest.mark.parametrize("model_name", ["linear", "mlp_tanh", "mlp_relu", "mlp_gelu", "cnn_max",
                                        "cnn_avg", "transformer", "transformer_patches",
                                        "transformer_lm"])
@pytest.mark.parametrize("loss_name", ["mse", "softmax_ce_int", "bce_logits"])
def test_model_loss_grad_float64(model_name, loss_name):
    with jax.enable_x64(True):
        loss, params, x, t = _case(model_name, loss_name, jnp.float64)
        assert jax.tree.leaves(params)[0].dtype == jnp.float64
        assert_grads_match(loss, params, x, t, jit=False)


def test_input_gradient_through_cnn():
    # gradients w.r.t. the data too (saliency maps), not only the params
    loss, params, x, t = _case("cnn_max", "softmax_ce_int", jnp.float32)
    assert_grads_match(loss, params, x, t, argnums=(0, 1), jit=False)

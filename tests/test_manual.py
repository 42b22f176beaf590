"""funcgrad.manual: every hand-derived gradient against jax.grad and fg.grad (and JAX's layers)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import assert_trees_close

import funcgrad as fg
from funcgrad import losses, manual
from funcgrad.models import cnn, layers
from funcgrad.models import mlp as mlp_model

KEYS = jax.random.split(jax.random.PRNGKey(42), 8)


def as64(tree):
    return jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def check(loss, grad, *args, argnums=0, intermediates=None, **kwargs):
    """The hand-derived gradient(s) match jax.grad, and fg.grad matches too (default tolerances:
    float32 rtol 1e-5 atol 1e-6, float64 rtol 1e-10 atol 1e-12)."""
    report = fg.compare_grads(loss, *args, argnums=argnums, reference=grad,
                              intermediates=intermediates, jit=True, **kwargs)
    assert report.ok, report
    pairs = {f"{name}~jax" for name in grad} if isinstance(grad, dict) else {"manual~jax"}
    assert {r["pair"] for r in report.rows} == {"fg~jax", *pairs}
    return report


# ---- linear regression ------------------------------------------------------------------------
def test_linear_regression_gradient():
    params = manual.linear.init(KEYS[0])
    x, y = manual.linear.data(KEYS[1], 16)
    assert params["W"].shape == (2, 1) and y.shape == (16, 1)
    check(manual.linear.loss, manual.linear.grad, params, x, y)
    with jax.enable_x64(True):
        check(manual.linear.loss, manual.linear.grad, as64(params), *as64((x, y)))


def test_linear_gradient_is_the_textbook_formula():
    params = {"W": jnp.array([[1.0], [2.0]]), "b": jnp.array([0.5])}
    x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[0.0], [0.0]])
    # ŷ = [1.5, 2.5], dŷ = 2·ŷ / 2 = ŷ, dW = xᵀ dŷ = ŷ, db = Σ dŷ = 4
    g = manual.linear.grad(params, x, y)
    np.testing.assert_allclose(g["W"], [[1.5], [2.5]])
    np.testing.assert_allclose(g["b"], [4.0])


# ---- XOR ----------------------------------------------------------------------------------------
def test_xor_gradient_and_delta_terms():
    params = manual.xor.init(KEYS[2], 2)
    x, t = manual.xor.data()
    report = check(manual.xor.loss, manual.xor.grad, params, x, t,
                   intermediates=manual.xor.deltas(params, x, t))
    assert report.leaves()[:2] == ["tag:net_out", "tag:net_hidden"]
    with jax.enable_x64(True):
        p64, (x64, t64) = as64(params), manual.xor.data(jnp.float64)
        check(manual.xor.loss, manual.xor.grad, p64, x64, t64,
              intermediates=manual.xor.deltas(p64, x64, t64))


def test_xor_forward_is_the_mlp_model_with_sigmoids():
    params = manual.xor.init(KEYS[2], 3)
    x, t = manual.xor.data()
    out = mlp_model.apply(params, x, activation="sigmoid", output_activation="sigmoid")
    np.testing.assert_allclose(manual.xor.forward(params, x)["o"], out, rtol=1e-6)
    np.testing.assert_allclose(manual.xor.loss(params, x, t), 0.5 * losses.mse(out, t),
                               rtol=1e-6)


# ---- the 784-100-100-10 MLP --------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_problem():
    params = manual.mlp.init(KEYS[3])
    x, y = manual.mlp.data(KEYS[4], 32)
    return params, x, y


def test_mlp_layout_is_the_models_and_the_loss_is_softmax_cross_entropy(mlp_problem):
    params, x, y = mlp_problem
    assert [layer["W"].shape for layer in params["layers"]] == [(784, 100), (100, 100), (100, 10)]
    logits = mlp_model.apply(params, x, activation="tanh")
    np.testing.assert_allclose(manual.mlp.loss(params, x, y),
                               losses.softmax_cross_entropy(logits, y), rtol=1e-5)


def test_mlp_every_intermediate_every_parameter_and_the_fused_shortcut(mlp_problem):
    params, x, y = mlp_problem
    report = check(manual.mlp.loss, {"manual": manual.mlp.grad, "fused": manual.mlp.grad_fused},
                   params, x, y, intermediates=manual.mlp.intermediates(params, x, y))
    assert report.leaves()[: len(manual.mlp.TAGS)] == [f"tag:{n}" for n in manual.mlp.TAGS]
    assert report.leaves()[-1] == "layers[2].b"
    assert report.pairs == ["fg~jax", "manual~jax", "fused~jax"]


def test_mlp_in_float64_at_float64_tolerances(mlp_problem):
    params, x, y = mlp_problem
    with jax.enable_x64(True):
        p64, x64 = as64(params), x.astype(jnp.float64)
        report = check(manual.mlp.loss, manual.mlp.grad, p64, x64, y,
                       intermediates=manual.mlp.intermediates(p64, x64, y))
    assert {(r["rtol"], r["atol"]) for r in report.rows} == {(1e-10, 1e-12)}


def test_mlp_fused_dlogits_is_the_step_by_step_one(mlp_problem):
    params, x, y = mlp_problem
    d = manual.mlp.backward(params, x, y)
    v = manual.mlp.forward(params, x, y)
    fused = (jax.nn.softmax(v["logits"]) - jax.nn.one_hot(y, 10)) / x.shape[0]
    np.testing.assert_allclose(d["dlogits"], fused, rtol=1e-4, atol=1e-7)


def test_mlp_backward_names_every_step_in_order(mlp_problem):
    d = manual.mlp.backward(*mlp_problem)
    assert list(d)[:8] == ["dlogprobs", "dprobs", "dcounts_sum_inv", "dcounts_sum", "dcounts",
                           "dnorm_logits", "dlogit_maxes", "dlogits"]
    assert {"dW1", "db1", "dW2", "db2", "dW3", "db3"} <= set(d)
    # The max cancels: its gradient is zero up to rounding.
    assert float(jnp.max(jnp.abs(d["dlogit_maxes"]))) < 1e-6


def test_mlp_needs_three_layers():
    params = mlp_model.init(KEYS[5], [4, 3, 2])
    with pytest.raises(ValueError, match="3-layer MLP"):
        manual.mlp.loss(params, jnp.ones((2, 4)), jnp.array([0, 1]))


# ---- conv2d and max pooling --------------------------------------------------------------------
@pytest.mark.parametrize("stride, padding", [(1, "SAME"), (2, "SAME"), (2, "VALID")])
def test_conv2d_forward_and_backward_match_jax(stride, padding):
    params = layers.conv2d_init(KEYS[5], 3, 2, 3)
    params["b"] = jax.random.normal(KEYS[6], (3,))
    x = jax.random.normal(KEYS[7], (2, 7, 6, 2))
    conv = functools.partial(layers.conv2d, stride=stride, padding=padding)
    dy = jax.random.normal(KEYS[0], jax.eval_shape(conv, params, x).shape)

    @jax.jit  # one compilation for the four computations
    def both(params, x, dy):
        y, pullback = jax.vjp(conv, params, x)
        by_hand = manual.conv.conv2d(params, x, stride=stride, padding=padding)
        backward = manual.conv.conv2d_backward(params, x, dy, stride=stride, padding=padding)
        return (by_hand, backward), (y, pullback(dy))

    got, want = both(params, x, dy)
    assert_trees_close(got, want, rtol=1e-5, atol=1e-5)


def test_conv2d_layer_gradients_for_input_weight_and_bias():
    params = layers.conv2d_init(KEYS[1], 3, 2, 4)
    x = jax.random.normal(KEYS[2], (2, 6, 6, 2))
    target = jax.random.normal(KEYS[3], (2, 6, 6, 4))
    report = check(manual.conv.conv2d_loss, manual.conv.conv2d_loss_grad, params, x, target,
                   argnums=(0, 1))
    assert report.leaves() == ["params.W", "params.b", "x"]


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 7, 5, 2)], ids=["even", "odd-dropped"])
def test_max_pool_forward_and_backward(shape):
    x = jax.random.normal(KEYS[4], shape)
    np.testing.assert_array_equal(manual.conv.max_pool_2x2(x), layers.max_pool(x, 2))
    target = jax.random.normal(KEYS[5], layers.max_pool(x, 2).shape)
    check(manual.conv.max_pool_loss, manual.conv.max_pool_loss_grad, x, target)


def test_max_pool_shares_a_tie_equally_as_the_models_max_pool_does():
    x = jnp.array([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, 1.0]])[None, :, :, None]
    dy = jnp.array([[4.0, 5.0]])[None, :, :, None]
    got = manual.conv.max_pool_2x2_backward(x, dy)
    _, pullback = jax.vjp(lambda x: layers.max_pool(x, 2), x)
    np.testing.assert_array_equal(got, pullback(dy)[0])
    np.testing.assert_array_equal(got[0, :, :, 0], [[1.0, 1.0, 0.0, 2.5], [1.0, 1.0, 2.5, 0.0]])


# ---- the CNN model ------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_cnn_gradient_assembled_from_the_pieces(activation):
    params = cnn.init(KEYS[6], (8, 8, 1), conv_channels=(3, 4), dense_sizes=(8, 5))
    x = jax.random.normal(KEYS[7], (3, 8, 8, 1))
    y = jnp.array([0, 4, 2])
    loss = functools.partial(manual.cnn.loss, activation=activation)
    grad = functools.partial(manual.cnn.grad, activation=activation)
    check(loss, grad, params, x, y)
    if activation == "relu":  # the model's default, once more in float64
        with jax.enable_x64(True):
            check(loss, grad, as64(params), x.astype(jnp.float64), y)


def test_cnn_refuses_an_activation_it_has_no_derivative_for():
    params = cnn.init(KEYS[6], (4, 4, 1), conv_channels=(2,), dense_sizes=(3,))
    with pytest.raises(ValueError, match="supports activation"):
        manual.cnn.grad(params, jnp.ones((1, 4, 4, 1)), jnp.array([0]), activation="gelu")

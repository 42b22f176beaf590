"""The formulations of conv2d and max_pool compute the same function and gradients, with both
engines: im2col (derived VJP), im2col_vjp (hand-written custom_vjp), winograd (derived) and XLA's
own ops; max_pool's
reshape (derived), argmax_vjp (hand-written) and reduce_window; the CNN's pool_first order."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import losses
from funcgrad.models import cnn, layers

GEOMETRIES = [  # (image hw, kernel, stride, padding)
    ((7, 7), (3, 3), 1, "SAME"),
    ((7, 7), (3, 3), 2, "SAME"),
    ((8, 6), (3, 3), 1, "VALID"),
    ((9, 9), (3, 2), 2, "VALID"),
    ((5, 5), (1, 1), 1, "SAME"),
    ((6, 6), (5, 5), 3, "SAME"),
]


@pytest.mark.parametrize(("hw", "kernel", "stride", "padding"), GEOMETRIES)
def test_im2col_conv_equals_xla_conv_and_so_do_their_gradients(hw, kernel, stride, padding):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = layers.conv2d_init(k1, kernel, 3, 4)
    params["b"] = jax.random.normal(k3, (4,))
    x = jax.random.normal(k2, (2, *hw, 3))

    def out(impl):
        return layers.conv2d(params, x, stride=stride, padding=padding, impl=impl)

    np.testing.assert_allclose(out("im2col"), out("xla"), rtol=1e-5, atol=1e-5)

    def loss(p, x, impl):
        y = layers.conv2d(p, x, stride=stride, padding=padding, impl=impl)
        return jnp.sum(jnp.tanh(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

    reference = jax.grad(loss, argnums=(0, 1))(params, x, "xla")
    for impl in ("im2col", "im2col_vjp", "winograd"):  # 3 channels: winograd is im2col_vjp
        np.testing.assert_allclose(out(impl), out("xla"), rtol=1e-5, atol=1e-5)
        for grad in (jax.grad, fg.grad):
            got = grad(loss, argnums=(0, 1))(params, x, impl)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# Stride-1 geometries, where im2col_vjp's hand-written backward runs; odd and even batches (the
# weight gradient is split into two half-batch matmuls when the batch is even).
VJP_GEOMETRIES = [
    ((7, 7), (3, 3), "SAME", 2),
    ((7, 7), (3, 3), "SAME", 3),
    ((8, 6), (3, 3), "VALID", 4),
    ((6, 7), (2, 4), "SAME", 2),  # even kernel: SAME pads (0, 1) / (1, 2)
    ((6, 7), (4, 2), "VALID", 1),
    ((5, 5), (1, 1), "SAME", 2),
]


@pytest.mark.parametrize(("hw", "kernel", "padding", "batch"), VJP_GEOMETRIES)
def test_im2col_vjp_backward_equals_the_derived_one_jitted_and_eager(hw, kernel, padding, batch):
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = layers.conv2d_init(k1, kernel, 3, 5)
    x = jax.random.normal(k2, (batch, *hw, 3))
    ct = jax.random.normal(k3, layers.conv2d(params, x, padding=padding).shape)

    def loss(p, x, impl):
        return jnp.sum(layers.conv2d(p, x, padding=padding, impl=impl) * ct)

    expected = jax.grad(loss, argnums=(0, 1))(params, x, "im2col")
    for grad in (jax.grad, fg.grad):
        eager = grad(loss, argnums=(0, 1))
        jitted = jax.jit(eager, static_argnums=2)
        for got in (eager(params, x, "im2col_vjp"), jitted(params, x, "im2col_vjp")):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
                assert a.shape == b.shape and a.dtype == b.dtype
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_im2col_vjp_second_derivatives_and_vmap():
    params = layers.conv2d_init(jax.random.key(0), 3, 2, 3)
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 2))

    def loss(p, x, impl):
        return jnp.sum(jnp.tanh(layers.conv2d(p, x, impl=impl)) ** 2)

    def grad_norm(x, impl, grad):  # d/dx of |dL/dW|^2: reverse over reverse
        return jnp.sum(grad(loss)(params, x, impl)["W"] ** 2)

    expected = jax.grad(grad_norm)(x, "im2col", jax.grad)
    for grad in (jax.grad, fg.grad):
        got = grad(grad_norm)(x, "im2col_vjp", grad)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, None))
    np.testing.assert_allclose(
        per_example(params, x[:, None], "im2col_vjp")["W"],
        per_example(params, x[:, None], "im2col")["W"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_im2col_vjp_has_no_forward_mode_as_documented():
    params = layers.conv2d_init(jax.random.key(0), 3, 1, 2)
    x = jnp.ones((1, 4, 4, 1))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: layers.conv2d(params, x, impl="im2col_vjp"), (x,), (x,))
    # The default formulation has one: it is what jax.hessian / jacfwd users should pick.
    jax.jvp(lambda x: layers.conv2d(params, x, impl="im2col"), (x,), (x,))


def test_reshape_pool_equals_reduce_window_pool_including_odd_sizes():
    x = jax.random.normal(jax.random.key(1), (2, 7, 9, 3))  # 7x9 crops to 6x8: VALID windows
    for window in (2, 3):
        a = layers.max_pool(x, window, impl="reshape")
        b = layers.max_pool(x, window, impl="xla")
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)

        def loss(x, impl, window=window):
            return jnp.sum(jnp.sin(layers.max_pool(x, window, impl=impl)))

        expected = jax.grad(loss)(x, "xla")  # random inputs: no ties, one max per window
        np.testing.assert_allclose(jax.grad(loss)(x, "reshape"), expected, rtol=1e-6)
        np.testing.assert_allclose(fg.grad(loss)(x, "reshape"), expected, rtol=1e-6)


def test_pool_tie_conventions_differ_as_documented():
    x = jnp.ones((1, 2, 2, 1))  # one window, four equal maxima
    shared = jax.grad(lambda x: layers.max_pool(x, impl="reshape").sum())(x)
    first = jax.grad(lambda x: layers.max_pool(x, impl="xla").sum())(x)
    np.testing.assert_allclose(shared[0, :, :, 0], [[0.25, 0.25], [0.25, 0.25]])
    np.testing.assert_allclose(first[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_overlapping_or_padded_pools_fall_back_to_reduce_window():
    x = jax.random.normal(jax.random.key(2), (1, 6, 6, 2))
    for kwargs in ({"stride": 1}, {"padding": "SAME"}):
        np.testing.assert_array_equal(
            layers.max_pool(x, 3, impl="reshape", **kwargs),
            layers.max_pool(x, 3, impl="xla", **kwargs),
        )


WINOGRAD_GEOMETRIES = [  # (image hw, padding, batch): even, odd and tiny images
    ((14, 14), "SAME", 2),
    ((7, 9), "SAME", 1),
    ((8, 6), "VALID", 2),
    ((9, 7), "VALID", 1),
    ((3, 3), "SAME", 2),
]


@pytest.mark.parametrize(("hw", "padding", "batch"), WINOGRAD_GEOMETRIES)
def test_winograd_conv_equals_xla_conv_and_so_do_its_derived_gradients(hw, padding, batch):
    k1, k2, k3 = jax.random.split(jax.random.key(9), 3)
    params = layers.conv2d_init(k1, 3, 8, 5)  # 8 input channels: the Winograd path
    params["b"] = jax.random.normal(k3, (5,))
    x = jax.random.normal(k2, (batch, *hw, 8))

    def out(impl):
        return layers.conv2d(params, x, padding=padding, impl=impl)

    np.testing.assert_allclose(out("winograd"), out("xla"), rtol=1e-5, atol=1e-5)
    ct = jax.random.normal(k3, out("xla").shape)

    def loss(p, x, impl):
        return jnp.sum(jnp.tanh(layers.conv2d(p, x, padding=padding, impl=impl)) * ct)

    reference = jax.grad(loss, argnums=(0, 1))(params, x, "im2col")
    for grad in (jax.grad, fg.grad):
        eager = grad(loss, argnums=(0, 1))
        jitted = jax.jit(eager, static_argnums=2)
        for got in (eager(params, x, "winograd"), jitted(params, x, "winograd")):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
                assert a.shape == b.shape and a.dtype == b.dtype
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_winograd_falls_back_where_it_does_not_apply():
    # Few input channels, other kernels and strides compute as im2col_vjp / im2col: the same
    # program as asking for those.
    x8 = jax.random.normal(jax.random.key(0), (1, 6, 6, 8))
    cases = [
        (layers.conv2d_init(jax.random.key(1), 3, 4, 2), x8[..., :4], {}),  # 4 channels
        (layers.conv2d_init(jax.random.key(2), 5, 8, 2), x8, {}),  # 5x5 kernel
        (layers.conv2d_init(jax.random.key(3), 3, 8, 2), x8, {"stride": 2}),  # stride 2
    ]
    for params, x, kwargs in cases:
        fallback = "im2col_vjp" if not kwargs else "im2col"

        def program(impl, params=params, x=x, kwargs=kwargs):
            return str(jax.make_jaxpr(lambda p: layers.conv2d(p, x, impl=impl, **kwargs))(params))

        assert program("winograd") == program(fallback)


@pytest.mark.parametrize("window", [2, 3, (2, 3)])
def test_argmax_vjp_pool_equals_the_derived_gradient(window):
    # Random inputs: one maximum per window, where every convention agrees. The reference is
    # the gradient funcgrad derives for the reshape formulation, primitive by primitive.
    x = jax.random.normal(jax.random.key(4), (2, 7, 9, 3))
    np.testing.assert_array_equal(
        layers.max_pool(x, window, impl="argmax_vjp"), layers.max_pool(x, window)
    )

    def loss(x, impl):
        return jnp.sum(jnp.sin(layers.max_pool(x, window, impl=impl)) * jnp.cos(x[:, :2, :3]).sum())

    expected = fg.grad(loss)(x, "reshape")
    for grad in (jax.grad, fg.grad):
        eager = grad(loss)
        for got in (eager(x, "argmax_vjp"), jax.jit(eager, static_argnums=1)(x, "argmax_vjp")):
            assert got.dtype == x.dtype
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_argmax_vjp_pool_sends_ties_to_the_first_maximum_like_reduce_window():
    x = jnp.array([[3.0, 1.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]])[None, :, :, None]
    for grad in (jax.grad, fg.grad):
        got = grad(lambda x: layers.max_pool(x, impl="argmax_vjp").sum())(x)
        first = jax.grad(lambda x: layers.max_pool(x, impl="xla").sum())(x)
        np.testing.assert_array_equal(got, first)
        np.testing.assert_array_equal(got[0, :, :, 0], [[1, 0, 1, 0], [0, 0, 0, 0]])
    per_example = jax.vmap(jax.grad(lambda x: layers.max_pool(x, impl="argmax_vjp").sum()))
    np.testing.assert_array_equal(per_example(x[:, None])[:, 0], first)


def test_im2col_vjp_evaluates_with_xla_convolution_and_trains_with_patches():
    # Not differentiated, conv2d(impl="im2col_vjp") is XLA's convolution; differentiated, its
    # forward pass is patches @ W. Both equal the derived formulation up to float rounding.
    params = layers.conv2d_init(jax.random.key(5), 3, 4, 6)
    x = jax.random.normal(jax.random.key(6), (3, 9, 8, 4))
    for padding in ("SAME", "VALID"):
        want = layers.conv2d(params, x, padding=padding, impl="im2col")
        got = jax.jit(lambda p, x, padding=padding: layers.conv2d(
            p, x, padding=padding, impl="im2col_vjp"))(params, x)  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        value, _ = fg.vjp(lambda x, padding=padding: layers.conv2d(
            params, x, padding=padding, impl="im2col_vjp"), x)  # fmt: skip
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "identity"])
def test_pool_first_is_the_same_function_and_gradient(activation):
    params = cnn.init(jax.random.key(7), (12, 12, 1), conv_channels=(8, 8), dense_sizes=(16, 10))
    x = jax.random.normal(jax.random.key(8), (6, 12, 12, 1))
    y = jnp.arange(6) % 10
    plain = cnn.apply(params, x, activation=activation)
    pooled_first = cnn.apply(params, x, activation=activation, pool_first=True)
    np.testing.assert_array_equal(pooled_first, plain)

    def loss(p, **kwargs):
        return losses.softmax_cross_entropy(cnn.apply(p, x, activation=activation, **kwargs), y)

    expected = fg.grad(loss)(params)  # derived, conv -> act -> pool
    fast = {"pool_first": True, "conv_impl": "im2col_vjp", "pool_impl": "argmax_vjp"}
    for kwargs in ({"pool_first": True}, fast, cnn.FAST):
        for grad in (jax.grad, fg.grad):
            got = grad(functools.partial(loss, **kwargs))(params)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_pool_first_needs_an_activation_that_commutes_with_max():
    params = cnn.init(jax.random.key(0), (8, 8, 1), conv_channels=(2,), dense_sizes=(3,))
    with pytest.raises(ValueError, match="pool_first=True needs an activation that commutes"):
        cnn.apply(params, jnp.ones((1, 8, 8, 1)), activation="gelu", pool_first=True)


def test_unknown_impl_is_refused():
    params = layers.conv2d_init(jax.random.key(0), 3, 1, 2)
    with pytest.raises(ValueError, match="conv2d impl must be one of"):
        layers.conv2d(params, jnp.ones((1, 4, 4, 1)), impl="fft")
    with pytest.raises(ValueError, match="max_pool impl must be one of"):
        layers.max_pool(jnp.ones((1, 4, 4, 1)), impl="sort")


def test_the_cnn_trains_the_same_with_either_formulation():
    # 8 channels into the second convolution: its Winograd path (the first has 1: im2col_vjp).
    params = cnn.init(jax.random.key(0), (12, 12, 1), conv_channels=(8, 8), dense_sizes=(16, 10))
    x = jax.random.normal(jax.random.key(1), (6, 12, 12, 1))
    y = jnp.arange(6) % 10

    def loss(p, conv_impl, pool_impl):
        return losses.softmax_cross_entropy(
            cnn.apply(p, x, conv_impl=conv_impl, pool_impl=pool_impl), y
        )

    ref_loss, ref_grads = jax.value_and_grad(loss)(params, "xla", "xla")
    for conv_impl, pool_impl in [
        ("im2col", "reshape"),
        ("im2col_vjp", "reshape"),
        ("im2col_vjp", "argmax_vjp"),
        ("winograd", "argmax_vjp"),
    ]:
        for value_and_grad in (jax.value_and_grad, fg.value_and_grad):
            got_loss, got_grads = value_and_grad(loss)(params, conv_impl, pool_impl)
            np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
            for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

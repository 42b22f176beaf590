"""funcgrad.models: shapes, param layouts, init statistics, jit/vmap/grad, layers, bad input."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad.models import (
    activations,
    cnn,
    initializers,
    layers,
    linear,
    mlp,
    summary,
    transformer,
)

KEY = jax.random.key(0)

# Small configurations keep compile times low; the MNIST-default CNN is tested separately.
SMALL_CNN = dict(input_shape=(12, 12, 1), conv_channels=(4, 8), dense_sizes=(16, 10))


# Test inputs come from numpy's generator: every new shape drawn with jax.random costs a compile.
def _normal(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _ids(shape, vocab=20, seed=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# One (params, example batch, apply) per model; every test below runs over all of them. Built once
# per session: each new array shape costs a compile on CPU.
MODELS = {
    "linear": lambda: (linear.init(KEY, 3, 2), _normal((5, 3)), linear.apply),
    "mlp": lambda: (mlp.init(KEY, [6, 8, 8, 3]), _normal((5, 6)), mlp.apply),
    "cnn": lambda: (cnn.init(KEY, **SMALL_CNN), _normal((5, 12, 12, 1)), cnn.apply),
    "transformer_classifier": lambda: (
        transformer.init(KEY, 20, num_classes=4, d_model=16, num_layers=2, max_len=8),
        _ids((5, 7)),
        transformer.apply,  # default num_heads=4
    ),
    "transformer_lm": lambda: (
        transformer.init(KEY, 20, d_model=16, num_layers=1, max_len=8),
        _ids((5, 7)),
        transformer.apply,  # default num_heads=4
    ),
    "transformer_patches": lambda: (
        transformer.init(KEY, patch_dim=6, num_classes=4, d_model=16, num_layers=1, max_len=8),
        _normal((5, 7, 6)),
        transformer.apply,
    ),
}
OUTPUT_SHAPES = {
    "linear": (5, 2),
    "mlp": (5, 3),
    "cnn": (5, 10),
    "transformer_classifier": (5, 4),
    "transformer_lm": (5, 7, 20),
    "transformer_patches": (5, 4),
}


@functools.cache
def built(name):
    """(params, x, apply, apply(params, x) run eagerly) for one of MODELS."""
    params, x, apply = MODELS[name]()
    return params, x, apply, apply(params, x)


def params_of(name):
    return built(name)[0]


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return request.param, *built(request.param)


# ---------------------------------------------------------------------------------------------
# Every model: shapes, jit, vmap, grad, determinism


def test_output_shape_batched_and_single_example(model):
    name, params, x, apply, y = model
    assert y.shape == OUTPUT_SHAPES[name]
    # One example without the batch axis (the eager run is checked by the vmap test below).
    assert jax.eval_shape(apply, params, x[0]).shape == OUTPUT_SHAPES[name][1:]


def test_jit_apply_equals_apply(model):
    _, params, x, apply, y = model
    np.testing.assert_allclose(jax.jit(apply)(params, x), y, rtol=1e-5, atol=1e-5)


def test_vmap_over_examples_equals_batched_call(model):
    _, params, x, apply, y = model
    per_example = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(params, x)
    np.testing.assert_allclose(per_example, y, rtol=1e-5, atol=1e-5)


def test_grad_reaches_every_parameter(model):
    _, params, x, apply, _ = model
    grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(apply(p, x)))))(params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.max(np.abs(g)) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_params_are_a_pytree_of_float_arrays_only(model):
    _, params, _, _, _ = model
    for leaf in jax.tree_util.tree_leaves(params):
        assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer_lm"])
def test_init_is_deterministic_from_the_key(name):
    init = {
        "mlp": lambda k: mlp.init(k, [6, 8, 8, 3]),
        "cnn": lambda k: cnn.init(k, **SMALL_CNN),
        "transformer_lm": lambda k: transformer.init(k, 20, d_model=16, num_layers=1, max_len=8),
    }[name]
    a, b, c = init(jax.random.key(7)), init(jax.random.key(7)), init(jax.random.key(8))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(params_of(name))
    # Every randomly initialised array changes with the key (biases and norms are constant).
    random_names = ("['W']", "['wq']", "['tokens']", "['positions']")
    for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(c)):
        if jax.tree_util.keystr(path).endswith(random_names):
            assert not np.array_equal(u, v), jax.tree_util.keystr(path)


def test_legacy_uint32_keys_work_too():
    old, new = jax.random.PRNGKey(3), jax.random.key(3)
    assert mlp.init(old, [6, 8, 8, 3])["layers"][0]["W"].shape == (6, 8)
    assert mlp.init(new, [6, 8, 8, 3])["layers"][0]["W"].shape == (6, 8)


# ---------------------------------------------------------------------------------------------
# Param layouts: named the way a person says them


@functools.cache
def mnist_mlp():
    return mlp.init(KEY, [784, 64, 10])


def _paths(params):
    return {
        jax.tree_util.keystr(p): leaf.shape
        for p, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


# Layouts need shapes only: jax.eval_shape traces init without drawing any random numbers.


def test_linear_param_layout():
    assert _paths(jax.eval_shape(lambda: linear.init(KEY, 2))) == {"['W']": (2, 1), "['b']": (1,)}


def test_mlp_param_layout():
    assert _paths(mnist_mlp()) == {
        "['layers'][0]['W']": (784, 64),
        "['layers'][0]['b']": (64,),
        "['layers'][1]['W']": (64, 10),
        "['layers'][1]['b']": (10,),
    }


def test_default_cnn_is_the_mnist_architecture():
    params = jax.eval_shape(lambda: cnn.init(KEY))
    assert _paths(params) == {
        "['convs'][0]['W']": (3, 3, 1, 32),
        "['convs'][0]['b']": (32,),
        "['convs'][1]['W']": (3, 3, 32, 64),
        "['convs'][1]['b']": (64,),
        "['head'][0]['W']": (7 * 7 * 64, 128),
        "['head'][0]['b']": (128,),
        "['head'][1]['W']": (128, 10),
        "['head'][1]['b']": (10,),
    }
    images = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    assert jax.eval_shape(cnn.apply, params, images).shape == (2, 10)


def test_transformer_param_layout():
    paths = _paths(
        jax.eval_shape(
            lambda: transformer.init(
                KEY, 20, num_classes=3, d_model=16, num_layers=2, d_ff=32, max_len=8
            )
        )
    )
    assert paths["['embed']['tokens']"] == (20, 16)
    assert paths["['embed']['positions']"] == (8, 16)
    for i in range(2):
        block = f"['blocks'][{i}]"
        for w in ("wq", "wk", "wv", "wo"):
            assert paths[f"{block}['attn']['{w}']"] == (16, 16)
        assert paths[f"{block}['ln1']['scale']"] == (16,)
        assert paths[f"{block}['ln2']['bias']"] == (16,)
        assert paths[f"{block}['mlp']['fc1']['W']"] == (16, 32)
        assert paths[f"{block}['mlp']['fc2']['W']"] == (32, 16)
    assert paths["['classifier']['W']"] == (16, 3)
    assert "['lm_head']['W']" not in paths
    lm = _paths(params_of("transformer_lm"))
    assert lm["['lm_head']['W']"] == (16, 20) and "['classifier']['W']" not in lm


def test_transformer_patch_model_layout_and_errors():
    params = params_of("transformer_patches")
    paths = _paths(params)
    assert paths["['embed']['patches']['W']"] == (6, 16)
    assert paths["['embed']['patches']['b']"] == (16,)
    assert paths["['embed']['positions']"] == (8, 16)
    assert "['embed']['tokens']" not in paths and paths["['classifier']['W']"] == (16, 4)
    assert [r["type"] for r in fg.models.summary_rows(params)[:2]] == ["embedding", "dense"]
    with pytest.raises(ValueError, match=r"pass vocab_size .* or patch_dim .*, exactly one"):
        transformer.init(KEY)
    with pytest.raises(ValueError, match=r"pass vocab_size .* or patch_dim .*, exactly one"):
        transformer.init(KEY, 20, patch_dim=6, num_classes=3)
    with pytest.raises(ValueError, match=r"a patch model is a classifier .* pass num_classes"):
        transformer.init(KEY, patch_dim=6)


def test_patch_model_equals_the_token_model_on_one_hot_patches():
    # A one-hot patch times the patch embedding (zero bias) is an embedding-table row: the two
    # input paths compute the same function.
    patch = transformer.init(KEY, patch_dim=20, num_classes=3, d_model=16, num_layers=1, max_len=8)
    tokens = dict(patch, embed={"tokens": patch["embed"]["patches"]["W"],
                                "positions": patch["embed"]["positions"]})  # fmt: skip
    ids = _ids((4, 6))
    np.testing.assert_allclose(
        transformer.apply(patch, jax.nn.one_hot(ids, 20)),
        transformer.apply(tokens, ids),
        rtol=1e-5,
        atol=1e-6,
    )


def test_image_patches_cut_row_by_row():
    x = jnp.arange(2 * 4 * 6 * 2, dtype=jnp.float32).reshape(2, 4, 6, 2)
    p = layers.image_patches(x, 2)
    assert p.shape == (2, 6, 8)
    for n, i, j in [(0, 0, 0), (1, 1, 2), (0, 0, 2)]:
        np.testing.assert_array_equal(
            p[n, i * 3 + j], x[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(-1)
        )
    assert layers.image_patches(jnp.ones((2, 28, 28, 1)), 7).shape == (2, 16, 49)
    assert layers.image_patches(jnp.ones((6, 4, 3)), (3, 2)).shape == (4, 18)  # unbatched
    with pytest.raises(ValueError, match="image size 28x28 is not a multiple of the patch size"):
        layers.image_patches(jnp.ones((1, 28, 28, 1)), 5)


def test_models_are_lazy_attributes_of_the_package():
    assert fg.models.mlp is mlp
    assert fg.models.summary is summary
    assert fg.models.init_schemes is initializers


# ---------------------------------------------------------------------------------------------
# Initializers


@pytest.mark.parametrize(
    "name, shape, variance",
    [
        ("he_normal", (1000, 1000), 2 / 1000),
        ("he_normal", (400, 900), 2 / 400),
        ("he_uniform", (400, 900), 2 / 400),
        ("glorot_normal", (400, 900), 2 / 1300),
        ("glorot_uniform", (400, 900), 2 / 1300),
        ("lecun_normal", (400, 900), 1 / 400),
        ("lecun_uniform", (400, 900), 1 / 400),
        # A conv kernel's fans include the receptive field: fan_in = 3·3·64 = 576.
        ("he_normal", (3, 3, 64, 128), 2 / 576),
        ("glorot_uniform", (3, 3, 64, 128), 2 / (576 + 1152)),
    ],
)
def test_init_variance_matches_the_scheme(name, shape, variance):
    w = initializers.get(name)(jax.random.key(42), shape)
    assert w.shape == shape and w.dtype == jnp.float32
    w = np.asarray(w, np.float64)
    assert abs(w.var() / variance - 1) < 0.10
    assert abs(w.mean()) < 0.05 * math.sqrt(variance)


@pytest.mark.parametrize("name", ["glorot_uniform", "he_uniform", "lecun_uniform"])
def test_uniform_inits_stay_within_their_limit(name):
    fan_in, fan_out = 400, 900
    limit = {
        "glorot_uniform": math.sqrt(6 / (fan_in + fan_out)),
        "he_uniform": math.sqrt(6 / fan_in),
        "lecun_uniform": math.sqrt(3 / fan_in),
    }[name]
    w = initializers.get(name)(jax.random.key(0), (fan_in, fan_out))
    largest = np.max(np.abs(np.asarray(w)))
    assert 0.99 * limit < largest <= limit


def test_zeros_ones_normal_and_aliases():
    assert not np.any(initializers.zeros(KEY, (3, 4)))
    assert np.all(np.asarray(initializers.ones(KEY, (2,))) == 1)
    w = initializers.normal(0.02)(KEY, (400, 900))
    assert abs(np.std(np.asarray(w)) / 0.02 - 1) < 0.05
    assert initializers.get("xavier_uniform") is initializers.glorot_uniform
    assert initializers.get("kaiming_normal") is initializers.he_normal
    assert initializers.fans((3, 3, 2, 5)) == (18, 45)
    with pytest.raises(ValueError, match=r"unknown initializer 'he'.*he_normal"):
        initializers.get("he")


def test_init_scheme_is_selectable_per_model():
    he = mlp.init(KEY, [400, 900], w_init="he_normal")["layers"][0]["W"]
    assert abs(np.var(np.asarray(he)) / (2 / 400) - 1) < 0.10
    zero = linear.init(KEY, 2, w_init="zeros")
    assert not np.any(np.asarray(zero["W"]))


# ---------------------------------------------------------------------------------------------
# Activations


@pytest.mark.parametrize(
    "name, reference",
    [
        ("relu", lambda x: np.maximum(x, 0)),
        ("leaky_relu", lambda x: np.where(x >= 0, x, 0.01 * x)),
        ("tanh", np.tanh),
        ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
        ("gelu", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
        ("softplus", lambda x: np.log1p(np.exp(x))),
        ("elu", lambda x: np.where(x > 0, x, np.expm1(x))),
        ("identity", lambda x: x),
    ],
)
def test_activation_by_name_matches_its_formula(name, reference):
    x = np.linspace(-4, 4, 17, dtype=np.float32)
    np.testing.assert_allclose(
        activations.get(name)(jnp.asarray(x)), reference(x), rtol=1e-5, atol=1e-6
    )


def test_mlp_activation_per_layer():
    params, x, _, _ = built("mlp")
    h1 = jnp.tanh(layers.dense(params["layers"][0], x))
    h2 = jax.nn.elu(layers.dense(params["layers"][1], h1))
    expected = jax.nn.sigmoid(layers.dense(params["layers"][2], h2))
    got = mlp.apply(params, x, activation=["tanh", "elu"], output_activation="sigmoid")
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    hidden = mlp.layer_outputs(params, x, activation="tanh")
    assert [h.shape for h in hidden] == [(5, 8), (5, 8), (5, 3)]
    np.testing.assert_allclose(hidden[0], h1, rtol=1e-6)


def test_mlp_activation_errors():
    params, x, _, _ = built("mlp")
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*relu"):
        mlp.apply(params, x, activation="swish")
    with pytest.raises(ValueError, match="3 activations for 2 hidden layers"):
        mlp.apply(params, x, activation=["relu", "tanh", "elu"])


# ---------------------------------------------------------------------------------------------
# Dropout


def test_dropout_needs_a_key_in_training():
    params, x, _, _ = built("mlp")
    with pytest.raises(ValueError, match=r"mlp layers\[0\] \(dropout\).*needs a random key"):
        mlp.apply(params, x, dropout_rate=0.5, train=True)


def test_dropout_is_off_at_evaluation_and_keyed_in_training():
    params, x, _, plain = built("mlp")
    np.testing.assert_array_equal(mlp.apply(params, x, dropout_rate=0.5), plain)
    train = jax.jit(functools.partial(mlp.apply, dropout_rate=0.5, train=True))
    a = train(params, x, key=jax.random.key(1))
    b = train(params, x, key=jax.random.key(1))
    c = train(params, x, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain) and not np.allclose(a, c)


def test_dropout_zeroes_at_rate_and_rescales_survivors():
    x = jnp.ones((200, 500))
    y = layers.dropout(x, 0.3, key=jax.random.key(0), train=True)
    y = np.asarray(y)
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        layers.dropout(x, 1.0, key=KEY, train=True)


def test_cnn_and_transformer_dropout():
    params, x, _, plain = built("cnn")
    with pytest.raises(ValueError, match=r"cnn head\[0\] \(dropout\)"):
        cnn.apply(params, x, dropout_rate=0.5, train=True)
    train = jax.jit(functools.partial(cnn.apply, dropout_rate=0.5, train=True))
    out = train(params, x, key=KEY)
    assert out.shape == plain.shape and not np.allclose(out, plain)
    params, ids, apply, plain = built("transformer_lm")
    with pytest.raises(ValueError, match=r"transformer embed \(dropout\)"):
        apply(params, ids, dropout_rate=0.1, train=True)
    train = jax.jit(functools.partial(apply, dropout_rate=0.1, train=True))
    out = train(params, ids, key=KEY)
    assert out.shape == plain.shape and not np.allclose(out, plain)


# ---------------------------------------------------------------------------------------------
# Layers against straightforward numpy references


def _conv_reference(x, w, b, stride, padding):
    """Direct loops: y[n, i, j, o] = Σ x[n, s·i + di, s·j + dj, c] W[di, dj, c, o] + b[o]."""
    kh, kw = w.shape[:2]
    if padding == "SAME":
        h, wd = x.shape[1:3]
        out_h, out_w = -(-h // stride), -(-wd // stride)
        pad_h = max((out_h - 1) * stride + kh - h, 0)
        pad_w = max((out_w - 1) * stride + kw - wd, 0)
        x = np.pad(
            x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
        )
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, w.shape[3]), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            y[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, w)
    return y + b


@pytest.mark.parametrize(
    "padding, stride, out_hw", [("SAME", 1, 7), ("SAME", 2, 4), ("VALID", 1, 5), ("VALID", 2, 3)]
)
def test_conv2d_matches_direct_loops(padding, stride, out_hw):
    params = {"W": _normal((3, 3, 2, 4), seed=3), "b": _normal((4,), seed=4)}
    x = np.asarray(_normal((2, 7, 7, 2)))
    y = layers.conv2d(params, jnp.asarray(x), stride=stride, padding=padding)
    assert y.shape == (2, out_hw, out_hw, 4)
    expected = _conv_reference(x, np.asarray(params["W"]), np.asarray(params["b"]), stride, padding)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_pooling_matches_numpy():
    x = np.asarray(_normal((2, 6, 4, 3)))
    blocks = x.reshape(2, 3, 2, 2, 2, 3)  # (n, H/2, 2, W/2, 2, c)
    np.testing.assert_allclose(
        layers.max_pool(jnp.asarray(x), 2), blocks.max(axis=(2, 4)), rtol=1e-6
    )
    np.testing.assert_allclose(
        layers.avg_pool(jnp.asarray(x), 2), blocks.mean(axis=(2, 4)), rtol=1e-5
    )
    # Window 3, stride 1, VALID on H=6, W=4 gives 4 x 2.
    assert layers.max_pool(jnp.asarray(x), 3, stride=1).shape == (2, 4, 2, 3)


def test_avg_pool_same_padding_does_not_count_padded_cells():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    y = layers.avg_pool(x, 2, padding="SAME")  # windows rows {0,1},{2}; cols {0,1},{2}
    expected = np.array([[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8.0]])
    np.testing.assert_allclose(y[0, :, :, 0], expected, rtol=1e-6)
    assert layers.max_pool(x, 2, padding="SAME")[0, :, :, 0].tolist() == [[4.0, 5.0], [7.0, 8.0]]


def test_pool_and_padding_validation():
    with pytest.raises(ValueError, match="padding must be 'SAME' or 'VALID'"):
        layers.max_pool(jnp.ones((1, 4, 4, 1)), 2, padding="FULL")
    with pytest.raises(ValueError, match="pool must be 'max', 'avg' or None"):
        cnn.init(KEY, **SMALL_CNN, pool="min")


def test_layer_norm_normalises_the_last_axis():
    x = 3.0 + 5.0 * _normal((4, 10))
    y = layers.layer_norm(layers.layer_norm_init(10), x)
    np.testing.assert_allclose(np.mean(y, axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(np.var(y, axis=-1), 1, rtol=1e-3)
    params = {"scale": jnp.full((10,), 2.0), "bias": jnp.full((10,), -1.0)}
    np.testing.assert_allclose(layers.layer_norm(params, x), 2 * y - 1, rtol=1e-5, atol=1e-5)


def _attention_reference(params, x, num_heads, causal):
    """numpy, one head at a time with explicit column slices: the textbook formula."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    d = x.shape[-1]
    dh = d // num_heads
    q, k, v = (x @ p[f"w{n}"] + p[f"b{n}"] for n in "qkv")
    heads = []
    for h in range(num_heads):
        cols = slice(h * dh, (h + 1) * dh)
        scores = q[..., cols] @ np.swapaxes(k[..., cols], -1, -2) / np.sqrt(dh)
        if causal:
            scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        heads.append(weights @ v[..., cols])
    return np.concatenate(heads, axis=-1) @ p["wo"] + p["bo"]


@pytest.mark.parametrize("num_heads, causal", [(1, False), (4, False), (2, True)])
def test_multi_head_attention_matches_per_head_formula(num_heads, causal):
    params = params_of("transformer_lm")["blocks"][0]["attn"]
    x = np.random.default_rng(0).standard_normal((3, 5, 16))
    attention = jax.jit(
        functools.partial(layers.multi_head_attention, num_heads=num_heads, causal=causal)
    )
    got = attention(params, jnp.asarray(x, jnp.float32))
    expected = _attention_reference(params, x, num_heads, causal)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_language_model_is_causal_unless_told_otherwise():
    lm, ids, _, _ = built("transformer_lm")
    changed = ids.at[:, 4].set((ids[:, 4] + 1) % 20)
    causal = jax.jit(transformer.apply)
    a, b = causal(lm, ids), causal(lm, changed)
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 4:], b[:, 4:])
    # Without the mask, a later token changes earlier positions.
    full = jax.jit(functools.partial(transformer.apply, causal=False))
    a, b = full(lm, ids), full(lm, changed)
    assert not np.allclose(a[:, :4], b[:, :4])


def test_embedding_lookup():
    table = jnp.arange(12.0).reshape(4, 3)
    looked_up = layers.embed(table, jnp.array([[2, 0, 4]]))
    np.testing.assert_array_equal(looked_up[0, :2], [[6, 7, 8], [0, 1, 2]])
    assert np.all(np.isnan(looked_up[0, 2]))  # out of range: NaN, not a clamped row


# ---------------------------------------------------------------------------------------------
# CNN configuration


@pytest.mark.parametrize(
    "config, n_features",
    [
        (dict(pool="avg"), 3 * 3 * 8),  # 12 -> pool 6 -> pool 3
        (dict(padding="VALID"), 1 * 1 * 8),  # 12 -conv3-> 10 -pool-> 5 -conv3-> 3 -pool-> 1
        (dict(stride=2, pool=None), 3 * 3 * 8),  # 12 -> 6 -> 3
        # conv 5x5 SAME -> 12, max-pool -> 6; conv 3x3 stride 2 VALID -> 2, no pool.
        (
            dict(stride=[1, 2], padding=["SAME", "VALID"], pool=["max", None], kernel_size=[5, 3]),
            2 * 2 * 8,
        ),
    ],
)
def test_cnn_configurations_agree_between_init_and_apply(config, n_features):
    params = jax.eval_shape(lambda: cnn.init(KEY, **SMALL_CNN, **config))
    assert params["convs"][0]["W"].shape[:2] == (config.get("kernel_size", [3])[0],) * 2
    assert params["head"][0]["W"].shape == (n_features, 16)
    apply_config = {k: v for k, v in config.items() if k != "kernel_size"}
    images = jax.ShapeDtypeStruct((2, 12, 12, 1), jnp.float32)
    assert jax.eval_shape(lambda p, x: cnn.apply(p, x, **apply_config), params, images).shape == (
        2,
        10,
    )
    features = jax.eval_shape(lambda p, x: cnn.features(p, x, **apply_config), params, images)
    assert features.shape == (2, n_features)


def test_cnn_init_argument_errors():
    with pytest.raises(ValueError, match="stride has 3 entries for 2 conv layers"):
        cnn.init(KEY, **SMALL_CNN, stride=[1, 1, 1])
    with pytest.raises(
        ValueError, match=r"input_shape must be \(height, width, channels\), got \(28, 28\)"
    ):
        cnn.init(KEY, (28, 28))


# ---------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the layer, the expected shape and the received shape


BAD_INPUTS = {
    "mlp_images_not_flattened": (
        lambda: mlp.apply(mnist_mlp(), jnp.ones((128, 28, 28))),
        r"mlp layers\[0\] \(dense\): expected input of shape \(batch, 784\) or \(784,\) with a "
        r"floating dtype, got shape \(128, 28, 28\) float32\. Flatten to \(batch, 784\) first",
    ),
    "mlp_int_dtype": (
        lambda: mlp.apply(mnist_mlp(), jnp.ones((128, 784), jnp.int32)),
        r"mlp layers\[0\] \(dense\): .* got shape \(128, 784\) int32\. Cast it",
    ),
    "linear_wrong_features": (
        lambda: linear.apply(params_of("linear"), jnp.ones((10, 4))),
        r"linear \(dense\): expected input of shape \(batch, 3\) or \(3,\).* got shape \(10, 4\)",
    ),
    "cnn_no_channel_axis": (
        lambda: cnn.apply(params_of("cnn"), jnp.ones((4, 12, 12))),
        r"cnn convs\[0\] \(conv2d\): expected input of shape \(batch, height, width, 1\).* got "
        r"shape \(4, 12, 12\) float32\. Add a channel axis",
    ),
    "cnn_wrong_channels": (
        lambda: cnn.apply(params_of("cnn"), jnp.ones((4, 12, 12, 3))),
        r"cnn convs\[0\] \(conv2d\): expected .*\(batch, height, width, 1\).* got shape "
        r"\(4, 12, 12, 3\)",
    ),
    "cnn_wrong_image_size": (
        lambda: cnn.apply(params_of("cnn"), jnp.ones((4, 16, 16, 1))),
        r"cnn head\[0\] \(dense\): expected 72 flattened features, got 128 from input of shape "
        r"\(4, 16, 16, 1\)",
    ),
    "transformer_float_ids": (
        lambda: transformer.apply(params_of("transformer_lm"), jnp.ones((2, 5))),
        r"transformer embed \(tokens\): expected input of shape \(batch, seq\) or \(seq,\) with an "
        r"integer dtype, got shape \(2, 5\) float32",
    ),
    "transformer_rank_3_ids": (
        lambda: transformer.apply(params_of("transformer_lm"), jnp.ones((2, 3, 5), jnp.int32)),
        r"transformer embed \(tokens\): expected .* got shape \(2, 3, 5\) int32",
    ),
    "transformer_too_long": (
        lambda: transformer.apply(params_of("transformer_lm"), jnp.ones((2, 9), jnp.int32)),
        r"transformer embed \(positions\): sequence length 9 is longer than max_len=8",
    ),
    "transformer_patches_as_ids": (
        lambda: transformer.apply(params_of("transformer_patches"), _ids((2, 5))),
        r"transformer embed \(patches\): expected input of shape \(batch, seq, 6\) or \(seq, 6\) "
        r"with a floating dtype, got shape \(2, 5\) int32",
    ),
    "transformer_patches_wrong_size": (
        lambda: transformer.apply(params_of("transformer_patches"), jnp.ones((2, 5, 7))),
        r"transformer embed \(patches\): expected .* got shape \(2, 5, 7\) float32",
    ),
    "transformer_heads_do_not_divide": (
        lambda: transformer.apply(params_of("transformer_lm"), _ids((2, 5)), num_heads=3),
        r"transformer blocks\[0\]\.attn: num_heads=3 must be a positive divisor of d_model=16",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_a_value_error_naming_layer_and_shapes(case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_input_raises_the_same_error_under_jit():
    with pytest.raises(ValueError, match=r"mlp layers\[0\] \(dense\): .* got shape \(3, 28, 28\)"):
        jax.jit(mlp.apply)(mnist_mlp(), jnp.ones((3, 28, 28)))


def test_mismatched_mlp_params_are_reported_by_layer():
    params, x, _, _ = built("mlp")
    params = {"layers": [params["layers"][0], {"W": jnp.zeros((9, 8)), "b": jnp.zeros(8)}]}
    with pytest.raises(
        ValueError,
        match=r"mlp layers\[1\] \(dense\): W has shape \(9, 8\) but layers\[0\] outputs 8",
    ):
        mlp.apply(params, x)


def test_check_input_accepts_named_and_free_dims():
    x = jnp.ones((2, 5, 3))
    assert layers.check_input(x, ("seq", 3), where="t") is x
    assert layers.check_input(x[0], (None, 3), where="t") is not None
    message = (
        r"^t: expected input of shape \(batch, seq, 4\) with a floating dtype, "
        r"got shape \(2, 5, 3, 1\) float32\.$"
    )
    with pytest.raises(ValueError, match=message):
        layers.check_input(jnp.ones((2, 5, 3, 1)), ("seq", 4), where="t", allow_unbatched=False)


# ---------------------------------------------------------------------------------------------
# summary


def test_summary_prints_per_layer_counts_and_total(capsys):
    text = summary(mnist_mlp())
    printed = capsys.readouterr().out
    assert printed.strip() == text.strip()
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("layers")}
    assert rows["layers[0]"].split()[-1] == "50240"
    assert rows["layers[1]"].split()[-1] == "650"
    assert "(784, 64)" in rows["layers[0]"] and "dense" in rows["layers[0]"]
    assert re.search(r"Total params: 50890\b", text)


def test_summary_rows_and_quiet_mode(capsys):
    params = params_of("transformer_classifier")
    text = summary(params, print_fn=None)
    assert capsys.readouterr().out == ""
    rows = fg.models.summary_rows(params)
    by_name = {r["name"]: r for r in rows}
    assert by_name["blocks[0].attn"]["type"] == "attention"
    assert by_name["blocks[1].attn"]["params"] == 4 * (16 * 16 + 16)
    assert by_name["embed"]["shapes"] == {"tokens": (20, 16), "positions": (8, 16)}
    assert by_name["classifier"]["type"] == "dense"
    total = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert sum(r["params"] for r in rows) == total
    assert f"Total params: {total} " in text
    conv_rows = fg.models.summary_rows(params_of("cnn"))
    assert [r["type"] for r in conv_rows] == ["conv2d", "conv2d", "dense", "dense"]

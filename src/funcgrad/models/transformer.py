"""A tiny pre-LN transformer as a pure function: a sequence classifier or a language model.

Params::

    {"embed": {"tokens": (vocab_size, d_model), "positions": (max_len, d_model)},
     # or, reading float patches (init(..., patch_dim=p)):
     #  "embed": {"patches": {"W": (patch_dim, d_model), "b"}, "positions": (max_len, d_model)},
     "blocks": [{"ln1": {"scale", "bias"},
                 "attn": {"wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"},
                 "ln2": {"scale", "bias"},
                 "mlp": {"fc1": {"W": (d_model, d_ff), "b"}, "fc2": {"W": (d_ff, d_model), "b"}}},
                ...],
     "ln_final": {"scale", "bias"},
     "classifier": {"W": (d_model, num_classes), "b"}}    # init(..., num_classes=k)
     # or "lm_head": {"W": (d_model, vocab_size), "b"}     # init(..., num_classes=None)

Each block is pre-LN (as in GPT-2): x = x + attn(ln1(x)); x = x + mlp(ln2(x)), with a gelu MLP.
The classifier mean-pools the final hidden states over the sequence and applies a dense layer; the
language model maps every position to next-token logits with its own (untied) output matrix.
The number of heads, the causal flag and dropout are arguments of :func:`apply`.

A patch classifier (as a vision transformer, without the class token) reads float vectors instead
of token ids: ``init(key, patch_dim=49, num_classes=10)`` embeds each patch with a dense layer;
:func:`funcgrad.models.layers.image_patches` cuts images into such patches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from funcgrad.models import activations, layers
from funcgrad.models.initializers import Initializer

Params = dict


def init(
    key: jax.Array,
    vocab_size: int | None = None,
    *,
    patch_dim: int | None = None,
    num_classes: int | None = None,
    d_model: int = 64,
    num_layers: int = 2,
    d_ff: int | None = None,
    max_len: int = 128,
    w_init: str | Initializer = "glorot_uniform",
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Return transformer params: a classifier head if ``num_classes`` is given, else a language
    model head over ``vocab_size`` tokens.

    The inputs are token ids below ``vocab_size``, or (with ``patch_dim`` instead) float vectors
    of ``patch_dim`` values, embedded by a dense layer: a patch classifier, which needs
    ``num_classes``. ``d_ff`` defaults to ``4 · d_model``; ``max_len`` is the longest sequence
    :func:`apply` accepts.
    Embeddings are N(0, 0.02²), dense weights ``w_init`` (Glorot uniform), biases zeros and
    layer norms the identity (scale 1, bias 0).
    """
    if (vocab_size is None) == (patch_dim is None):
        raise ValueError(
            "transformer: pass vocab_size (token ids) or patch_dim (float patches), exactly one; "
            f"got vocab_size={vocab_size!r}, patch_dim={patch_dim!r}"
        )
    if patch_dim is not None and num_classes is None:
        raise ValueError(
            "transformer: a patch model is a classifier (there are no tokens to predict): "
            "pass num_classes"
        )
    d_ff = 4 * d_model if d_ff is None else d_ff
    embed_key, pos_key, head_key, *block_keys = jax.random.split(key, 3 + num_layers)
    blocks = []
    for k in block_keys:
        attn_key, fc1_key, fc2_key = jax.random.split(k, 3)
        blocks.append(
            {
                "ln1": layers.layer_norm_init(d_model, dtype=dtype),
                "attn": layers.attention_init(attn_key, d_model, w_init=w_init, dtype=dtype),
                "ln2": layers.layer_norm_init(d_model, dtype=dtype),
                "mlp": {
                    "fc1": layers.dense_init(fc1_key, d_model, d_ff, w_init=w_init, dtype=dtype),
                    "fc2": layers.dense_init(fc2_key, d_ff, d_model, w_init=w_init, dtype=dtype),
                },
            }
        )
    if patch_dim is None:
        embed = {"tokens": layers.embedding_init(embed_key, vocab_size, d_model, dtype=dtype)}
    else:
        embed = {
            "patches": layers.dense_init(embed_key, patch_dim, d_model, w_init=w_init, dtype=dtype)
        }
    embed["positions"] = layers.embedding_init(pos_key, max_len, d_model, dtype=dtype)
    params = {
        "embed": embed,
        "blocks": blocks,
        "ln_final": layers.layer_norm_init(d_model, dtype=dtype),
    }
    if num_classes is None:
        params["lm_head"] = layers.dense_init(
            head_key, d_model, vocab_size, w_init=w_init, dtype=dtype
        )
    else:
        params["classifier"] = layers.dense_init(
            head_key, d_model, num_classes, w_init=w_init, dtype=dtype
        )
    return params


def is_language_model(params: Params) -> bool:
    """True if ``params`` has a language-model head (``"lm_head"``), False for a classifier."""
    if ("lm_head" in params) == ("classifier" in params):
        raise ValueError(
            "transformer params need exactly one head, 'classifier' or 'lm_head'; "
            f"got keys {sorted(params)}"
        )
    return "lm_head" in params


def mlp_block(params: dict, x: jax.Array) -> jax.Array:
    """The position-wise feed-forward block: y = gelu(x @ W1 + b1) @ W2 + b2."""
    return layers.dense(params["fc2"], activations.gelu(layers.dense(params["fc1"], x)))


def _embed(embed: dict, inputs: jax.Array) -> jax.Array:
    """Token or patch embeddings plus position embeddings: ``(..., seq, d_model)``."""
    positions = embed["positions"]
    if "patches" in embed:
        patch_dim = embed["patches"]["W"].shape[0]
        inputs = layers.check_input(inputs, ("seq", patch_dim), where="transformer embed (patches)")
        x = layers.dense(embed["patches"], inputs)
    else:
        inputs = layers.check_input(
            inputs, ("seq",), where="transformer embed (tokens)", dtype_kind="int"
        )
        x = layers.embed(embed["tokens"], inputs)
    seq, max_len = x.shape[-2], positions.shape[0]
    if seq > max_len:
        raise ValueError(
            f"transformer embed (positions): sequence length {seq} is longer than max_len="
            f"{max_len} the params were initialised with; pass max_len >= {seq} to init."
        )
    return x + positions[:seq]


def encode(
    params: Params,
    ids: jax.Array,
    *,
    num_heads: int = 4,
    causal: bool | None = None,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Return the final (layer-normed) hidden states: int ids ``(batch, seq) -> (batch, seq,
    d_model)``, or ``(seq,) -> (seq, d_model)``; for a patch model, float patches ``(batch, seq,
    patch_dim)`` or ``(seq, patch_dim)``. Arguments as in :func:`apply`."""
    language_model = is_language_model(params)
    causal = language_model if causal is None else causal
    x = _embed(params["embed"], ids)
    blocks = params["blocks"]
    keys = (
        list(jax.random.split(key, 1 + 2 * len(blocks)))
        if key is not None
        else [None] * (1 + 2 * len(blocks))
    )

    x = layers.dropout(
        x, dropout_rate, key=keys[0], train=train, where="transformer embed (dropout)"
    )
    for i, block in enumerate(blocks):
        attn = layers.multi_head_attention(
            block["attn"],
            layers.layer_norm(block["ln1"], x),
            num_heads=num_heads,
            causal=causal,
            where=f"transformer blocks[{i}].attn",
        )
        x = x + layers.dropout(
            attn,
            dropout_rate,
            key=keys[1 + 2 * i],
            train=train,
            where=f"transformer blocks[{i}].attn (dropout)",
        )
        h = mlp_block(block["mlp"], layers.layer_norm(block["ln2"], x))
        x = x + layers.dropout(
            h,
            dropout_rate,
            key=keys[2 + 2 * i],
            train=train,
            where=f"transformer blocks[{i}].mlp (dropout)",
        )
    return layers.layer_norm(params["ln_final"], x)


def apply(
    params: Params,
    ids: jax.Array,
    *,
    num_heads: int = 4,
    causal: bool | None = None,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Run the transformer on integer token ids ``(batch, seq)`` (or one sequence ``(seq,)``), or a
    patch model on float patches ``(batch, seq, patch_dim)`` (or ``(seq, patch_dim)``).

    Classifier params: logits ``(batch, num_classes)`` = dense(mean over seq of the hidden states).
    Language-model params: next-token logits ``(batch, seq, vocab_size)``; position t sees tokens
    0..t only. ``causal`` defaults to True for a language model and False for a classifier.
    ``num_heads`` must divide d_model (default 4). Dropout (``dropout_rate``) on the embeddings
    and on each residual branch when ``train=True`` (needs ``key``). Raises ``ValueError`` on
    float ids, a wrong rank or a sequence longer than ``max_len``.
    """
    hidden = encode(
        params,
        ids,
        num_heads=num_heads,
        causal=causal,
        dropout_rate=dropout_rate,
        key=key,
        train=train,
    )
    if is_language_model(params):
        return layers.dense(params["lm_head"], hidden)
    return layers.dense(params["classifier"], jnp.mean(hidden, axis=-2))

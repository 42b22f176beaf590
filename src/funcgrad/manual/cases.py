"""The seed models' gradient problems: params, data, loss and hand-derived gradient of each.

One builder per model returns a :class:`Case`, what :func:`funcgrad.compare_grads` takes::

    case = cases.mlp(params_key, data_key, batch=32)
    fg.compare_grads(case.loss, *case.args, reference={**case.reference, "fd": "fd"},
                     intermediates=case.intermediates)

``funcgrad check`` and the tour's gradient section both build their checks here; each picks
the sizes, keys and dtype. Keys are passed in, one per random draw, so a caller decides how
they are split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad import losses
from funcgrad.manual import cnn as manual_cnn
from funcgrad.manual import linear as manual_linear
from funcgrad.manual import mlp as manual_mlp
from funcgrad.manual import xor as manual_xor
from funcgrad.models import cnn as cnn_model
from funcgrad.models import transformer as transformer_model

__all__ = ["Case", "cnn", "linear", "mlp", "transformer", "transformer_loss", "xor"]


@dataclass
class Case:
    """One model's gradient check: the loss, its arguments and the references to compare.

    ``reference`` maps engine names to hand-derived gradient functions (the signature and
    output structure of ``jax.grad(loss)``); ``intermediates`` maps ``fg.tag`` names to
    hand-derived cotangents of the values tagged inside ``loss``.
    """

    title: str
    loss: Callable[..., Any]
    args: tuple[Any, ...]
    reference: dict[str, Any] = field(default_factory=dict)
    intermediates: dict[str, Any] | None = None


def linear(
    params_key: jax.Array, data_key: jax.Array, *, batch: int = 32, dtype: Any = jnp.float32
) -> Case:
    """One neuron ``y = x @ W + b`` on 2 inputs, mean squared error, ``batch`` points."""
    params = manual_linear.init(params_key, dtype=dtype)
    x, y = manual_linear.data(data_key, batch, dtype=dtype)
    return Case(
        f"linear: one neuron y = x @ W + b, 2 inputs, MSE, batch {batch}",
        manual_linear.loss,
        (params, x, y),
        {"manual": manual_linear.grad},
    )


def xor(params_key: jax.Array, *, hidden: int = 4, dtype: Any = jnp.float32) -> Case:
    """The 2-``hidden``-1 sigmoid network on the 4 XOR patterns, ½·MSE; δ-terms as tags."""
    params = manual_xor.init(params_key, hidden=hidden, dtype=dtype)
    x, t = manual_xor.data(dtype)
    return Case(
        f"xor: 2-{hidden}-1 sigmoid network, ½·MSE, the 4 XOR patterns; δ-terms as tags",
        manual_xor.loss,
        (params, x, t),
        {"manual": manual_xor.grad},
        manual_xor.deltas(params, x, t),
    )


def mlp(
    params_key: jax.Array, data_key: jax.Array, *, batch: int = 32, dtype: Any = jnp.float32
) -> Case:
    """The 784-100-100-10 tanh MLP, softmax + average NLL; every backward step as a tag.

    Two hand-derived gradients: ``manual`` (step by step) and ``fused`` (``softmax - onehot``).
    """
    params = manual_mlp.init(params_key, dtype=dtype)
    x, y = manual_mlp.data(data_key, batch, dtype=dtype)
    return Case(
        f"mlp: 784-100-100-10 tanh, softmax + average NLL, batch {batch}; every step as a tag",
        manual_mlp.loss,
        (params, x, y),
        {"manual": manual_mlp.grad, "fused": manual_mlp.grad_fused},
        manual_mlp.intermediates(params, x, y),
    )


def cnn(
    params_key: jax.Array,
    images_key: jax.Array,
    labels_key: jax.Array,
    *,
    conv_channels: Sequence[int] = (4, 8),
    dense_sizes: Sequence[int] = (16, 10),
    batch: int = 4,
    dtype: Any = jnp.float32,
) -> Case:
    """3×3 convs (each relu, 2×2 max-pool) then relu dense layers on 8×8 images, cross-entropy."""
    params = cnn_model.init(
        params_key, (8, 8, 1), conv_channels=conv_channels, dense_sizes=dense_sizes, dtype=dtype
    )
    x = jax.random.normal(images_key, (batch, 8, 8, 1), dtype)
    y = jax.random.randint(labels_key, (batch,), 0, dense_sizes[-1])
    layers = [f"conv3x3x{c}-relu-maxpool2" for c in conv_channels]
    layers.append("-relu-".join(f"dense{d}" for d in dense_sizes))
    return Case(
        f"cnn: {'-'.join(layers)}, 8x8 images, softmax cross-entropy, batch {batch}",
        manual_cnn.loss,
        (params, x, y),
        {"manual": manual_cnn.grad},
    )


def transformer_loss(params: Any, ids: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of the transformer classifier (2 heads) on token ``ids``."""
    logits = transformer_model.apply(params, ids, num_heads=2)
    return losses.softmax_cross_entropy(logits, labels)


def transformer(
    params_key: jax.Array,
    ids_key: jax.Array,
    labels_key: jax.Array | None = None,
    *,
    vocab: int = 11,
    num_classes: int = 3,
    d_model: int = 8,
    d_ff: int | None = None,
    seq_len: int = 6,
    batch: int = 2,
    dtype: Any = jnp.float32,
) -> Case:
    """A 1-block pre-LN transformer classifier, 2 heads, on ``batch`` random token sequences.

    Labels are drawn with ``labels_key``, or cycle through the classes (0, 1, 2, 0, ...) without
    one. No hand-derived gradient: funcgrad against JAX and finite differences.
    """
    params = transformer_model.init(
        params_key,
        vocab,
        num_classes=num_classes,
        d_model=d_model,
        num_layers=1,
        d_ff=d_ff,
        max_len=seq_len,
        dtype=dtype,
    )
    ids = jax.random.randint(ids_key, (batch, seq_len), 0, vocab)
    if labels_key is None:
        labels = jnp.arange(batch) % num_classes
    else:
        labels = jax.random.randint(labels_key, (batch,), 0, num_classes)
    return Case(
        f"transformer: 1 pre-LN block, d_model {d_model}, 2 heads, vocab {vocab}, "
        f"{num_classes} classes, {batch} sequences of {seq_len} tokens "
        "(no hand-derived gradient)",
        transformer_loss,
        (params, ids, labels),
    )

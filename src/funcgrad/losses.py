"""Loss functions and accuracy: pure functions ``loss(predictions, targets) -> scalar``.

By default every loss is the mean over the batch (over all elements for the elementwise losses
mse and binary cross-entropy; over examples for the softmax losses, which sum over the class
axis first). ``reduction="sum"`` sums instead and ``reduction="none"`` returns the unreduced
values. Shapes are checked rather than broadcast: predictions ``(batch, 1)`` against targets
``(batch,)`` raises ``ValueError`` instead of silently building a ``(batch, batch)`` matrix.

Each loss agrees with optax's equivalent: ``mse`` with ``optax.losses.squared_error(...).mean()``
(note ``optax.losses.l2_loss`` is half of it), ``sigmoid_binary_cross_entropy`` and
``softmax_cross_entropy[_with_integer_labels]`` with the optax functions of the same name
followed by ``.mean()``.

:func:`classifier_loss` and :func:`regression_loss` build a training loss
``loss_fn(params, x, y)`` from a model's ``apply`` function, as ``fg.train.fit`` takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

REDUCTIONS = ("mean", "sum", "none")

LossFn = Callable[..., Any]
"""``loss_fn(params, x, y) -> loss``, or ``-> (loss, aux)``: what ``fg.train.fit`` minimises."""

# Binary cross-entropy on probabilities clips them to [EPS, 1 - EPS] so log() stays finite.
EPS = 1e-7


def _reduce(values: jax.Array, reduction: str) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_same_shape(where: str, a: jax.Array, b: jax.Array, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{where}: {a_name} of shape {tuple(a.shape)} and {b_name} of shape {tuple(b.shape)} "
            "must have the same shape (they are not broadcast). Reshape one of them, e.g. "
            f"{b_name}.reshape({a_name}.shape)."
        )


def _check_float(where: str, x: jax.Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{where}: {name} must have a floating dtype, got {jnp.dtype(x.dtype).name}; "
            f"cast it with {name}.astype(jnp.float32)."
        )


def mse(predictions: jax.Array, targets: jax.Array, *, reduction: str = "mean") -> jax.Array:
    """Mean squared error over all elements: mean((predictions - targets)²).

    ``predictions`` and ``targets`` must have the same shape. Equals
    ``optax.losses.squared_error(predictions, targets).mean()`` (twice ``optax.l2_loss``).
    """
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    _check_same_shape("mse", predictions, targets, "predictions", "targets")
    error = predictions - targets
    return _reduce(error * error, reduction)


def binary_cross_entropy(
    probs: jax.Array, targets: jax.Array, *, eps: float = EPS, reduction: str = "mean"
) -> jax.Array:
    """Binary cross-entropy of probabilities: mean of -(t·log p + (1 - t)·log(1 - p)).

    ``probs`` (e.g. a sigmoid output) are clipped to [eps, 1 - eps], eps = 1e-7, so p = 0 or 1
    gives a large finite loss, not inf/NaN. ``targets`` in [0, 1], same shape as ``probs``.
    Prefer :func:`sigmoid_binary_cross_entropy` on logits: it is exact where this one clips.
    """
    probs, targets = jnp.asarray(probs), jnp.asarray(targets)
    _check_float("binary_cross_entropy", probs, "probs")
    _check_same_shape("binary_cross_entropy", probs, targets, "probs", "targets")
    targets = targets.astype(probs.dtype)
    p = jnp.clip(probs, eps, 1.0 - eps)
    return _reduce(-(targets * jnp.log(p) + (1.0 - targets) * jnp.log1p(-p)), reduction)


def sigmoid_binary_cross_entropy(
    logits: jax.Array, targets: jax.Array, *, reduction: str = "mean"
) -> jax.Array:
    """Binary cross-entropy of logits, numerically stable: mean of softplus(x) - x·t.

    softplus(x) - x·t = -(t·log σ(x) + (1 - t)·log(1 - σ(x))), exact for logits of any size
    (±1e4 included). ``targets`` in [0, 1], same shape as ``logits``. Equals
    ``optax.losses.sigmoid_binary_cross_entropy(logits, targets).mean()``.
    """
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    _check_float("sigmoid_binary_cross_entropy", logits, "logits")
    _check_same_shape("sigmoid_binary_cross_entropy", logits, targets, "logits", "targets")
    return _reduce(jax.nn.softplus(logits) - logits * targets.astype(logits.dtype), reduction)


def log_softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """Log-probabilities, stable for large logits: x - m - log Σ exp(x - m), m = max(x).

    The max is a constant for differentiation (it cancels mathematically), so the gradient is
    exactly softmax's.
    """
    logits = jnp.asarray(logits)
    shifted = logits - lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def nll(log_probs: jax.Array, labels: jax.Array, *, reduction: str = "mean") -> jax.Array:
    """Negative log-likelihood of integer labels: mean over examples of -log_probs[i, labels[i]].

    ``log_probs`` has shape ``(batch, classes)`` (e.g. from :func:`log_softmax`), ``labels`` integer
    class ids of shape ``(batch,)`` (any leading axes work alike). Labels >= classes give NaN
    rather than a silently wrong loss; negative labels count from the end, as in numpy.
    """
    log_probs, labels = jnp.asarray(log_probs), jnp.asarray(labels)
    _check_float("nll", log_probs, "log_probs")
    _check_integer_labels("nll", log_probs, labels, "log_probs")
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return _reduce(-picked, reduction)


def _check_integer_labels(where: str, scores: jax.Array, labels: jax.Array, name: str) -> None:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"{where}: labels must be integer class ids, got dtype {jnp.dtype(labels.dtype).name}"
        )
    if labels.shape != scores.shape[:-1]:
        raise ValueError(
            f"{where}: integer labels must have shape {tuple(scores.shape[:-1])} ({name} without "
            f"its class axis), got {tuple(labels.shape)}"
        )


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, reduction: str = "mean"
) -> jax.Array:
    """Softmax cross-entropy from logits: mean over examples of -Σ_c labels_c · log softmax(x)_c.

    ``labels`` is either integer class ids of shape ``(batch,)`` (then the loss is
    -log softmax(x)[label]) or one-hot / probability vectors of shape ``(batch, classes)``,
    told apart by dtype (integer vs floating). Stable for logits of ±1e4 (log-sum-exp with the
    max subtracted). Equals the optax function of the same name (one-hot) or
    ``optax.losses.softmax_cross_entropy_with_integer_labels`` (integers), followed by ``.mean()``.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_float("softmax_cross_entropy", logits, "logits")
    log_probs = log_softmax(logits)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return nll(log_probs, labels, reduction=reduction)
    _check_same_shape("softmax_cross_entropy", logits, labels, "logits", "labels")
    return _reduce(-jnp.sum(labels.astype(logits.dtype) * log_probs, axis=-1), reduction)


def softmax_cross_entropy_with_integer_labels(
    logits: jax.Array, labels: jax.Array, *, reduction: str = "mean"
) -> jax.Array:
    """Softmax cross-entropy from logits ``(batch, classes)`` and integer labels ``(batch,)``.

    The optax-named form of :func:`softmax_cross_entropy`; raises ``ValueError`` if ``labels``
    are not integers.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_integer_labels("softmax_cross_entropy_with_integer_labels", logits, labels, "logits")
    return softmax_cross_entropy(logits, labels, reduction=reduction)


def accuracy(
    predictions: jax.Array, labels: jax.Array, *, from_logits: bool = False
) -> jax.Array:
    """Fraction of correct predictions, a float32 scalar in [0, 1].

    - Multi-class: ``predictions`` (logits or probabilities) of shape ``(batch, classes)`` with
      classes > 1, and integer ``labels`` ``(batch,)`` or one-hot ``labels`` ``(batch, classes)``:
      correct where argmax(predictions) == label (argmax of a one-hot label).
    - Binary: ``predictions`` of shape ``(batch,)`` or ``(batch, 1)`` (one column) and 0/1
      ``labels`` of the same number of elements: predicted class is 1 where the prediction is
      > 0.5, a probability, or > 0 with ``from_logits=True`` (σ(0) = 0.5).
    """
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    binary = predictions.ndim == 0 or predictions.shape[-1] == 1 or (
        predictions.shape == labels.shape and predictions.ndim == 1
    )
    if binary:
        if predictions.ndim and predictions.shape[-1] == 1:
            predictions = predictions[..., 0]
        if labels.ndim and labels.shape[-1] == 1 and labels.ndim > predictions.ndim:
            labels = labels[..., 0]
        _check_same_shape("accuracy (binary)", predictions, labels, "predictions", "labels")
        threshold = 0.0 if from_logits else 0.5
        correct = (predictions > threshold) == (labels > 0.5)
    else:
        predicted = jnp.argmax(predictions, axis=-1)
        if labels.shape == predictions.shape:
            labels = jnp.argmax(labels, axis=-1)
        elif labels.shape != predictions.shape[:-1]:
            raise ValueError(
                f"accuracy: labels of shape {tuple(labels.shape)} fit neither integer labels "
                f"{tuple(predictions.shape[:-1])} nor one-hot labels {tuple(predictions.shape)} "
                f"for predictions of shape {tuple(predictions.shape)}"
            )
        correct = predicted == labels
    return jnp.mean(correct.astype(jnp.float32))


def classifier_loss(apply_fn: Callable[..., jax.Array], **apply_kwargs: Any) -> LossFn:
    """Return ``loss_fn(params, x, y) -> (loss, {"accuracy": acc})`` for ``fit(has_aux=True)``.

    ``apply_fn(params, x, **apply_kwargs)`` gives logits. With ``(batch, classes)`` logits and
    integer labels (or one-hot / probability labels ``(batch, classes)``) the loss is softmax
    cross-entropy; with one logit per example (``(batch, 1)`` or ``(batch,)``) and 0/1 labels it
    is sigmoid binary cross-entropy. Both are batch means, and
    so is the accuracy.

    With a non-zero ``dropout_rate`` in ``apply_kwargs`` the loss takes ``key=None`` too: ``fit``
    passes a fresh key each training step (``apply_fn(..., key=key, train=True)``), evaluation
    passes none (``train=False``: no dropout).
    """

    def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        return _classify(apply_fn(params, x, **apply_kwargs), y)

    if apply_kwargs.get("dropout_rate", 0.0):

        def dropout_loss_fn(
            params: Any, x: jax.Array, y: jax.Array, key: jax.Array | None = None
        ) -> tuple[jax.Array, dict[str, Any]]:
            train = key is not None  # fit passes a fresh key per training step; eval passes none
            return _classify(apply_fn(params, x, key=key, train=train, **apply_kwargs), y)

        return dropout_loss_fn
    return loss_fn


def _classify(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """(batch-mean cross-entropy, {"accuracy": ...}) of logits against labels."""
    if logits.ndim == 1 or logits.shape[-1] == 1:  # one logit per example: binary
        logits = logits.reshape(y.shape)
        loss = sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype))
    else:
        loss = softmax_cross_entropy(logits, y)
    return loss, {"accuracy": accuracy(logits, y, from_logits=True)}


def regression_loss(apply_fn: Callable[..., jax.Array], **apply_kwargs: Any) -> LossFn:
    """Return ``loss_fn(params, x, y) -> mse`` of ``apply_fn(params, x)`` reshaped to ``y``."""

    def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        predictions = apply_fn(params, x, **apply_kwargs)
        return mse(predictions.reshape(y.shape), y)

    return loss_fn

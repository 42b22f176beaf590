"""funcgrad.losses agree with optax, stay finite for extreme logits and reject mismatched shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from funcgrad import losses

# Shapes stay small and few (every new shape compiles); no deadline because of those compiles.
FEW = settings(max_examples=25, deadline=None)


def _rng(seed=0):
    return np.random.default_rng(seed)


def batch_and_classes():
    return st.tuples(st.sampled_from([1, 4]), st.sampled_from([2, 5]))


def logits_and_labels(draw_labels):
    @st.composite
    def strategy(draw):
        batch, classes = draw(batch_and_classes())
        logits = draw(
            hnp.arrays(
                np.float32,
                (batch, classes),
                elements=st.floats(-30, 30, width=32),
            )
        )
        return logits, draw_labels(draw, batch, classes)

    return strategy()


def _int_labels(draw, batch, classes):
    return np.asarray(draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))


def _prob_labels(draw, batch, classes):
    weights = draw(
        hnp.arrays(np.float32, (batch, classes), elements=st.floats(0.125, 1.0, width=32))
    )
    return weights / weights.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Agreement with optax


@FEW
@given(
    hnp.arrays(
        np.float32,
        st.sampled_from([(3,), (4, 1), (2, 3)]),
        elements=st.floats(-100, 100, width=32),
    )
)
def test_mse_is_optax_squared_error_mean_and_twice_l2_loss(predictions):
    targets = np.flip(predictions).copy() + 1.0
    expected = optax.losses.squared_error(predictions, targets).mean()
    np.testing.assert_allclose(losses.mse(predictions, targets), expected, rtol=1e-5, atol=1e-6)
    # optax.l2_loss is half the squared error.
    half = optax.losses.l2_loss(predictions, targets).mean()
    np.testing.assert_allclose(losses.mse(predictions, targets), 2 * half, rtol=1e-5, atol=1e-6)


@FEW
@given(
    hnp.arrays(
        np.float32,
        st.sampled_from([(4, 1), (2, 3)]),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    st.randoms(use_true_random=False),
)
def test_sigmoid_binary_cross_entropy_matches_optax(logits, random):
    targets = np.asarray(
        [[random.choice([0.0, 1.0, 0.3]) for _ in row] for row in logits], np.float32
    )
    expected = optax.losses.sigmoid_binary_cross_entropy(logits, targets).mean()
    got = losses.sigmoid_binary_cross_entropy(logits, targets)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_binary_cross_entropy_of_probabilities_matches_optax_on_logits():
    logits = _rng().uniform(-8, 8, (16, 1)).astype(np.float32)
    targets = (_rng(1).uniform(size=(16, 1)) > 0.5).astype(np.float32)
    expected = optax.losses.sigmoid_binary_cross_entropy(logits, targets).mean()
    got = losses.binary_cross_entropy(jax.nn.sigmoid(logits), targets)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(logits, targets), expected, rtol=1e-6
    )


@FEW
@given(logits_and_labels(_int_labels))
def test_softmax_cross_entropy_with_integer_labels_matches_optax(case):
    logits, labels = case
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels), expected, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        losses.softmax_cross_entropy_with_integer_labels(logits, labels),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    # nll of log-softmax is the same loss.
    np.testing.assert_allclose(
        losses.nll(losses.log_softmax(logits), labels), expected, rtol=1e-5, atol=1e-5
    )


@FEW
@given(logits_and_labels(_prob_labels))
def test_softmax_cross_entropy_with_probability_labels_matches_optax(case):
    logits, labels = case
    expected = optax.losses.softmax_cross_entropy(logits, labels).mean()
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels), expected, rtol=1e-5, atol=1e-5
    )


def test_one_hot_and_integer_labels_give_the_same_loss():
    logits = _rng().standard_normal((8, 5)).astype(np.float32)
    labels = np.arange(8) % 5
    one_hot = jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, one_hot),
        losses.softmax_cross_entropy(logits, labels),
        rtol=1e-6,
    )


def test_log_softmax_matches_jax():
    logits = _rng().standard_normal((4, 7)).astype(np.float32) * 10
    np.testing.assert_allclose(
        losses.log_softmax(logits), jax.nn.log_softmax(logits), rtol=1e-6, atol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Extreme logits: ±1e4


def test_softmax_cross_entropy_is_stable_for_logits_of_1e4():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], jnp.float32)
    labels = jnp.array([0, 1, 2])
    loss = losses.softmax_cross_entropy(logits, labels, reduction="none")
    np.testing.assert_allclose(loss, [0.0, np.log(2.0), np.log(3.0)], rtol=1e-6, atol=1e-6)
    wrong = losses.softmax_cross_entropy(logits, jnp.array([1, 0, 0]), reduction="none")
    np.testing.assert_allclose(wrong, [2e4, 2e4 + np.log(2.0), np.log(3.0)], rtol=1e-6)
    # optax's integer-label form subtracts two numbers near 1e4, so it is only good to a float32
    # ulp of 1e4 (~1e-3): log 2 comes out as 0.69336. Ours is exact to 1e-6 (asserted above).
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), expected, atol=2e-3)
    one_hot = jax.nn.one_hot(labels, 3)
    expected = optax.losses.softmax_cross_entropy(logits, one_hot).mean()
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, one_hot), expected, rtol=1e-6)


def test_gradients_at_logits_of_1e4_are_finite_and_exact():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], jnp.float32)
    labels = jnp.array([1, 2])
    grad = jax.grad(losses.softmax_cross_entropy)(logits, labels)
    expected = (jax.nn.softmax(logits) - jax.nn.one_hot(labels, 3)) / 2  # mean over 2 examples
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    x = jnp.array([1e4, -1e4, 1e4, -1e4, 0.0])
    t = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(x, t, reduction="none"),
        [0, 0, 1e4, 1e4, np.log(2)],
        rtol=1e-6,
    )
    grad = jax.grad(losses.sigmoid_binary_cross_entropy)(x, t)
    np.testing.assert_allclose(grad, (jax.nn.sigmoid(x) - t) / 5, atol=1e-7)


def test_binary_cross_entropy_clips_probabilities_of_0_and_1():
    probs = jnp.array([0.0, 1.0, 0.0, 1.0])
    targets = jnp.array([0.0, 1.0, 1.0, 0.0])
    loss = np.asarray(losses.binary_cross_entropy(probs, targets, reduction="none"))
    # A confident wrong answer costs about -log(EPS) = 16.1 (1 - EPS rounds in float32), not inf.
    np.testing.assert_allclose(loss, [0, 0, -np.log(losses.EPS), -np.log(losses.EPS)], atol=0.2)
    assert np.all(np.isfinite(jax.grad(losses.binary_cross_entropy)(probs, targets)))


# ---------------------------------------------------------------------------------------------
# Reductions, shapes and dtypes


def test_reductions():
    pred, target = jnp.array([[1.0, 2.0], [3.0, 5.0]]), jnp.zeros((2, 2))
    assert float(losses.mse(pred, target)) == pytest.approx(39 / 4)
    assert float(losses.mse(pred, target, reduction="sum")) == pytest.approx(39)
    np.testing.assert_allclose(losses.mse(pred, target, reduction="none"), [[1, 4], [9, 25]])
    per_example = losses.softmax_cross_entropy(pred, jnp.array([0, 1]), reduction="none")
    assert per_example.shape == (2,)
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\)"):
        losses.mse(pred, target, reduction="max")


def test_shape_mismatches_raise_instead_of_broadcasting():
    with pytest.raises(
        ValueError, match=r"mse: predictions of shape \(4, 1\) and targets of shape \(4,\)"
    ):
        losses.mse(jnp.zeros((4, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"sigmoid_binary_cross_entropy: logits of shape \(4,\)"):
        losses.sigmoid_binary_cross_entropy(jnp.zeros(4), jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"binary_cross_entropy: probs of shape \(3,\)"):
        losses.binary_cross_entropy(jnp.full(3, 0.5), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(4,\).*got \(4, 1\)"):
        losses.softmax_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(
        ValueError,
        match=r"softmax_cross_entropy: logits of shape \(4, 3\) and labels of shape \(4, 2\)",
    ):
        losses.softmax_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 2)))


def test_dtype_errors():
    with pytest.raises(ValueError, match="labels must be integer class ids, got dtype float32"):
        losses.softmax_cross_entropy_with_integer_labels(jnp.zeros((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="logits must have a floating dtype, got int32"):
        losses.softmax_cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.zeros(2, jnp.int32))


def test_losses_are_jittable():
    logits = jnp.asarray(_rng().standard_normal((4, 3)), jnp.float32)
    labels = jnp.array([0, 2, 1, 1])
    jitted = jax.jit(losses.softmax_cross_entropy)(logits, labels)
    np.testing.assert_allclose(jitted, losses.softmax_cross_entropy(logits, labels), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Accuracy


def test_accuracy_multiclass_integer_and_one_hot_labels():
    logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    labels = jnp.array([0, 1, 1, 0])
    assert float(losses.accuracy(logits, labels)) == 0.75
    assert float(losses.accuracy(logits, jax.nn.one_hot(labels, 3))) == 0.75
    assert float(losses.accuracy(jax.nn.softmax(logits), labels)) == 0.75
    assert losses.accuracy(logits, labels).dtype == jnp.float32


def test_accuracy_binary_probabilities_and_logits():
    probs = jnp.array([[0.9], [0.2], [0.6], [0.4]])
    labels = jnp.array([1, 0, 0, 0])
    assert float(losses.accuracy(probs, labels)) == 0.75
    assert float(losses.accuracy(probs, labels[:, None])) == 0.75
    assert float(losses.accuracy(probs[:, 0], labels.astype(jnp.float32))) == 0.75
    logits = jnp.array([[2.0], [-1.0], [0.3], [-0.2]])
    assert float(losses.accuracy(logits, labels, from_logits=True)) == 0.75
    # Without from_logits the threshold is 0.5, so the logit 0.3 counts as class 0.
    assert float(losses.accuracy(logits, labels)) == 1.0


def test_accuracy_rejects_labels_that_fit_nothing():
    with pytest.raises(ValueError, match=r"accuracy: labels of shape \(4, 2\) fit neither"):
        losses.accuracy(jnp.zeros((4, 3)), jnp.zeros((4, 2), jnp.int32))

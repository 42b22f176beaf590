"""Accuracy on Fashion-MNIST: the published figures, reached with both gradient engines.

Slow (about a minute per model on 2 cores) but part of the suite: CI installs the data set with
``apt-get install dataset-fashion-mnist``. Skipped, with the reason, only where the files are
neither there nor in funcgrad's cache (no download is attempted from a test).
"""

import jax
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad import train
from funcgrad.models import cnn, mlp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fashion():
    try:
        splits = [fg.data.load_mnist("fashion-mnist", s, download=False) for s in ("train", "test")]
    except fg.data.DatasetNotFoundError:
        pytest.skip(
            "Fashion-MNIST is not on this machine: apt-get install dataset-fashion-mnist "
            "(puts it in /usr/share/datasets/fashion-mnist)"
        )
    # Standardised with the training set's pixel mean and std.
    (x, y), (x_test, y_test) = [
        (fg.data.normalize(images, mean="fashion-mnist"), labels) for images, labels in splits
    ]
    return (x, y), (x_test, y_test)


@pytest.mark.parametrize("engine", ["jax", "funcgrad"])
def test_mlp_784_64_10_reaches_85_percent_in_5_epochs(fashion, engine):
    (x, y), (x_test, y_test) = fashion
    flat = (x.reshape(len(x), 784), y)
    params = mlp.init(jax.random.key(0), [784, 64, 10])
    _, history = train.fit(
        train.classifier_loss(mlp.apply),  # relu hidden layer, softmax cross-entropy
        params,
        flat,
        optimizer=optax.adam(1e-3),
        epochs=5,
        batch_size=128,
        key=jax.random.key(1),
        has_aux=True,
        eval_data=(x_test.reshape(len(x_test), 784), y_test),
        grad_engine=engine,
    )
    assert history["eval_accuracy"][-1] >= 0.85, history
    assert np.all(np.diff(history["loss"]) < 0)  # the training loss falls every epoch


# The default formulation (every gradient step derived) and the fastest one (cnn.FAST: Winograd
# convolution, hand-written max-pool backward, bias and relu after pooling).
@pytest.mark.parametrize("formulation", ["default", "FAST"])
def test_cnn_reaches_88_percent_in_3_epochs_with_funcgrad_gradients(fashion, formulation):
    (x, y), (x_test, y_test) = fashion
    params = cnn.init(jax.random.key(0))  # conv32-pool-conv64-pool-dense128-dense10
    kwargs = cnn.FAST if formulation == "FAST" else {}
    _, history = train.fit(
        train.classifier_loss(cnn.apply, **kwargs),
        params,
        (x[..., None], y),
        optimizer=optax.adam(1e-3),
        epochs=3,
        batch_size=128,
        key=jax.random.key(1),
        has_aux=True,
        eval_data=(x_test[..., None], y_test),
        eval_batch_size=500,
        grad_engine="funcgrad",
    )
    assert history["eval_accuracy"][-1] >= 0.88, history

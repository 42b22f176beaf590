"""Fitting a model: `fit` runs jitted optax steps, one `lax.scan` per epoch, on one or many devices.

::

    loss_fn = fg.losses.classifier_loss(fg.models.mlp.apply)    # (loss, {"accuracy": ...})
    params, history = fg.train.fit(
        loss_fn, params, (x_train, y_train), optimizer=optax.adam(1e-3), epochs=5,
        batch_size=128, key=jax.random.key(0), has_aux=True, eval_data=(x_test, y_test),
        grad_engine="funcgrad")                  # or "jax": same step, JAX's own autodiff
    history["eval_accuracy"][-1]

How an epoch runs. The training set is put on the device once. Each epoch's order is
``jax.random.permutation(fold_in(key, epoch), n)``, computed by ``fg.data.permutation`` (the same
indices with the sorts done by NumPy, faster than XLA's CPU sort);
its first ``(n // batch_size) * batch_size`` indices, reshaped to ``(num_batches, batch_size)``
(the remainder is dropped, different examples each epoch: the order of ``fg.data.batches``), go
to one call of one jitted function, where ``lax.scan`` runs over those index rows, each step
gathering its batch from the device-resident set and applying the optax step, returning the
loss (and aux metrics) of every step. Gathering per step rather than materialising the shuffled
epoch saves writing and re-reading a copy of the data set.
Epoch ``e`` depends only on the state after epoch ``e - 1``, ``key`` and ``e``: resuming from a
checkpoint at epoch ``e`` reproduces the uninterrupted run bit for bit.

Gradients come from ``jax.value_and_grad`` (``grad_engine="jax"``) or from funcgrad's hand-written
VJP interpreter (``grad_engine="funcgrad"``); either way the whole step compiles to one XLA program.

Bad states: the epoch also returns one flag, "every step's loss and every parameter finite", a
reduction done once per epoch, so the hot loop pays nothing for it. When it is false, the epoch is
run again from its starting state (kept, never donated) with a checked program that stops updating
at the first non-finite loss or parameter, and :class:`TrainingDivergedError` is raised naming the
epoch, the step and the first non-finite parameter leaf, carrying the last finite params and
optimizer state (and saving them next to the checkpoint when ``checkpoint_path`` is given).

Many devices: with ``mesh``, params and optimizer state are replicated and every batch is
sharded over the mesh's data axis (the index rows as ``P(None, "data")`` on
``(num_batches, batch)``, each gathered batch as ``P("data")``: each device gathers and processes
its slice of every batch). The training set itself is replicated and every process computes the
same global order from the key, so the sharded run sees exactly the batches of the single-device
run (only reduction order differs). jit inserts the gradient all-reduce; there is no hand-written
collective.

The package, from the entry point down (each module imports only those below it):

- ``loop``: :func:`fit` and its epoch loop.
- ``divergence``: :class:`TrainingDivergedError` and the re-run that finds the bad step.
- ``resume``: the run's starting state, its checkpoints and resuming from them.
- ``evaluation``: :func:`evaluate` and the default metrics of an evaluation.
- ``programs``: the compiled epoch, diagnosis and evaluation programs, cached per configuration.
- ``config``: fit's argument checks and the :class:`~funcgrad.train.config.FitConfig` they build.
- ``compiler_options``: the XLA options fit compiles with (:func:`default_compiler_options`).
- ``callbacks``: :func:`print_epochs`; ``placement``: putting arrays on the device.
- ``progress``: the run's ``tqdm`` bar, and the reports the compiled epoch sends it.

The loss builders :func:`classifier_loss` and :func:`regression_loss` live in
:mod:`funcgrad.losses` and are re-exported here.
"""

from funcgrad.losses import classifier_loss, regression_loss
from funcgrad.train.callbacks import print_epochs
from funcgrad.train.compiler_options import default_compiler_options
from funcgrad.train.config import GRAD_ENGINES
from funcgrad.train.divergence import TrainingDivergedError
from funcgrad.train.evaluation import evaluate
from funcgrad.train.loop import fit

TrainingDivergedError.__module__ = __name__  # tracebacks name it by its public path

__all__ = [
    "GRAD_ENGINES",
    "TrainingDivergedError",
    "classifier_loss",
    "default_compiler_options",
    "evaluate",
    "fit",
    "print_epochs",
    "regression_loss",
]

"""Fitting a model: `fit` runs jitted optax steps, one `lax.scan` per epoch, on one or many devices.

::

    loss_fn = fg.train.classifier_loss(fg.models.mlp.apply)     # (loss, {"accuracy": ...})
    params, history = fg.train.fit(
        loss_fn, params, (x_train, y_train), optimizer=optax.adam(1e-3), epochs=5,
        batch_size=128, key=jax.random.key(0), has_aux=True, eval_data=(x_test, y_test),
        grad_engine="funcgrad")                  # or "jax": same step, JAX's own autodiff
    history["eval_accuracy"][-1]

How an epoch runs. The training set is put on the device once. Each epoch's order is
``jax.random.permutation(fold_in(key, epoch), n)``, computed by ``fg.data.permutation`` (the same
indices with the sorts done by NumPy, 2.5 ms instead of 27 ms for 60,000 examples on a 2-core CPU);
its first ``(n // batch_size) * batch_size`` indices, reshaped to ``(num_batches, batch_size)``
(the remainder is dropped, different examples each epoch: the order of ``fg.data.batches``), go
to one call of one jitted function, where ``lax.scan`` runs over those index rows, each step
gathering its batch from the device-resident set and applying the optax step, returning the
loss (and aux metrics) of every step. Gathering per step rather than materialising the shuffled
epoch saves writing and re-reading a copy of the data set (about 30% of an MLP epoch on CPU).
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
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcgrad import checkpoint, losses
from funcgrad._paths import leaf_paths
from funcgrad.data.batching import permutation
from funcgrad.progress import ProgressBar

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

GRAD_ENGINES = ("jax", "funcgrad")

LossFn = Callable[..., Any]
Callback = Callable[[dict[str, Any]], Any]


class TrainingDivergedError(FloatingPointError):
    """A step produced a non-finite loss or parameter; the last finite state is kept on the error.

    Attributes:
      epoch: 0-based index of the epoch in which it happened.
      step: 0-based index of the bad step within that epoch.
      global_step: optimizer steps completed before the bad one (the step count of ``params``).
      loss: the bad step's loss (a float, possibly finite if only a parameter went bad).
      leaf: path of the first non-finite parameter leaf after the bad update (``"layers[0].W"``),
        or None if the loss alone was non-finite.
      params, opt_state: the last finite state, i.e. before the bad step.
      history: the history of the epochs completed before this one.
      checkpoint_path: where the last finite state was saved, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        step: int,
        global_step: int,
        loss: float,
        leaf: str | None,
        params: Any,
        opt_state: Any,
        history: dict[str, list[float]],
        checkpoint_path: Path | None,
    ) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.global_step = global_step
        self.loss = loss
        self.leaf = leaf
        self.params = params
        self.opt_state = opt_state
        self.history = history
        self.checkpoint_path = checkpoint_path


# ---------------------------------------------------------------------------------------------
# Loss helpers


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
        loss = losses.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype))
    else:
        loss = losses.softmax_cross_entropy(logits, y)
    return loss, {"accuracy": losses.accuracy(logits, y, from_logits=True)}


def regression_loss(apply_fn: Callable[..., jax.Array], **apply_kwargs: Any) -> LossFn:
    """Return ``loss_fn(params, x, y) -> mse`` of ``apply_fn(params, x)`` reshaped to ``y``."""

    def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        predictions = apply_fn(params, x, **apply_kwargs)
        return losses.mse(predictions.reshape(y.shape), y)

    return loss_fn


def print_epochs(file: Any = None) -> Callback:
    """Return a callback printing one line per epoch: ``epoch 3/5  loss 0.3121  ...  1.92s``."""

    def callback(state: dict[str, Any]) -> None:
        history = state["history"]
        parts = [f"epoch {state['epoch'] + 1}/{state['epochs']}"]
        for name, values in history.items():
            if name in ("epoch_time", "wall_time") or not values:
                continue
            parts.append(f"{name} {values[-1]:.4f}")
        parts.append(f"{history['epoch_time'][-1]:.2f}s")
        print("  ".join(parts), file=sys.stdout if file is None else file, flush=True)

    return callback


# ---------------------------------------------------------------------------------------------
# Validation


def _check_params(params: Any) -> None:
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("fit: params has no array leaves; pass the model's params pytree.")
    for path, leaf in zip(leaf_paths(params), leaves):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not hasattr(leaf, "shape"):
            raise TypeError(
                f"fit: params leaf {path or '<root>'} is a {type(leaf).__name__}, not an array; "
                "params must be a pytree (dicts/lists) of floating-point arrays."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"fit: params leaf {path or '<root>'} has dtype {jnp.dtype(dtype).name}; every "
                "parameter must be floating-point. Keep integer constants out of params (close "
                "over them in loss_fn), or cast with .astype(jnp.float32)."
            )


def _check_pair(data: Any, name: str) -> tuple[Any, Any, int]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"fit: {name} must be a pair (x, y) of arrays, got {type(data).__name__}.")
    x, y = data
    for part, a in (("x", x), ("y", y)):
        if not hasattr(a, "shape") or len(a.shape) == 0:
            raise ValueError(
                f"fit: {name} {part} must be an array with a leading example axis, got "
                f"{type(a).__name__} of shape {getattr(a, 'shape', None)}."
            )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"fit: {name} has {x.shape[0]} inputs but {y.shape[0]} targets (shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}); x and y must have the same length."
        )
    return x, y, int(x.shape[0])


def _check_key(key: Any) -> None:
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == jnp.uint32 and getattr(key, "shape", None) == (2,)
    if not (typed and key.shape == ()) and not raw:
        raise TypeError(
            f"fit: key must be one jax.random key (jax.random.key(0)), got {key!r:.100}."
        )


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"fit: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


# XLA:CPU hands each matmul to YNNPACK by default. At the skinny shapes of dense layers on small
# batches (32 x 784 x 64) Eigen's kernels, XLA's other matmul library, are faster: the MNIST
# MLP's compiled epoch takes 280 ms instead of 347 at batch 32 (scripts/bench_epoch.py); at
# batch 128 the two are within this shared machine's noise in some runs (222-240 vs 230-232 ms)
# and up to 27% apart in others, never slower. YNNPACK keeps the convolutions and reductions:
# the CNN's epoch is unchanged (bench_epoch.py --model cnn). An XLA that does not know the
# option (it is experimental and may be renamed) gets none: see _xla_accepts.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE"
    ),
}


def default_compiler_options(platform: str | None = None) -> dict[str, str]:
    """The XLA options ``fit`` compiles with when ``compiler_options`` is None, for ``platform``
    (``"cpu"``, ``"gpu"``, ``"tpu"``; default: JAX's default backend).

    On CPU: matmuls on Eigen, convolutions and reductions on YNNPACK (see the README's
    "Compiler options"); elsewhere, and on an XLA that does not accept them, none (``{}``).
    """
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu":
        return {}
    options = tuple(sorted(_CPU_COMPILER_OPTIONS.items()))
    return dict(options) if _xla_accepts(options) else {}


@functools.cache
def _xla_accepts(options: tuple[tuple[str, Any], ...]) -> bool:
    """Whether this XLA compiles a trivial program with these options (once per process)."""
    try:
        jax.jit(lambda a: a + 1).lower(jnp.zeros((), jnp.float32)).compile(
            compiler_options=dict(options)
        )
    except jax.errors.JaxRuntimeError:
        return False
    return True


def _check_compiler_options(options: Any, mesh: Mesh | None) -> tuple[tuple[str, Any], ...]:
    """``compiler_options`` as a sorted tuple of (name, value) pairs, hashable so cacheable;
    None becomes :func:`default_compiler_options` for the devices the programs run on."""
    if options is None:
        platform = mesh.devices.flat[0].platform if mesh is not None else None
        return tuple(sorted(default_compiler_options(platform).items()))
    if not isinstance(options, Mapping):
        raise TypeError(
            "fit: compiler_options must be a dict of XLA option names to values, such as "
            f"{{'xla_cpu_enable_fast_math': False}}, or None; got {type(options).__name__}."
        )
    for name, value in options.items():
        if not isinstance(name, str) or not isinstance(value, str | bool | int | float):
            raise TypeError(
                f"fit: compiler_options must map option names (str) to str, bool, int or float "
                f"values; got {name!r}: {value!r}."
            )
    return tuple(sorted(options.items()))


def _data_axis_size(mesh: Mesh | None, data_axis: str) -> int:
    if mesh is None:
        return 1
    if not isinstance(mesh, Mesh):
        raise TypeError(f"fit: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if data_axis not in mesh.axis_names:
        raise ValueError(
            f"fit: the mesh has axes {tuple(mesh.axis_names)} but no {data_axis!r} axis to shard "
            f"batches over; build it as Mesh(devices, ({data_axis!r},)) or pass data_axis=."
        )
    return int(mesh.shape[data_axis])


def _scalar_metrics(aux: Any, where: str) -> dict[str, Any]:
    if not isinstance(aux, Mapping) or not all(
        isinstance(k, str) and getattr(v, "shape", None) == () for k, v in aux.items()
    ):
        raise TypeError(
            f"fit: with has_aux=True, {where} must return (loss, aux) with aux a dict of scalar "
            f"metrics such as {{'accuracy': acc}}; got aux = {aux!r:.200}."
        )
    return dict(aux)


# ---------------------------------------------------------------------------------------------
# Placement


def _replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Put every leaf on the device (replicated over ``mesh``) in fresh, strongly typed buffers.

    Fresh: the caller's arrays are never aliased. Strongly typed: a state from
    ``optimizer.init`` and the same state read back from a checkpoint trace to the same program,
    which is what makes a resumed run bit-identical.
    """
    if mesh is None:
        return jax.tree_util.tree_map(lambda a: jax.device_put(np.array(a)), tree)
    sharding = NamedSharding(mesh, P())

    def put(a: Any) -> jax.Array:
        host = np.asarray(a)
        # make_array_from_callback works multi-host too: each process fills its own devices.
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def _to_float(x: Any) -> float:
    return float(np.asarray(x))


# ---------------------------------------------------------------------------------------------
# The compiled programs


def _takes_key(loss_fn: Callable[..., Any]) -> bool:
    """Whether ``loss_fn`` accepts a ``key`` keyword (for dropout): fit then passes one per step."""
    try:
        parameters = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # builtins, some C callables: no key
        return False
    param = parameters.get("key")
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _step_key(epoch_key: jax.Array, step: Any) -> jax.Array:
    """The key of one training step: its own stream, independent of the epoch's shuffle."""
    return jax.random.fold_in(jax.random.fold_in(epoch_key, _DROPOUT_STREAM), step)


_DROPOUT_STREAM = 0x0D0  # fold_in tag separating per-step keys from the shuffling key
# Steps per iteration of the epoch's while loop. With four steps in one loop body XLA can
# schedule across step boundaries (presumably the next step's batch gather beside this step's
# Adam update; not profiled) and the loop's per-iteration cost is paid a quarter as often.
# scripts/bench_epoch.py --unrolls 1 2 4 8 --options xla (measured before fit had compiler
# options), MNIST MLP on the 2-core CPU: compiled epoch 131-132 -> 125-128 ms at batch 128
# (2 steps: slower; 8: no better than 4) and 251 -> 219 ms at batch 32; the CNN's is
# unchanged. The price is compilation, paid once per fit: 0.9 s instead of 0.5 s for the
# MLP's epoch at batch 128 (1.2 s at 32), 1.6 s instead of 1.0 s for the CNN's.
_SCAN_UNROLL = 4


class _Programs:
    """The jitted epoch (fast and checked), the single-step diagnosis and evaluation of one fit."""

    def __init__(
        self,
        loss_fn: LossFn,
        optimizer: optax.GradientTransformation,
        *,
        grad_engine: str,
        has_aux: bool,
        eval_fn: Callable[..., dict[str, Any]],
        batch_size: int,
        mesh: Mesh | None,
        data_axis: str,
        with_progress: bool,
        compiler_options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        if grad_engine == "funcgrad":
            import funcgrad.interpret as interpret

            self.value_and_grad = interpret.value_and_grad(loss_fn, has_aux=has_aux)
        else:
            self.value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)
        self.optimizer = optimizer
        self.takes_key = _takes_key(loss_fn)
        self.has_aux = has_aux
        self.eval_fn = eval_fn
        self.batch_size = batch_size
        self.mesh = mesh
        self.with_progress = with_progress
        self.progress: ProgressBar | None = None  # the current fit's bar, read by _report
        self._compiled: dict[Any, Any] = {}
        jit = functools.partial(jax.jit, compiler_options=dict(compiler_options) or None)
        if mesh is None:
            self.batch_sharding = self.example_sharding = None
        else:
            self.batch_sharding = NamedSharding(mesh, P(None, data_axis))
            self.example_sharding = NamedSharding(mesh, P(data_axis))
            jit = functools.partial(jit, out_shardings=NamedSharding(mesh, P()))
        self.epoch = jit(functools.partial(self._epoch, checked=False))
        self.checked_epoch = jit(functools.partial(self._epoch, checked=True))
        self.diagnose = jit(self._diagnose)
        self.eval = jit(self._eval, static_argnames="batch_size")

    def _step(
        self, params: Any, opt_state: Any, x: jax.Array, y: jax.Array, step_key: jax.Array
    ) -> tuple:
        if self.takes_key:
            out, grads = self.value_and_grad(params, x, y, key=step_key)
        else:
            out, grads = self.value_and_grad(params, x, y)
        loss, aux = out if self.has_aux else (out, {})
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux, grads

    def order(self, key: jax.Array, n: int) -> jax.Array:
        """The epoch's example indices as ``(num_batches, batch_size)``: the order of
        ``fg.data.batches(key, ...)``, remainder dropped, on the device (sharded over the batch
        axis under a mesh). Shuffled on the host: see ``fg.data.permutation``."""
        steps = n // self.batch_size
        order = permutation(key, n)[: steps * self.batch_size].reshape(steps, self.batch_size)
        if self.batch_sharding is None:
            return jax.device_put(order)
        # make_array_from_callback works multi-host too: each process fills its own devices.
        return jax.make_array_from_callback(
            order.shape, self.batch_sharding, lambda index: order[index]
        )

    def _batch(self, x: jax.Array, y: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Gathered step by step from the device-resident set: no (num_batches, batch, ...) copy
        # of the epoch is written and read back (about 30% faster for the MNIST MLP on CPU).
        # Under a mesh each device gathers the rows of its own shard of ``index``.
        xb = jnp.take(x, index, axis=0, mode="clip")
        yb = jnp.take(y, index, axis=0, mode="clip")
        if self.example_sharding is not None:
            xb = lax.with_sharding_constraint(xb, self.example_sharding)
            yb = lax.with_sharding_constraint(yb, self.example_sharding)
        return xb, yb

    def _epoch(
        self,
        params: Any,
        opt_state: Any,
        key: jax.Array,
        order: jax.Array,
        x: jax.Array,
        y: jax.Array,
        *,
        checked: bool,
    ) -> tuple:
        """One epoch: (params, opt_state, per-step losses, per-step aux, all finite, first bad).

        Fast (``checked=False``): plain updates; the finiteness flag is one reduction at the end.
        Checked: stops updating at the first step whose loss or new params are non-finite and
        returns that step's index (-1 if none), the params and state from just before it.
        """
        num_steps = order.shape[0]
        every = max(1, num_steps // 50)

        def body(carry: tuple, index: jax.Array) -> tuple:
            params, opt_state, bad, i = carry
            batch = self._batch(x, y, index)
            step_key = _step_key(key, i)
            new_params, new_state, loss, aux, _ = self._step(params, opt_state, *batch, step_key)
            if checked:
                ok = jnp.isfinite(loss) & _all_finite(new_params) & (bad < 0)
                new_params, new_state = jax.tree_util.tree_map(
                    lambda new, old: jnp.where(ok, new, old),
                    (new_params, new_state),
                    (params, opt_state),
                )
                bad = jnp.where((bad < 0) & ~ok, i, bad)
            if self.with_progress:
                lax.cond(
                    (i + 1) % every == 0,
                    lambda s: jax.debug.callback(self._report, s),
                    lambda s: None,
                    i + 1,
                )
            return (new_params, new_state, bad, i + 1), (loss, aux)

        init = (params, opt_state, jnp.int32(-1), jnp.int32(0))
        (params, opt_state, bad, _), (step_losses, step_aux) = lax.scan(
            body, init, order, unroll=_SCAN_UNROLL
        )
        finite = jnp.all(jnp.isfinite(step_losses)) & _all_finite(params)
        return params, opt_state, step_losses, step_aux, finite, bad

    def compiled_epoch(self, args: tuple) -> Any:
        """The fast epoch compiled ahead of time for these arguments (so that an epoch's time
        excludes compilation), cached for later fits with the same shapes and placement."""
        leaves, treedef = jax.tree_util.tree_flatten(args)
        signature = (treedef, *((a.shape, a.dtype, a.sharding) for a in leaves))
        if signature not in self._compiled:
            try:
                self._compiled[signature] = self.epoch.lower(*args).compile()
            except jax.errors.JaxRuntimeError as error:
                if "compile option" not in str(error) and "setting option" not in str(error):
                    raise
                raise ValueError(
                    f"fit: XLA rejected compiler_options: {error}. Check the option names and "
                    "values against this jaxlib's XLA (they change between releases), or drop "
                    "compiler_options."
                ) from error
        return self._compiled[signature]

    def _report(self, done: Any) -> None:
        bar = self.progress
        done = int(done)
        if bar is not None and done > bar.n:  # called once per device under a mesh: idempotent
            bar.update(done - bar.n)

    def _diagnose(
        self,
        params: Any,
        opt_state: Any,
        key: jax.Array,
        order: jax.Array,
        x: jax.Array,
        y: jax.Array,
        step: Any,
    ) -> tuple:
        """Re-run step ``step`` of the epoch from the given state: (loss, finite per leaf)."""
        batch = self._batch(x, y, order[step])
        new_params, _, loss, _, grads = self._step(params, opt_state, *batch, _step_key(key, step))
        finite = jax.tree_util.tree_map(lambda a: jnp.all(jnp.isfinite(a)), (new_params, grads))
        return loss, finite

    def _eval(self, params: Any, x: jax.Array, y: jax.Array, *, batch_size: int) -> dict:
        """Per metric, the sum over all examples of ``eval_fn``'s batch means times batch size:
        a scan over the full batches, then one call on the remainder."""
        n = x.shape[0]
        full = n // batch_size
        m = full * batch_size
        totals = {
            k: jnp.zeros((), jnp.float32)
            for k in jax.eval_shape(self.eval_fn, params, x[:1], y[:1])
        }
        if full:
            xb = x[:m].reshape(full, batch_size, *x.shape[1:])
            yb = y[:m].reshape(full, batch_size, *y.shape[1:])
            if self.batch_sharding is not None:
                xb = lax.with_sharding_constraint(xb, self.batch_sharding)
                yb = lax.with_sharding_constraint(yb, self.batch_sharding)

            def body(total: dict, batch: tuple) -> tuple:
                metrics = self.eval_fn(params, *batch)
                return {k: total[k] + metrics[k] * batch_size for k in total}, None

            totals = lax.scan(body, totals, (xb, yb))[0]
        if n > m:
            metrics = self.eval_fn(params, x[m:], y[m:])
            totals = {k: totals[k] + metrics[k] * (n - m) for k in totals}
        return {k: v / n for k, v in totals.items()}


def _programs(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    grad_engine: str,
    has_aux: bool,
    eval_fn: Callable[..., dict[str, Any]],
    batch_size: int,
    mesh: Mesh | None,
    data_axis: str,
    with_progress: bool = False,
    compiler_options: tuple[tuple[str, Any], ...] = (),
) -> _Programs:
    """The programs for this configuration, reused by later fits with the same functions (as
    ``jax.jit`` reuses a compiled function): fitting again, or resuming, compiles nothing."""
    settings = dict(
        grad_engine=grad_engine,
        has_aux=has_aux,
        eval_fn=eval_fn,
        batch_size=batch_size,
        mesh=mesh,
        data_axis=data_axis,
        with_progress=with_progress,
        compiler_options=compiler_options,
    )
    try:
        return _cached_programs(loss_fn, optimizer, **settings)
    except TypeError:  # an unhashable optimizer or function: build afresh
        return _Programs(loss_fn, optimizer, **settings)


_cached_programs = functools.lru_cache(maxsize=16)(_Programs)


def _loss_metrics(loss_fn: LossFn, has_aux: bool) -> Callable[..., dict[str, Any]]:
    """The default eval_fn: ``{"loss": loss, **aux}`` (one object per loss_fn, so cacheable)."""
    try:
        return _cached_loss_metrics(loss_fn, has_aux)
    except TypeError:
        return _build_loss_metrics(loss_fn, has_aux)


def _build_loss_metrics(loss_fn: LossFn, has_aux: bool) -> Callable[..., dict[str, Any]]:

    def eval_fn(params: Any, x: jax.Array, y: jax.Array) -> dict[str, Any]:
        result = loss_fn(params, x, y)
        loss, aux = result if has_aux else (result, {})
        return {"loss": loss, **aux}

    return eval_fn


_cached_loss_metrics = functools.lru_cache(maxsize=16)(_build_loss_metrics)


def _zero_loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.zeros(())


_IDENTITY = optax.identity()


def _all_finite(tree: Any) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return functools.reduce(jnp.logical_and, flags, jnp.bool_(True))


def evaluate(
    eval_fn: Callable[..., dict[str, Any]],
    params: Any,
    data: tuple[Any, Any],
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    data_axis: str = "data",
) -> dict[str, float]:
    """Return the example-weighted mean of ``eval_fn(params, x, y)`` (a dict of per-batch means)
    over all of ``data``, in batches of ``batch_size`` (the last one may be short)."""
    options = _check_compiler_options(None, mesh)
    programs = _programs(
        _zero_loss, _IDENTITY, "jax", False, eval_fn, batch_size, mesh, data_axis, False, options
    )
    x, y, _ = _check_pair(data, "data")
    return _evaluate(programs, params, _replicate((x, y), mesh), batch_size)


def _evaluate(
    programs: _Programs, params: Any, data: tuple[jax.Array, jax.Array], batch_size: int
) -> dict[str, float]:
    return {k: _to_float(v) for k, v in programs.eval(params, *data, batch_size=batch_size).items()}


# ---------------------------------------------------------------------------------------------
# fit


def _diverged_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.diverged{path.suffix}")


def _same_key(a: Any, b: Any) -> bool:
    def data(k: Any) -> np.ndarray:
        k = jnp.asarray(k) if not isinstance(k, jax.Array) else k
        if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
            k = jax.random.key_data(k)
        return np.asarray(k)

    return np.array_equal(data(a), data(b))


def fit(
    loss_fn: LossFn,
    params: Any,
    train_data: tuple[Any, Any],
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    grad_engine: str = "jax",
    has_aux: bool = False,
    eval_data: tuple[Any, Any] | None = None,
    eval_fn: Callable[..., dict[str, Any]] | None = None,
    eval_batch_size: int | None = None,
    callbacks: Sequence[Callback] = (),
    mesh: Mesh | None = None,
    data_axis: str = "data",
    opt_state: Any = None,
    initial_epoch: int = 0,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    compiler_options: Mapping[str, str | bool | int | float] | None = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Train ``params`` to minimise ``loss_fn`` over ``train_data``; return ``(params, history)``.

    Args:
      loss_fn: ``loss_fn(params, x_batch, y_batch) -> scalar loss`` (a batch mean), or with
        ``has_aux=True`` ``-> (loss, {"accuracy": acc, ...})``: the aux metrics (scalar batch
        means) are averaged per epoch into ``history`` under their own names. See
        :func:`classifier_loss` and :func:`regression_loss`. A ``loss_fn`` with a ``key``
        parameter (``key=None`` by default) gets a fresh key every training step, for dropout:
        ``fold_in(fold_in(epoch_key, 0xD0), step)``, so resumed runs see the same keys; the
        evaluation calls it without one.
      params: the initial params pytree (floating-point arrays). It is copied, never modified.
      train_data: ``(x, y)`` arrays with the same leading length ``n``.
      optimizer: an optax ``GradientTransformation`` (sgd, momentum, adam, adamw, chains with
        schedules such as ``optax.linear_schedule``: the step count lives in its state).
      epochs: the index at which to stop (as Keras): epochs ``initial_epoch .. epochs - 1`` run.
      batch_size: examples per step; each epoch drops the last ``n % batch_size`` examples of its
        shuffled order. With ``mesh`` it must be a multiple of the data axis size.
      key: a ``jax.random`` key; epoch ``e`` shuffles with ``jax.random.fold_in(key, e)``.
      grad_engine: ``"jax"`` (``jax.value_and_grad``) or ``"funcgrad"`` (the hand-written VJP
        interpreter). Both are jitted into the same kind of XLA program.
      eval_data: optional ``(x, y)`` evaluated after every epoch into ``history["eval_<name>"]``
        with ``eval_fn`` (default: ``loss_fn``'s loss and aux metrics), all examples counted.
      eval_fn: ``eval_fn(params, x, y) -> {"name": batch mean}``.
      eval_batch_size: batch size for evaluation (default ``batch_size``).
      callbacks: called after every epoch as ``callback(state)`` with ``state`` a dict of
        ``epoch`` (0-based index of the epoch just finished), ``epochs``, ``step`` (optimizer
        steps so far), ``params``, ``opt_state``, ``history`` (the dict ``fit`` keeps filling)
        and ``step_losses`` (NumPy, this epoch). A callback returning True stops training after
        this epoch. Typical uses: printing (:func:`print_epochs`), animation frames
        (``frames.append(state["params"])``), early stopping.
      mesh: a ``jax.sharding.Mesh`` with axis ``data_axis``: batches are sharded over it, params
        and optimizer state replicated. Works the same across hosts after
        ``jax.distributed.initialize()`` (every process passes the same data and key).
      opt_state: optimizer state to start from (default ``optimizer.init(params)``).
      initial_epoch: the epoch index to start at (with ``params``/``opt_state`` from that point).
      checkpoint_path: save params, optimizer state, step, key and history here (atomically)
        after every epoch.
      resume_from: a checkpoint written by ``fit``: params, optimizer state, epoch and history
        are taken from it (``params`` and ``opt_state`` then only give the structure), and
        training continues up to ``epochs``; with the same ``key`` and data the result equals the
        uninterrupted run's bit for bit (on one device).
      progress: draw a progress bar on stderr (default: only when stderr is a terminal).
      compiler_options: XLA options for every program ``fit`` compiles (the epochs, evaluation,
        the divergence diagnosis), as ``jax.jit(..., compiler_options=...)`` takes them. None
        (default): :func:`default_compiler_options` for the platform (on CPU, matmuls on Eigen:
        up to 20% faster for small dense layers); ``{}``: XLA's own defaults. An option this
        XLA rejects raises a ``ValueError`` naming it.

    Returns:
      ``(params, history)``: the trained params and a dict of per-epoch lists: ``loss`` (mean of
      the epoch's step losses), each aux metric, ``eval_loss`` and ``eval_<metric>`` (with
      ``eval_data``), ``epoch_time`` (seconds of training, compilation excluded) and
      ``wall_time`` (seconds since the start of the run, compilation and evaluation included).

    Raises:
      TrainingDivergedError: a step's loss or new params are NaN/inf; names the epoch, step and
        first non-finite leaf, and carries the last finite ``params``/``opt_state``.
      ValueError / TypeError: bad arguments, with the value at fault named.
    """
    x, y, n = _check_pair(train_data, "train_data")
    epochs = _check_int(epochs, "epochs", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    initial_epoch = _check_int(initial_epoch, "initial_epoch", 0)
    if batch_size > n:
        raise ValueError(
            f"fit: batch_size={batch_size} is larger than the {n} training examples; pass "
            f"batch_size <= {n}."
        )
    if grad_engine not in GRAD_ENGINES:
        raise ValueError(f"fit: grad_engine must be one of {GRAD_ENGINES}, got {grad_engine!r}.")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"fit: optimizer must be an optax GradientTransformation (e.g. optax.adam(1e-3)), "
            f"got {type(optimizer).__name__}."
        )
    _check_params(params)
    _check_key(key)
    devices = _data_axis_size(mesh, data_axis)
    if batch_size % devices:
        raise ValueError(
            f"fit: batch_size={batch_size} does not split evenly over the {devices} devices of "
            f"the mesh's {data_axis!r} axis; use a multiple of {devices}."
        )
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    eval_batch_size = _check_int(eval_batch_size, "eval_batch_size", 1)
    if eval_data is not None:
        _check_pair(eval_data, "eval_data")
        if eval_batch_size % devices:
            raise ValueError(
                f"fit: eval_batch_size={eval_batch_size} does not split evenly over the "
                f"{devices} devices of the mesh; use a multiple of {devices}."
            )
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"fit: every callback must be callable, got {cb!r}.")
    checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
    num_steps = n // batch_size

    # The loss's output structure, checked once on abstract values (no FLOPs).
    sample = tuple(  # as placed on the device: float64 becomes float32 unless x64 is on
        jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), jax.dtypes.canonicalize_dtype(a.dtype))
        for a in (x, y)
    )
    out = jax.eval_shape(loss_fn, params, *sample)
    loss_shape = out[0] if has_aux and isinstance(out, tuple) and len(out) == 2 else out
    if has_aux and not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "fit: has_aux=True but loss_fn does not return a pair (loss, aux); return "
            "(loss, {'accuracy': acc}) or pass has_aux=False."
        )
    if getattr(loss_shape, "shape", None) != ():
        hint = " (it returns a pair: pass has_aux=True)" if isinstance(out, tuple) else ""
        raise TypeError(
            f"fit: loss_fn must return a scalar loss{hint}, got "
            f"{jax.tree_util.tree_map(lambda s: s.shape, loss_shape)}."
        )
    aux_names = list(_scalar_metrics(out[1], "loss_fn")) if has_aux else []

    if eval_fn is None:
        eval_fn = _loss_metrics(loss_fn, has_aux)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar: ProgressBar | None = None
    programs = _programs(
        loss_fn,
        optimizer,
        grad_engine,
        has_aux,
        eval_fn,
        batch_size,
        mesh,
        data_axis,
        with_progress=show,
        compiler_options=_check_compiler_options(compiler_options, mesh),
    )

    history: dict[str, list[float]] = {"loss": [], **{k: [] for k in aux_names}}
    history.update(epoch_time=[], wall_time=[])

    params = _replicate(params, mesh)
    opt_state = _replicate(optimizer.init(params) if opt_state is None else opt_state, mesh)
    if resume_from is not None:
        params, opt_state, initial_epoch, history = _resume(
            Path(resume_from), params, opt_state, key, batch_size, n, mesh
        )
    data = _replicate((x, y), mesh)
    eval_arrays = None if eval_data is None else _replicate(tuple(eval_data), mesh)
    wall_offset = history["wall_time"][-1] if history["wall_time"] else 0.0
    # Placement is asynchronous: wait for it, so that no epoch's time includes the copy.
    jax.block_until_ready((params, opt_state, data, eval_arrays))
    start = time.perf_counter()
    if initial_epoch < epochs:  # compiles the shuffle's sort-key draw: not an epoch's time
        programs.order(jax.random.fold_in(key, initial_epoch), n)

    try:
        for epoch in range(initial_epoch, epochs):
            key_e = jax.random.fold_in(key, epoch)
            t_order = time.perf_counter()
            order = programs.order(key_e, n)
            order_time = time.perf_counter() - t_order
            args = (params, opt_state, key_e, order, *data)
            compiled = programs.compiled_epoch(args)
            if show:  # one bar per epoch, finished before anything else prints
                bar = ProgressBar(
                    total=num_steps, desc=f"epoch {epoch + 1}/{epochs}", unit="steps", enabled=True
                )
                programs.progress = bar
            t0 = time.perf_counter()
            new_params, new_state, step_losses, step_aux, finite, _ = compiled(*args)
            step_losses = np.asarray(step_losses)
            epoch_time = order_time + time.perf_counter() - t0
            if bar is not None:
                bar.update(num_steps - bar.n)
                bar.set_postfix(f"loss {float(step_losses.mean()):.4f}")
                bar.close()
                programs.progress = bar = None
            if not bool(finite):
                _raise_diverged(
                    programs,
                    params,
                    opt_state,
                    key_e,
                    order,
                    data,
                    epoch,
                    num_steps,
                    history,
                    checkpoint_path,
                    key,
                    batch_size,
                    n,
                )
            params, opt_state = new_params, new_state
            history["loss"].append(float(step_losses.mean()))
            for name in aux_names:
                history[name].append(float(np.asarray(step_aux[name]).mean()))
            if eval_arrays is not None:
                results = _evaluate(programs, params, eval_arrays, eval_batch_size)
                for name in sorted(results, key=lambda k: (k != "loss", k)):  # loss first
                    history.setdefault(f"eval_{name}", []).append(results[name])
            history["epoch_time"].append(epoch_time)
            history["wall_time"].append(wall_offset + time.perf_counter() - start)
            # Keep the time columns last, so printed and tabulated histories read naturally.
            for name in ("epoch_time", "wall_time"):
                history[name] = history.pop(name)
            step = (epoch + 1) * num_steps
            if checkpoint_path is not None:
                _save(
                    checkpoint_path, params, opt_state, step, epoch + 1, history, key, batch_size, n
                )
            state = {
                "epoch": epoch,
                "epochs": epochs,
                "step": step,
                "params": params,
                "opt_state": opt_state,
                "history": history,
                "step_losses": step_losses,
            }
            if any([cb(state) is True for cb in callbacks]):
                break
    finally:
        programs.progress = None
        if bar is not None:
            bar.close()
    return params, history


# ---------------------------------------------------------------------------------------------
# Checkpoints and divergence


def _save(
    path: Path,
    params: Any,
    opt_state: Any,
    step: int,
    epoch: int,
    history: dict[str, list[float]],
    key: jax.Array,
    batch_size: int,
    n: int,
    *,
    diverged: dict[str, Any] | None = None,
) -> Path:
    metadata = {
        "epoch": epoch,
        "history": history,
        "batch_size": batch_size,
        "num_examples": n,
    }
    if diverged is not None:
        metadata["diverged"] = diverged
    if jax.process_index() != 0:
        return path  # multi-host: the state is replicated, one process writes it
    return checkpoint.save(
        path, params, opt_state=opt_state, step=step, metadata=metadata, extra={"key": key}
    )


def _resume(
    path: Path,
    params: Any,
    opt_state: Any,
    key: jax.Array,
    batch_size: int,
    n: int,
    mesh: Mesh | None,
) -> tuple[Any, Any, int, dict[str, list[float]]]:
    ckpt = checkpoint.load(path, like={"params": params, "opt_state": opt_state})
    meta = ckpt["metadata"]
    if "epoch" not in meta or "history" not in meta:
        raise ValueError(
            f"fit: {path} was not written by fit(checkpoint_path=...) (its metadata has no epoch "
            "and history); load it with fg.checkpoint.load and pass params/opt_state instead."
        )
    if "diverged" in meta:
        raise ValueError(
            f"fit: {path} holds the last finite state of a diverged run, saved mid-epoch; it is "
            "for inspection. Resume from the epoch checkpoint beside it instead."
        )
    saved_key = (ckpt["extra"] or {}).get("key")
    if saved_key is not None and not _same_key(saved_key, key):
        raise ValueError(
            f"fit: {path} was trained with a different key than the one passed; resume with the "
            "same key to continue the same run (each epoch shuffles with fold_in(key, epoch))."
        )
    for name, now in (("batch_size", batch_size), ("num_examples", n)):
        if meta.get(name) != now:
            raise ValueError(
                f"fit: {path} was trained with {name}={meta.get(name)}, this run has {now}; "
                "resuming needs the same data and batch size."
            )
    return (
        _replicate(ckpt["params"], mesh),
        _replicate(ckpt["opt_state"], mesh),
        int(meta["epoch"]),
        {k: list(v) for k, v in meta["history"].items()},
    )


def _raise_diverged(
    programs: _Programs,
    params: Any,
    opt_state: Any,
    key_e: jax.Array,
    order: jax.Array,
    data: tuple[jax.Array, jax.Array],
    epoch: int,
    num_steps: int,
    history: dict[str, list[float]],
    checkpoint_path: Path | None,
    key: jax.Array,
    batch_size: int,
    n: int,
) -> None:
    """Re-run the epoch with the checked program from its start state; raise at the bad step."""
    good_params, good_state, step_losses, _, _, bad = programs.checked_epoch(
        params, opt_state, key_e, order, *data
    )
    bad = int(bad)
    if bad < 0:
        # Not reproduced by the checked program (rounding can differ): fall back to the first
        # non-finite loss, with the state from the epoch's start.
        losses_np = np.asarray(step_losses)
        bad_losses = np.flatnonzero(~np.isfinite(losses_np))
        bad = int(bad_losses[0]) if bad_losses.size else num_steps - 1
        good_params, good_state = params, opt_state
    loss, finite = programs.diagnose(good_params, good_state, key_e, order, *data, jnp.int32(bad))
    param_ok, grad_ok = finite
    names = leaf_paths(good_params)
    leaf = next(
        (name for name, ok in zip(names, jax.tree_util.tree_leaves(param_ok)) if not bool(ok)),
        None,
    )
    grad_leaf = next(
        (name for name, ok in zip(names, jax.tree_util.tree_leaves(grad_ok)) if not bool(ok)),
        None,
    )
    loss = _to_float(loss)
    global_step = epoch * num_steps + bad
    where = f"step {bad} of epoch {epoch} (0-based; global step {global_step})"
    if leaf is not None:
        what = f"the loss was {loss} and {leaf} is the first non-finite parameter leaf after it"
    else:
        what = f"the loss was {loss} (every parameter was still finite)"
    if grad_leaf is not None:
        what += f"; the first non-finite gradient leaf is {grad_leaf}"
    saved = None
    if checkpoint_path is not None:
        saved = _save(
            _diverged_path(checkpoint_path),
            good_params,
            good_state,
            global_step,
            epoch,
            history,
            key,
            batch_size,
            n,
            diverged={"epoch": epoch, "step": bad, "leaf": leaf},
        )
    message = (
        f"training diverged at {where}: {what}. The last finite params and optimizer state "
        "(before that step) are on this error as .params and .opt_state"
        + (f", and saved to {saved}" if saved else "")
        + ". Lower the learning rate, clip gradients (optax.clip_by_global_norm), or check the "
        "data for NaN/inf."
    )
    raise TrainingDivergedError(
        message,
        epoch=epoch,
        step=bad,
        global_step=global_step,
        loss=loss,
        leaf=leaf,
        params=good_params,
        opt_state=good_state,
        history=history,
        checkpoint_path=saved,
    )

"""``fit``: check the arguments, build (or reuse) the compiled programs, then run the epochs.

Each epoch: draw the shuffled order, run the compiled fast epoch (one call, the run's progress
bar advanced from inside the program), and if it ended non-finite hand over to the divergence
report; otherwise record the history, evaluate, save the checkpoint and call the callbacks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from funcgrad.losses import LossFn
from funcgrad.train.callbacks import Callback
from funcgrad.train.compiler_options import check_compiler_options
from funcgrad.train.config import FitConfig, check_fit_arguments
from funcgrad.train.divergence import raise_diverged
from funcgrad.train.evaluation import default_eval_fn, evaluate_with
from funcgrad.train.placement import replicate
from funcgrad.train.programs import (
    EpochArgs,
    EvalFn,
    Programs,
    ProgramSettings,
    programs_for,
)
from funcgrad.train.progress import FitProgress
from funcgrad.train.resume import History, TrainState, save, start_state


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
    eval_fn: EvalFn | None = None,
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
) -> tuple[Any, History]:
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
      progress: draw a ``tqdm.auto`` progress bar: a widget in Jupyter, a text line on stderr
        elsewhere. One bar for the run, counting its steps (rate and time left are the run's),
        labelled with the running epoch and showing the last epoch's metrics. Default (None):
        in a Jupyter kernel or when stderr is a terminal, never into a log or a pipe. Under
        ``jax.distributed``, only process 0 draws.
      compiler_options: XLA options for every program ``fit`` compiles (the epochs, evaluation,
        the divergence diagnosis), as ``jax.jit(..., compiler_options=...)`` takes them. None
        (default): :func:`default_compiler_options` for the platform (on CPU, matmuls on Eigen,
        faster for small dense layers); ``{}``: XLA's own defaults. An option this
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
    config = check_fit_arguments(
        loss_fn, params, train_data, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        key=key, grad_engine=grad_engine, has_aux=has_aux, eval_data=eval_data,
        eval_batch_size=eval_batch_size, callbacks=callbacks, mesh=mesh, data_axis=data_axis,
        initial_epoch=initial_epoch, checkpoint_path=checkpoint_path, resume_from=resume_from,
        progress=progress
    )
    settings = ProgramSettings(
        grad_engine=grad_engine,
        has_aux=has_aux,
        eval_fn=default_eval_fn(loss_fn, has_aux) if eval_fn is None else eval_fn,
        batch_size=config.batch_size,
        mesh=mesh,
        data_axis=data_axis,
        with_progress=config.show_progress,
        compiler_options=check_compiler_options(compiler_options, mesh),
    )
    programs = programs_for(loss_fn, optimizer, settings)
    state = start_state(config, optimizer, params, opt_state)
    return _run_epochs(programs, config, state, train_data, eval_data)


_TIME_COLUMNS = ("epoch_time", "wall_time")


class _EpochResult(NamedTuple):
    """One run of the fast epoch program: what it started from and what it returned."""

    args: EpochArgs  # the epoch's arguments, its start state among them
    params: Any
    opt_state: Any
    step_losses: np.ndarray
    step_aux: dict[str, Any]
    finite: bool  # every step's loss and every new parameter finite
    seconds: float  # the shuffle and the epoch, compilation excluded


def _run_epochs(
    programs: Programs,
    config: FitConfig,
    state: TrainState,
    train_data: tuple[Any, Any],
    eval_data: tuple[Any, Any] | None,
) -> tuple[Any, History]:
    """Train from ``state`` up to epoch ``config.epochs`` (or until a callback says stop);
    return the final params and the history."""
    params, opt_state, history = state.params, state.opt_state, state.history
    data = replicate(tuple(train_data), config.mesh)
    eval_arrays = None if eval_data is None else replicate(tuple(eval_data), config.mesh)
    wall_offset = history["wall_time"][-1] if history["wall_time"] else 0.0
    # Placement is asynchronous: wait for it, so that no epoch's time includes the copy.
    jax.block_until_ready((params, opt_state, data, eval_arrays))
    start = time.perf_counter()
    if state.epoch < config.epochs:  # compiles the shuffle's sort-key draw: not an epoch's time
        programs.order(jax.random.fold_in(config.key, state.epoch), config.num_examples)
    progress = FitProgress(
        enabled=config.show_progress and jax.process_index() == 0,
        first_epoch=state.epoch,
        epochs=config.epochs,
        num_steps=config.num_steps,
    )
    with progress:
        for epoch in range(state.epoch, config.epochs):
            result = _train_epoch(programs, config, params, opt_state, data, epoch, progress)
            if not result.finite:
                raise_diverged(programs, config, result.args, epoch, history)
            params, opt_state = result.params, result.opt_state
            history["loss"].append(float(result.step_losses.mean()))
            for name in config.aux_names:
                history[name].append(float(np.asarray(result.step_aux[name]).mean()))
            if eval_arrays is not None:
                results = evaluate_with(programs, params, eval_arrays, config.eval_batch_size)
                for name in sorted(results, key=lambda k: (k != "loss", k)):  # loss first
                    history.setdefault(f"eval_{name}", []).append(results[name])
            history["epoch_time"].append(result.seconds)
            history["wall_time"].append(wall_offset + time.perf_counter() - start)
            # Keep the time columns last, so printed and tabulated histories read naturally.
            for name in _TIME_COLUMNS:
                history[name] = history.pop(name)
            metrics = {k: v[-1] for k, v in history.items() if k not in _TIME_COLUMNS}
            progress.end_epoch(epoch, metrics)
            step = (epoch + 1) * config.num_steps
            if config.checkpoint_path is not None:
                finished = TrainState(params, opt_state, epoch + 1, history)
                save(config, config.checkpoint_path, finished, step)
            callback_state = {
                "epoch": epoch,
                "epochs": config.epochs,
                "step": step,
                "params": params,
                "opt_state": opt_state,
                "history": history,
                "step_losses": result.step_losses,
            }
            with progress.callbacks_writing():
                stop = any([cb(callback_state) is True for cb in config.callbacks])
            if stop:
                if epoch + 1 < config.epochs:
                    progress.stopped_early()
                break
    return params, history


def _train_epoch(
    programs: Programs,
    config: FitConfig,
    params: Any,
    opt_state: Any,
    data: tuple[jax.Array, jax.Array],
    epoch: int,
    progress: FitProgress,
) -> _EpochResult:
    """Run epoch ``epoch`` from ``params`` and ``opt_state`` with the compiled fast program,
    its steps advancing ``progress``."""
    key = jax.random.fold_in(config.key, epoch)
    t_order = time.perf_counter()
    order = programs.order(key, config.num_examples)
    order_time = time.perf_counter() - t_order
    args = programs.epoch_args(params, opt_state, key, order, data)
    compiled = programs.compiled_epoch(args)  # before the bar starts: its clock excludes this
    with progress.epoch(epoch) as (bar_id, report_every):
        progress_args = programs.epoch_args(
            params, opt_state, key, order, data, bar_id, report_every
        )
        t0 = time.perf_counter()
        new_params, new_state, step_losses, step_aux, finite, _ = compiled(*progress_args)
        step_losses = np.asarray(step_losses)
        seconds = order_time + time.perf_counter() - t0
    # ``args`` (no bar) are kept for a divergence re-run, which must not move the bar.
    return _EpochResult(args, new_params, new_state, step_losses, step_aux, bool(finite), seconds)

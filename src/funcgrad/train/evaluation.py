"""Evaluating params over a whole data set: the example-weighted mean of per-batch metrics."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from funcgrad.losses import LossFn
from funcgrad.train.compiler_options import check_compiler_options
from funcgrad.train.config import check_pair
from funcgrad.train.placement import replicate, to_float
from funcgrad.train.programs import EvalFn, Programs, ProgramSettings, programs_for


def evaluate(
    eval_fn: EvalFn,
    params: Any,
    data: tuple[Any, Any],
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    data_axis: str = "data",
) -> dict[str, float]:
    """Return the example-weighted mean of ``eval_fn(params, x, y)`` (a dict of per-batch means)
    over all of ``data``, in batches of ``batch_size`` (the last one may be short)."""
    settings = ProgramSettings(
        grad_engine="jax",
        has_aux=False,
        eval_fn=eval_fn,
        batch_size=batch_size,
        mesh=mesh,
        data_axis=data_axis,
        with_progress=False,
        compiler_options=check_compiler_options(None, mesh),
    )
    programs = programs_for(_zero_loss, _IDENTITY, settings)
    x, y, _ = check_pair(data, "data")
    return evaluate_with(programs, params, replicate((x, y), mesh), batch_size)


def evaluate_with(
    programs: Programs, params: Any, data: tuple[jax.Array, jax.Array], batch_size: int
) -> dict[str, float]:
    """:func:`evaluate` with ``programs``' evaluation, on data already on the device."""
    return {k: to_float(v) for k, v in programs.eval(params, *data, batch_size=batch_size).items()}


def default_eval_fn(loss_fn: LossFn, has_aux: bool) -> EvalFn:
    """The eval_fn of a fit without one: ``{"loss": loss, **aux}`` (one object per loss_fn, so
    that the programs cached on it are reused)."""
    try:
        return _cached_loss_metrics(loss_fn, has_aux)
    except TypeError:
        return _loss_metrics(loss_fn, has_aux)


def _loss_metrics(loss_fn: LossFn, has_aux: bool) -> EvalFn:

    def eval_fn(params: Any, x: jax.Array, y: jax.Array) -> dict[str, Any]:
        result = loss_fn(params, x, y)
        loss, aux = result if has_aux else (result, {})
        return {"loss": loss, **aux}

    return eval_fn


_cached_loss_metrics = functools.lru_cache(maxsize=16)(_loss_metrics)


def _zero_loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """The loss of evaluate's programs, which never train: only their evaluation is used."""
    return jnp.zeros(())


_IDENTITY = optax.identity()

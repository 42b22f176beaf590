"""fit's arguments, checked once, and the :class:`FitConfig` of the run built from them.

Every check raises ``TypeError`` or ``ValueError`` naming the argument, the value at fault and
what to pass instead; nothing is traced or compiled before the arguments are known to be good,
except the loss, which is evaluated on abstract values (``jax.eval_shape``: no FLOPs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from funcgrad._paths import leaf_paths
from funcgrad.losses import LossFn
from funcgrad.train.callbacks import Callback
from funcgrad.train.progress import shows_progress_by_default

GRAD_ENGINES = ("jax", "funcgrad")


@dataclass(frozen=True)
class FitConfig:
    """What one fit run is, once its arguments are checked: the loop, the checkpoints, the
    resume and the divergence report all read it."""

    num_examples: int
    epochs: int  # the index at which to stop
    batch_size: int
    initial_epoch: int
    eval_batch_size: int
    key: jax.Array  # epoch e shuffles with fold_in(key, e)
    mesh: Mesh | None
    aux_names: tuple[str, ...]  # the loss's aux metrics (has_aux=True), in its order
    callbacks: tuple[Callback, ...]
    show_progress: bool
    checkpoint_path: Path | None
    resume_from: Path | None

    @property
    def num_steps(self) -> int:
        """Optimizer steps per epoch (the shuffled order's remainder is dropped)."""
        return self.num_examples // self.batch_size


def check_fit_arguments(
    loss_fn: LossFn,
    params: Any,
    train_data: Any,
    *,
    optimizer: Any,
    epochs: Any,
    batch_size: Any,
    key: Any,
    grad_engine: str,
    has_aux: bool,
    eval_data: Any,
    eval_batch_size: Any,
    callbacks: Sequence[Callback],
    mesh: Mesh | None,
    data_axis: str,
    initial_epoch: Any,
    checkpoint_path: str | os.PathLike[str] | None,
    resume_from: str | os.PathLike[str] | None,
    progress: bool | None,
) -> FitConfig:
    """Check ``fit``'s arguments (as ``fit`` documents them) and return the run's config."""
    x, y, n = check_pair(train_data, "train_data")
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
        check_pair(eval_data, "eval_data")
        if eval_batch_size % devices:
            raise ValueError(
                f"fit: eval_batch_size={eval_batch_size} does not split evenly over the "
                f"{devices} devices of the mesh; use a multiple of {devices}."
            )
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"fit: every callback must be callable, got {cb!r}.")
    return FitConfig(
        num_examples=n,
        epochs=epochs,
        batch_size=batch_size,
        initial_epoch=initial_epoch,
        eval_batch_size=eval_batch_size,
        key=key,
        mesh=mesh,
        aux_names=_check_loss_output(loss_fn, params, (x, y), batch_size, has_aux),
        callbacks=tuple(callbacks),
        show_progress=shows_progress_by_default() if progress is None else bool(progress),
        checkpoint_path=None if checkpoint_path is None else Path(checkpoint_path),
        resume_from=None if resume_from is None else Path(resume_from),
    )


def _check_loss_output(
    loss_fn: LossFn, params: Any, data: tuple[Any, Any], batch_size: int, has_aux: bool
) -> tuple[str, ...]:
    """The names of ``loss_fn``'s aux metrics, after checking on abstract values (no FLOPs) that
    it returns a scalar loss, and with ``has_aux`` a dict of scalar metrics beside it."""
    sample = tuple(  # as placed on the device: float64 becomes float32 unless x64 is on
        jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), jax.dtypes.canonicalize_dtype(a.dtype))
        for a in data
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
    return tuple(_scalar_metrics(out[1], "loss_fn")) if has_aux else ()


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


def check_pair(data: Any, name: str) -> tuple[Any, Any, int]:
    """``data`` as ``(x, y, n)`` after checking it is a pair of arrays of the same length n."""
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


def _data_axis_size(mesh: Mesh | None, data_axis: str) -> int:
    """How many devices a batch is split over: the size of ``mesh``'s ``data_axis`` (1 without a
    mesh), after checking the mesh has that axis."""
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

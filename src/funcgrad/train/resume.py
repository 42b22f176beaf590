"""Where a fit run starts and what it leaves behind: its state, saved after every epoch and read
back to resume.

A checkpoint written by ``fit`` holds params, optimizer state, the step count, the key and, in
its metadata, the epochs completed, the history, the batch size and the number of examples:
everything needed to check that a resumed run is the same run and to continue it bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcgrad import checkpoint
from funcgrad.train.config import FitConfig
from funcgrad.train.placement import replicate

History = dict[str, list[float]]


class TrainState(NamedTuple):
    """A run after ``epoch`` epochs: its params, optimizer state and history."""

    params: Any
    opt_state: Any
    epoch: int
    history: History


def start_state(
    config: FitConfig, optimizer: optax.GradientTransformation, params: Any, opt_state: Any
) -> TrainState:
    """The state the run starts from, on the device: ``params`` and ``opt_state`` (default
    ``optimizer.init(params)``) at ``initial_epoch`` with an empty history, or what the
    checkpoint ``resume_from`` holds (``params`` and ``opt_state`` then give the structure)."""
    history: History = {"loss": [], **{k: [] for k in config.aux_names}}
    history.update(epoch_time=[], wall_time=[])
    params = replicate(params, config.mesh)
    opt_state = replicate(optimizer.init(params) if opt_state is None else opt_state, config.mesh)
    if config.resume_from is None:
        return TrainState(params, opt_state, config.initial_epoch, history)
    return _resume(config, config.resume_from, params, opt_state)


def save(
    config: FitConfig,
    path: Path,
    state: TrainState,
    step: int,
    *,
    diverged: dict[str, Any] | None = None,
) -> Path:
    """Write ``state`` at optimizer step ``step`` to ``path`` (from process 0 only; the state is
    replicated); ``diverged`` marks the last finite state of a diverged run."""
    metadata = {
        "epoch": state.epoch,
        "history": state.history,
        "batch_size": config.batch_size,
        "num_examples": config.num_examples,
    }
    if diverged is not None:
        metadata["diverged"] = diverged
    if jax.process_index() != 0:
        return path  # multi-host: the state is replicated, one process writes it
    return checkpoint.save(
        path,
        state.params,
        opt_state=state.opt_state,
        step=step,
        metadata=metadata,
        extra={"key": config.key},
    )


def _resume(config: FitConfig, path: Path, params: Any, opt_state: Any) -> TrainState:
    """The state saved at ``path`` by an earlier epoch of this same run (same key, data size and
    batch size), on the device."""
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
    if saved_key is not None and not _same_key(saved_key, config.key):
        raise ValueError(
            f"fit: {path} was trained with a different key than the one passed; resume with the "
            "same key to continue the same run (each epoch shuffles with fold_in(key, epoch))."
        )
    for name, now in (("batch_size", config.batch_size), ("num_examples", config.num_examples)):
        if meta.get(name) != now:
            raise ValueError(
                f"fit: {path} was trained with {name}={meta.get(name)}, this run has {now}; "
                "resuming needs the same data and batch size."
            )
    return TrainState(
        replicate(ckpt["params"], config.mesh),
        replicate(ckpt["opt_state"], config.mesh),
        int(meta["epoch"]),
        {k: list(v) for k, v in meta["history"].items()},
    )


def _same_key(a: Any, b: Any) -> bool:
    def data(k: Any) -> np.ndarray:
        k = jnp.asarray(k) if not isinstance(k, jax.Array) else k
        if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
            k = jax.random.key_data(k)
        return np.asarray(k)

    return np.array_equal(data(a), data(b))

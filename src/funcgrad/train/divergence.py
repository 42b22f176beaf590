"""What fit does when an epoch ends in a non-finite loss or parameter: find the step, keep the
last finite state, and raise :class:`TrainingDivergedError` saying where it happened.

The fast epoch only reports one flag, "every step's loss and every parameter finite". When it is
false, the epoch is run again from its starting state (kept, never donated) with the checked
program, which stops updating at the first bad step; one more program re-runs that step alone to
name the first non-finite parameter and gradient leaves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from funcgrad._paths import leaf_paths
from funcgrad.train.config import FitConfig
from funcgrad.train.placement import to_float
from funcgrad.train.programs import EpochArgs, Programs
from funcgrad.train.resume import History, TrainState, save


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
        history: History,
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


def diverged_path(path: Path) -> Path:
    """Where the last finite state of a diverged run is saved, beside its epoch checkpoint."""
    return path.with_name(f"{path.stem}.diverged{path.suffix}")


def raise_diverged(
    programs: Programs, config: FitConfig, args: EpochArgs, epoch: int, history: History
) -> NoReturn:
    """Re-run epoch ``epoch`` (its arguments ``args``, from its start state) with the checked
    program, save the last finite state when checkpointing, and raise at the bad step."""
    good_params, good_state, bad = _last_finite_state(programs, args, config.num_steps)
    loss, finite = programs.diagnose(
        good_params, good_state, args.key, args.order, args.x, args.y, jnp.int32(bad)
    )
    param_ok, grad_ok = finite
    leaf = _first_false_leaf(good_params, param_ok)
    grad_leaf = _first_false_leaf(good_params, grad_ok)
    loss = to_float(loss)
    global_step = epoch * config.num_steps + bad
    where = f"step {bad} of epoch {epoch} (0-based; global step {global_step})"
    if leaf is not None:
        what = f"the loss was {loss} and {leaf} is the first non-finite parameter leaf after it"
    else:
        what = f"the loss was {loss} (every parameter was still finite)"
    if grad_leaf is not None:
        what += f"; the first non-finite gradient leaf is {grad_leaf}"
    saved = None
    if config.checkpoint_path is not None:
        saved = save(
            config,
            diverged_path(config.checkpoint_path),
            TrainState(good_params, good_state, epoch, history),
            global_step,
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


def _last_finite_state(programs: Programs, args: EpochArgs, num_steps: int) -> tuple[Any, Any, int]:
    """(params, opt_state) just before the epoch's first bad step, and that step's index."""
    good_params, good_state, step_losses, _, _, bad = programs.checked_epoch(*args)
    bad = int(bad)
    if bad >= 0:
        return good_params, good_state, bad
    # Not reproduced by the checked program (rounding can differ): fall back to the first
    # non-finite loss, with the state from the epoch's start.
    bad_losses = np.flatnonzero(~np.isfinite(np.asarray(step_losses)))
    bad = int(bad_losses[0]) if bad_losses.size else num_steps - 1
    return args.params, args.opt_state, bad


def _first_false_leaf(params: Any, flags: Any) -> str | None:
    """The path (in ``params``' naming) of the first leaf whose flag is False, or None."""
    names = leaf_paths(params)
    return next(
        (name for name, ok in zip(names, jax.tree_util.tree_leaves(flags)) if not bool(ok)), None
    )

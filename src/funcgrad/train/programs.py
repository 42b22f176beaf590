"""fit's compiled programs: the epoch (fast and checked), the one-step diagnosis, the evaluation.

One epoch is one call: ``lax.scan`` over the rows of the epoch's index array, each step gathering
its batch from the device-resident training set and applying the optax step. The programs of one
configuration are built once and shared by every fit with the same loss, optimizer and
:class:`ProgramSettings` (as ``jax.jit`` shares a compiled function): fitting again, or resuming,
compiles nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcgrad import interpret
from funcgrad.data.batching import permutation
from funcgrad.losses import LossFn
from funcgrad.train.compiler_options import CompilerOptions, rejected_options_error
from funcgrad.train.placement import replicate
from funcgrad.train.progress import NO_PROGRESS_BAR, report_progress

EvalFn = Callable[..., dict[str, Any]]
"""``eval_fn(params, x, y) -> {"name": batch mean}``."""

# Steps per iteration of the epoch's while loop. With several steps in one loop body XLA can
# schedule across step boundaries and the loop's per-iteration cost is paid less often; the
# price is a longer compilation, once per fit (README, "Performance"; scripts/bench_epoch.py).
SCAN_UNROLL = 4

_DROPOUT_STREAM = 0x0D0  # fold_in tag separating per-step keys from the shuffling key


@dataclass(frozen=True)
class ProgramSettings:
    """Everything the compiled programs depend on besides the loss function and the optimizer.

    Hashable (when ``eval_fn`` is), so that programs are cached on it.
    """

    grad_engine: str
    has_aux: bool
    eval_fn: EvalFn | None
    batch_size: int
    mesh: Mesh | None = None
    data_axis: str = "data"
    with_progress: bool = False
    compiler_options: CompilerOptions = ()
    scan_unroll: int = SCAN_UNROLL


class EpochArgs(NamedTuple):
    """The arguments of one call of an epoch program, all on the device."""

    params: Any
    opt_state: Any
    key: jax.Array  # the epoch's key: fold_in(key, epoch)
    order: jax.Array  # (num_batches, batch_size) example indices
    x: jax.Array
    y: jax.Array
    progress_id: jax.Array  # which bar the epoch's reports advance (see train.progress)
    progress_every: jax.Array  # steps between two reports; 0: none


# ---------------------------------------------------------------------------------------------
# The programs


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


def _all_finite(tree: Any) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite, as one boolean scalar."""
    flags = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return functools.reduce(jnp.logical_and, flags, jnp.bool_(True))


class Programs:
    """The jitted epoch (fast and checked), the single-step diagnosis and evaluation of one fit.

    Nothing on it changes after construction except ``compiled_epoch``'s cache of compiled
    epochs, which only saves compiling the same program twice.
    """

    def __init__(
        self, loss_fn: LossFn, optimizer: optax.GradientTransformation, settings: ProgramSettings
    ) -> None:
        if settings.grad_engine == "funcgrad":
            self.value_and_grad = interpret.value_and_grad(loss_fn, has_aux=settings.has_aux)
        else:
            self.value_and_grad = jax.value_and_grad(loss_fn, has_aux=settings.has_aux)
        self.optimizer = optimizer
        self.settings = settings
        self.takes_key = _takes_key(loss_fn)
        self._compiled: dict[Any, Any] = {}
        jit = functools.partial(jax.jit, compiler_options=dict(settings.compiler_options) or None)
        mesh, data_axis = settings.mesh, settings.data_axis
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
        loss, aux = out if self.settings.has_aux else (out, {})
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux, grads

    def order(self, key: jax.Array, n: int) -> jax.Array:
        """The epoch's example indices as ``(num_batches, batch_size)``: the order of
        ``fg.data.batches(key, ...)``, remainder dropped, on the device (sharded over the batch
        axis under a mesh). Shuffled on the host: see ``fg.data.permutation``."""
        batch_size = self.settings.batch_size
        steps = n // batch_size
        order = permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)
        if self.batch_sharding is None:
            return jax.device_put(order)
        # make_array_from_callback works multi-host too: each process fills its own devices.
        return jax.make_array_from_callback(
            order.shape, self.batch_sharding, lambda index: order[index]
        )

    def epoch_args(
        self,
        params: Any,
        opt_state: Any,
        key: jax.Array,
        order: jax.Array,
        data: tuple[jax.Array, jax.Array],
        progress_id: int = NO_PROGRESS_BAR,
        progress_every: int = 0,
    ) -> EpochArgs:
        """The arguments of an epoch program, with the progress bar's id and reporting interval
        placed as the rest (they only matter to programs built ``with_progress``)."""
        placed = replicate((np.int32(progress_id), np.int32(progress_every)), self.settings.mesh)
        return EpochArgs(params, opt_state, key, order, *data, *placed)

    def _batch(self, x: jax.Array, y: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Gathered step by step from the device-resident set: no (num_batches, batch, ...) copy
        # of the epoch is written and read back. Under a mesh each device gathers the rows of its
        # own shard of ``index``.
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
        progress_id: jax.Array,
        progress_every: jax.Array,
        *,
        checked: bool,
    ) -> tuple:
        """One epoch: (params, opt_state, per-step losses, per-step aux, all finite, first bad).

        Fast (``checked=False``): plain updates; the finiteness flag is one reduction at the end.
        Checked: stops updating at the first step whose loss or new params are non-finite and
        returns that step's index (-1 if none), the params and state from just before it.
        """
        num_steps = order.shape[0]

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
            if self.settings.with_progress:  # the caller draws the last step
                done = i + 1
                due = (progress_every > 0) & (done % jnp.maximum(progress_every, 1) == 0)
                lax.cond(
                    due & (done < num_steps),
                    lambda d: jax.debug.callback(report_progress, progress_id, d),
                    lambda d: None,
                    done,
                )
            return (new_params, new_state, bad, i + 1), (loss, aux)

        init = (params, opt_state, jnp.int32(-1), jnp.int32(0))
        (params, opt_state, bad, _), (step_losses, step_aux) = lax.scan(
            body, init, order, unroll=self.settings.scan_unroll
        )
        finite = jnp.all(jnp.isfinite(step_losses)) & _all_finite(params)
        return params, opt_state, step_losses, step_aux, finite, bad

    def compiled_epoch(self, args: EpochArgs) -> Any:
        """The fast epoch compiled ahead of time for these arguments (so that an epoch's time
        excludes compilation), cached for later fits with the same shapes and placement."""
        leaves, treedef = jax.tree_util.tree_flatten(args)
        signature = (treedef, *((a.shape, a.dtype, a.sharding) for a in leaves))
        if signature not in self._compiled:
            try:
                self._compiled[signature] = self.epoch.lower(*args).compile()
            except jax.errors.JaxRuntimeError as error:
                rejected = rejected_options_error(error)
                if rejected is None:
                    raise
                raise rejected from error
        return self._compiled[signature]

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
        eval_fn = self.settings.eval_fn
        n = x.shape[0]
        full = n // batch_size
        m = full * batch_size
        names = jax.eval_shape(eval_fn, params, x[:1], y[:1])
        totals = {k: jnp.zeros((), jnp.float32) for k in names}
        if full:
            xb = x[:m].reshape(full, batch_size, *x.shape[1:])
            yb = y[:m].reshape(full, batch_size, *y.shape[1:])
            if self.batch_sharding is not None:
                xb = lax.with_sharding_constraint(xb, self.batch_sharding)
                yb = lax.with_sharding_constraint(yb, self.batch_sharding)

            def body(total: dict, batch: tuple) -> tuple:
                metrics = eval_fn(params, *batch)
                return {k: total[k] + metrics[k] * batch_size for k in total}, None

            totals = lax.scan(body, totals, (xb, yb))[0]
        if n > m:
            metrics = eval_fn(params, x[m:], y[m:])
            totals = {k: totals[k] + metrics[k] * (n - m) for k in totals}
        return {k: v / n for k, v in totals.items()}


_cached_programs = functools.lru_cache(maxsize=16)(Programs)


def programs_for(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, settings: ProgramSettings
) -> Programs:
    """The programs for this loss, optimizer and settings, reused by later fits with the same
    ones (as ``jax.jit`` reuses a compiled function): fitting again, or resuming, compiles
    nothing."""
    try:
        return _cached_programs(loss_fn, optimizer, settings)
    except TypeError:  # an unhashable optimizer or function: build afresh
        return Programs(loss_fn, optimizer, settings)

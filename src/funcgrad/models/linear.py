"""Linear regression as a pure function: y = x @ W + b.

Params: ``{"W": (n_in, n_out), "b": (n_out,)}``. Fitting ``y = 2·x1 + x2 + 1`` with ``n_in=2``
recovers ``W = [[2], [1]]`` and ``b = [1]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from funcgrad.models import layers
from funcgrad.models.initializers import Initializer

Params = dict[str, jax.Array]


def init(
    key: jax.Array,
    n_in: int,
    n_out: int = 1,
    *,
    w_init: str | Initializer = "glorot_uniform",
    b_init: str | Initializer = "zeros",
    dtype: DTypeLike = jnp.float32,
) -> Params:
    """Return ``{"W": (n_in, n_out), "b": (n_out,)}``, deterministic from ``key``."""
    return layers.dense_init(key, n_in, n_out, w_init=w_init, b_init=b_init, dtype=dtype)


def apply(params: Params, x: jax.Array) -> jax.Array:
    """Predict y = x @ W + b: ``(batch, n_in) -> (batch, n_out)``, or ``(n_in,) -> (n_out,)``.

    The output keeps its last axis even when ``n_out == 1``: compare it with targets of shape
    ``(batch, 1)``. Raises ``ValueError`` on a wrong input shape or a non-float dtype.
    """
    n_in = params["W"].shape[0]
    x = layers.check_input(x, (n_in,), where="linear (dense)")
    return layers.dense(params, x)

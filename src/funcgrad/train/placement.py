"""Putting fit's inputs on the device: replicated over the mesh, in fresh buffers."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def replicate(tree: Any, mesh: Mesh | None) -> Any:
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


def to_float(x: Any) -> float:
    """A device scalar as a Python float."""
    return float(np.asarray(x))

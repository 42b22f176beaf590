"""The XLA options fit compiles with: its CPU default, and the check of a user's own."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

CompilerOptions = tuple[tuple[str, Any], ...]
"""Compiler options as sorted (name, value) pairs: hashable, so programs can be cached on them."""

# XLA:CPU hands each matmul to YNNPACK by default. For the skinny matmuls of dense layers on
# small batches Eigen's kernels, XLA's other matmul library, are faster, so fit sends matmuls to
# Eigen and keeps YNNPACK for the convolutions and reductions (README, "Compiler options";
# scripts/bench_epoch.py). An XLA that does not know the option (it is experimental and may be
# renamed) gets none: see _xla_accepts.
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
def _xla_accepts(options: CompilerOptions) -> bool:
    """Whether this XLA compiles a trivial program with these options (once per process)."""
    try:
        jax.jit(lambda a: a + 1).lower(jnp.zeros((), jnp.float32)).compile(
            compiler_options=dict(options)
        )
    except jax.errors.JaxRuntimeError:
        return False
    return True


def check_compiler_options(options: Any, mesh: Mesh | None) -> CompilerOptions:
    """``compiler_options`` as sorted (name, value) pairs; None becomes
    :func:`default_compiler_options` for the devices the programs run on."""
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


def rejected_options_error(error: jax.errors.JaxRuntimeError) -> ValueError | None:
    """The ``ValueError`` to raise when XLA failed to compile because it rejected an option
    (None when ``error`` is about something else)."""
    if "compile option" not in str(error) and "setting option" not in str(error):
        return None
    return ValueError(
        f"fit: XLA rejected compiler_options: {error}. Check the option names and values against "
        "this jaxlib's XLA (they change between releases), or drop compiler_options."
    )

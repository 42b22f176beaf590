"""Every primitive JAX can differentiate has a funcgrad rule, or a documented reason not to.

The list is read from the installed JAX, in a fresh interpreter: every primitive with a JVP,
transpose or linearization rule after importing JAX's public modules (JAX's own rule tables,
read, never called). A newer JAX that adds a primitive fails this test by
name until the primitive gets a rule (or a reason here).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

import funcgrad as fg
from funcgrad.interpret.jaxprs import REF_PRIMITIVES

# The public modules a user differentiates through. Experimental extensions that bring their own
# primitive families (jax.experimental.sparse, pallas, hijax) are outside funcgrad's scope.
PUBLIC_MODULES = [
    "jax.numpy",
    "jax.numpy.fft",
    "jax.numpy.linalg",
    "jax.lax",
    "jax.lax.linalg",
    "jax.nn",
    "jax.random",
    "jax.scipy.fft",
    "jax.scipy.integrate",
    "jax.scipy.linalg",
    "jax.scipy.optimize",
    "jax.scipy.signal",
    "jax.scipy.sparse.linalg",
    "jax.scipy.special",
    "jax.scipy.stats",
    "jax.custom_batching",
    "jax.experimental.layout",
    "jax.experimental.ode",
    "jax.ffi",
    "jax.ref",
    "jax.sharding",
]

# Primitives with a JAX rule that funcgrad does not need one for, and why. Keep it short.
EXEMPT = {
    "custom_lin": "JAX-internal: exists only inside jax.linearize/jax.vjp while JAX's own AD "
    "runs, never in a jaxpr a user's function traces to",
    "eval_jaxpr": "JAX-internal: staged as closed_call, so it never appears in a jaxpr",
    "tie": "JAX-internal: no public API binds it (jax._src.lax.lax.tie_p)",
    "stage": "lax.stage lifts a constant into a trace: it never applies to a traced value, so "
    "no gradient can reach it",
    "call_hi_primitive": "JAX-internal (hijax): no public API binds it",
    "call_hi_primitive_linearized": "JAX-internal (hijax): no public API binds it",
    "box_get": "JAX-internal (hijax boxes): no public API binds it",
    "box_set": "JAX-internal (hijax boxes): no public API binds it",
    "new_box": "JAX-internal (hijax boxes): no public API binds it",
    "new_log": "JAX-internal (hijax logs): no public API binds it",
    "log_extend": "JAX-internal (hijax logs): no public API binds it",
    "log_read": "JAX-internal (hijax logs): no public API binds it",
    "to_edtype": "JAX-internal (extended dtypes): no public API binds it",
    "from_edtype": "JAX-internal (extended dtypes): no public API binds it",
}


@functools.cache
def _jax_differentiable_primitives() -> frozenset[str]:
    """Read in a fresh interpreter: tests define primitives of their own in this one."""
    script = (
        "import importlib, json\n"
        f"for name in {PUBLIC_MODULES!r}: importlib.import_module(name)\n"
        "from jax._src.interpreters import ad\n"
        "tables = ('primitive_jvps', 'primitive_transposes', 'fancy_transposes',\n"
        "          'primitive_linearizations')\n"
        "print(json.dumps(sorted({p.name for t in tables for p in getattr(ad, t, {})})))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, check=True)
    return frozenset(json.loads(done.stdout))


def test_the_list_is_read_from_jax():
    names = _jax_differentiable_primitives()
    assert {"tanh", "dot_general", "cholesky", "fft", "psum_invariant", "shard_map"} <= names


def test_every_primitive_jax_differentiates_is_covered():
    names = _jax_differentiable_primitives()
    covered = fg.supported_primitives() | REF_PRIMITIVES | set(EXEMPT)
    missing = sorted(names - covered)
    assert not missing, (
        f"JAX differentiates {missing} but funcgrad has no rule for them: add a rule (README, "
        "'Adding a rule'), or, for a JAX-internal primitive no user can reach, a reason in "
        "EXEMPT in tests/test_coverage.py"
    )


@pytest.mark.parametrize("name", sorted(EXEMPT))
def test_exemptions_are_still_needed(name):
    """An exempt primitive that JAX dropped, or that funcgrad now supports, leaves the list."""
    assert name in _jax_differentiable_primitives(), f"JAX no longer has '{name}': drop it"
    assert name not in fg.supported_primitives(), f"funcgrad supports '{name}' now: drop it"

"""Compare gradients: funcgrad's interpreter, ``jax.grad``, hand-derived ones, finite differences.

``fg.compare_grads(loss, params, x, y)`` computes the gradient of ``loss`` w.r.t. ``params`` with
``fg.grad`` and ``jax.grad`` (and with each ``reference`` you give: a hand-derived gradient
function, ``"fd"`` for central finite differences) and returns a :class:`GradReport`: one
comparison per (leaf, pair of engines), each leaf named as a person writes it (``layers[0].W``).

**Pairs.** Every engine is compared with ``jax.grad``, the reference: ``fg~jax``, ``manual~jax``,
``fd~jax`` (read ``a~b`` as "a checked against b"). Measuring everything against one anchor keeps
the table short and still triangulates: if ``fg~jax`` fails and ``fd~jax`` passes, funcgrad is
wrong; if both fail, look at JAX (or the function's smoothness). ``pairs=[("manual",
"funcgrad")]`` chooses other pairs.

**Per element** a row says whether tested and reference are *exact* (equal values and dtypes)
and *close* (``|a - b| <= atol + rtol·|b|``), with *maxabs*, *maxrel* and *ulps*
(:mod:`funcgrad.compare.metrics`). NaN on either side (or both) is a mismatch: a NaN gradient is
never "equal" to anything.

**Default tolerances** are one table per dtype, :data:`TOLERANCES` for two analytic gradients
and :data:`FD_TOLERANCES` for finite differences (printed in :mod:`funcgrad.compare.metrics`);
``rtol``, ``atol`` override them for the analytic pairs, ``fd_rtol``, ``fd_atol`` for finite
differences. Finite differences (:mod:`funcgrad.compare.finite_diff`: steps
``h = cbrt(eps)·max(1,|x|)`` and h/2, Richardson-extrapolated) carry the rounding noise of
``f(x ± h)`` divided by h; the fd atol is raised to ``10·eps^(2/3)·|f(x)|`` when the loss is
large, and the report says so. Prefer float64 for finite differences: run with
``jax.enable_x64`` and float64 inputs, or pass ``fd_dtype="float64"`` to evaluate them in
float64 whatever the gradients' dtype; when they run in float32 the report says they only catch
gross errors.

A probe whose step straddles a kink of ``fun`` (a ReLU or a max switching) measures no
derivative at ``x``: estimates with steps h and h/2 and from either side disagree there, so it
is skipped and counted in the row's note (the test reads ``fun`` alone: no gradient, right or
wrong, decides it). A leaf where every probe straddles a kink is *inconclusive*, not a
mismatch. Leaves larger than ``fd_elements`` are probed at that many random elements plus one
random direction ``v`` (compared as ``<g, v>``), and the row says so.

**The report** (:mod:`funcgrad.compare.report`): ``str(report)`` is an aligned table, one line
per (leaf, pair) grouped under the leaf; ``report.to_string("wide")`` one line per leaf with a
column per pair; in a notebook the HTML table has one row per leaf with a column group per pair,
failing rows in red. ``report.rows`` is the same as plain data, ``report.ok`` (and
``bool(report)``) the verdict.

**Intermediates.** Mark a value inside ``fun`` with ``fg.tag(z, "logits")`` and pass
``intermediates={"logits": dlogits}``: the report then has ``tag:logits`` rows comparing your
cotangent with funcgrad's (``fg.trace(...).cotangent("logits")``) and with JAX's. JAX's cotangent
is read honestly by JAX itself (:func:`jax_tag_cotangents`, :mod:`funcgrad.compare.tags`):
``jax.grad`` of the function with a zero ``δ`` added at the tag, ``∂loss/∂δ``.

Modules: ``metrics`` (tolerances, ULPs, array statistics), ``finite_diff`` (central
differences), ``tags`` (JAX's cotangent of tagged values), ``rows`` (one report row per leaf and
pair), ``report`` (:class:`GradReport`), ``grads`` (:func:`compare_grads`).
"""

from funcgrad.compare.grads import compare_grads
from funcgrad.compare.metrics import (
    FD_TOLERANCES,
    TOLERANCES,
    compare_arrays,
    default_tolerance,
    ulp_distance,
)
from funcgrad.compare.report import GradReport
from funcgrad.compare.tags import jax_tag_cotangents

__all__ = [
    "FD_TOLERANCES",
    "TOLERANCES",
    "GradReport",
    "compare_arrays",
    "compare_grads",
    "default_tolerance",
    "jax_tag_cotangents",
    "ulp_distance",
]

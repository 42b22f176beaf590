"""Programs that once crashed or gave a wrong number, and the custom derivatives of jax.nn and
jax.scipy at their special points, each checked against jax.grad at first and second order.

A custom_jvp rule need not be the derivative of its function's body (a straight-through
estimator is the extreme case), so the second derivative must differentiate the rule, as JAX
does; and the points where a rule switches formula (relu at 0, xlogy at x = 0, log_ndtr at its
asymptotic thresholds) are where a wrong second derivative hides.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import assert_grads_match, assert_trees_close
from jax import lax
from jax.experimental.ode import odeint
from jax.extend import source_info_util

import funcgrad as fg
from funcgrad.interpret.errors import NotDifferentiableError, RuleError


def _same(got, want):
    """Equal to float64 rounding, NaNs and infinities in the same places."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


def _second_orders(f, *args):
    """d/dx (df/dx) by grad-of-grad and by vjp-of-vjp, for each engine."""

    def by_grad(grad):
        return grad(lambda *a: jnp.sum(grad(f)(*a)))(*args)

    def by_vjp(vjp):
        def inner(*a):
            out, pull = vjp(f, *a)
            return pull(jnp.ones_like(out))[0]

        out, pull = vjp(inner, *args)
        return pull(jnp.ones_like(out))

    return (by_grad(fg.grad), by_vjp(fg.vjp)), (by_grad(jax.grad), by_vjp(jax.vjp))


# ---- straight-through estimators: the rule, not the body, is differentiated -----------------


@jax.custom_jvp
def _straight_through(x):
    return x


_straight_through.defjvp(lambda p, t: (_straight_through(p[0]), 2 * t[0]))


def test_second_order_through_a_custom_jvp_that_is_not_its_bodys_derivative():
    with jax.enable_x64(True):
        f = lambda x: jnp.sin(_straight_through(x * x))  # noqa: E731
        x = 0.7
        want = 4 * np.cos(x * x) - 16 * x * x * np.sin(x * x)  # the rule's derivative, twice
        assert jax.grad(jax.grad(f))(x) == pytest.approx(want, rel=1e-12)
        np.testing.assert_allclose(fg.grad(fg.grad(f))(x), want, rtol=1e-12)
        np.testing.assert_allclose(jax.jit(fg.grad(fg.grad(f)))(x), want, rtol=1e-12)
        np.testing.assert_allclose(fg.grad(jax.grad(f))(x), want, rtol=1e-12)


# ---- every custom_jvp of jax.nn / jax.scipy at its special points, to second order -----------

sp = jax.scipy.special

SPECIAL_POINTS = {
    "relu": (jax.nn.relu, [(-1.0,), (0.0,), (2.0,)]),
    "relu6": (jax.nn.relu6, [(0.0,), (6.0,), (3.0,)]),
    "log1mexp": (jax.nn.log1mexp, [(1e-3,), (np.log(2.0),), (5.0,)]),
    "softplus": (jax.nn.softplus, [(0.0,), (-30.0,), (40.0,)]),
    "logaddexp": (jnp.logaddexp, [(0.0, 0.0), (1.0, -2.0), (-np.inf, 1.0)]),
    "logaddexp2": (jnp.logaddexp2, [(0.5, 0.5), (3.0, -1.0)]),
    "sinc": (jnp.sinc, [(0.0,), (0.5,), (1e-3,)]),
    "xlogy": (sp.xlogy, [(0.0, 2.0), (0.0, 0.0), (1.5, 2.0), (0.0, -1.0)]),
    "xlog1py": (sp.xlog1py, [(0.0, 1.0), (0.0, -1.0), (2.0, 0.5)]),
    "logit": (sp.logit, [(0.5,), (1e-6,), (0.999,)]),
    "log_ndtr": (sp.log_ndtr, [(0.0,), (-25.0,), (10.0,), (-5.0,)]),
    "expi": (sp.expi, [(0.5,), (-0.5,), (3.0,)]),
    "sici": (lambda x: sum(sp.sici(x)), [(0.0,), (1e-4,), (2.0,)]),
    "fresnel": (lambda x: sum(sp.fresnel(x)), [(0.0,), (1.0,)]),
    "zeta": (sp.zeta, [(2.0, 1.5), (3.5, 0.5)]),
    "poch": (sp.poch, [(2.5, 1.5)]),
    "hyp1f1": (lambda x: sp.hyp1f1(0.5, 1.5, x), [(0.3,), (-2.0,)]),
    "det": (lambda a: jnp.linalg.det(a.reshape(2, 2)), [(np.array([1.0, 2.0, 3.0, 4.0]),)]),
}


@pytest.mark.parametrize("name", sorted(SPECIAL_POINTS))
def test_custom_jvp_functions_at_their_special_points_to_second_order(name):
    fun, points = SPECIAL_POINTS[name]
    with jax.enable_x64(True):
        for point in points:
            args = [jnp.asarray(p, jnp.float64) for p in point]
            f = lambda *a: jnp.sum(fun(*a))  # noqa: E731
            _same(fg.grad(f)(*args), jax.grad(f)(*args))
            got, want = _second_orders(f, *args)
            _same(got, want)


# ---- crashes: residuals pruned too eagerly, nested calls in JVP rules -----------------------


@jax.custom_jvp
def _safe_log(x):
    return jnp.log(jnp.maximum(x, 1e-3))


@_safe_log.defjvp
def _safe_log_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    floored = jnp.maximum(x, 1e-3)
    return _safe_log(x), jnp.where(x > 1e-3, t / floored, 0.0)  # a nested jit on the tangent


def test_a_custom_jvp_rule_with_a_nested_jit_on_the_tangent_eagerly():
    f = lambda x: jnp.sum(_safe_log(x) ** 2)  # noqa: E731
    x = jnp.array([0.5, 1e-4, 2.0])
    assert_grads_match(f, x)
    with jax.enable_x64(True):
        got, want = _second_orders(f, jnp.array([0.5, 1e-4, 2.0]))
        _same(got, want)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1, 1), (2, 2), (4, 3, 3)])
def test_det_of_small_and_batched_matrices(shape):
    a = jax.random.normal(jax.random.key(0), shape) + 2 * jnp.eye(shape[-1])
    f = lambda a: jnp.sum(jnp.linalg.det(a))  # noqa: E731
    assert_grads_match(f, a, rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        a64 = a.astype(jnp.float64)
        _same(fg.grad(f)(a64), jax.grad(f)(a64))
        _same(fg.hessian(f)(a64), jax.hessian(f)(a64))


# ---- solvers: custom_root (Newton and bisection, with closures), odeint ---------------------


def _newton_sqrt(a, b):
    f = lambda x: x * x * b - a  # noqa: E731

    def solve(f, x0):
        step = lambda x: x - f(x) / (2 * x * b)  # noqa: E731
        return lax.while_loop(lambda x: jnp.abs(f(x)) > 1e-12, step, x0)

    return lax.custom_root(f, 1.0, solve, lambda g, y: y / g(1.0))


def _bisect_cbrt(a):
    f = lambda x: x**3 - a  # noqa: E731

    def solve(f, x0):
        def body(s):
            lo, hi = s
            mid = (lo + hi) / 2
            return jnp.where(f(mid) > 0, lo, mid), jnp.where(f(mid) > 0, mid, hi)

        lo, hi = lax.while_loop(lambda s: s[1] - s[0] > 1e-13, body, (0.0, 10.0))
        return (lo + hi) / 2

    return lax.custom_root(f, 1.0, solve, lambda g, y: y / g(1.0))


def test_custom_root_newton_and_bisection_with_closures():
    with jax.enable_x64(True):
        for f, args, argnums in [(_newton_sqrt, (2.0, 3.0), (0, 1)), (_bisect_cbrt, (2.0,), 0)]:
            _same(fg.grad(f, argnums)(*args), jax.grad(f, argnums)(*args))
            _same(jax.jit(fg.grad(f, argnums))(*args), jax.grad(f, argnums)(*args))
            got, want = _second_orders(f, *args)
            _same(got, want)


def test_odeint_through_its_custom_vjp():
    def final(k, y0):
        ts = jnp.array([0.0, 0.5, 1.0])
        return jnp.sum(odeint(lambda y, t, k: -k * y + jnp.sin(t), y0, ts, k))

    with jax.enable_x64(True):
        args = (0.5, jnp.array([1.0, 2.0]))
        _same(fg.grad(final, (0, 1))(*args), jax.grad(final, (0, 1))(*args))
        _same(jax.jit(fg.grad(final, (0, 1)))(*args), jax.grad(final, (0, 1))(*args))


# ---- custom_vjp under vmap, inside scan and lax.map -----------------------------------------


@jax.custom_vjp
def _clip_gradient(x):
    return x


_clip_gradient.defvjp(lambda x: (x, None), lambda _, ct: (jnp.clip(ct, -0.1, 0.1),))


def test_custom_vjp_inside_scan_under_vmap():
    def scanned(w, xs):
        def step(c, x):
            return c + jnp.sin(_clip_gradient(w * x) * c), None

        return lax.scan(step, 0.5, xs)[0]

    w, xs = jnp.array([1.5, 2.0]), jnp.arange(8.0).reshape(2, 4)
    for axes in [(None, 0), (0, 0)]:
        wi = w[0] if axes[0] is None else w
        assert_trees_close(
            jax.vmap(fg.grad(scanned), axes)(wi, xs), jax.vmap(jax.grad(scanned), axes)(wi, xs)
        )


def test_a_closure_over_a_custom_vjp_under_vmap_and_lax_map():
    def closure(w, x):
        @jax.custom_vjp
        def f(y):
            return jnp.sin(y * w)

        f.defvjp(lambda y: (jnp.sin(y * w), jnp.cos(y * w) * w), lambda r, ct: (ct * r,))
        return f(x)

    w, x = jnp.arange(3.0), jnp.arange(3.0)
    want = jax.vmap(jax.grad(closure, 1))(w, x)
    assert_trees_close(jax.vmap(fg.grad(closure, 1))(w, x), want)
    mapped = lax.map(lambda a: fg.grad(closure, 1)(*a), (w, x))
    assert_trees_close(mapped, want)
    # Differentiating the closed-over value is refused, as jax.grad refuses it.
    f = lambda w: jnp.sum(lax.map(lambda a: closure(w, a), x))  # noqa: E731
    with pytest.raises(NotDifferentiableError, match="closes over"):
        fg.grad(f)(1.2)


# ---- refusals and errors: what jax.grad refuses, and naming the user's line ----------------


def test_callbacks_are_refused_like_jax_refuses_them():
    def f(x):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct((), np.float32), x)

    with pytest.raises(ValueError, match=r"(?i)callbacks"):
        jax.grad(f)(1.0)
    with pytest.raises(ValueError, match="callbacks") as caught:
        fg.grad(f)(1.0)
    assert isinstance(caught.value, NotDifferentiableError)


LIBRARY = """
import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir

unruled_p = Primitive("funcgrad_test_unruled")
unruled_p.def_impl(lambda x: x)
unruled_p.def_abstract_eval(lambda x: x)
mlir.register_lowering(unruled_p, lambda ctx, x: [x])


@jax.jit
def library_function(x):
    return unruled_p.bind(jnp.sin(x) * 2.0)
"""


def test_an_unsupported_primitive_inside_a_library_function_names_the_users_line(tmp_path):
    """Like jnp.linalg: a jitted function in a library's file, whose body has no user frame."""
    path = tmp_path / "funcgrad_test_library.py"
    path.write_text(LIBRARY)
    source_info_util.register_exclusion(str(tmp_path))  # a library, as JAX treats its own files
    spec = importlib.util.spec_from_file_location("funcgrad_test_library", path)
    library = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(library)

    def users_loss(x):
        return jnp.sum(library.library_function(x))  # the line the error must name

    line = users_loss.__code__.co_firstlineno + 1
    for grad in (fg.grad(users_loss), jax.jit(fg.grad(users_loss))):
        with pytest.raises(fg.UnsupportedPrimitiveError) as caught:
            grad(jnp.ones(3))
        message = str(caught.value)
        assert "funcgrad_test_unruled" in message
        assert f"test_reach_regressions.py:{line}" in message, message
        assert "users_loss" in message and "jit 'library_function'" in message


def test_an_internal_failure_in_a_rule_is_wrapped_with_the_primitive_and_line():
    prim = jax.extend.core.Primitive("funcgrad_test_broken")
    prim.def_impl(lambda x: x)
    prim.def_abstract_eval(lambda x: x)

    @fg.interpret.vjp_rule(prim)
    def broken_vjp(ct, x):
        return ([][0],)  # an IndexError: a bug in the rule

    try:

        def users_loss(x):
            return jnp.sum(prim.bind(jnp.sin(x)))

        with pytest.raises(RuleError, match="funcgrad_test_broken") as caught:
            fg.grad(users_loss)(jnp.ones(3))
        assert "test_reach_regressions.py" in str(caught.value)
        assert isinstance(caught.value.__cause__, IndexError)
    finally:
        from funcgrad.interpret.registry import _VJP_RULES

        del _VJP_RULES["funcgrad_test_broken"]


def test_error_classes_are_public():
    """Users catch the interpreter's errors by their public names."""
    assert fg.RuleError is RuleError
    assert fg.NotDifferentiableError is NotDifferentiableError
    assert issubclass(fg.NotDifferentiableError, (ValueError, TypeError, NotImplementedError))
    assert {"RuleError", "NotDifferentiableError", "UnsupportedPrimitiveError"} <= set(fg.__all__)

"""The interpreter's contracts: JAX's API, composition, tags and traces, refusing to guess.

The higher-order rules (jit, custom_jvp/vjp, remat, cond, scan, while) are test_rules_control.py's.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import assert_grads_match, assert_trees_close
from jax.extend.core import Primitive
from jax.interpreters import mlir

import funcgrad as fg

KEY = jax.random.PRNGKey(0)
W = jax.random.normal(KEY, (3, 3)) * 0.5
XS = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
X = jnp.linspace(-1.0, 1.0, 5)


def tanh_mlp_loss(params, x, y):
    h = jnp.tanh(x @ params["layers"][0]["W"] + params["layers"][0]["b"])
    out = h @ params["layers"][1]["W"]
    return jnp.sum((out - y) ** 2) / x.shape[0]


PARAMS = {
    "layers": [
        {"W": jax.random.normal(KEY, (4, 5)), "b": jnp.zeros(5)},
        {"W": jax.random.normal(jax.random.PRNGKey(2), (5, 1))},
    ]
}
BX = jax.random.normal(jax.random.PRNGKey(3), (8, 4))
BY = jnp.ones((8, 1))


# ---- JAX's API contracts ---------------------------------------------------------------------
def test_grad_of_pytree_params_matches_jax():
    assert_grads_match(tanh_mlp_loss, PARAMS, BX, BY)


@pytest.mark.parametrize("argnums", [0, 1, (0,), (0, 2), (2, 0), -1])
def test_argnums_like_jax(argnums):
    got = fg.grad(tanh_mlp_loss, argnums)(PARAMS, BX, BY)
    want = jax.grad(tanh_mlp_loss, argnums)(PARAMS, BX, BY)
    assert_trees_close(got, want)


def test_value_and_grad_with_aux_like_jax():
    def f(a, b):
        return jnp.sum(jnp.tanh(a) * b), {"twice": a * 2}

    got = fg.value_and_grad(f, argnums=(0, 1), has_aux=True)(X, X + 1)
    want = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(X, X + 1)
    assert_trees_close(got, want)
    g, aux = fg.grad(f, has_aux=True)(X, X + 1)
    assert_trees_close((g, aux), jax.grad(f, has_aux=True)(X, X + 1))


def test_has_aux_requires_a_pair():
    with pytest.raises(TypeError, match="pair"):
        fg.grad(lambda a: jnp.sum(a), has_aux=True)(X)


def test_vjp_like_jax_with_pytree_output_and_integer_input():
    def f(a, n):
        return {"y": a * n, "z": jnp.tanh(a)}

    out, pull = fg.vjp(f, X, jnp.int32(2))
    jout, jpull = jax.vjp(f, X, jnp.int32(2))
    assert_trees_close(out, jout)
    ct = {"y": jnp.arange(5.0), "z": jnp.ones(5)}
    got, want = pull(ct), jpull(ct)
    assert got[1].dtype == jax.dtypes.float0 and got[1].shape == ()
    assert_trees_close(got, want)


def test_vjp_rejects_wrong_cotangent_structure_and_shape():
    _, pull = fg.vjp(lambda a: (a, a), X)
    with pytest.raises(ValueError, match="tree structure"):
        pull(jnp.ones(5))
    with pytest.raises(ValueError, match="shape"):
        pull((jnp.ones(4), jnp.ones(5)))


def test_grad_errors_like_jax():
    with pytest.raises(TypeError, match="scalar-output"):
        fg.grad(lambda a: a)(X)
    with pytest.raises(TypeError, match="inexact"):
        fg.grad(lambda a: jnp.sum(a))(jnp.arange(3))
    with pytest.raises(TypeError, match="real-valued outputs"):
        fg.grad(lambda a: jnp.sum(a).astype(jnp.int32))(X)
    with pytest.raises(ValueError, match="out of range"):
        fg.grad(lambda a: jnp.sum(a), argnums=3)(X)


def test_python_scalar_input_and_unused_input():
    assert_trees_close(fg.grad(lambda a: a * a)(3.0), jax.grad(lambda a: a * a)(3.0))
    assert_trees_close(
        fg.grad(lambda a, b: jnp.sum(a), argnums=(0, 1))(X, X),
        jax.grad(lambda a, b: jnp.sum(a), argnums=(0, 1))(X, X),
    )
    # identity: an output that is an input
    assert_trees_close(fg.grad(lambda a: a)(2.0), jax.grad(lambda a: a)(2.0))


def test_retraces_every_call_and_sees_current_globals():
    scale = {"s": jnp.ones(5)}

    def f(a):
        return jnp.sum(a * scale["s"])

    g = fg.grad(f)
    first = g(X)
    scale["s"] = jnp.full(5, 3.0)
    assert_trees_close(g(X), jax.grad(f)(X))
    assert not np.allclose(first, g(X))


def test_concrete_undifferentiated_args_stay_concrete():
    # jax.grad closes over undifferentiated arguments, so Python control flow on them works.
    def f(a, n):
        return jnp.sum(a) * 2.0 if int(n) > 1 else jnp.sum(a)

    assert_trees_close(fg.grad(f)(X, jnp.int32(3)), jax.grad(f)(X, jnp.int32(3)))


# ---- composition ------------------------------------------------------------------------------
def smooth(x):
    return jnp.sum(jnp.tanh(x) * jnp.exp(x) + x * x * x)


def test_jit_of_grad():
    assert_trees_close(jax.jit(fg.grad(smooth))(X), jax.grad(smooth)(X))


def test_vmap_of_grad_gives_per_example_gradients():
    per_example = jax.vmap(fg.grad(tanh_mlp_loss), in_axes=(None, 0, 0))(
        PARAMS, BX[:, None], BY[:, None]
    )
    want = jax.vmap(jax.grad(tanh_mlp_loss), in_axes=(None, 0, 0))(PARAMS, BX[:, None], BY[:, None])
    assert_trees_close(per_example, want)


def test_grad_of_grad():
    second = fg.grad(lambda x: jnp.sum(fg.grad(smooth)(x)))(X)
    assert_trees_close(second, jax.grad(lambda x: jnp.sum(jax.grad(smooth)(x)))(X))


def test_jax_grad_of_fg_grad():
    second = jax.grad(lambda x: jnp.sum(fg.grad(smooth)(x)))(X)
    assert_trees_close(second, jax.grad(lambda x: jnp.sum(jax.grad(smooth)(x)))(X))


def test_hessian_from_fg_grad_equals_jax_hessian():
    assert_trees_close(fg.hessian(smooth)(X), jax.hessian(smooth)(X), rtol=1e-5, atol=1e-5)
    assert_trees_close(jax.jacfwd(fg.grad(smooth))(X), jax.hessian(smooth)(X), 1e-5, 1e-5)


def test_hessian_of_pytree_params():
    def f(p):
        return jnp.sum(jnp.tanh(p["a"]) * p["b"][0])

    p = {"a": X, "b": [X * 2]}
    assert_trees_close(fg.hessian(f)(p), jax.hessian(f)(p), 1e-5, 1e-5)


def test_jacrev_matches_jax():
    def f(x):
        return {"t": jnp.tanh(x), "s": jnp.sum(x * x)}

    assert_trees_close(fg.jacrev(f)(X), jax.jacrev(f)(X))


def test_float64():
    with jax.enable_x64(True):
        x = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float64)
        got = fg.grad(smooth)(x)
        assert got.dtype == jnp.float64
        assert_trees_close(got, jax.grad(smooth)(x))


# ---- tags and traces --------------------------------------------------------------------------
def test_tag_gives_the_cotangent_of_an_intermediate():
    def f(w, x):
        z = fg.tag(x @ w, "z")
        return jnp.sum(jnp.tanh(z))

    tr = fg.trace(f, W, XS)
    assert tr.tags() == ["z"]
    assert_trees_close(tr.cotangent("z"), 1 - jnp.tanh(XS @ W) ** 2)
    assert_trees_close(tr.value_of("z"), XS @ W)
    assert_trees_close(tr.grads, jax.grad(f)(W, XS))
    # tags are transparent to plain JAX
    assert_trees_close(jax.grad(f)(W, XS), jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)))(W, XS))
    assert jax.vmap(lambda x: f(W, x))(XS).shape == (7,)
    assert jax.jit(f)(W, XS).shape == ()


def test_tag_inside_jit_is_found():
    @jax.jit
    def inner(x):
        return fg.tag(jnp.tanh(x), "h")

    tr = fg.trace(lambda x: jnp.sum(inner(x) ** 2), X)
    assert_trees_close(tr.cotangent("h"), 2 * jnp.tanh(X))


def test_trace_names_inputs_and_refuses_unknown_or_duplicate_names():
    tr = fg.trace(tanh_mlp_loss, PARAMS, BX, BY)
    assert tr.input_names == ["layers[0].W", "layers[0].b", "layers[1].W"]
    assert "x" in tr.const_names and "y" in tr.const_names
    assert_trees_close(tr.cotangent("layers[0].b"), tr.grads["layers"][0]["b"])
    with pytest.raises(KeyError, match="known names"):
        tr.cotangent("nope")

    def twice(x):
        return jnp.sum(fg.tag(x, "a") * fg.tag(x, "a"))

    with pytest.raises(KeyError, match="distinct name"):
        fg.trace(twice, X).cotangent("a")


def test_trace_forward_only_and_compiled():
    fwd = fg.trace(lambda x: jnp.tanh(x), X, backward=False)  # non-scalar output is fine
    assert_trees_close(fwd.value, jnp.tanh(X))
    assert fwd.cotangents is None and fwd.grads is None
    eager = fg.trace(tanh_mlp_loss, PARAMS, BX, BY)
    compiled = fg.trace(tanh_mlp_loss, PARAMS, BX, BY, jit=True)
    assert_trees_close(compiled.grads, eager.grads)

    def in_order(tr):  # two traces have two jaxprs: match variables by position
        order = [*tr.jaxpr.invars, *(v for e in tr.jaxpr.eqns for v in e.outvars)]
        return [tr.cotangents.get(v) for v in order]

    for got, want in zip(in_order(compiled), in_order(eager), strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            assert_trees_close(got, want)
    assert fg.grad(smooth).__funcgrad_grad__ == ("grad", 0)


def test_trace_keeps_cotangents_of_every_active_variable():
    tr = fg.trace(tanh_mlp_loss, PARAMS, BX, BY)
    jaxpr = tr.jaxpr
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            if v in tr.active:
                assert v in tr.cotangents, f"no cotangent kept for {v} = {eqn.primitive}"


# ---- never a silent wrong gradient -----------------------------------------------------------
mystery_p = Primitive("mystery_square")
mystery_p.def_impl(lambda x: x * x)
mystery_p.def_abstract_eval(lambda aval: aval)
mlir.register_lowering(mystery_p, mlir.lower_fun(lambda x: x * x, multiple_results=False))


def test_unsupported_primitive_names_itself_and_the_user_line():
    def f(x):
        return jnp.sum(mystery_p.bind(x))

    line = inspect.getsourcelines(f)[1] + 1
    with pytest.raises(fg.UnsupportedPrimitiveError) as info:
        fg.grad(f)(X)
    msg = str(info.value)
    assert "mystery_square" in msg
    assert f"test_interpreter.py:{line}" in msg
    assert "@vjp_rule" in msg
    assert info.value.primitive == "mystery_square"


def test_unsupported_primitive_on_data_only_is_not_an_error():
    def f(w, x):
        return jnp.sum(w * mystery_p.bind(x))

    assert_trees_close(fg.grad(f)(X, X), X * X)


def test_supported_primitives_cover_the_models():
    names = fg.supported_primitives()
    assert {"jit", "custom_jvp_call", "scan", "cond", "dot_general", "funcgrad_tag"} <= names

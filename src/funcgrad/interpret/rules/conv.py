"""VJP rule for ``conv_general_dilated``: every convolution (1-D/2-D/3-D, strided, padded,
dilated, transposed, grouped, depthwise), in any layout.

One spatial dimension is enough to see the math. The input ``x`` (length N) is dilated by
``lhs_dilation`` D_l and padded by (lo, hi); the kernel ``w`` (length K) is dilated by
``rhs_dilation`` D_r, so it spans K_eff = (K-1) D_r + 1; the output is
``y[o] = sum_k x_padded[o s + k D_r] w[k]`` for ``window_strides`` s.

* **input cotangent**: ``dx_padded[p] = sum_{o s + k D_r = p} ct[o] w[k]`` is ct dilated by s
  and correlated with the *reversed* kernel; keeping only the real input positions
  p = lo + n D_l makes D_l the stride. So dx = conv(ct, rev(w)) with window_strides = D_l,
  lhs_dilation = s, rhs_dilation = D_r, padding (K_eff - 1 - lo, (N-1) D_l + lo - (O-1) s), and
  the kernel's input/output feature roles swapped.
* **kernel cotangent**: ``dw[k] = sum_o x_padded[k D_r + o s] ct[o]`` is a convolution of x
  (batch and feature roles swapped: the batch is contracted) with ct as the kernel, with
  window_strides = D_r, rhs_dilation = s, lhs_dilation = D_l and padding
  (lo, (O-1) s + K_eff - (N-1) D_l - 1 - lo): exactly the K outputs the kernel has.

Groups: with ``feature_group_count`` G, group g of the output reads group g of the input
features, so in the input cotangent the kernel's G output-feature groups move into its
input-feature dim, and in the kernel cotangent G becomes a ``batch_group_count`` (and a
``batch_group_count`` becomes a ``feature_group_count``). Both cotangents are themselves
``conv_general_dilated`` plus ``rev``/``reshape``/``transpose``, so second derivatives work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jax import lax

from funcgrad.interpret.registry import vjp_rule


def _swap_roles(spec: Sequence[int]) -> tuple[int, ...]:
    """A layout spec with its first two roles (batch/feature, or out/in feature) exchanged."""
    return (spec[1], spec[0], *spec[2:])


def _move_group(x, from_dim: int, to_dim: int, groups: int):
    """Split ``from_dim`` into (groups, rest) and fold ``groups`` into ``to_dim`` as its major
    part: shape[from_dim] shrinks by ``groups``, shape[to_dim] grows by it."""
    shape = list(np.shape(x))
    split = [*shape[:from_dim], groups, shape[from_dim] // groups, *shape[from_dim + 1 :]]
    x = lax.reshape(x, tuple(split))
    src, dst = from_dim, to_dim + (1 if to_dim > from_dim else 0)
    order = [d for d in range(len(split)) if d != src]
    at = order.index(dst)
    order.insert(at, src)  # the group dim right before the dim it joins
    if order != list(range(len(split))):
        x = lax.transpose(x, tuple(order))
    merged = [split[d] for d in order]
    merged[at : at + 2] = [merged[at] * merged[at + 1]]
    return lax.reshape(x, tuple(merged))


def _dilated(size: int, dilation: int) -> int:
    return 0 if size == 0 else (size - 1) * dilation + 1


def _input_ct_padding(in_sizes, kernel_sizes, out_sizes, strides, padding, lhs_dil, rhs_dil):
    """Padding of the dilated ct that makes conv(ct, rev(w)) land on the input's positions."""
    pads = []
    for n, k, o, s, (lo, _), dl, dr in zip(
        in_sizes, kernel_sizes, out_sizes, strides, padding, lhs_dil, rhs_dil
    ):
        k_eff = _dilated(k, dr)
        pads.append((k_eff - 1 - lo, _dilated(n, dl) - 1 + lo - _dilated(o, s) + 1))
    return pads


def _kernel_ct_padding(in_sizes, kernel_sizes, out_sizes, strides, padding, lhs_dil, rhs_dil):
    """Padding of x that makes conv(x, ct) produce exactly the kernel's spatial sizes."""
    pads = []
    for n, k, o, s, (lo, _), dl, dr in zip(
        in_sizes, kernel_sizes, out_sizes, strides, padding, lhs_dil, rhs_dil
    ):
        pads.append((lo, _dilated(o, s) + _dilated(k, dr) - 1 - _dilated(n, dl) - lo))
    return pads


def _spatial(shape, spec):
    return [shape[d] for d in spec[2:]]


def _conv_input_ct(
    ct,
    w,
    x_shape,
    *,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
):
    """dx = conv(ct, rev(w)) with the roles of the strides and dilations exchanged."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    groups = max(feature_group_count, batch_group_count)
    if groups > 1:  # the kernel's output-feature groups become input-feature groups
        w = _move_group(w, rhs_spec[0], rhs_spec[1], groups)
    w = lax.rev(w, tuple(rhs_spec[2:]))
    if w.dtype != ct.dtype:
        w = lax.convert_element_type(w, ct.dtype)
    pads = _input_ct_padding(
        _spatial(x_shape, lhs_spec),
        _spatial(np.shape(w), rhs_spec),
        _spatial(ct.shape, out_spec),
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
    )
    dx = lax.conv_general_dilated(
        ct,
        w,
        window_strides=lhs_dilation,
        padding=pads,
        lhs_dilation=window_strides,
        rhs_dilation=rhs_dilation,
        dimension_numbers=lax.ConvDimensionNumbers(out_spec, _swap_roles(rhs_spec), lhs_spec),
        feature_group_count=groups,
        batch_group_count=1,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if batch_group_count > 1:  # the feature groups of dx are batch groups of x
        dx = _move_group(dx, lhs_spec[1], lhs_spec[0], batch_group_count)
    return dx


def _conv_kernel_ct(
    ct,
    x,
    w_shape,
    *,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
):
    """dw = conv(x, ct): x's batch is contracted, ct is the kernel, strides become dilation."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    if x.dtype != ct.dtype:
        x = lax.convert_element_type(x, ct.dtype)
    pads = _kernel_ct_padding(
        _spatial(np.shape(x), lhs_spec),
        _spatial(w_shape, rhs_spec),
        _spatial(ct.shape, out_spec),
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
    )
    return lax.conv_general_dilated(
        x,
        ct,
        window_strides=rhs_dilation,
        padding=pads,
        lhs_dilation=lhs_dilation,
        rhs_dilation=window_strides,
        dimension_numbers=lax.ConvDimensionNumbers(
            _swap_roles(lhs_spec), _swap_roles(out_spec), _swap_roles(rhs_spec)
        ),
        feature_group_count=batch_group_count,
        batch_group_count=feature_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


@vjp_rule(lax.conv_general_dilated_p)
def conv_general_dilated_vjp(
    ct,
    x,
    w,
    *,
    needs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision=None,
    preferred_element_type=None,
):
    """d conv(x, w) = (conv(ct, rev(w)) with strides <-> lhs dilation, conv(x, ct) with
    strides <-> rhs dilation); see the module docstring for the derivation."""
    if np.size(ct) == 0:  # an empty output depends on nothing
        return (None, None)
    params = dict(
        window_strides=tuple(window_strides),
        padding=tuple(tuple(p) for p in padding),
        lhs_dilation=tuple(lhs_dilation),
        rhs_dilation=tuple(rhs_dilation),
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return (
        _conv_input_ct(ct, w, np.shape(x), **params) if needs[0] and np.size(x) else None,
        _conv_kernel_ct(ct, x, np.shape(w), **params) if needs[1] and np.size(w) else None,
    )

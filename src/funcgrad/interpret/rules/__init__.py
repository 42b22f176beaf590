"""funcgrad's VJP rules, one module per family of primitives; importing this registers them all.

Each family module registers its rules with :mod:`funcgrad.interpret.registry` when imported.
"""

from funcgrad.interpret.rules import (  # noqa: F401  (imported for their registrations)
    calls,  # composite and custom_vmap: their bodies' derivatives
    collectives,  # shard_map, psum, all_gather, ppermute, all_to_all, ...: one VJP per shard
    control,  # jit, custom_jvp/vjp, remat, cond, scan, while
    conv,  # conv_general_dilated
    decompositions,  # cholesky, lu, qr, eigh, eig, svd
    elementwise,  # arithmetic, transcendental and identity-like functions
    fft,  # the discrete Fourier transforms
    indexing,  # gather, scatter, dynamic slices, sort, top_k, approx_top_k
    linalg,  # dot_general, ragged_dot_general
    nondiff,  # comparisons, bitwise and PRNG ops, effects: no cotangent flows
    reduce,  # sums, products, extrema, general lax.reduce, cumulative reductions
    shape,  # broadcast, reshape, transpose, concatenate, pad, slice, ...
    solvers,  # triangular_solve, tridiagonal_solve, custom_linear_solve
    special,  # erf, log-gamma, Bessel, incomplete gamma/beta, gamma sampling
    window,  # reduce_window (pooling) and select_and_scatter
)

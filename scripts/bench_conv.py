"""Benchmark: the MNIST CNN's training step, formulation by formulation, and where its time goes.

1. **Formulations.** The jitted training step (Adam, batch 128, an 8-step ``lax.scan`` per call as
   in ``fit``) of ``cnn.apply`` with each formulation (``conv_impl``, ``pool_impl``,
   ``pool_first``: ``layers.conv2d``, ``layers.max_pool``, ``cnn.FAST``), each gradient engine
   and each XLA option set (fit's CPU defaults,
   matmuls on Eigen; XLA's own, matmuls on YNNPACK), and PyTorch eager's step on the same data;
   interleaved rounds, medians (``scripts/_timing.py``); GFLOP/s from the exact matmul and
   convolution FLOPs of a step (``_timing.step_flops``) and their share of the matmul peak.
2. **Profile** (``scripts/_profile.py``): XLA's trace of the fastest formulation's step (with
   XLA's options, whose matmul events cover their work), summed
   by what each operation does (matmuls, convolutions, im2col data movement, elementwise work,
   reductions), with the largest operations.
3. **Pieces.** Each matmul and convolution of the step alone at its shapes (inputs materialised),
   with its GFLOP/s: how close each gets to the peak by itself.

    python scripts/bench_conv.py [--quick] [--rounds 9] [--batch 128] [--out FILE]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import _profile as P
import _timing as T
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import funcgrad as fg
from funcgrad import train
from funcgrad.models import cnn

STEPS = 8
OPTIONS = {"fit's": train.default_compiler_options(), "XLA's": {}}
FORMULATIONS = {  # name -> cnn.apply keyword arguments
    "default (im2col, reshape pool: derived)": {},
    "conv_impl=im2col_vjp": {"conv_impl": "im2col_vjp"},
    "im2col_vjp + argmax_vjp pool + pool_first": {
        "conv_impl": "im2col_vjp", "pool_impl": "argmax_vjp", "pool_first": True},
    "cnn.FAST (winograd + argmax_vjp + pool_first)": cnn.FAST,
}  # fmt: skip


def step_program(engine: str, formulation: dict, options: dict, batch: int) -> Any:
    """A jitted ``STEPS``-step scan of Adam steps on the CNN."""
    optimizer = optax.adam(1e-3)
    apply = functools.partial(cnn.apply, **formulation)

    def loss(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return optax.losses.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()

    value_and_grad = (fg.value_and_grad if engine == "funcgrad" else jax.value_and_grad)(loss)

    def run(params: Any, state: Any, x: jax.Array, y: jax.Array) -> Any:
        def body(carry: tuple, b: tuple) -> tuple:
            params, state = carry
            value, grads = value_and_grad(params, *b)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        xs = x.reshape(STEPS, batch, *x.shape[1:])
        return lax.scan(body, (params, state), (xs, y.reshape(STEPS, batch)))

    return jax.jit(run, compiler_options=options or None)


def torch_step(x: np.ndarray, y: np.ndarray, batch: int, device: str) -> Callable[[], None]:
    """PyTorch eager's ``STEPS`` steps of the same CNN on the same data."""
    torch = T.torch_module()
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(device)  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2))).to(device)
    ty = torch.from_numpy(y.astype(np.int64)).to(device)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> None:
        for i in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            rows = slice(i * batch, (i + 1) * batch)
            loss_fn(net(tx[rows]), ty[rows]).backward()
            optimizer.step()
        T.torch_sync(device)

    return run


def study_formulations(report: T.Report, batch: int, rounds: int, quick: bool, peak: T.Peak):
    x = jax.random.normal(jax.random.key(0), (batch * STEPS, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (batch * STEPS,), 0, 10)
    params = cnn.init(jax.random.key(2))
    state = optax.adam(1e-3).init(params)
    flops = T.step_flops(cnn.apply, params, x[:1]) * batch
    calls: dict[str, Callable[[], Any]] = {}
    option_sets = {k: v for k, v in OPTIONS.items() if v or k == "XLA's"}
    for (form, kwargs), engine, (opt_name, options) in (
        (f, e, o)
        for f in FORMULATIONS.items()
        for e in train.GRAD_ENGINES
        for o in option_sets.items()
    ):
        if quick and (engine == "jax" or opt_name != "fit's") and kwargs is not cnn.FAST:
            continue
        name = f"{form}, {engine} engine, {opt_name} options"
        program = step_program(engine, kwargs, options, batch)
        calls[name] = functools.partial(program, params, state, x, y)
    device = T.torch_device()
    wait = T.block
    if device is not None:
        run_torch = torch_step(np.asarray(x), np.asarray(y), batch, device)
        calls[f"PyTorch eager ({device})"] = run_torch
    timings = T.interleaved(calls, rounds=rounds, wait=wait, per_call=STEPS)
    torch_t = next((t for n, t in timings.items() if n.startswith("PyTorch")), None)
    rows = []
    for name, t in timings.items():
        gflops = flops / t.median / 1e9
        rows.append(
            [
                name,
                f"{t.median * 1e3:.2f}",
                f"{t.best * 1e3:.2f}",
                f"{batch / t.median:,.0f}",
                T.fmt(torch_t.median / t.median if torch_t else None, ".2f"),
                f"{gflops:.0f} ({peak.share(gflops)})",
            ]
        )
    report.table(
        ["formulation", "ms/step (median)", "min", "examples/s", "× PyTorch", "GFLOP/s (of peak)"],
        rows,
        title=f"CNN training step, batch {batch}, Adam, {STEPS} steps per call, {rounds} rounds",
    )
    report.add(
        "",
        f"Exact matmul/convolution FLOPs of a step: {flops / 1e9:.3f} GFLOP "
        f"({flops // batch:,} per example); matmul peak {peak.gflops:.0f} GFLOP/s "
        f"({peak.source}).",
    )
    return timings, (params, state, x, y)


def study_profile(report: T.Report, args: tuple, batch: int, form: str) -> None:
    program = step_program("funcgrad", FORMULATIONS[form], {}, batch)
    ops, wall = P.op_profile(program, args)
    covered = sum(op.seconds for op in ops)
    rows = [
        [category, f"{seconds / STEPS * 1e3:.2f}", f"{seconds / covered:.0%}"]
        for category, seconds in P.by_category(ops).items()
    ]
    report.table(
        ["category", "ms/step", "share of traced time"],
        rows,
        title=f"Profile: {form}, funcgrad engine, XLA's options",
    )
    report.add(
        "",
        f"Wall time {wall / STEPS * 1e3:.2f} ms/step; the operations' trace events cover "
        f"{covered / STEPS * 1e3:.2f} ms/step (the rest: dispatch between operations; with "
        "two threads, events may also overlap).",
    )
    report.table(
        ["operation", "ms/step", "category", "what"],
        [
            [op.name, f"{op.seconds / STEPS * 1e3:.2f}", op.category, f"`{op.description}`"]
            for op in ops[:14]
        ],
        title="The largest operations",
        align="lrll",
    )


def _patches(x: jax.Array) -> jax.Array:
    """3x3 "SAME" im2col patches of NHWC images, (n, h, w, 9·c)."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    return jnp.concatenate(
        [xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1
    )


def study_pieces(report: T.Report, batch: int, rounds: int, peak: T.Peak) -> None:
    """Each matmul / convolution of the step alone (inputs materialised), XLA's options."""
    dims = ("NHWC", "HWIO", "NHWC")
    key = iter(jax.random.split(jax.random.key(3), 16))

    def normal(*shape: int) -> jax.Array:
        return jax.random.normal(next(key), shape)

    x1, x2 = normal(batch, 28, 28, 1), normal(batch, 14, 14, 32)
    p1, p2 = jax.jit(_patches)(x1), jax.jit(_patches)(x2)
    dy1, dy2 = normal(batch, 28, 28, 32), normal(batch, 14, 14, 64)
    w2, h, wd, dh = normal(3, 3, 32, 64), normal(batch, 3136), normal(3136, 128), normal(batch, 128)
    m1, m2 = batch * 784, batch * 196
    pieces: dict[str, tuple[Callable, tuple, float]] = {
        "conv1 forward: patches (·, 9) @ W (9, 32)": (
            lambda p, w: p @ w, (p1, normal(9, 32)), 2 * m1 * 9 * 32),
        "conv1 kernel gradient: patchesᵀ @ dY": (
            lambda p, d: p.reshape(-1, 9).T @ d.reshape(-1, 32), (p1, dy1), 2 * m1 * 9 * 32),
        "conv2 im2col: 9 slices concatenated": (_patches, (x2,), 0.0),
        "conv2 forward: patches (·, 288) @ W (288, 64)": (
            lambda p, w: p @ w, (p2, w2.reshape(288, 64)), 2 * m2 * 288 * 64),
        "conv2 forward as XLA convolution": (
            lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims),
            (x2, w2), 2 * m2 * 288 * 64),
        "conv2 input gradient: convolution of dY": (
            lambda d, w: lax.conv_general_dilated(
                d, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), (1, 1), "SAME",
                dimension_numbers=dims),
            (dy2, w2), 2 * m2 * 288 * 64),
        "conv2 kernel gradient: patchesᵀ @ dY": (
            lambda p, d: p.reshape(-1, 288).T @ d.reshape(-1, 64), (p2, dy2), 2 * m2 * 288 * 64),
        "conv2 Winograd product: 16 × (tiles, 32) @ (32, 64)": (
            lambda v, u: lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,)))),
            (normal(16, m2 // 4, 32), normal(16, 32, 64)), 2 * 16 * (m2 // 4) * 32 * 64),
        "conv2 Winograd kernel gradient: 16 × Vᵀ @ dM": (
            lambda v, d: lax.dot_general(v, d, (((1,), (1,)), ((0,), (0,)))),
            (normal(16, m2 // 4, 32), normal(16, m2 // 4, 64)), 2 * 16 * (m2 // 4) * 32 * 64),
        "dense 3136→128: forward": (lambda h, w: h @ w, (h, wd), 2 * batch * 3136 * 128),
        "dense 3136→128: kernel gradient": (
            lambda h, d: h.T @ d, (h, dh), 2 * batch * 3136 * 128),
    }  # fmt: skip
    calls = {
        name: functools.partial(jax.jit(fn), *fn_args) for name, (fn, fn_args, _) in pieces.items()
    }
    timings = T.interleaved(calls, rounds=3 * rounds, warmup=2)
    rows = []
    for name, t in timings.items():
        work = pieces[name][2]
        rate = f"{work / t.median / 1e9:.0f} ({peak.share(work / t.median / 1e9)})" if work else "—"
        rows.append([name, f"{t.median * 1e3:.3f}", rate])
    report.table(
        ["piece (alone, XLA's options)", "ms", "GFLOP/s (of peak)"],
        rows,
        title=f"The step's matmuls and convolutions, one at a time (batch {batch})",
    )


def main() -> None:
    parser = T.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 9 (--quick: 3)")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 9)
    report = T.Report("CNN training step (scripts/bench_conv.py)", args)
    peak = T.matmul_peak(rounds=5 if args.quick else 9)
    timings, step_args = study_formulations(report, args.batch, rounds, args.quick, peak)
    fastest = min((n for n in timings if "funcgrad" in n), key=lambda n: timings[n].median)
    study_profile(report, step_args, args.batch, fastest.split(",")[0])
    study_pieces(report, args.batch, rounds, peak)
    report.finish(f"bench_conv-{T.device_tag()}" + ("-quick" if args.quick else ""))


if __name__ == "__main__":
    main()

"""Benchmark: how cost grows with the work, for funcgrad and its references, with plots.

Three studies (``scripts/_timing.py``: warm-up excluded, variants interleaved round by round,
medians; each table carries its load average), plots saved as ``scripts/results/scaling-*.png``:

1. **Training step vs batch size and width** (``scaling-train``): the MLP 784-H-10 with Adam, one
   step's time and its GFLOP/s (exact matmul FLOPs of a step) against the batch size (16 … 1024
   at H = 64) and the hidden width H (64 … 2048 at batch 128), for ``fit`` with each engine (the
   step time is fit's epoch time over its steps, an epoch of 60,000 random examples: shuffle,
   gather and scan included), NumPy
   (hand-written backprop and Adam) and PyTorch eager; the matmul peak of the device as a line.
2. **Gradient vs program size** (``scaling-program``): ``fg.grad`` against ``jax.grad`` on a
   chain of L dense+tanh layers (width 32, batch 16; 3 equations per layer, L = 10 … 1,000):
   eager call, first result (trace + compile + call of a fresh ``jax.jit``, caches cleared) and
   the jitted call.
3. **Peak memory vs batch size** (``scaling-memory``): the CNN's gradient at batch 16 … 512,
   ``fg.grad`` and ``jax.grad``: eagerly, the rise of the process's peak resident memory during
   one call (measured in a fresh subprocess per point, after a warm-up call; Linux); jitted, the
   size of XLA's buffer plan (arguments, outputs and temporaries of the compiled program).

    python scripts/bench_scaling.py [--quick] [--studies train,program,memory] [--out FILE]
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import _timing as T
import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import losses, train
from funcgrad.models import cnn, mlp

LR = 1e-3
ENGINES = {"fg.grad": fg.grad, "jax.grad": jax.grad}
PLOTS = T.RESULTS  # where the plots go: beside the report (main sets it from --out)


# ---------------------------------------------------------------------------------------------
# 1. Training step vs batch and width


def mlp_flops(width: int) -> int:
    """Exact matmul FLOPs of one MLP 784-width-10 training step per example."""
    return 2 * (784 * width + width * 10) + 2 * (784 * width + 2 * width * 10)


class FitEpochs:
    """fit for one epoch per call on ``steps`` batches (its programs are built once and reused:
    the same loss function and optimizer every call); returns seconds per step."""

    def __init__(self, engine: str, width: int, batch: int, steps: int) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((steps * batch, 784), dtype=np.float32)
        self.y = rng.integers(0, 10, steps * batch).astype(np.int32)
        self.params = mlp.init(jax.random.key(0), [784, width, 10])
        self.loss_fn = train.classifier_loss(mlp.apply)
        self.optimizer = optax.adam(LR)
        self.engine, self.batch, self.steps = engine, batch, steps

    def __call__(self) -> float:
        _, history = train.fit(
            self.loss_fn, self.params, (self.x, self.y), optimizer=self.optimizer, epochs=1,
            batch_size=self.batch, key=jax.random.key(1), has_aux=True,
            grad_engine=self.engine, progress=False,
        )  # fmt: skip
        return history["epoch_time"][-1] / self.steps


class NumpySteps:
    """The MLP's step with hand-written backprop and Adam in NumPy; seconds per step."""

    def __init__(self, width: int, batch: int, steps: int) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((steps, batch, 784), dtype=np.float32)
        self.y = rng.integers(0, 10, (steps, batch))
        p = jax.tree.map(np.array, mlp.init(jax.random.key(0), [784, width, 10]))
        self.theta = [p["layers"][0]["W"], p["layers"][0]["b"], p["layers"][1]["W"],
                      p["layers"][1]["b"]]  # fmt: skip
        self.m = [np.zeros_like(a) for a in self.theta]
        self.v = [np.zeros_like(a) for a in self.theta]
        self.eye = np.eye(10, dtype=np.float32)
        self.t = 0

    def __call__(self) -> float:
        import time

        w1, b1, w2, b2 = self.theta
        start = time.perf_counter()
        for xb, yb in zip(self.x, self.y):
            h = np.maximum(xb @ w1 + b1, 0)
            logits = h @ w2 + b2
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            d = (p - self.eye[yb]) / len(xb)
            d_h = (d @ w2.T) * (h > 0)
            grads = (xb.T @ d_h, d_h.sum(0), h.T @ d, d.sum(0))
            self.t += 1
            c1, c2 = 1 - 0.9**self.t, 1 - 0.999**self.t
            for p_, g, m_, v_ in zip(self.theta, grads, self.m, self.v):
                m_ *= 0.9
                m_ += 0.1 * g
                v_ *= 0.999
                v_ += 0.001 * g * g
                p_ -= LR * (m_ / c1) / (np.sqrt(v_ / c2) + 1e-8)
        return (time.perf_counter() - start) / len(self.x)


class TorchSteps:
    """The MLP's step in PyTorch eager (on its device); seconds per step."""

    def __init__(self, width: int, batch: int, steps: int, device: str) -> None:
        torch = T.torch_module()
        from torch import nn

        torch.manual_seed(0)
        self.torch, self.device = torch, device
        self.net = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10)).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=LR)
        self.x = torch.randn(steps, batch, 784, device=device)
        self.y = torch.randint(0, 10, (steps, batch), device=device)
        self.loss_fn = nn.CrossEntropyLoss()

    def __call__(self) -> float:
        import time

        start = time.perf_counter()
        for xb, yb in zip(self.x, self.y):
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_fn(self.net(xb), yb).backward()
            self.optimizer.step()
        T.torch_sync(self.device)
        return (time.perf_counter() - start) / len(self.x)


def train_point(width: int, batch: int, steps: int, rounds: int, device: str | None) -> dict:
    """Seconds per step of every implementation at one (width, batch), interleaved."""
    impls: dict[str, Any] = {
        f"fit, {e} engine": FitEpochs(e, width, batch, steps) for e in train.GRAD_ENGINES
    }
    if T.jax_platform() == "cpu":
        impls["NumPy"] = NumpySteps(width, batch, steps)
    if device is not None:
        impls[f"PyTorch ({device})"] = TorchSteps(width, batch, steps, device)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(rounds + 1):
        for name, impl in impls.items():
            seconds = impl()
            if r:  # round 0 is the warm-up (compilation)
                times[name].append(seconds)
    return {name: float(np.median(t)) for name, t in times.items()}


def study_train(report: T.Report, quick: bool, peak: T.Peak) -> dict:
    device = T.torch_device()
    examples, rounds = (6_000, 3) if quick else (60_000, 5)  # an epoch: fit's per-epoch costs
    # (the shuffle, the call) are spread over as many steps as in training.
    batches = [16, 64, 256, 1024] if quick else [16, 32, 64, 128, 256, 512, 1024]
    widths = [64, 256, 1024, 2048] if quick else [64, 128, 256, 512, 1024, 2048]
    results: dict[str, dict] = {"batch": {}, "width": {}, "peak": peak.gflops}
    for batch in batches:
        T.log(f"train: batch {batch}")
        results["batch"][batch] = train_point(64, batch, examples // batch, rounds, device)
    for width in widths:
        T.log(f"train: width {width}")
        results["width"][width] = train_point(width, 128, examples // 128, rounds, device)
    for sweep, fixed in (("batch", "width 64"), ("width", "batch 128")):
        points = results[sweep]
        names = list(next(iter(points.values())))
        rows = []
        for value, row in points.items():
            width, batch = (64, value) if sweep == "batch" else (value, 128)
            gflops = {n: mlp_flops(width) * batch / row[n] / 1e9 for n in names}
            rows.append([value, *(f"{row[n] * 1e3:.3f} ({gflops[n]:.0f})" for n in names)])
        report.table(
            [sweep, *(f"{n}: ms/step (GFLOP/s)" for n in names)],
            rows,
            title=f"MLP training step against {sweep} ({fixed}); peak {peak.gflops:.0f} GFLOP/s",
        )
    plot_train(results)
    return results


def plot_train(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, sweep in enumerate(("batch", "width")):
        points = results[sweep]
        xs = list(points)
        names = list(points[xs[0]])
        for name in names:
            seconds = [points[x][name] for x in xs]
            flops = [
                mlp_flops(64 if sweep == "batch" else x) * (x if sweep == "batch" else 128)
                for x in xs
            ]
            axes[0, col].plot(xs, [s * 1e3 for s in seconds], "o-", label=name)
            axes[1, col].plot(xs, [f / s / 1e9 for f, s in zip(flops, seconds)], "o-",
                              label=name)  # fmt: skip
        axes[1, col].axhline(results["peak"], color="k", ls="--", label="matmul peak")
        label = "batch size (width 64)" if sweep == "batch" else "hidden width (batch 128)"
        for row in (0, 1):
            axes[row, col].set_xscale("log", base=2)
            axes[row, col].set_xlabel(label)
            axes[row, col].grid(True, which="both", alpha=0.3)
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("ms per training step")
        axes[1, col].set_ylabel("GFLOP/s (exact matmul FLOPs)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"MLP 784-H-10, Adam: training step on {T.jax_device()}")
    fig.tight_layout()
    fig.savefig(PLOTS / f"scaling-train-{T.device_tag()}.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# 2. Gradient vs program size


def chain(layers_count: int, width: int = 32, batch: int = 16) -> tuple:
    """loss(params, x) of ``layers_count`` dense+tanh layers, and its arguments."""
    keys = jax.random.split(jax.random.key(0), layers_count + 1)
    params = [jax.random.normal(k, (width, width)) / np.sqrt(width) for k in keys[1:]]
    x = jax.random.normal(keys[0], (batch, width))

    def loss(params: list, x: jax.Array) -> jax.Array:
        for w in params:
            x = jnp.tanh(x @ w + 0.1)
        return jnp.mean(x * x)

    return loss, (params, x)


def fresh_jit(grad: Any, loss: Any, args: tuple) -> Any:
    """A newly built ``jax.jit(grad(loss))`` bound to ``args``."""
    return functools.partial(jax.jit(grad(loss)), *args)


def study_program(report: T.Report, quick: bool) -> dict:
    sizes = [10, 30, 100, 300] if quick else [10, 30, 100, 300, 1000]
    rounds, cold = (3, 1) if quick else (9, 3)
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        T.log(f"program: {size} layers")
        loss, args = chain(size)
        row: dict[str, float] = {}
        eager = {n: functools.partial(g(loss), *args) for n, g in ENGINES.items()}
        for n, t in T.interleaved(eager, rounds=rounds, warmup=1).items():
            row[f"{n} eager"] = t.median
        jitted = {n: functools.partial(jax.jit(g(loss)), *args) for n, g in ENGINES.items()}
        for n, t in T.interleaved(jitted, rounds=3 * rounds, warmup=2).items():
            row[f"{n} jitted"] = t.median
        firsts: dict[str, list[float]] = {n: [] for n in ENGINES}
        for _ in range(cold):
            for n, g in ENGINES.items():
                firsts[n].append(T.first_call_seconds(functools.partial(fresh_jit, g, loss, args)))
        for n, times in firsts.items():
            row[f"{n} first result"] = float(np.median(times))
        results[size] = row
    names = list(next(iter(results.values())))
    report.table(
        ["layers (3 equations each)", *(f"{n} (ms)" for n in names)],
        [[s, *(f"{row[n] * 1e3:.2f}" for n in names)] for s, row in results.items()],
        title="Gradient of a chain of dense+tanh layers (width 32, batch 16) against its length",
    )
    plot_program(results)
    return results


def plot_program(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    sizes = list(results)
    for ax, mode in zip(axes, ("eager", "first result", "jitted")):
        for engine in ENGINES:
            ax.plot(sizes, [results[s][f"{engine} {mode}"] * 1e3 for s in sizes], "o-",
                    label=engine)  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="layers (3 equations each)", ylabel="ms",
               title=mode)  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"fg.grad vs jax.grad against program size on {T.jax_device()}")
    fig.tight_layout()
    fig.savefig(PLOTS / f"scaling-program-{T.device_tag()}.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# 3. Peak memory vs batch


def cnn_grad_args(batch: int) -> tuple:
    def loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return losses.softmax_cross_entropy(cnn.apply(params, x), y)

    x = jax.random.normal(jax.random.key(1), (batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    return loss, (cnn.init(jax.random.key(0)), x, y)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def eager_peak_child(engine: str, batch: int) -> None:
    """In a fresh process: one warm-up gradient call, then reset the peak resident memory
    (``/proc/self/clear_refs``) and report how far one more call raises it, in bytes."""
    loss, args = cnn_grad_args(batch)
    grad = ENGINES[engine](loss)
    jax.block_until_ready(grad(*args))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    jax.block_until_ready(grad(*args))
    print(json.dumps({"peak_rise": (_status_kb("VmHWM") - before) * 1024}))


def eager_peak(engine: str, batch: int) -> float | None:
    if not Path("/proc/self/clear_refs").exists() or T.jax_platform() != "cpu":
        return None
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", engine, str(batch)],
        capture_output=True, text=True, check=True, env=os.environ.copy(),
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rise"]


def jitted_plan(engine: str, batch: int) -> float:
    loss, args = cnn_grad_args(batch)
    stats = jax.jit(ENGINES[engine](loss)).lower(*args).compile().memory_analysis()
    return float(
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    )


def study_memory(report: T.Report, quick: bool) -> dict:
    batches = [16, 64, 128] if quick else [16, 32, 64, 128, 256, 512]
    results: dict[int, dict[str, float | None]] = {}
    for batch in batches:
        T.log(f"memory: batch {batch}")
        row: dict[str, float | None] = {}
        for engine in ENGINES:
            row[f"{engine} eager peak rise"] = eager_peak(engine, batch)
            row[f"{engine} jitted plan"] = jitted_plan(engine, batch)
        results[batch] = row
    names = list(next(iter(results.values())))
    report.table(
        ["batch", *(f"{n} (MB)" for n in names)],
        [
            [b, *(T.fmt(None if v is None else v / 2**20, ".1f") for v in row.values())]
            for b, row in results.items()
        ],
        title="Memory of the CNN's gradient against batch size",
    )
    plot_memory(results)
    return results


def plot_memory(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    batches = list(results)
    for name in results[batches[0]]:
        values = [results[b][name] for b in batches]
        if all(v is not None for v in values):
            ax.plot(batches, [v / 2**20 for v in values], "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="MB",
           title=f"CNN gradient memory on {T.jax_device()}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / f"scaling-memory-{T.device_tag()}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        eager_peak_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = T.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default="train,program,memory")
    args = parser.parse_args()
    report = T.Report("Scaling (scripts/bench_scaling.py)", args)
    global PLOTS
    PLOTS = Path(args.out).parent if args.out else T.RESULTS
    PLOTS.mkdir(parents=True, exist_ok=True)
    studies = args.studies.split(",")
    if "train" in studies:
        peak = T.matmul_peak(rounds=5 if args.quick else 9)
        report.add(f"- matmul peak: {peak.gflops:.1f} GFLOP/s ({peak.source})")
        study_train(report, args.quick, peak)
    if "program" in studies:
        study_program(report, args.quick)
    if "memory" in studies:
        study_memory(report, args.quick)
    report.add("", f"Plots: {PLOTS}/scaling-{{{args.studies}}}-{T.device_tag()}.png")
    report.finish(f"bench_scaling-{T.device_tag()}" + ("-quick" if args.quick else ""))


if __name__ == "__main__":
    main()

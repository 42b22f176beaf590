"""Benchmark: training speed on Fashion-MNIST, funcgrad's fit() against its references, in one run.

Same data (Fashion-MNIST, standardised), same model, batch, optimizer (Adam, lr 1e-3) and
initialisation scheme for every implementation:

- plain JAX: a hand-written ``jax.jit`` epoch: on-device permutation, gather, ``lax.scan`` of an
  optax Adam step with ``jax.value_and_grad`` (the reference: what a JAX user writes by hand);
- fit (jax): ``funcgrad.train.fit(..., grad_engine="jax")``;
- fit (funcgrad): ``funcgrad.train.fit(..., grad_engine="funcgrad")``, the hand-written VJP rules;
- PyTorch eager (CPU, ``torch.set_num_threads(2)``): the usual loop, ``loss.backward()``,
  ``torch.optim.Adam``;
- NumPy: hand-written backprop and Adam (MLP only; for the CNN: N/A, im2col in NumPy would be a
  project of its own).

Models: MLP 784-64-10 (relu) at batch 32 and 128; the CNN conv3x3x32-pool-conv3x3x64-pool-
dense128-dense10 at batch 128 (funcgrad's default ``cnn``, im2col convolutions), plus, for a few
steps only, the same CNN with XLA's own convolutions (``conv_impl="xla"``) to show why im2col.

Reported per row: epoch time (median of the epochs after the first; compilation excluded),
examples/s, ratios, wall time to a fixed test accuracy (0.85 MLP, 0.88 CNN) from the start of
training, compilation and the per-epoch test evaluations included, the final test accuracy, and
the 1-minute load average during the row (the machine is shared: rows measured under load are
slower than the machine can do). The header gives the machine's matmul peak (median GFLOP/s of a
jitted 2048x2048 f32 matmul) and the MLP's achieved GFLOP/s, counted as the exact matmul FLOPs
of one training step per example: 2·(784·64 + 64·10) forward + 2·(784·64 + 2·64·10) backward
(no input gradient for the first layer) = 204,544.

    .venv/bin/python scripts/bench_train.py [--mlp-epochs 5] [--cnn-epochs 3] [--skip-cnn]
        [--skip-torch] [--out scripts/results/bench_train.md]

PyTorch is not a funcgrad dependency: ``pip install torch==2.13.0`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import train
from funcgrad.models import cnn, mlp

LR = 1e-3
MLP_FLOPS_PER_EXAMPLE = 2 * (784 * 64 + 64 * 10) + 2 * (784 * 64 + 2 * 64 * 10)
TARGETS = {"mlp": 0.85, "cnn": 0.88}


def load() -> float:
    return os.getloadavg()[0]


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# A result row


class Run:
    """Per-epoch timings and test accuracies of one implementation on one configuration."""

    def __init__(self, name: str, steps: int, batch: int) -> None:
        self.name = name
        self.examples = steps * batch
        self.epoch_times: list[float] = []
        self.accuracies: list[float] = []
        self.elapsed: list[float] = []  # since training started, at each epoch-end evaluation
        self.loads: list[float] = []
        self.note = ""

    def epoch_time(self) -> float:
        times = self.epoch_times[1:] or self.epoch_times
        return statistics.median(times)

    def throughput(self) -> float:
        return self.examples / self.epoch_time()

    def time_to(self, target: float) -> float | None:
        for acc, t in zip(self.accuracies, self.elapsed):
            if acc >= target:
                return t
        return None


# ---------------------------------------------------------------------------------------------
# Data and models


def fashion() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    out = []
    for split in ("train", "test"):
        images, labels = fg.data.load_mnist("fashion-mnist", split)
        out.append((fg.data.normalize(images, mean="fashion-mnist"), labels.astype(np.int32)))
    return out[0], out[1]


def shaped(model: str, data: tuple) -> tuple:
    """(x, y) pairs with x as the model takes it: (N, 784) for the MLP, (N, 28, 28, 1) NHWC."""
    (x, y), (xt, yt) = data
    if model == "cnn":
        return (x[..., None], y), (xt[..., None], yt)
    return (x.reshape(len(x), 784), y), (xt.reshape(len(xt), 784), yt)


def init_params(model: str, seed: int = 0) -> Any:
    key = jax.random.key(seed)
    return mlp.init(key, [784, 64, 10]) if model == "mlp" else cnn.init(key)


def plain_mlp(params: Any, x: jax.Array) -> jax.Array:
    (l1, l2) = params["layers"]
    return jax.nn.relu(x @ l1["W"] + l1["b"]) @ l2["W"] + l2["b"]


def model_fn(model: str, **kwargs: Any) -> Callable[..., jax.Array]:
    return plain_mlp if model == "mlp" else functools.partial(cnn.apply, **kwargs)


# ---------------------------------------------------------------------------------------------
# JAX: the hand-written reference loop and fit()


def bench_plain_jax(model: str, data: tuple, batch: int, epochs: int, **kwargs: Any) -> Run:
    (x, y), (xt, yt) = shaped(model, data)
    apply = model_fn(model, **kwargs)
    optimizer = optax.adam(LR)

    def loss_fn(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        logits = apply(p, xb)
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    n = len(x)
    steps = n // batch

    @jax.jit
    def epoch(params: Any, opt_state: Any, key: jax.Array, x: jax.Array, y: jax.Array) -> tuple:
        perm = jax.random.permutation(key, n)[: steps * batch]
        xb = x[perm].reshape(steps, batch, *x.shape[1:])
        yb = y[perm].reshape(steps, batch)

        def step(carry: tuple, b: tuple) -> tuple:
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, *b)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (xb, yb))
        return params, opt_state, losses

    @jax.jit
    def accuracy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        xb = x.reshape(-1, 500, *x.shape[1:])
        yb = y.reshape(-1, 500)
        hits = jax.lax.map(lambda b: jnp.sum(jnp.argmax(apply(params, b[0]), -1) == b[1]), (xb, yb))
        return jnp.sum(hits) / len(y)

    run = Run("plain JAX + optax scan", steps, batch)
    x, y, xt, yt = map(jnp.asarray, (x, y, xt, yt))
    params = init_params(model)
    opt_state = optimizer.init(params)
    key = jax.random.key(1)
    start = time.perf_counter()
    for e in range(epochs):
        run.loads.append(load())
        t0 = time.perf_counter()
        params, opt_state, losses = epoch(params, opt_state, jax.random.fold_in(key, e), x, y)
        jax.block_until_ready(losses)
        if e > 0:  # the first call compiles; its time counts only towards time-to-accuracy
            run.epoch_times.append(time.perf_counter() - t0)
        run.accuracies.append(float(accuracy(params, xt, yt)))
        run.elapsed.append(time.perf_counter() - start)
    return run


def bench_fit(model: str, data: tuple, batch: int, epochs: int, engine: str) -> Run:
    (x, y), (xt, yt) = shaped(model, data)
    apply = mlp.apply if model == "mlp" else cnn.apply
    run = Run(f"funcgrad fit, {engine} engine", len(x) // batch, batch)
    loads: list[float] = []
    _, history = train.fit(
        train.classifier_loss(apply),
        init_params(model),
        (x, y),
        optimizer=optax.adam(LR),
        epochs=epochs,
        batch_size=batch,
        key=jax.random.key(1),
        has_aux=True,
        eval_data=(xt, yt),
        eval_batch_size=500,
        grad_engine=engine,
        callbacks=[lambda state: loads.append(load())],
    )
    run.epoch_times = history["epoch_time"]
    run.accuracies = history["eval_accuracy"]
    run.elapsed = history["wall_time"]
    run.loads = loads
    return run


def bench_xla_conv_steps(data: tuple, batch: int, steps: int = 4) -> Run:
    """The CNN with XLA's convolutions and reduce_window pooling: a few steps, examples/s only."""
    (x, y), _ = shaped("cnn", data)
    apply = functools.partial(cnn.apply, conv_impl="xla", pool_impl="xla")
    optimizer = optax.adam(LR)

    def loss_fn(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return optax.losses.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()

    @jax.jit
    def run_steps(params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array) -> tuple:
        def step(carry: tuple, b: tuple) -> tuple:
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, *b)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(step, (params, opt_state), (xb, yb))

    xb = jnp.asarray(x[: steps * batch]).reshape(steps, batch, 28, 28, 1)
    yb = jnp.asarray(y[: steps * batch]).reshape(steps, batch)
    params = init_params("cnn")
    opt_state = optimizer.init(params)
    jax.block_until_ready(run_steps(params, opt_state, xb, yb))  # compile
    run = Run("plain JAX, XLA conv + reduce_window", len(x) // batch, batch)
    for _ in range(2):
        run.loads.append(load())
        t0 = time.perf_counter()
        jax.block_until_ready(run_steps(params, opt_state, xb, yb))
        run.epoch_times.append((time.perf_counter() - t0) * (len(x) // batch) / steps)
    run.note = f"{steps} steps timed, epoch extrapolated"
    return run


# ---------------------------------------------------------------------------------------------
# NumPy: hand-written backprop and Adam


def bench_numpy_mlp(data: tuple, batch: int, epochs: int) -> Run:
    (x, y), (xt, yt) = shaped("mlp", data)
    params = jax.tree.map(np.array, init_params("mlp"))
    w1, b1 = params["layers"][0]["W"], params["layers"][0]["b"]
    w2, b2 = params["layers"][1]["W"], params["layers"][1]["b"]
    theta = [w1, b1, w2, b2]
    m = [np.zeros_like(p) for p in theta]
    v = [np.zeros_like(p) for p in theta]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    rng = np.random.default_rng(1)
    n = len(x)
    steps = n // batch
    eye = np.eye(10, dtype=np.float32)
    run = Run("NumPy hand-written backprop", steps, batch)
    t = 0
    start = time.perf_counter()
    for _ in range(epochs):
        run.loads.append(load())
        t0 = time.perf_counter()
        perm = rng.permutation(n)[: steps * batch]
        xs, ys = x[perm], y[perm]
        for i in range(steps):
            xb, yb = xs[i * batch : (i + 1) * batch], ys[i * batch : (i + 1) * batch]
            h = xb @ w1 + b1
            np.maximum(h, 0, out=h)
            logits = h @ w2 + b2
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            d_logits = (p - eye[yb]) / batch  # d mean CE / d logits = (softmax - onehot) / B
            g_w2 = h.T @ d_logits
            g_b2 = d_logits.sum(axis=0)
            d_h = (d_logits @ w2.T) * (h > 0)
            g_w1 = xb.T @ d_h
            g_b1 = d_h.sum(axis=0)
            t += 1
            c1, c2 = 1 - beta1**t, 1 - beta2**t
            for p_, g, m_, v_ in zip(theta, (g_w1, g_b1, g_w2, g_b2), m, v):
                m_ *= beta1
                m_ += (1 - beta1) * g
                v_ *= beta2
                v_ += (1 - beta2) * g * g
                p_ -= LR * (m_ / c1) / (np.sqrt(v_ / c2) + eps)
        run.epoch_times.append(time.perf_counter() - t0)
        predictions = (np.maximum(xt @ w1 + b1, 0) @ w2 + b2).argmax(axis=1)
        run.accuracies.append(float((predictions == yt).mean()))
        run.elapsed.append(time.perf_counter() - start)
    return run


# ---------------------------------------------------------------------------------------------
# PyTorch eager


def bench_torch(model: str, data: tuple, batch: int, epochs: int) -> Run:
    import torch
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    (x, y), (xt, yt) = shaped(model, data)
    if model == "mlp":
        net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    else:
        x, xt = x.transpose(0, 3, 1, 2), xt.transpose(0, 3, 1, 2)  # NCHW
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
        )  # fmt: skip
    x, y, xt, yt = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, y, xt, yt))
    y, yt = y.long(), yt.long()
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x)
    steps = n // batch
    run = Run(f"PyTorch {torch.__version__} eager", steps, batch)
    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(epochs):
        run.loads.append(load())
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=generator)[: steps * batch]
        xs, ys = x[perm], y[perm]
        for i in range(steps):
            xb, yb = xs[i * batch : (i + 1) * batch], ys[i * batch : (i + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimizer.step()
        run.epoch_times.append(time.perf_counter() - t0)
        net.eval()
        with torch.no_grad():
            hits = sum(
                int((net(xt[i : i + 500]).argmax(1) == yt[i : i + 500]).sum())
                for i in range(0, len(xt), 500)
            )
        run.accuracies.append(hits / len(xt))
        run.elapsed.append(time.perf_counter() - start)
    return run


# ---------------------------------------------------------------------------------------------
# The machine


def matmul_peak(size: int = 2048, repeats: int = 15) -> float:
    """Median GFLOP/s of a jitted size x size float32 matmul."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


# ---------------------------------------------------------------------------------------------
# Report


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(title: str, runs: list[Run], target: float) -> list[str]:
    plain = next((r for r in runs if r.name.startswith("plain JAX +")), None)
    torch_run = next((r for r in runs if r.name.startswith("PyTorch")), None)
    numpy_run = next((r for r in runs if r.name.startswith("NumPy")), None)
    lines = [
        f"### {title}",
        "",
        f"| implementation | epoch (s) | examples/s | × plain JAX | × PyTorch | × NumPy "
        f"| time to {target:.2f} (s) | final test acc | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ratio = [
            (r.throughput() / ref.throughput()) if ref is not None else None
            for ref in (plain, torch_run, numpy_run)
        ]
        lines.append(
            f"| {r.name}{' (' + r.note + ')' if r.note else ''} | {r.epoch_time():.3f} "
            f"| {r.throughput():,.0f} | {fmt(ratio[0], '.2f')} | {fmt(ratio[1], '.2f')} "
            f"| {fmt(ratio[2], '.2f')} | {fmt(r.time_to(target), '.1f')} "
            f"| {fmt(r.accuracies[-1] if r.accuracies else None, '.4f')} "
            f"| {statistics.mean(r.loads):.1f} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlp-epochs", type=int, default=5)
    parser.add_argument("--cnn-epochs", type=int, default=3)
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_train.md"))
    args = parser.parse_args()

    started = load()
    log("loading Fashion-MNIST ...")
    data = fashion()
    log("matmul peak ...")
    peak = matmul_peak()
    sections: list[tuple[str, list[Run], float]] = []
    mlp_rows: dict[int, list[Run]] = {}
    for batch in (128, 32):
        rows = []
        log(f"MLP batch {batch}: plain JAX")
        rows.append(bench_plain_jax("mlp", data, batch, args.mlp_epochs))
        for engine in ("jax", "funcgrad"):
            log(f"MLP batch {batch}: fit {engine}")
            rows.append(bench_fit("mlp", data, batch, args.mlp_epochs, engine))
        log(f"MLP batch {batch}: NumPy")
        rows.append(bench_numpy_mlp(data, batch, args.mlp_epochs))
        if not args.skip_torch:
            log(f"MLP batch {batch}: PyTorch")
            rows.append(bench_torch("mlp", data, batch, args.mlp_epochs))
        mlp_rows[batch] = rows
        sections.append((f"MLP 784-64-10, batch {batch}, Adam", rows, TARGETS["mlp"]))
    if not args.skip_cnn:
        rows = []
        log("CNN: plain JAX")
        rows.append(bench_plain_jax("cnn", data, 128, args.cnn_epochs))
        for engine in ("jax", "funcgrad"):
            log(f"CNN: fit {engine}")
            rows.append(bench_fit("cnn", data, 128, args.cnn_epochs, engine))
        if not args.skip_torch:
            log("CNN: PyTorch")
            rows.append(bench_torch("cnn", data, 128, args.cnn_epochs))
        log("CNN: XLA convolutions (a few steps)")
        rows.append(bench_xla_conv_steps(data, 128))
        sections.append(
            ("CNN conv32-pool-conv64-pool-dense128-10 (im2col), batch 128, Adam", rows, 0.88)
        )

    versions = f"jax {jax.__version__}, optax {optax.__version__}, numpy {np.__version__}"
    if "torch" in sys.modules:
        versions += f", torch {sys.modules['torch'].__version__}"
    lines = [
        "## Training benchmark (scripts/bench_train.py)",
        "",
        f"- machine: {machine()}; {versions}",
        f"- load average (1 min) at start {started:.1f}, at end {load():.1f}",
        f"- matmul peak: {peak:.1f} GFLOP/s (jitted 2048×2048 f32, median)",
    ]
    for batch, rows in mlp_rows.items():
        gflops = {r.name: r.throughput() * MLP_FLOPS_PER_EXAMPLE / 1e9 for r in rows}
        achieved = ", ".join(f"{name}: {g:.1f} ({g / peak:.0%})" for name, g in gflops.items())
        lines.append(f"- MLP batch {batch} achieved GFLOP/s (share of peak): {achieved}")
    lines.append("")
    for title, rows, target in sections:
        lines += table(title, rows, target)
    report = "\n".join(lines)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n")
    log(f"written to {out}")


if __name__ == "__main__":
    main()

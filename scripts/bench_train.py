"""Benchmark: training speed on Fashion-MNIST, funcgrad's fit() against its references, in one run.

Same data (Fashion-MNIST, standardised), same model, batch, optimizer (Adam, lr 1e-3) and
initialisation scheme for every implementation:

- plain JAX: a hand-written ``jax.jit`` epoch: on-device permutation, gather, ``lax.scan`` of an
  optax Adam step with ``jax.value_and_grad`` (the reference: what a JAX user writes by hand);
- fit (jax): ``funcgrad.train.fit(..., grad_engine="jax")``, called once for all the epochs (as
  users call it: the data is placed on the device once), in a thread that pauses at each
  epoch-end callback while the other implementations take their turn;
- fit (funcgrad): the same with ``grad_engine="funcgrad"``, the hand-written VJP rules;
- for the MLP, both fit rows again with ``compiler_options={}``: XLA's own defaults (matmuls
  on YNNPACK) instead of fit's CPU defaults (matmuls on Eigen), to show what those are worth;
- PyTorch eager (CPU, ``torch.set_num_threads(2)``): the usual loop, ``loss.backward()``,
  ``torch.optim.Adam``;
- NumPy: hand-written backprop and Adam (MLP only; for the CNN: N/A, im2col in NumPy would be a
  project of its own).

Models: MLP 784-64-10 (relu) at batch 32 and 128; the CNN conv3x3x32-pool-conv3x3x64-pool-
dense128-dense10 at batch 128 (funcgrad's ``cnn``): the JAX rows use ``conv_impl="im2col_vjp"``
(im2col convolutions with a hand-written ``custom_vjp`` backward: the fast formulation for
training on CPU); one more row trains it with ``conv_impl="im2col"`` (the default: every
gradient step derived by funcgrad's per-primitive rules); and, for a few steps only, the same
CNN with XLA's own convolutions (``conv_impl="xla"``) to show why im2col.

The implementations take turns epoch by epoch (round robin: epoch 1 of each, then epoch 2 of
each, ...), so that load from other users of a shared machine falls on all of them alike.
Reported per row: epoch time (median of the epochs after the first; compilation excluded),
examples/s, ratios, wall time to a fixed test accuracy (0.85 MLP, 0.88 CNN) from the start of
training, compilation and the per-epoch test evaluations included, the final test accuracy, and
the 1-minute load average during the row (the machine is shared: rows measured under load are
slower than the machine can do). The header gives the machine's matmul peak (median GFLOP/s of a
jitted 2048x2048 f32 matmul, the better of the two option sets) and the MLP's achieved GFLOP/s,
counted as the exact matmul FLOPs of one training step per example: 2·(784·64 + 64·10) forward
+ 2·(784·64 + 2·64·10) backward (no input gradient for the first layer) = 204,544.

    .venv/bin/python scripts/bench_train.py [--mlp-epochs 10] [--cnn-epochs 3] [--skip-cnn]
        [--skip-torch] [--out scripts/results/bench_train.md]

PyTorch is not a funcgrad dependency: ``pip install torch==2.13.0`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import queue
import statistics
import sys
import threading
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
XLA_DEFAULTS: dict[str, Any] = {}  # fit(compiler_options={}): XLA's own, not fit's CPU defaults
OPTION_SETS = {
    "XLA's default options": XLA_DEFAULTS,
    "fit's default options": train.default_compiler_options(),
}


def load() -> float:
    return os.getloadavg()[0]


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# A result row


class Run:
    """Per-epoch timings and test accuracies of one implementation on one configuration."""

    def __init__(self, name: str, examples: int) -> None:
        self.name = name
        self.examples = examples
        self.epoch_times: list[float] = []  # training only; epoch 0 includes JAX compilation
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


class Trainer:
    """One implementation, trained one epoch at a time so that implementations can take turns:
    ``epoch(e) -> (training seconds, seconds this epoch took in all, test accuracy)``."""

    name = ""
    epochs = 0  # how many epochs the round robin will ask for (set before the first)

    def epoch(self, e: int) -> tuple[float, float, float]:
        raise NotImplementedError

    def finish(self) -> None:
        """Called after the last epoch."""


def round_robin(trainers: list[Trainer], epochs: int, examples: int) -> list[Run]:
    """Epoch e of every trainer, then epoch e + 1 of every trainer, ...: load from the other
    users of a shared machine falls on all implementations alike."""
    runs = [Run(t.name, examples) for t in trainers]
    for trainer in trainers:
        trainer.epochs = epochs
    for e in range(epochs):
        for trainer, run in zip(trainers, runs):
            run.loads.append(load())
            train_s, total_s, accuracy = trainer.epoch(e)
            run.epoch_times.append(train_s)
            run.elapsed.append((run.elapsed[-1] if run.elapsed else 0.0) + total_s)
            run.accuracies.append(accuracy)
            log(f"  epoch {e}: {trainer.name}: {train_s:.3f}s, acc {accuracy:.4f}")
    for trainer in trainers:
        trainer.finish()
    return runs


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


class PlainJax(Trainer):
    """What a JAX user writes by hand: permute, gather the epoch, lax.scan an optax step."""

    name = "plain JAX + optax scan"

    def __init__(self, model: str, data: tuple, batch: int, **model_kwargs: Any) -> None:
        (x, y), (xt, yt) = shaped(model, data)
        apply = model_fn(model, **model_kwargs)
        optimizer = optax.adam(LR)
        n = len(x)
        steps = n // batch

        def loss_fn(p: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
            logits = apply(p, xb)
            return optax.losses.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        @jax.jit
        def epoch(params: Any, opt_state: Any, key: jax.Array, x: jax.Array, y: jax.Array):
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
            hits = jax.lax.map(
                lambda b: jnp.sum(jnp.argmax(apply(params, b[0]), -1) == b[1]), (xb, yb)
            )
            return jnp.sum(hits) / len(y)

        self.run_epoch, self.accuracy = epoch, accuracy
        self.x, self.y, self.xt, self.yt = map(jnp.asarray, (x, y, xt, yt))
        self.params = init_params(model)
        self.opt_state = optimizer.init(self.params)
        self.key = jax.random.key(1)

    def epoch(self, e: int) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        self.params, self.opt_state, losses = self.run_epoch(
            self.params, self.opt_state, jax.random.fold_in(self.key, e), self.x, self.y
        )
        jax.block_until_ready(losses)
        train_s = time.perf_counter() - t0
        accuracy = float(self.accuracy(self.params, self.xt, self.yt))
        return train_s, time.perf_counter() - t0, accuracy


class Fit(Trainer):
    """funcgrad.train.fit as users call it: once, for all the epochs, with the data placed on
    the device once. It runs in its own thread; its epoch-end callback hands control back to
    the round robin and waits (blocked, using no CPU) for this trainer's next turn."""

    def __init__(
        self,
        model: str,
        data: tuple,
        batch: int,
        engine: str,
        compiler_options: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> None:
        self.name = f"funcgrad fit, {engine} engine"
        if model_kwargs:
            self.name += ", " + ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items())
        if compiler_options is not None:
            self.name += ", " + (
                ", ".join(f"{k}={v!r}" for k, v in compiler_options.items())
                or "compiler_options={} (XLA's defaults)"
            )
        self.compiler_options = compiler_options
        (self.x, self.y), (self.xt, self.yt) = shaped(model, data)
        apply = mlp.apply if model == "mlp" else cnn.apply
        self.loss_fn = train.classifier_loss(apply, **model_kwargs)
        self.params = init_params(model)
        self.batch = batch
        self.engine = engine
        self.thread: threading.Thread | None = None
        self.turn = threading.Semaphore(0)
        self.results: queue.Queue = queue.Queue()
        self.resumed = 0.0

    def _train(self, epochs: int) -> None:
        def hand_back(state: dict[str, Any]) -> None:
            history = state["history"]
            # This epoch's wall time: training and the test evaluation since fit (re)gained
            # control; for the first epoch, fit's own clock (compilation included).
            if state["epoch"] == 0:
                total = history["wall_time"][-1]
            else:
                total = time.perf_counter() - self.resumed
            self.results.put((history["epoch_time"][-1], total, history["eval_accuracy"][-1]))
            self.turn.acquire()
            self.resumed = time.perf_counter()

        try:
            train.fit(
                self.loss_fn,
                self.params,
                (self.x, self.y),
                optimizer=optax.adam(LR),
                epochs=epochs,
                batch_size=self.batch,
                key=jax.random.key(1),
                has_aux=True,
                eval_data=(self.xt, self.yt),
                eval_batch_size=500,
                grad_engine=self.engine,
                callbacks=[hand_back],
                compiler_options=self.compiler_options,
            )
        except BaseException as error:  # reported by epoch() in the main thread
            self.results.put(error)

    def epoch(self, e: int) -> tuple[float, float, float]:
        if self.thread is None:
            self.thread = threading.Thread(target=self._train, args=(self.epochs,), daemon=True)
            self.thread.start()
        else:
            self.turn.release()
        result = self.results.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def finish(self) -> None:
        if self.thread is not None:
            self.turn.release()
            self.thread.join()


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
    run = Run("plain JAX, XLA conv + reduce_window", (len(x) // batch) * batch)
    for _ in range(2):
        run.loads.append(load())
        t0 = time.perf_counter()
        jax.block_until_ready(run_steps(params, opt_state, xb, yb))
        run.epoch_times.append((time.perf_counter() - t0) * (len(x) // batch) / steps)
    run.note = f"{steps} steps timed, epoch extrapolated"
    return run


# ---------------------------------------------------------------------------------------------
# NumPy: hand-written backprop and Adam


class NumpyMLP(Trainer):
    """The MLP with hand-written backprop and Adam in NumPy (float32, BLAS matmuls)."""

    name = "NumPy hand-written backprop"

    def __init__(self, data: tuple, batch: int) -> None:
        (self.x, self.y), (self.xt, self.yt) = shaped("mlp", data)
        params = jax.tree.map(np.array, init_params("mlp"))
        self.theta = [
            params["layers"][0]["W"],
            params["layers"][0]["b"],
            params["layers"][1]["W"],
            params["layers"][1]["b"],
        ]
        self.m = [np.zeros_like(p) for p in self.theta]
        self.v = [np.zeros_like(p) for p in self.theta]
        self.rng = np.random.default_rng(1)
        self.batch = batch
        self.t = 0
        self.eye = np.eye(10, dtype=np.float32)

    def epoch(self, e: int) -> tuple[float, float, float]:
        w1, b1, w2, b2 = self.theta
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        batch = self.batch
        n = len(self.x)
        steps = n // batch
        t0 = time.perf_counter()
        perm = self.rng.permutation(n)[: steps * batch]
        xs, ys = self.x[perm], self.y[perm]
        for i in range(steps):
            xb, yb = xs[i * batch : (i + 1) * batch], ys[i * batch : (i + 1) * batch]
            h = xb @ w1 + b1
            np.maximum(h, 0, out=h)
            logits = h @ w2 + b2
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            d_logits = (p - self.eye[yb]) / batch  # d mean CE / d logits = (softmax - onehot)/B
            g_w2 = h.T @ d_logits
            g_b2 = d_logits.sum(axis=0)
            d_h = (d_logits @ w2.T) * (h > 0)
            g_w1 = xb.T @ d_h
            g_b1 = d_h.sum(axis=0)
            self.t += 1
            c1, c2 = 1 - beta1**self.t, 1 - beta2**self.t
            for p_, g, m_, v_ in zip(self.theta, (g_w1, g_b1, g_w2, g_b2), self.m, self.v):
                m_ *= beta1
                m_ += (1 - beta1) * g
                v_ *= beta2
                v_ += (1 - beta2) * g * g
                p_ -= LR * (m_ / c1) / (np.sqrt(v_ / c2) + eps)
        train_s = time.perf_counter() - t0
        predictions = (np.maximum(self.xt @ w1 + b1, 0) @ w2 + b2).argmax(axis=1)
        return train_s, time.perf_counter() - t0, float((predictions == self.yt).mean())


# ---------------------------------------------------------------------------------------------
# PyTorch eager


class Torch(Trainer):
    """The usual PyTorch loop: randperm, slices, zero_grad, backward, Adam step."""

    def __init__(self, model: str, data: tuple, batch: int) -> None:
        import torch
        from torch import nn

        torch.set_num_threads(2)
        torch.manual_seed(0)
        self.torch = torch
        self.name = f"PyTorch {torch.__version__} eager"
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
        self.x, self.y, self.xt, self.yt = (
            torch.from_numpy(np.ascontiguousarray(a)) for a in (x, y, xt, yt)
        )
        self.y, self.yt = self.y.long(), self.yt.long()
        self.net = net
        self.optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        self.loss_fn = nn.CrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(1)
        self.batch = batch

    def epoch(self, e: int) -> tuple[float, float, float]:
        torch, net, batch = self.torch, self.net, self.batch
        n = len(self.x)
        steps = n // batch
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=self.generator)[: steps * batch]
        xs, ys = self.x[perm], self.y[perm]
        for i in range(steps):
            xb, yb = xs[i * batch : (i + 1) * batch], ys[i * batch : (i + 1) * batch]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(net(xb), yb)
            loss.backward()
            self.optimizer.step()
        train_s = time.perf_counter() - t0
        net.eval()
        with torch.no_grad():
            hits = sum(
                int((net(self.xt[i : i + 500]).argmax(1) == self.yt[i : i + 500]).sum())
                for i in range(0, len(self.xt), 500)
            )
        return train_s, time.perf_counter() - t0, hits / len(self.xt)


# ---------------------------------------------------------------------------------------------
# The machine


def _median_seconds(f: Callable[..., Any], *args: Any, repeats: int) -> float:
    """Median wall time of ``f(*args)`` after one warm-up call (compilation excluded)."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(size: int = 2048, repeats: int = 15) -> float:
    """Median GFLOP/s of a jitted size x size float32 matmul: the better of XLA's default
    options (YNNPACK) and fit's CPU options (Eigen), so the peak is the machine's, not one
    library's."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    rates = []
    for options in OPTION_SETS.values():
        compiled = jax.jit(lambda a, b: a @ b, compiler_options=options or None)
        rates.append(2 * size**3 / _median_seconds(compiled, a, b, repeats=repeats) / 1e9)
    return max(rates)


def scan_matmul_rate(
    batch: int,
    compiler_options: dict[str, Any],
    steps: int = 468,
    repeats: int = 5,
    rounds: int = 3,
) -> float:
    """GFLOP/s of the MLP step's first-layer matmuls alone, one per ``lax.scan`` step.

    Forward ``x @ W`` (batch x 784 x 64) and weight gradient ``x.T @ d`` (784 x batch x 64), the two
    matmuls that carry 98% of a 784-64-10 step's FLOPs, with nothing else in the loop: a ceiling
    for any training loop that takes one optimizer step per batch of this size. As a ceiling it
    is the best of ``rounds`` medians of ``repeats`` loops: a single median landed in one of this
    machine's slow spells in two runs out of three (52 instead of 113-124 GFLOP/s).
    """
    xs = jax.random.normal(jax.random.key(0), (steps, batch, 784), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (784, 64), jnp.float32)

    def loop(xs, w):
        def step(w, xb):
            h = xb @ w
            return w - 1e-6 * (xb.T @ jnp.tanh(h)), None

        return jax.lax.scan(step, w, xs)[0]

    compiled = jax.jit(loop, compiler_options=compiler_options or None)
    seconds = min(_median_seconds(compiled, xs, w, repeats=repeats) for _ in range(rounds))
    return 2 * 2 * steps * batch * 784 * 64 / seconds / 1e9


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
    parser.add_argument("--mlp-epochs", type=int, default=10)
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
    log("matmul rate at the MLP's shapes ...")
    ceilings = {
        batch: {name: scan_matmul_rate(batch, options) for name, options in OPTION_SETS.items()}
        for batch in (128, 32)
    }
    sections: list[tuple[str, list[Run], float]] = []
    mlp_rows: dict[int, list[Run]] = {}
    for batch in (128, 32):
        log(f"MLP batch {batch}")
        trainers: list[Trainer] = [
            PlainJax("mlp", data, batch),
            Fit("mlp", data, batch, "jax"),
            Fit("mlp", data, batch, "funcgrad"),
            Fit("mlp", data, batch, "jax", XLA_DEFAULTS),
            Fit("mlp", data, batch, "funcgrad", XLA_DEFAULTS),
            NumpyMLP(data, batch),
        ]
        if not args.skip_torch:
            trainers.append(Torch("mlp", data, batch))
        rows = round_robin(trainers, args.mlp_epochs, (60000 // batch) * batch)
        mlp_rows[batch] = rows
        sections.append((f"MLP 784-64-10, batch {batch}, Adam", rows, TARGETS["mlp"]))
    if not args.skip_cnn:
        log("CNN")
        fast = {"conv_impl": "im2col_vjp"}
        trainers = [
            PlainJax("cnn", data, 128, **fast),
            Fit("cnn", data, 128, "jax", **fast),
            Fit("cnn", data, 128, "funcgrad", **fast),
            Fit("cnn", data, 128, "funcgrad", conv_impl="im2col"),
        ]
        if not args.skip_torch:
            trainers.append(Torch("cnn", data, 128))
        rows = round_robin(trainers, args.cnn_epochs, (60000 // 128) * 128)
        log("CNN: XLA convolutions (a few steps)")
        rows.append(bench_xla_conv_steps(data, 128))
        sections.append(("CNN conv32-pool-conv64-pool-dense128-10, batch 128, Adam", rows, 0.88))

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
        rates = ", ".join(
            f"{rate:.1f} GFLOP/s ({rate / peak:.0%} of peak) with {name}"
            for name, rate in ceilings[batch].items()
        )
        lines.append(
            f"- MLP batch {batch} ceiling: its two first-layer matmuls alone in a lax.scan run at "
            + rates
        )
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

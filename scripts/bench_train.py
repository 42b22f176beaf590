"""Benchmark: training speed on Fashion-MNIST, funcgrad's fit() against its references, in one run.

Same data (Fashion-MNIST, standardised), model, initial weights, batch, optimizer (Adam, lr 1e-3)
for every implementation of a model:

- plain JAX: a hand-written ``jax.jit`` epoch: on-device permutation, gather, ``lax.scan`` of an
  optax Adam step with ``jax.value_and_grad`` (what a JAX user writes by hand);
- fit (jax) / fit (funcgrad): ``funcgrad.train.fit(..., grad_engine=...)``, called once for all
  the epochs (as users call it: the data is placed on the device once), in a thread that pauses
  at each epoch-end callback while the other implementations take their turn; for the
  transformer on a multi-core CPU also with ``mesh=`` over one CPU device per core
  (``scripts/_cpu_devices.py``: data parallel, which keeps both cores busy with its many small
  operations);
- PyTorch eager: the usual loop (``loss.backward()``, ``torch.optim.Adam``) on CUDA when PyTorch
  sees a GPU, else on the CPU with as many threads as cores; its modules get funcgrad's initial
  weights, so every implementation starts from the same point;
- NumPy (MLP only): hand-written backprop and Adam.

Models: the MLP 784-64-10 (batch 128 and 32); the CNN conv3x3x32-pool-conv3x3x64-pool-dense128-10
(batch 128) with its fastest formulation (``cnn.FAST``) and its default one; the transformer
patch classifier (Fashion-MNIST as 16 patches of 7x7 pixels, d_model 64, 2 pre-LN blocks of 4
heads, d_ff 256, mean-pooled, batch 128).

The implementations take turns epoch by epoch (round robin), so load from other users of a
shared machine falls on all of them alike (``scripts/_timing.py`` states the rules). Per row:
epoch time (median of the epochs after the first: compilation excluded), examples/s, ratios,
GFLOP/s and share of the device's matmul peak (the exact matmul/convolution FLOPs of a step,
``_timing.step_flops``), wall time to a stated test accuracy from the start of training
(compilation and per-epoch evaluations included), the final test accuracy, the load average.

    python scripts/bench_train.py [--quick] [--models mlp,cnn,transformer] [--epochs N]
        [--skip-torch] [--out FILE]

``--quick`` trains on the first 12,800 examples for 2-3 epochs (accuracy targets are then not
reached: the speed columns are what it is for). PyTorch is not a funcgrad dependency:
``pip install torch==2.13.0`` (the ``bench`` extra).
"""

from __future__ import annotations

import functools
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _cpu_devices  # noqa: F401  (before JAX: one CPU device per core, for the mesh rows)
import _timing as T
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

import funcgrad as fg
from funcgrad import train
from funcgrad.models import cnn, layers, mlp, transformer

LR = 1e-3
PATCH = 7  # transformer: 7x7 patches, 16 per image
TRANSFORMER = {"d_model": 64, "num_layers": 2, "d_ff": 256}
HEADS = 4


@dataclass(frozen=True)
class Model:
    """One benchmarked model: its title, accuracy target, default epochs and builders."""

    name: str
    title: str
    target: float
    epochs: int
    init: Callable[[], Any]
    apply: Callable[..., jax.Array]
    apply_kwargs: dict[str, Any] = field(default_factory=dict)


MODELS = {
    "mlp": Model(
        "mlp", "MLP 784-64-10", 0.85, 10,
        lambda: mlp.init(jax.random.key(0), [784, 64, 10]), mlp.apply,
    ),
    "cnn": Model(
        "cnn", "CNN conv32-pool-conv64-pool-dense128-10", 0.88, 3,
        lambda: cnn.init(jax.random.key(0)), cnn.apply, cnn.FAST,
    ),
    "transformer": Model(
        "transformer", "transformer patch classifier (16 patches 7×7, d 64, 2 blocks)", 0.85, 5,
        lambda: transformer.init(
            jax.random.key(0), patch_dim=PATCH * PATCH, num_classes=10, max_len=16, **TRANSFORMER
        ),
        transformer.apply, {"num_heads": HEADS},
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A result row and the round robin


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
        return statistics.median(self.epoch_times[1:] or self.epoch_times)

    def throughput(self) -> float:
        return self.examples / self.epoch_time()

    def time_to(self, target: float) -> float | None:
        return next((t for a, t in zip(self.accuracies, self.elapsed) if a >= target), None)


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
    """Epoch e of every trainer, then epoch e + 1 of every trainer, ..."""
    runs = [Run(t.name, examples) for t in trainers]
    for trainer in trainers:
        trainer.epochs = epochs
    for e in range(epochs):
        for trainer, run in zip(trainers, runs):
            run.loads.append(T.load_average())
            train_s, total_s, accuracy = trainer.epoch(e)
            run.epoch_times.append(train_s)
            run.elapsed.append((run.elapsed[-1] if run.elapsed else 0.0) + total_s)
            run.accuracies.append(accuracy)
            T.log(f"  epoch {e}: {trainer.name}: {train_s:.3f}s, acc {accuracy:.4f}")
    for trainer in trainers:
        trainer.finish()
    return runs


# ---------------------------------------------------------------------------------------------
# Data


def fashion(limit: int | None) -> dict[str, tuple]:
    """Fashion-MNIST, standardised, shaped for each model: (N, 784) for the MLP, (N, 28, 28, 1)
    NHWC for the CNN, (N, 16, 49) patches for the transformer; the first ``limit`` training
    examples when given."""
    splits = []
    for split in ("train", "test"):
        images, labels = fg.data.load_mnist("fashion-mnist", split)
        images = fg.data.normalize(images, mean="fashion-mnist")
        if split == "train" and limit:
            images, labels = images[:limit], labels[:limit]
        splits.append((images, labels.astype(np.int32)))
    (x, y), (xt, yt) = splits

    def patches(a: np.ndarray) -> np.ndarray:
        return np.asarray(layers.image_patches(a[..., None], PATCH))

    return {
        "mlp": ((x.reshape(len(x), 784), y), (xt.reshape(len(xt), 784), yt)),
        "cnn": ((x[..., None], y), (xt[..., None], yt)),
        "transformer": ((patches(x), y), (patches(xt), yt)),
    }


# ---------------------------------------------------------------------------------------------
# JAX: the hand-written reference loop and fit()


class PlainJax(Trainer):
    """What a JAX user writes by hand: permute, gather the epoch, lax.scan an optax step."""

    name = "plain JAX + optax scan"

    def __init__(self, model: Model, data: tuple, batch: int, **apply_kwargs: Any) -> None:
        (x, y), (xt, yt) = data
        apply = functools.partial(model.apply, **(apply_kwargs or model.apply_kwargs))
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
        self.params = model.init()
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
        model: Model,
        data: tuple,
        batch: int,
        engine: str,
        compiler_options: dict[str, Any] | None = None,
        mesh: Mesh | None = None,
        **apply_kwargs: Any,
    ) -> None:
        self.name = f"fit, {engine} engine"
        if mesh is not None:
            self.name += f", mesh of {mesh.size} CPU devices (data parallel, one per core)"
        self.mesh = mesh
        if apply_kwargs:
            self.name += ", " + ", ".join(f"{k}={v!r}" for k, v in apply_kwargs.items())
        if compiler_options is not None:
            self.name += ", " + (
                ", ".join(f"{k}={v!r}" for k, v in compiler_options.items())
                or "compiler_options={} (XLA's defaults)"
            )
        self.compiler_options = compiler_options
        (self.x, self.y), (self.xt, self.yt) = data
        self.loss_fn = train.classifier_loss(model.apply, **(apply_kwargs or model.apply_kwargs))
        self.params = model.init()
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
                progress=False,
                mesh=self.mesh,
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


def xla_conv_steps(data: tuple, batch: int, steps: int = 4) -> Run:
    """The CNN with XLA's convolutions and reduce_window pooling under ``jax.grad``: a few
    steps, examples/s only (its backward convolutions are slow on CPU)."""
    (x, y), _ = data
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
    params = cnn.init(jax.random.key(0))
    opt_state = optimizer.init(params)
    timing = T.interleaved(
        {"xla": lambda: run_steps(params, opt_state, xb, yb)}, rounds=2, per_call=steps
    )["xla"]
    run = Run("plain JAX, XLA conv + reduce_window", (len(x) // batch) * batch)
    run.epoch_times = [t * (len(x) // batch) for t in timing.times]
    run.loads = [T.load_average()]
    run.note = f"{steps} steps timed, epoch extrapolated"
    return run


# ---------------------------------------------------------------------------------------------
# NumPy: hand-written backprop and Adam


class NumpyMLP(Trainer):
    """The MLP with hand-written backprop and Adam in NumPy (float32, BLAS matmuls)."""

    name = "NumPy hand-written backprop"

    def __init__(self, data: tuple, batch: int) -> None:
        (self.x, self.y), (self.xt, self.yt) = data
        params = jax.tree.map(np.array, MODELS["mlp"].init())
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


def torch_net(model: Model, params: Any) -> Any:
    """The model as a PyTorch module holding funcgrad's initial weights ``params``."""
    import torch
    from torch import nn

    def load(layer: Any, weight: Any, bias: Any) -> None:
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            layer.bias.copy_(torch.from_numpy(np.array(bias)))

    p = jax.tree.map(np.asarray, params)
    if model.name == "mlp":
        net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        for layer, w in zip((net[0], net[2]), p["layers"]):
            load(layer, w["W"].T, w["b"])
        return net
    if model.name == "cnn":
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
        )  # fmt: skip
        for layer, w in zip((net[0], net[3]), p["convs"]):
            load(layer, w["W"].transpose(3, 2, 0, 1), w["b"])  # HWIO -> OIHW
        # funcgrad flattens (h, w, c), PyTorch (c, h, w): permute the first dense layer's rows.
        dense = p["head"][0]["W"].reshape(7, 7, 64, 128).transpose(2, 0, 1, 3).reshape(-1, 128)
        load(net[7], dense.T, p["head"][0]["b"])
        load(net[9], p["head"][1]["W"].T, p["head"][1]["b"])
        return net
    return TorchPatchTransformer(p)


def _torch_transformer_class() -> type:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PatchTransformer(nn.Module):
        """The patch classifier as PyTorch users write it: a patch Linear plus a position
        table, ``nn.TransformerEncoder`` of pre-LN layers (tanh-approximated gelu, no dropout),
        a final LayerNorm, the mean over patches and a Linear head."""

        def __init__(self, p: dict) -> None:
            super().__init__()
            d = TRANSFORMER["d_model"]
            self.embed = nn.Linear(PATCH * PATCH, d)
            self.positions = nn.Parameter(torch.from_numpy(np.array(p["embed"]["positions"])))
            layer = nn.TransformerEncoderLayer(
                d, HEADS, TRANSFORMER["d_ff"], dropout=0.0,
                activation=functools.partial(F.gelu, approximate="tanh"),
                batch_first=True, norm_first=True,
            )  # fmt: skip
            self.encoder = nn.TransformerEncoder(
                layer, TRANSFORMER["num_layers"], enable_nested_tensor=False
            )
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, 10)
            self._load(p)

        def _load(self, p: dict) -> None:
            def put(param: Any, value: Any) -> None:
                param.copy_(torch.from_numpy(np.ascontiguousarray(value)))

            with torch.no_grad():
                put(self.embed.weight, p["embed"]["patches"]["W"].T)
                put(self.embed.bias, p["embed"]["patches"]["b"])
                for layer, block in zip(self.encoder.layers, p["blocks"]):
                    a = block["attn"]
                    put(layer.self_attn.in_proj_weight, np.concatenate([a["wq"].T, a["wk"].T,
                                                                        a["wv"].T]))  # fmt: skip
                    put(layer.self_attn.in_proj_bias, np.concatenate([a["bq"], a["bk"], a["bv"]]))
                    put(layer.self_attn.out_proj.weight, a["wo"].T)
                    put(layer.self_attn.out_proj.bias, a["bo"])
                    for norm, ln in ((layer.norm1, block["ln1"]), (layer.norm2, block["ln2"])):
                        put(norm.weight, ln["scale"])
                        put(norm.bias, ln["bias"])
                    for linear, fc in ((layer.linear1, block["mlp"]["fc1"]),
                                       (layer.linear2, block["mlp"]["fc2"])):  # fmt: skip
                        put(linear.weight, fc["W"].T)
                        put(linear.bias, fc["b"])
                put(self.norm.weight, p["ln_final"]["scale"])
                put(self.norm.bias, p["ln_final"]["bias"])
                put(self.head.weight, p["classifier"]["W"].T)
                put(self.head.bias, p["classifier"]["b"])

        def forward(self, x: Any) -> Any:
            h = self.encoder(self.embed(x) + self.positions[: x.shape[1]])
            return self.head(self.norm(h).mean(dim=1))

    return PatchTransformer


def TorchPatchTransformer(p: dict) -> Any:  # builds a module, as a class call would
    return _torch_transformer_class()(p)


class Torch(Trainer):
    """The usual PyTorch loop: randperm, slices, zero_grad, backward, Adam step; the training
    set on the device once (as fit and the JAX loop have it)."""

    def __init__(self, model: Model, data: tuple, batch: int, device: str) -> None:
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.device = device
        self.name = f"PyTorch {torch.__version__} eager ({device})"
        (x, y), (xt, yt) = data
        if model.name == "cnn":
            x, xt = x.transpose(0, 3, 1, 2), xt.transpose(0, 3, 1, 2)  # NCHW
        self.x, self.y, self.xt, self.yt = (
            torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (x, y, xt, yt)
        )
        self.y, self.yt = self.y.long(), self.yt.long()
        self.net = torch_net(model, model.init()).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=LR)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.generator = torch.Generator(device=device).manual_seed(1)
        self.batch = batch

    def epoch(self, e: int) -> tuple[float, float, float]:
        torch, net, batch = self.torch, self.net, self.batch
        n = len(self.x)
        steps = n // batch
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=self.generator, device=self.device)[: steps * batch]
        xs, ys = self.x[perm], self.y[perm]
        for i in range(steps):
            xb, yb = xs[i * batch : (i + 1) * batch], ys[i * batch : (i + 1) * batch]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(net(xb), yb)
            loss.backward()
            self.optimizer.step()
        T.torch_sync(self.device)
        train_s = time.perf_counter() - t0
        net.eval()
        with torch.no_grad():
            hits = sum(
                int((net(self.xt[i : i + 500]).argmax(1) == self.yt[i : i + 500]).sum())
                for i in range(0, len(self.xt), 500)
            )
        return train_s, time.perf_counter() - t0, hits / len(self.xt)


# ---------------------------------------------------------------------------------------------
# The runs and the report


def trainers_for(
    model: Model, data: tuple, batch: int, quick: bool, torch_device: str | None
) -> list[Trainer]:
    trainers: list[Trainer] = [
        PlainJax(model, data, batch),
        Fit(model, data, batch, "jax"),
        Fit(model, data, batch, "funcgrad"),
    ]
    if model.name in ("mlp", "transformer") and not quick and train.default_compiler_options():
        trainers += [Fit(model, data, batch, e, {}) for e in train.GRAD_ENGINES]
    if model.name == "cnn":
        trainers.append(Fit(model, data, batch, "funcgrad", conv_impl="im2col"))
    cpus = jax.devices("cpu") if T.jax_platform() == "cpu" else []
    if model.name == "transformer" and len(cpus) > 1 and batch % len(cpus) == 0:
        mesh = Mesh(np.array(cpus), ("data",))
        trainers += [Fit(model, data, batch, e, mesh=mesh) for e in train.GRAD_ENGINES]
    if model.name == "mlp" and T.jax_platform() == "cpu":
        trainers.append(NumpyMLP(data, batch))
    if torch_device is not None:
        trainers.append(Torch(model, data, batch, torch_device))
    return trainers


def table_rows(runs: list[Run], target: float, flops: int, peak: T.Peak) -> list[list[str]]:
    def find(prefix: str) -> Run | None:
        return next((r for r in runs if r.name.startswith(prefix)), None)

    references = [find("plain JAX +"), find("PyTorch"), find("NumPy")]
    rows = []
    for r in runs:
        ratios = [r.throughput() / ref.throughput() if ref else None for ref in references]
        gflops = r.throughput() * flops / 1e9
        rows.append(
            [
                r.name + (f" ({r.note})" if r.note else ""),
                f"{r.epoch_time():.3f}",
                f"{r.throughput():,.0f}",
                *(T.fmt(x, ".2f") for x in ratios),
                f"{gflops:.1f} ({peak.share(gflops)})",
                T.fmt(r.time_to(target), ".1f"),
                T.fmt(r.accuracies[-1] if r.accuracies else None, ".4f"),
                f"{statistics.mean(r.loads):.1f}",
            ]
        )
    return rows


def main() -> None:
    parser = T.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn,transformer")
    parser.add_argument("--epochs", type=int, default=None, help="override every model's")
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    report = T.Report("Training benchmark (scripts/bench_train.py)", args)
    torch_device = None if args.skip_torch else T.torch_device()
    T.log("loading Fashion-MNIST ...")
    datasets = fashion(12_800 if args.quick else None)
    T.log("matmul peak ...")
    peak = T.matmul_peak(rounds=5 if args.quick else 9)
    report.add(f"- matmul peak: {peak.gflops:.1f} GFLOP/s ({peak.source}; float32, median)")
    for name in args.models.split(","):
        model = MODELS[name]
        data = datasets[name]
        epochs = args.epochs or (min(3, model.epochs) if args.quick else model.epochs)
        for batch in (128, 32) if name == "mlp" and not args.quick else (128,):
            T.log(f"{model.title}, batch {batch}")
            examples = (len(data[0][0]) // batch) * batch
            trainers = trainers_for(model, data, batch, args.quick, torch_device)
            runs = round_robin(trainers, epochs, examples)
            if name == "cnn" and not args.quick and T.jax_platform() == "cpu":
                runs.append(xla_conv_steps(data, batch))
            # The model's FLOPs, the same for every row: its default formulation (direct
            # convolutions), not cnn.FAST's Winograd, which does fewer multiplications.
            flops = T.step_flops(model.apply, model.init(), jnp.asarray(data[0][0][:1]))
            report.table(
                [
                    "implementation", "epoch (s)", "examples/s", "× plain JAX", "× PyTorch",
                    "× NumPy", "GFLOP/s (of peak)", f"time to {model.target:.2f} (s)",
                    "final test acc", "load",
                ],
                table_rows(runs, model.target, flops, peak),
                title=f"{model.title}, batch {batch}, Adam, {epochs} epochs of {examples:,}",
            )  # fmt: skip
            report.add(
                "",
                f"Exact matmul/convolution FLOPs of a step of the model (direct convolutions): "
                f"{flops:,} per example ({flops * batch / 1e9:.2f} GFLOP per step of {batch}).",
            )
    report.finish(f"bench_train-{T.device_tag()}" + ("-quick" if args.quick else ""))


if __name__ == "__main__":
    main()

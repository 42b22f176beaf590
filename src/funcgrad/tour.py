"""The funcgrad tour: train the seed models, check their gradients, draw them, write one page.

``funcgrad tour`` (what ``make demo`` runs) calls :func:`run`, which, offline and in a few
minutes on two CPU cores:

1. **linear regression**: one neuron learns f(x1, x2) = 2·x1 + x2 + 1 and the learned weights are
   printed;
2. **XOR**: 2-2-1 and 2-3-1 sigmoid networks learn XOR to 100%; their hidden layers are drawn as
   2-D and 3-D feature spaces with the output unit's separating line / plane, next to the
   input-space boundary;
3. **two moons**: a 2-16-16-1 tanh network, with its decision boundary animated over the epochs
   (a GIF);
4. **Fashion-MNIST**: a 784-64-10 MLP for a couple of epochs from the copy on this machine
   (Debian's ``dataset-fashion-mnist``, or funcgrad's cache; nothing is downloaded), with loss
   curves, the test confusion matrix and the first layer's weights as 28×28 images. Without
   the data the section says how to get it and is skipped;
5. **gradient checks**: ``fg.compare_grads`` for each seed model in float64, funcgrad against
   ``jax.grad``, the hand-derived gradients of :mod:`funcgrad.manual` and finite differences;
6. **graphs**: the single-neuron regression with every value and gradient, its gradient
   program, a 3-class softmax + cross-entropy, and a transformer with its blocks collapsed;
7. **reverse mode, step by step**: the backward pass of one neuron and of the XOR network as
   players (``fg.viz.animate_backward``), one equation per step with its VJP rule, formula and
   cotangents; hovering a node shows its values, clicking a collapsed cluster opens it.

Every model trains with ``grad_engine="funcgrad"``: the hand-written VJP rules, jitted. The page
is ``<out>/index.html`` with its pictures in ``<out>/images/`` and the summary in
``<out>/summary.json``. Everything is seeded: two runs draw the same pictures.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcgrad as fg
from funcgrad import data, losses, manual, models, train
from funcgrad.manual import cases
from funcgrad.viz import animate, plots
from funcgrad.viz.report import Report, Section, check_output_dir

__all__ = ["FASHION_MNIST_CLASSES", "SECTIONS", "run"]

SECTIONS = ("linear", "xor", "moons", "mnist", "gradients", "graphs", "reverse")
"""The tour's sections, in order; ``run(sections=...)`` picks some."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_TITLES = {
    "linear": "1. Linear regression: one neuron",
    "xor": "2. XOR: what the hidden layer does",
    "moons": "3. Two moons: the decision boundary over training",
    "mnist": "4. Fashion-MNIST: a 784-64-10 MLP",
    "gradients": "5. Gradient checks: funcgrad vs JAX vs hand-derived vs finite differences",
    "graphs": "6. Graphs: values and gradients on every node",
    "reverse": "7. Watch reverse mode: the backward pass, one equation at a time",
}


@dataclass(frozen=True)
class _Settings:
    """How much work each section does: the full tour and ``--quick`` (for tests)."""

    linear_n: int = 256
    linear_epochs: int = 40  # batches of 16: 640 steps
    xor_max_epochs: int = 3000
    moons_n: int = 400
    moons_epochs: int = 60
    moons_batch: int = 25  # 300 training points: 12 steps per epoch
    moons_resolution: int = 80
    mnist_train: int | None = None  # None: all 60000
    mnist_test: int | None = None
    mnist_epochs: int = 2
    grad_models: tuple[str, ...] = ("linear", "xor", "mlp", "cnn", "transformer")
    mlp_batch: int = 32


FULL = _Settings()
QUICK = _Settings(
    linear_n=128,
    linear_epochs=25,
    moons_n=200,
    moons_epochs=20,
    moons_batch=10,
    moons_resolution=50,
    mnist_train=4096,
    mnist_test=1024,
    mnist_epochs=1,
    grad_models=("linear", "xor", "mlp"),
    mlp_batch=8,
)


class _Skip(Exception):
    """A section cannot run here (missing data or program); the message says why and the fix."""


class _Tour:
    """State shared by the sections: the page, the summary rows, keys, settings, output."""

    def __init__(self, settings: _Settings, seed: int, print_fn: Callable[[str], Any]) -> None:
        self.s = settings
        self.key = jax.random.key(seed)
        self.page = Report(
            "funcgrad tour",
            subtitle="Seed models trained with funcgrad's hand-written gradients (jitted), their "
            "gradients checked four ways, and their computation graphs.",
        )
        self.rows: list[dict[str, Any]] = []
        self.print = print_fn
        self.failed_checks: list[str] = []
        self.workdir = ""  # a temporary directory for files made on the way (the GIF)

    def keys(self, section: int, n: int) -> list[jax.Array]:
        return list(jax.random.split(jax.random.fold_in(self.key, section), n))

    def row(self, section: str, metric: str, value: Any) -> None:
        self.rows.append({"section": section, "metric": metric, "value": value, "time": ""})


def _fit(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, list[float]]]:
    """``fg.train.fit`` with funcgrad's gradients and no progress bar unless a section passes
    ``progress=None`` (fit's tqdm bar, drawn on a terminal or in Jupyter only)."""
    return train.fit(*args, grad_engine="funcgrad", **{"progress": False, **kwargs})


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ---- 1. linear regression -----------------------------------------------------------------------
def _linear(t: _Tour, sec: Section) -> None:
    data_key, init_key, fit_key = t.keys(1, 3)
    x, y = manual.linear.data(data_key, t.s.linear_n, noise=0.1)
    params = manual.linear.init(init_key)
    params, history = _fit(
        manual.linear.loss, params, (x, y), optimizer=optax.sgd(0.1, momentum=0.9),
        epochs=t.s.linear_epochs, batch_size=16, key=fit_key,
    )
    (w1, w2), b = np.asarray(params["W"])[:, 0], float(np.asarray(params["b"])[0])
    learned = f"f(x1, x2) = {w1:.3f}·x1 + {w2:.3f}·x2 + {b:.3f}"
    t.print(f"  linear regression learned {learned}   (true: 2·x1 + 1·x2 + 1)")
    sec.text(
        f"{t.s.linear_n} points with y = 2·x1 + x2 + 1 + noise (σ = 0.1), mean squared error, "
        f"SGD with momentum, {t.s.linear_epochs} epochs of batches of 16, gradients from "
        "funcgrad's VJP rules (`fit(..., grad_engine=\"funcgrad\")`)."
    )
    sec.table(
        [
            {"parameter": "W[0] (x1)", "true": 2.0, "learned": round(float(w1), 4)},
            {"parameter": "W[1] (x2)", "true": 1.0, "learned": round(float(w2), 4)},
            {"parameter": "b", "true": 1.0, "learned": round(b, 4)},
        ],
        caption=f"learned: {learned}",
    )
    sec.figure(plots.loss_curves(history, title="linear regression: mean squared error"),
               "linear-loss", caption="Loss per epoch (the noise floor is σ² = 0.01).")
    t.row("linear", "learned f", learned)
    t.row("linear", "final train mse", f"{history['loss'][-1]:.4f}")


# ---- 2. XOR -------------------------------------------------------------------------------------
def _stop_when_solved(x: jax.Array, t_: jax.Array, margin: float = 0.3) -> Callable:
    """A fit callback stopping once every XOR output is within ``margin`` of its target."""
    forward = jax.jit(lambda p: manual.xor.forward(p, x)["o"])

    def callback(state: dict[str, Any]) -> bool:
        if (state["epoch"] + 1) % 25:
            return False
        return bool(np.max(np.abs(np.asarray(forward(state["params"])) - np.asarray(t_))) < margin)

    return callback


def _xor(t: _Tour, sec: Section) -> None:
    x, target = manual.xor.data()
    sec.text(
        "The four XOR patterns, 2-n-1 networks of sigmoid units, half the mean squared error (the "
        "loss of Rumelhart, Hinton & Williams, 1986, whose δ-terms are in `funcgrad.manual.xor`), "
        "Adam, full batch, trained until every output is within 0.3 of its target. XOR is not "
        "linearly separable in the input plane; in the hidden layer's coordinates it is, and the "
        "output unit is exactly a line (2 hidden units) or a plane (3 hidden units) there."
    )
    for i, hidden in enumerate((2, 3)):
        init_key, fit_key = t.keys(20 + i, 2)
        params = manual.xor.init(init_key, hidden)
        params, history = _fit(
            manual.xor.loss, params, (x, target), optimizer=optax.adam(0.05),
            epochs=t.s.xor_max_epochs, batch_size=4, key=fit_key,
            callbacks=[_stop_when_solved(x, target)],
        )
        out = np.asarray(manual.xor.forward(params, x)["o"])[:, 0]
        acc = float(np.mean((out > 0.5) == (np.asarray(target)[:, 0] > 0.5)))
        epochs = len(history["loss"])
        name = f"2-{hidden}-1"
        t.print(f"  XOR {name}: accuracy {_pct(acc)} after {epochs} epochs, outputs "
                + " ".join(f"{o:.2f}" for o in out))
        t.row("xor", f"{name} sigmoid accuracy", f"{_pct(acc)} ({epochs} epochs)")
        sec.table(
            [{"x1": int(a), "x2": int(b), "target": int(c), "output": round(float(o), 3)}
             for (a, b), c, o in zip(np.asarray(x), np.asarray(target)[:, 0], out)],
            caption=f"{name}: accuracy {_pct(acc)} after {epochs} epochs",
        )
        dims = "2-D" if hidden == 2 else "3-D"
        sec.figure(
            plots.xor_feature_space(params, title=f"XOR, {name} sigmoid network"),
            f"xor-{name}-feature-space",
            caption=f"{name}: left, the input plane with the network's boundary (black) and each "
            f"hidden unit's line (dashed); right, the {dims} hidden space, where the output unit "
            "separates the classes with a straight boundary. Grey: the input square's grid "
            "lines, bent by the hidden layer.",
        )
        sec.figure(plots.loss_curves(history, title=f"XOR {name}"), f"xor-{name}-loss")


# ---- 3. two moons -------------------------------------------------------------------------------
def _moons(t: _Tour, sec: Section) -> None:
    data_key, split_key, init_key, fit_key = t.keys(3, 4)
    x, y = data.two_moons(data_key, t.s.moons_n, noise=0.15)
    (x_tr, y_tr), (x_val, y_val) = data.train_val_split(split_key, x, y, 0.25)
    apply = functools.partial(models.mlp.apply, activation="tanh")
    params = models.mlp.init(init_key, [2, 16, 16, 1])

    def predict(p: Any, points: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(apply(p, points))[:, 0]

    recorder = animate.record_boundary(predict, x, resolution=t.s.moons_resolution)
    recorder.record(params)
    params, history = _fit(
        train.classifier_loss(apply), params, (x_tr, y_tr), optimizer=optax.adam(0.01),
        epochs=t.s.moons_epochs, batch_size=t.s.moons_batch, key=fit_key, has_aux=True,
        eval_data=(x_val, y_val), callbacks=[recorder],
    )
    acc, val_acc = history["accuracy"][-1], history["eval_accuracy"][-1]
    t.print(f"  two moons: train accuracy {_pct(acc)}, held-out {_pct(val_acc)}")
    sec.text(
        f"{t.s.moons_n} points of two interleaving half circles (noise 0.15), a quarter held "
        f"out; a 2-16-16-1 tanh network with a sigmoid output and binary cross-entropy, Adam, "
        f"{t.s.moons_epochs} epochs of batches of {t.s.moons_batch}. A `fit` callback predicts "
        f"on a {t.s.moons_resolution}×{t.s.moons_resolution} grid after every epoch (one "
        "jitted call) and the frames become the animation."
    )
    gif = Path(t.workdir) / "moons-boundary.gif"
    animate.decision_boundary_animation(recorder.frames, x, y, gif, fps=8, title="two moons")
    sec.image(gif, "moons-boundary", caption=f"The decision boundary after each epoch "
              f"({len(recorder.frames)} frames, epoch 0 is the untrained network).")
    sec.figure(
        plots.decision_boundary(lambda pts: predict(params, pts), x, y,
                                title=f"after {t.s.moons_epochs} epochs"),
        "moons-boundary-final", caption="The final decision boundary over all points.",
    )
    sec.figure(plots.loss_curves(history, title="two moons"), "moons-loss",
               caption="Train (solid) and held-out (dashed) loss and accuracy per epoch.")
    t.row("moons", "2-16-16-1 tanh accuracy", f"train {_pct(acc)}, held-out {_pct(val_acc)}")
    t.row("moons", "animation", f"{len(recorder.frames)} frames")


# ---- 4. Fashion-MNIST ---------------------------------------------------------------------------
def _load_fashion(s: _Settings) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]:
    try:
        train_images, train_labels = data.load_mnist("fashion-mnist", "train", download=False)
        test_images, test_labels = data.load_mnist("fashion-mnist", "test", download=False)
    except (data.DatasetError, OSError) as err:
        raise _Skip(
            "Fashion-MNIST is not on this machine, so this section is skipped (the tour never "
            "downloads). Install Debian's package (`apt-get install dataset-fashion-mnist`, "
            "files in /usr/share/datasets/fashion-mnist), or fetch it once with "
            "`python -c \"import funcgrad; funcgrad.data.load_mnist('fashion-mnist')\"` "
            f"and run the tour again.\n\nThe loader said: {err}"
        ) from err
    n_train, n_test = s.mnist_train or len(train_labels), s.mnist_test or len(test_labels)

    def flat(images: np.ndarray) -> np.ndarray:
        return data.normalize(images).reshape(len(images), -1)

    return (
        (flat(train_images[:n_train]), train_labels[:n_train]),
        (flat(test_images[:n_test]), test_labels[:n_test]),
    )


def _mnist(t: _Tour, sec: Section) -> None:
    (x_tr, y_tr), (x_te, y_te) = _load_fashion(t.s)
    init_key, fit_key = t.keys(4, 2)
    params = models.mlp.init(init_key, [784, 64, 10])
    step_losses: list[np.ndarray] = []

    def keep_steps(state: dict[str, Any]) -> None:
        step_losses.append(np.asarray(state["step_losses"]))

    params, history = _fit(
        train.classifier_loss(models.mlp.apply), params, (x_tr, y_tr),
        optimizer=optax.adam(1e-3), epochs=t.s.mnist_epochs, batch_size=128, key=fit_key,
        has_aux=True, eval_data=(x_te, y_te), eval_batch_size=1024,
        callbacks=[keep_steps], progress=None,
    )
    test_acc = history["eval_accuracy"][-1]
    epoch_time = sum(history["epoch_time"])
    steps = sum(len(s) for s in step_losses)
    epochs = f"{t.s.mnist_epochs} epoch{'s' if t.s.mnist_epochs > 1 else ''}"
    t.print(f"  Fashion-MNIST: test accuracy {_pct(test_acc)} after {epochs} "
            f"({steps} steps in {epoch_time:.1f} s)")
    predicted = np.asarray(jax.jit(models.mlp.apply)(params, x_te)).argmax(axis=1)
    sec.text(
        f"{len(y_tr)} training and {len(y_te)} test images of the copy on this machine, pixels "
        f"scaled to [0, 1]; a 784-64-10 ReLU MLP, softmax cross-entropy, Adam (1e-3), "
        f"{epochs} of batches of 128: {steps} steps, one `lax.scan` per "
        f"epoch, {epoch_time:.1f} s of training."
    )
    sec.figure(
        plots.loss_curves(history, step_losses=step_losses, title="Fashion-MNIST"),
        "mnist-loss",
        caption="Loss of every step (grey), epoch means (solid) and the test set (dashed).",
    )
    sec.figure(
        plots.confusion_matrix(y_te, predicted, class_names=FASHION_MNIST_CLASSES,
                               title="Fashion-MNIST test set"),
        "mnist-confusion", caption="Rows: true class; columns: predicted class.",
    )
    sec.figure(
        plots.weight_images(params["layers"][0]["W"], title="first-layer weights (784 → 64)"),
        "mnist-weights",
        caption="Each hidden unit's 784 input weights as a 28×28 image: red pixels excite it, "
        "blue ones inhibit it.",
    )
    t.row("mnist", "784-64-10 test accuracy", f"{_pct(test_acc)} ({epochs})")
    t.row("mnist", "training speed", f"{steps / max(epoch_time, 1e-9):.0f} steps/s")


# ---- 5. gradient checks -------------------------------------------------------------------------
_GRAD_TITLES = {
    "linear": "linear regression, mean squared error",
    "xor": "XOR 2-2-1 sigmoid, ½·MSE (with the δ-terms)",
    "mlp": "784-100-100-10 tanh MLP, softmax + NLL (every intermediate)",
    "cnn": "CNN: conv 3×3 → relu → max-pool → dense, cross-entropy",
    "transformer": "transformer classifier (1 block; no hand-derived gradient: funcgrad vs JAX "
    "vs finite differences)",
}


def _grad_cases(t: _Tour) -> dict[str, Callable[[], Any]]:
    """name -> a thunk returning the GradReport (built inside float64 mode)."""
    k = t.keys(5, 10)
    f64 = jnp.float64
    builders: dict[str, Callable[[], cases.Case]] = {
        "linear": lambda: cases.linear(k[0], k[1], batch=16, dtype=f64),
        "xor": lambda: cases.xor(k[2], hidden=2, dtype=f64),
        "mlp": lambda: cases.mlp(k[3], k[4], batch=t.s.mlp_batch, dtype=f64),
        "cnn": lambda: cases.cnn(k[5], k[6], k[7], conv_channels=(4,), dense_sizes=(10,),
                                 batch=4, dtype=f64),
        "transformer": lambda: cases.transformer(k[8], k[9], vocab=16, d_model=16, d_ff=32,
                                                 seq_len=8, batch=4, dtype=f64),
    }
    return {
        name: functools.partial(_compare_case, builders[name], _GRAD_TITLES[name])
        for name in t.s.grad_models
    }


def _compare_case(build: Callable[[], cases.Case], title: str) -> Any:
    """``fg.compare_grads`` of the case against its ``manual`` gradient and finite differences."""
    case = build()
    manual_only = {k: v for k, v in case.reference.items() if k == "manual"}
    return fg.compare_grads(case.loss, *case.args, reference={**manual_only, "fd": "fd"},
                            intermediates=case.intermediates, title=title)


def _gradients(t: _Tour, sec: Section) -> None:
    sec.text(
        "`fg.compare_grads` computes each gradient with funcgrad's interpreter (`fg`), "
        "`jax.grad` (`jax`), the hand-derived formulas of `funcgrad.manual` (`manual`) and "
        "central finite differences (`fd`), and compares each with `jax.grad`, leaf by leaf, in "
        "float64. `exact` means equal values (-0.0 equals +0.0); `close` means within the "
        "tolerance printed under each table. `tag:` rows compare intermediate gradients "
        "(marked with `fg.tag`) with the textbook's: the δ-terms of XOR, every step of the "
        "MLP's backward pass."
    )
    with jax.enable_x64(True):
        for name, case in _grad_cases(t).items():
            start = time.perf_counter()
            report = case()
            seconds = time.perf_counter() - start
            sec.grad_report(report)
            rows = report.rows
            passed = sum(r["ok"] for r in rows)
            pairs = ", ".join(report.pairs)
            if report.ok:
                verdict = f"OK {passed}/{len(rows)} within tolerance"
            else:
                verdict = f"FAILED {len(rows) - passed}/{len(rows)} out of tolerance"
            t.print(f"  {name}: {verdict} ({pairs}) in {seconds:.1f} s")
            t.row("gradients", f"{name}: {pairs}", verdict)
            if not report.ok:
                t.failed_checks.append(f"{name}: {report.verdict()}")


# ---- 6. graphs ----------------------------------------------------------------------------------
def _graphs(t: _Tour, sec: Section) -> None:
    from funcgrad.viz import GraphvizNotFoundError, draw_jaxpr

    if shutil.which("dot") is None:  # say so before tracing anything
        raise GraphvizNotFoundError("dot")

    k = t.keys(6, 6)
    neuron = manual.linear.init(k[0])
    x, y = manual.linear.data(k[1], 4)
    drawings = [
        ("neuron", draw_jaxpr(manual.linear.loss, neuron, x, y,
                              title="one neuron: mean((x @ W + b - y)²)"),
         "The single-neuron regression on 4 points, before training: every node shows its value "
         "and, in red, d loss / d node computed by funcgrad. Parameters are outlined red, data "
         "blue."),
        ("neuron-backward", draw_jaxpr(manual.linear.loss, neuron, x, y, view="backward",
                                       title="the gradient program of the same neuron"),
         "The program `fg.grad` runs for it: the forward pass, then the equations each VJP rule "
         "emits, ending in one output per parameter."),
    ]
    classifier = models.linear.init(k[2], 2, 3)
    points = jax.random.normal(k[3], (4, 2))
    labels = jnp.array([0, 1, 2, 1])

    def softmax_ce(params: Any, x: jax.Array, labels: jax.Array) -> jax.Array:
        return losses.softmax_cross_entropy(models.linear.apply(params, x), labels)

    drawings.append(
        ("softmax-ce", draw_jaxpr(softmax_ce, classifier, points, labels,
                                  title="3-class softmax + cross-entropy"),
         "A linear 3-class classifier with softmax cross-entropy on 4 points. The row maximum "
         "subtracted for numerical stability sits behind a stop_gradient, so no gradient "
         "reaches it: it cancels in the algebra, and the gradient is the same without it.")
    )
    tparams = models.transformer.init(k[4], 16, num_classes=3, d_model=16, num_layers=2, d_ff=32,
                                      max_len=8)
    ids = jax.random.randint(k[5], (4, 8), 0, 16)

    def transformer_loss(params: Any, ids: jax.Array, labels: jax.Array) -> jax.Array:
        return losses.softmax_cross_entropy(models.transformer.apply(params, ids, num_heads=2),
                                            labels)

    drawings.append(
        ("transformer", draw_jaxpr(transformer_loss, tparams, ids, jnp.array([0, 1, 2, 0]),
                                   collapse=_TRANSFORMER_COLLAPSED,
                                   title="2-block transformer, sub-layers collapsed"),
         "A 2-block pre-LN transformer classifier on 4 sequences of 8 tokens, each layer norm, "
         "attention and MLP sub-layer collapsed to one node (with its output's value and "
         "gradient): x + attention(ln1(x)), then x + mlp(ln2(x)), twice, then mean-pooling, the "
         "classifier and the loss. Click to open it full size.")
    )
    for name, graph, caption in drawings:
        sec.graph(graph, f"graph-{name}", caption=caption)
    sec.interactive(drawings[-1][1], caption="The transformer graph again, live: hover a node "
                    "for the full summary of its value and gradient (shape, min/mean/max/std, "
                    "zeros, NaNs, first entries); click a box with a shadow to open that "
                    "cluster, drawn expanded, and ← back to return.")
    t.row("graphs", "drawn (SVG)", ", ".join(name for name, _, _ in drawings))


# ---- 7. reverse mode, step by step ---------------------------------------------------------------
def _reverse(t: _Tour, sec: Section) -> None:
    from funcgrad.viz import GraphvizNotFoundError, animate_backward

    if shutil.which("dot") is None:
        raise GraphvizNotFoundError("dot")
    k = t.keys(7, 3)
    neuron = manual.linear.init(k[0])
    x, y = manual.linear.data(k[1], 4)
    xor_params = manual.xor.init(k[2], 2)
    xor_x, xor_t = manual.xor.data()
    sec.text(
        "funcgrad's backward walk as it runs, one equation per step, last equation first: the "
        "equation being transposed is orange, the caption names the VJP rule that transposes "
        "it with the rule's formula, the cotangent its output received and the one it sends "
        "back to each input; the values that just received a cotangent are outlined red, every "
        "cotangent that has arrived is written in red, and where a value is read twice its "
        "cotangents are summed (first the partial sum, then Σ2). Play, step with the buttons "
        "or the arrow keys (click the player first), hover a node for the full summary of its "
        "value and of its gradient so far. The last step shows the gradients of `fg.grad`."
    )
    players = [
        ("one neuron", animate_backward(manual.linear.loss, neuron, x, y,
                                        title="one neuron: mean((x @ W + b - y)²)"),
         "The single-neuron regression of section 1 on 4 points, before training."),
        ("XOR 2-2-1", animate_backward(manual.xor.loss, xor_params, xor_x, xor_t,
                                       title="XOR 2-2-1 sigmoid network, ½·MSE"),
         "The 2-2-1 sigmoid network of section 2, untrained. The cotangents arriving at the "
         "tagged net inputs `net_out` and `net_hidden` are the δ-terms of the generalised delta "
         "rule (`funcgrad.manual.xor.deltas`)."),
    ]
    for _, player, caption in players:
        sec.interactive(player, caption=caption)
    t.row("reverse", "animated backward passes",
          ", ".join(f"{name}: {len(player) - 1} steps" for name, player, _ in players))


# The Python functions whose clusters the transformer graph draws as one node each.
_TRANSFORMER_COLLAPSED = frozenset(
    {"layer_norm", "multi_head_attention", "mlp_block", "log_softmax"}
)

_SECTION_FUNCS: dict[str, Callable[[_Tour, Section], None]] = {
    "linear": _linear,
    "xor": _xor,
    "moons": _moons,
    "mnist": _mnist,
    "gradients": _gradients,
    "graphs": _graphs,
    "reverse": _reverse,
}


# ---- the whole tour -----------------------------------------------------------------------------
def _format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    table = [list(columns)] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(
    out_dir: str | os.PathLike[str] = "funcgrad-tour",
    *,
    quick: bool = False,
    seed: int = 0,
    sections: Sequence[str] | None = None,
    print_fn: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the tour and write ``out_dir/index.html``; return what it found.

    ``quick`` shrinks every section (less data, fewer epochs, fewer gradient checks) for tests;
    ``sections`` runs only some of :data:`SECTIONS`. Progress and the summary table go to
    ``print_fn``. Returns ``{"index": Path, "summary": rows, "failed_checks": [...],
    "wall_time": s, "cpu_time": s}``; each row is ``{"section", "metric", "value", "time"}``.
    A section whose data or program is missing is skipped with a note on the page, never an
    error; any other error propagates and leaves no page behind. ``FileExistsError`` (at once)
    when ``out_dir`` holds other files than an earlier report.
    """
    chosen = list(SECTIONS) if sections is None else list(sections)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise ValueError(f"tour: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    chosen = [s for s in SECTIONS if s in chosen]  # always in the tour's order
    check_output_dir(out_dir)  # before minutes of work, not after
    start, cpu_start = time.perf_counter(), time.process_time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    tour = _Tour(QUICK if quick else FULL, seed, print_fn)
    devices = ", ".join(str(d) for d in jax.devices())
    print_fn(f"funcgrad tour{' (quick)' if quick else ''}: {len(chosen)} sections on {devices}")
    with tempfile.TemporaryDirectory(prefix="funcgrad-tour-") as workdir:
        tour.workdir = workdir
        for i, name in enumerate(chosen, 1):
            title = _TITLES[name]
            print_fn(f"[{i}/{len(chosen)}] {title}")
            sec = tour.page.section(title)
            first_row = len(tour.rows)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                _SECTION_FUNCS[name](tour, sec)
            except _Skip as skip:
                sec.note(str(skip), kind="warning")
                reason = str(skip).split(".")[0]
                print_fn(f"  skipped: {reason}")
                tour.row(name, "skipped", reason)
            except fg.viz.GraphvizNotFoundError as err:
                sec.note(f"Skipped: Graphviz is not installed.\n\n{err}", kind="warning")
                print_fn("  skipped: Graphviz's `dot` program is not installed")
                tour.row(name, "skipped", "Graphviz's dot is not installed")
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            if len(tour.rows) > first_row:
                tour.rows[first_row]["time"] = f"{seconds:.1f} s"
            sec.text(f"Section time: {seconds:.1f} s wall, {cpu:.1f} s CPU.")
            print_fn(f"  ({seconds:.1f} s)")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        tour.page.summary(tour.rows, ["section", "metric", "value", "time"])
        if tour.failed_checks:
            tour.page.note("Gradient checks FAILED: " + "; ".join(tour.failed_checks), "error")
        tour.page.footer(
            f"funcgrad {fg.__version__}, jax {jax.__version__}, Python {platform.python_version()}"
            f" on {platform.machine()}; devices: {devices}; {os.cpu_count()} CPU cores, load "
            f"average {load:.1f} at the start."
        )
        tour.page.footer(f"Total: {wall:.1f} s wall, {cpu:.1f} s CPU (this process); "
                         f"{'quick' if quick else 'full'} tour, seed {seed}.")
        index = tour.page.write(
            out_dir,
            extra={"wall_time": wall, "cpu_time": cpu, "quick": quick, "seed": seed,
                   "sections": chosen, "failed_checks": tour.failed_checks,
                   "load_average": load, "devices": devices},
        )
    print_fn("")
    print_fn(_format_table(tour.rows, ["section", "metric", "value", "time"]))
    print_fn("")
    print_fn(f"total {wall:.1f} s wall ({cpu:.1f} s CPU), load average {load:.1f} at the start")
    print_fn(f"wrote {index}")
    return {
        "index": index,
        "summary": tour.rows,
        "failed_checks": tour.failed_checks,
        "wall_time": wall,
        "cpu_time": cpu,
    }


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - python -m funcgrad.tour
    from funcgrad import cli

    return cli.main(["tour", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


"""``funcgrad train``: fit one of funcgrad's models to a data set from the command line.

::

    funcgrad train --model mlp --dataset fashion-mnist --epochs 5 --batch-size 128 --engine funcgrad
    funcgrad train --model mlp --dataset moons --epochs 20 --save run.fgz
    funcgrad train --model mlp --dataset moons --epochs 40 --resume run.fgz   # 20 more epochs

prints one line per epoch (training loss and accuracy, test loss and accuracy, seconds) and the
final test accuracy (test mse for the regression set ``linear``).

Models: ``linear`` (logistic or linear regression), ``xor`` (a 2-8-1 tanh MLP, the smallest net
that solves XOR), ``mlp`` (relu; 784-64-10 on images, 2-16-16-1 on 2-D sets), ``cnn`` (the
default 2-conv CNN, images only) and ``transformer`` (a 2-layer classifier reading tokens: each
2-D point as two binned coordinates, each image as 7x7 pooled patches binned into 8 levels).
Data sets: ``moons``, ``xor``, ``linear`` (synthetic, 2000 points, 25% held out for testing),
``mnist`` and ``fashion-mnist`` (their own train/test splits; downloaded and cached on first use
unless already on this machine).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

MODELS = ("linear", "xor", "mlp", "cnn", "transformer")
DATASETS = ("moons", "xor", "linear", "mnist", "fashion-mnist")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
IMAGE_SETS = ("mnist", "fashion-mnist")
SYNTHETIC_SIZE = 2000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``funcgrad train``."""
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--epochs", type=int, default=5, help="total epochs (default 5)")
    parser.add_argument("--batch-size", type=int, default=128, help="default 128")
    parser.add_argument(
        "--engine",
        choices=("jax", "funcgrad"),
        default="jax",
        help="gradients from jax.grad or from funcgrad's hand-written VJP rules (default jax)",
    )
    parser.add_argument(
        "--conv-impl",
        choices=("im2col_vjp", "im2col", "xla"),
        default="im2col_vjp",
        help="--model cnn: how its convolutions are computed (see funcgrad.models.layers.conv2d): "
        "im2col_vjp, a hand-written backward pass, fastest on CPU (default); im2col, every "
        "gradient step derived by the engine; xla, lax.conv_general_dilated",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="shard each batch over the first N devices (on CPU, start with "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N)",
    )
    parser.add_argument("--save", metavar="PATH", help="save a checkpoint after every epoch")
    parser.add_argument(
        "--resume", metavar="PATH", help="continue from a checkpoint saved with --save"
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="default adam")
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default 1e-3 on images, else 1e-2)"
    )
    parser.add_argument(
        "--lr-decay",
        action="store_true",
        help="decay the learning rate linearly to 1%% of --lr over the run",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds init, shuffling and data")
    parser.add_argument(
        "--train-size", type=int, default=None, help="use only the first N training examples"
    )
    parser.add_argument("--data-dir", default=None, help="where MNIST-family files are cached")


class UsageError(ValueError):
    """An option combination that cannot work (e.g. a CNN on 2-D points)."""


# ---------------------------------------------------------------------------------------------
# Data


def load_data(name: str, key: Any, *, data_dir: str | None = None) -> dict[str, Any]:
    """``{"train": (x, y), "test": (x, y), "task": "binary"|"multiclass"|"regression",
    "classes": k, "standardize": (mean, std) | None}``: images as float32 (N, 28, 28) in
    [0, 1], 2-D sets as (N, 2)."""
    import jax
    import numpy as np

    from funcgrad import data

    if name in IMAGE_SETS:
        splits = {}
        for split in ("train", "test"):
            images, labels = data.load_mnist(name, split, data_dir=data_dir)
            splits[split] = (data.normalize(images), labels.astype(np.int32))
        standardize = data.NORMALIZATION[name]
        return {**splits, "task": "multiclass", "classes": 10, "standardize": standardize}
    data_key, split_key = jax.random.split(key)
    if name == "linear":
        x, y = data.linear_regression(data_key, SYNTHETIC_SIZE, dim=2, noise=0.1)
        train, test = data.train_val_split(split_key, x, y, 0.25, stratify=False)
        return {
            "train": train,
            "test": test,
            "task": "regression",
            "classes": 1,
            "standardize": None,
        }
    make = {"moons": data.two_moons, "xor": data.xor}[name]
    x, y = make(data_key, SYNTHETIC_SIZE)
    train, test = data.train_val_split(split_key, x, y, 0.25)
    return {"train": train, "test": test, "task": "binary", "classes": 2, "standardize": None}


def tokenize(x: Any, kind: str) -> Any:
    """Integer tokens for the transformer: 2-D points -> 2 binned coordinates (vocab 32);
    (N, 28, 28) images -> 49 tokens, the 4x4-pooled patches binned into 8 levels."""
    import numpy as np

    x = np.asarray(x)
    if kind == "points":
        bins = np.clip(((x + 2.0) / 5.0 * 16).astype(np.int32), 0, 15)
        return bins + np.array([0, 16], np.int32)
    pooled = x.reshape(len(x), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(x), 49)
    return np.clip((pooled * 8).astype(np.int32), 0, 7)


# ---------------------------------------------------------------------------------------------
# Models


def build_model(
    model: str, dataset: dict[str, Any], key: Any, images: bool, conv_impl: str = "im2col_vjp"
) -> tuple:
    """``(params, apply_fn, transform)``: ``transform`` maps the data's x to the model's input;
    ``conv_impl`` is the CNN's ``cnn.apply(..., conv_impl=)``."""
    import numpy as np

    from funcgrad.models import cnn, linear, mlp, transformer

    task = dataset["task"]
    outputs = dataset["classes"] if task == "multiclass" else 1
    n_in = 784 if images else 2
    # Images are standardised with the training set's pixel mean and std (as torchvision's
    # examples do): about 1.5 points of test accuracy over [0, 1] inputs for the MLP.
    mean, std = dataset["standardize"] or (0.0, 1.0)

    def scaled(x: Any) -> Any:
        return ((np.asarray(x) - np.float32(mean)) / np.float32(std)).astype(np.float32)

    def flat(x: Any) -> Any:
        return scaled(x).reshape(len(x), -1)

    if model == "cnn":
        if not images:
            raise UsageError("--model cnn needs images: use --dataset mnist or fashion-mnist.")
        params = cnn.init(key, dense_sizes=(128, outputs))
        # Default: the CNN's fastest formulation on CPU (hand-written backward passes; the same
        # function and gradients as the derived one, see models.layers.conv2d).
        apply = functools.partial(cnn.apply, conv_impl=conv_impl)
        return params, apply, lambda x: scaled(x)[..., None]
    if model == "transformer":
        if task == "regression":
            raise UsageError(
                "--model transformer is a classifier: use --dataset moons, xor, mnist or "
                "fashion-mnist."
            )
        vocab, seq = (8, 49) if images else (32, 2)
        params = transformer.init(
            key, vocab, num_classes=outputs, d_model=32, num_layers=2, max_len=seq
        )
        kind = "images" if images else "points"
        return params, transformer.apply, lambda x: tokenize(x, kind)
    if model == "linear":
        return linear.init(key, n_in, outputs), linear.apply, flat
    if model == "xor":
        params = mlp.init(key, [n_in, 8, outputs])
        return params, _tanh_mlp, flat
    sizes = [n_in, 64, outputs] if images else [n_in, 16, 16, outputs]
    return mlp.init(key, sizes), mlp.apply, flat


def _tanh_mlp(params: Any, x: Any) -> Any:
    from funcgrad.models import mlp

    return mlp.apply(params, x, activation="tanh")


def build_optimizer(name: str, lr: float, decay: bool, total_steps: int) -> Any:
    import optax

    rate = optax.linear_schedule(lr, lr / 100, max(total_steps, 1)) if decay else lr
    if name == "sgd":
        return optax.sgd(rate)
    if name == "momentum":
        return optax.sgd(rate, momentum=0.9)
    if name == "adamw":
        return optax.adamw(rate, weight_decay=1e-4)
    return optax.adam(rate)


def build_mesh(devices: int | None) -> Any:
    """A 1-D ("data",) mesh over the first ``devices`` devices, or None for one device."""
    if devices is None:
        return None
    import jax
    import numpy as np

    available = jax.devices()
    if devices < 1:
        raise UsageError(f"--devices must be >= 1, got {devices}.")
    if devices > len(available):
        platform = available[0].platform
        hint = (
            f" On CPU, make N devices with XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{devices} in the environment (before the command starts)."
            if platform == "cpu"
            else ""
        )
        raise UsageError(
            f"--devices {devices} asks for more devices than JAX sees: {len(available)} "
            f"{platform} device(s).{hint}"
        )
    return jax.sharding.Mesh(np.array(available[:devices]), ("data",))


# ---------------------------------------------------------------------------------------------
# Running


def run(args: argparse.Namespace) -> int:
    """Train as the options say; print per-epoch lines and the final test metric."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the known kinds below are shown as one line, not a traceback
        from funcgrad.checkpoint import CheckpointError
        from funcgrad.data import DatasetError
        from funcgrad.interpret import UnsupportedPrimitiveError
        from funcgrad.train import TrainingDivergedError

        known = (
            UsageError,
            CheckpointError,
            DatasetError,
            TrainingDivergedError,
            UnsupportedPrimitiveError,
            FileNotFoundError,
            ValueError,
            TypeError,
        )
        if not isinstance(e, known):
            raise
        print(f"funcgrad train: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import jax
    import optax  # noqa: F401 - fail early if missing

    from funcgrad import train

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < (0 if name == "epochs" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be positive.")
    mesh = build_mesh(args.devices)
    images = args.dataset in IMAGE_SETS
    if args.model == "cnn" and not images:
        raise UsageError("--model cnn needs images: use --dataset mnist or fashion-mnist.")
    key = jax.random.key(args.seed)
    data_key, init_key, train_key = jax.random.split(key, 3)
    dataset = load_data(args.dataset, data_key, data_dir=args.data_dir)
    params, apply_fn, transform = build_model(args.model, dataset, init_key, images, args.conv_impl)
    x_train, y_train = dataset["train"]
    x_test, y_test = dataset["test"]
    if args.train_size is not None:
        x_train, y_train = x_train[: args.train_size], y_train[: args.train_size]
    train_data = (transform(x_train), y_train)
    test_data = (transform(x_test), y_test)

    regression = dataset["task"] == "regression"
    loss_fn = (train.regression_loss if regression else train.classifier_loss)(apply_fn)
    lr = args.lr if args.lr is not None else (1e-3 if images else 1e-2)
    steps = args.epochs * (len(train_data[0]) // args.batch_size)
    optimizer = build_optimizer(args.optimizer, lr, args.lr_decay, steps)

    where = f" on {args.devices} devices" if mesh is not None else ""
    print(
        f"training {args.model} on {args.dataset} ({len(train_data[0])} examples, "
        f"{len(test_data[0])} test) with {args.optimizer} lr={lr:g}, batch {args.batch_size}, "
        f"{args.engine} gradients{where}",
        flush=True,
    )
    params, history = train.fit(
        loss_fn,
        params,
        train_data,
        optimizer=optimizer,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=train_key,
        grad_engine=args.engine,
        has_aux=not regression,
        eval_data=test_data,
        callbacks=[train.print_epochs()],
        mesh=mesh,
        checkpoint_path=args.save,
        resume_from=args.resume,
    )
    if not history.get("eval_loss"):
        print("nothing to train: --epochs 0")
        return 0
    if regression:
        print(f"test mse {history['eval_loss'][-1]:.4f}")
    else:
        print(f"test accuracy {history['eval_accuracy'][-1]:.4f}")
    return 0

"""``funcgrad check``: gradients of the seed models, funcgrad vs JAX vs hand-derived vs fd.

For each model a small, fixed problem (deterministic from ``--seed``) is differentiated by
``fg.grad``, ``jax.grad``, the hand-derived gradient of :mod:`funcgrad.manual` where one exists
and central finite differences, and the :class:`~funcgrad.compare.GradReport` is printed. The
exit status is 0 when every comparison is within tolerance and 1 otherwise (a mismatch, or an
error such as an unsupported primitive, which is printed as one line).

The gradients run in float32, or in float64 with ``--x64``. The finite differences always run
in float64 (the float32 arguments cast exactly): in float32 they only catch gross errors, and a
ReLU or max-pool kink lies within almost every float32 step of the CNN.

    funcgrad check --model mlp          # the 784-100-100-10 MLP, every intermediate too
    funcgrad check --model all --x64    # everything, in float64
    funcgrad check --model cnn --wide   # one line per leaf, a column per pair
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODELS = ("linear", "xor", "mlp", "cnn", "transformer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``funcgrad check``."""
    parser.add_argument(
        "--model", choices=(*MODELS, "all"), default="all", help="which model to check (all)"
    )
    parser.add_argument(
        "--x64", action="store_true", help="run the gradients in float64 (default float32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for params, data, fd probes")
    parser.add_argument(
        "--fd-elements",
        type=int,
        default=32,
        help="elements probed by finite differences per leaf (larger leaves: a random sample "
        "plus one random direction); default 32",
    )
    parser.add_argument(
        "--wide", action="store_true", help="one line per leaf with a column per pair"
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")


@dataclass
class Case:
    """One model's gradient check: the loss, its arguments and the references to compare."""

    title: str
    loss: Callable[..., Any]
    args: tuple[Any, ...]
    reference: dict[str, Any] = field(default_factory=dict)
    intermediates: dict[str, Any] | None = None


def _linear(key, dtype) -> Case:
    from funcgrad import manual

    p_key, d_key = _split(key)
    params = manual.linear.init(p_key, dtype=dtype)
    x, y = manual.linear.data(d_key, 32, dtype=dtype)
    return Case(
        "linear: one neuron y = x @ W + b, 2 inputs, MSE, batch 32",
        manual.linear.loss,
        (params, x, y),
        {"manual": manual.linear.grad},
    )


def _xor(key, dtype) -> Case:
    from funcgrad import manual

    params = manual.xor.init(key, hidden=4, dtype=dtype)
    x, t = manual.xor.data(dtype)
    return Case(
        "xor: 2-4-1 sigmoid network, ½·MSE, the 4 XOR patterns; δ-terms as tags",
        manual.xor.loss,
        (params, x, t),
        {"manual": manual.xor.grad},
        manual.xor.deltas(params, x, t),
    )


def _mlp(key, dtype) -> Case:
    from funcgrad import manual

    p_key, d_key = _split(key)
    params = manual.mlp.init(p_key, dtype=dtype)
    x, y = manual.mlp.data(d_key, 32, dtype=dtype)
    return Case(
        "mlp: 784-100-100-10 tanh, softmax + average NLL, batch 32; every step as a tag",
        manual.mlp.loss,
        (params, x, y),
        {"manual": manual.mlp.grad, "fused": manual.mlp.grad_fused},
        manual.mlp.intermediates(params, x, y),
    )


def _cnn(key, dtype) -> Case:
    import jax

    from funcgrad import manual
    from funcgrad.models import cnn

    p_key, x_key, y_key = _split(key, 3)
    params = cnn.init(p_key, (8, 8, 1), conv_channels=(4, 8), dense_sizes=(16, 10), dtype=dtype)
    x = jax.random.normal(x_key, (4, 8, 8, 1), dtype)
    y = jax.random.randint(y_key, (4,), 0, 10)
    return Case(
        "cnn: conv3x3x4-relu-maxpool2-conv3x3x8-relu-maxpool2-dense16-relu-dense10, "
        "8x8 images, softmax cross-entropy, batch 4",
        manual.cnn.loss,
        (params, x, y),
        {"manual": manual.cnn.grad},
    )


def _transformer(key, dtype) -> Case:
    import jax

    from funcgrad import losses
    from funcgrad.models import transformer

    p_key, x_key, y_key = _split(key, 3)
    params = transformer.init(
        p_key, 11, num_classes=3, d_model=8, num_layers=1, max_len=6, dtype=dtype
    )
    ids = jax.random.randint(x_key, (2, 6), 0, 11)
    labels = jax.random.randint(y_key, (2,), 0, 3)

    def loss(params, ids, labels):
        logits = transformer.apply(params, ids, num_heads=2)
        return losses.softmax_cross_entropy(logits, labels)

    return Case(
        "transformer: 1 pre-LN block, d_model 8, 2 heads, vocab 11, 3 classes, 2 sequences "
        "of 6 tokens (no hand-derived gradient)",
        loss,
        (params, ids, labels),
    )


CASES: dict[str, Callable[..., Case]] = {
    "linear": _linear,
    "xor": _xor,
    "mlp": _mlp,
    "cnn": _cnn,
    "transformer": _transformer,
}


def _split(key, n: int = 2):
    import jax

    return jax.random.split(key, n)


def check(name: str, *, seed: int = 0, fd_elements: int = 32, x64: bool = False):
    """The :class:`~funcgrad.compare.GradReport` of model ``name`` (float64 if ``x64``)."""
    import jax
    import jax.numpy as jnp

    from funcgrad.compare import compare_grads

    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        key = jax.random.fold_in(jax.random.key(seed), MODELS.index(name))
        case = CASES[name](key, dtype)
        return compare_grads(
            case.loss,
            *case.args,
            reference={**case.reference, "fd": "fd"},
            intermediates=case.intermediates,
            fd_elements=fd_elements,
            # Finite differences always in float64: in float32 they only catch gross errors,
            # and a ReLU or max-pool kink lies within almost every float32 step.
            fd_dtype="float64",
            seed=seed,
            jit=True,
            title=f"{case.title} [{jnp.dtype(dtype).name}]",
        )


def run(args: argparse.Namespace) -> int:
    """Check the chosen models; print each report; 0 if all are within tolerance, else 1."""
    names = MODELS if args.model == "all" else (args.model,)
    if args.fd_elements < 1:
        print(f"funcgrad check: --fd-elements must be at least 1, got {args.fd_elements}",
              file=sys.stderr)
        return 2
    verdicts, reports = {}, []
    for name in names:
        start = time.perf_counter()
        try:
            report = check(name, seed=args.seed, fd_elements=args.fd_elements, x64=args.x64)
        except Exception as e:  # reported as the model's verdict, then the next model runs
            verdicts[name] = f"ERROR {type(e).__name__}: {str(e).splitlines()[0]}"
            print(f"{name}: {verdicts[name]}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        verdicts[name] = ("OK" if report.ok else "FAILED") + f" ({seconds:.1f}s)"
        if args.json:
            reports.append({"model": name, **json.loads(report.to_json())})
        else:
            print(report.to_string("wide" if args.wide else "long"), end="\n\n")
    if args.json:
        print(json.dumps(reports, indent=1))
    summary = ", ".join(f"{name} {verdict}" for name, verdict in verdicts.items())
    ok = all(v.startswith("OK") for v in verdicts.values())
    # With --json, stdout is one JSON document: the summary goes to stderr.
    print(f"funcgrad check: {'OK' if ok else 'FAILED'}: {summary}",
          file=sys.stderr if args.json else sys.stdout)
    return 0 if ok else 1

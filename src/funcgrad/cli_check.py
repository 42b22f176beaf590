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
from typing import Any

import jax
import jax.numpy as jnp

from funcgrad.compare import compare_grads
from funcgrad.manual import cases
from funcgrad.manual.cases import Case

__all__ = ["CASES", "MODELS", "Case", "add_arguments", "check", "run"]

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


# Each command picks its problem sizes; the params, data, loss and hand-derived gradients are
# those of funcgrad.manual.cases, shared with the tour.
def _linear(key: jax.Array, dtype: Any) -> Case:
    return cases.linear(*jax.random.split(key), batch=32, dtype=dtype)


def _xor(key: jax.Array, dtype: Any) -> Case:
    return cases.xor(key, hidden=4, dtype=dtype)


def _mlp(key: jax.Array, dtype: Any) -> Case:
    return cases.mlp(*jax.random.split(key), batch=32, dtype=dtype)


def _cnn(key: jax.Array, dtype: Any) -> Case:
    return cases.cnn(
        *jax.random.split(key, 3), conv_channels=(4, 8), dense_sizes=(16, 10), batch=4,
        dtype=dtype,
    )


def _transformer(key: jax.Array, dtype: Any) -> Case:
    return cases.transformer(
        *jax.random.split(key, 3), vocab=11, d_model=8, seq_len=6, batch=2, dtype=dtype
    )


CASES: dict[str, Callable[[jax.Array, Any], Case]] = {
    "linear": _linear,
    "xor": _xor,
    "mlp": _mlp,
    "cnn": _cnn,
    "transformer": _transformer,
}


def check(name: str, *, seed: int = 0, fd_elements: int = 32, x64: bool = False):
    """The :class:`~funcgrad.compare.GradReport` of model ``name`` (float64 if ``x64``)."""
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

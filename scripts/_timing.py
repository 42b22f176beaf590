"""How every benchmark script in this folder measures: one shared module, so that all tables mean
the same thing.

- **Warm-up excluded.** Each timed function is called ``warmup`` times first (compilation, first
  page faults, library autotuning), and those calls are not counted.
- **Interleaved rounds.** The variants of one table take turns: round 1 calls each once, then
  round 2, ... A slow spell of a shared machine then falls on every variant alike, instead of on
  whichever happened to be timed during it.
- **Medians.** A variant's time is the median of its rounds (the minimum is kept too).
- **The machine is stated.** Every table says which device it ran on (JAX's default backend and
  PyTorch's device), the library versions, and the 1-minute load average at its start and end;
  :func:`busy_warning` flags a table measured while other jobs held the cores.
- **Peak.** :func:`matmul_peak` measures the device's float32 matmul rate the same way (the best
  of JAX with each XLA option set and of PyTorch on the same device), so that "share of peak" is
  a share of something this device did, not of a datasheet number.

Everything here runs unchanged on CPU, GPU and TPU: JAX arrays are waited for with
``jax.block_until_ready``, PyTorch's CUDA queue with ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BUSY_LOAD = 2.5  # a 1-minute load average above this on a small machine: others hold the cores


# ---------------------------------------------------------------------------------------------
# The machine


def load_average() -> float:
    """The 1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jax_platform() -> str:
    """JAX's default backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return jax.default_backend()


def jax_device() -> str:
    """What JAX computes on, e.g. ``"cpu (AMD EPYC, 2 cores)"`` or ``"gpu (NVIDIA A100, 1)"``."""
    devices = jax.devices()
    if devices[0].platform == "cpu":
        return f"cpu ({cpu_name()}, {os.cpu_count()} cores)"
    return f"{devices[0].platform} ({devices[0].device_kind}, {len(devices)} devices)"


def torch_module() -> Any:
    """``torch``, or None when it is not installed (it is the ``bench`` extra, not a
    dependency). Its CPU thread count is set to the machine's core count, as JAX uses them all."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def torch_device() -> str | None:
    """The device PyTorch rows run on: ``"cuda"`` when PyTorch sees one; ``"cpu"`` when JAX
    runs on the CPU too; None otherwise (no torch, or JAX on an accelerator PyTorch cannot use:
    a PyTorch row on the host CPU would not be a comparison)."""
    torch = torch_module()
    if torch is None:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if jax_platform() == "cpu" else None


def torch_sync(device: str | None) -> None:
    """Wait for PyTorch's queued work on ``device`` (a no-op on the CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def versions() -> str:
    """The versions of the libraries a table depends on."""
    import optax

    out = f"jax {jax.__version__}, optax {optax.__version__}, numpy {np.__version__}"
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            out += f" ({torch.cuda.get_device_name()})"
    return out


def device_tag() -> str:
    """A short name for result files: ``cpu``, ``gpu`` or ``tpu``."""
    return jax_platform()


# ---------------------------------------------------------------------------------------------
# Timing


def block(x: Any) -> Any:
    """Wait until every JAX array in ``x`` is computed; return ``x``."""
    return jax.block_until_ready(x)


@dataclass
class Timing:
    """The rounds of one variant, in seconds (warm-up excluded)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def rate(self, work: float) -> float:
        """``work`` per second at the median time (examples/s, FLOP/s, ...)."""
        return work / self.median


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 1,
    wait: Callable[[Any], Any] = block,
    per_call: float = 1.0,
) -> dict[str, Timing]:
    """Time every function of ``fns`` in turn, ``rounds`` times, after ``warmup`` uncounted
    calls each; ``wait(result)`` must return when the call's work is done (default: wait for
    JAX arrays). Each recorded time is divided by ``per_call`` (e.g. steps per call)."""
    for fn in fns.values():
        for _ in range(warmup):
            wait(fn())
    timings = {name: Timing() for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            wait(fn())
            timings[name].times.append((time.perf_counter() - start) / per_call)
    return timings


def first_call_seconds(make: Callable[[], Callable[[], Any]], *, clear: bool = True) -> float:
    """Seconds from building a fresh function (``make()``) to its first result: tracing,
    compilation and the call. JAX's caches are cleared first, so nothing is reused."""
    if clear:
        jax.clear_caches()
    start = time.perf_counter()
    block(make()())
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# The peak


@dataclass
class Peak:
    """The best float32 matmul rate measured on the device, and what reached it."""

    gflops: float
    source: str
    rates: dict[str, float]

    def share(self, gflops: float) -> str:
        return f"{gflops / self.gflops:.0%}"


def matmul_peak(sizes: Sequence[int] | None = None, rounds: int = 9) -> Peak:
    """The device's float32 matmul peak in GFLOP/s: the best median rate of square matmuls of
    ``sizes`` (default 1024 and 2048 on CPU, 4096 and 8192 on accelerators) jitted with XLA's
    default options and (on CPU) fit's, and of ``torch.mm`` on PyTorch's device when that is
    the same kind of device."""
    from funcgrad import train

    if sizes is None:
        sizes = (1024, 2048) if jax_platform() == "cpu" else (4096, 8192)
    option_sets = {"XLA options": {}}
    if train.default_compiler_options():
        option_sets["fit's options"] = train.default_compiler_options()
    rates: dict[str, float] = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        fns = {
            name: functools.partial(jax.jit(jnp.matmul, compiler_options=opts or None), a, b)
            for name, opts in option_sets.items()
        }
        for name, t in interleaved(fns, rounds=rounds).items():
            rates[f"JAX {n}, {name}"] = 2 * n**3 / t.median / 1e9
        rates.update(_torch_matmul_rates(n, rounds))
    best = max(rates, key=rates.__getitem__)
    return Peak(rates[best], best, rates)


def _torch_matmul_rates(n: int, rounds: int) -> dict[str, float]:
    device = torch_device()
    if device is None:
        return {}
    torch = torch_module()
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    timing = interleaved(
        {"torch": lambda: torch.mm(a, b)}, rounds=rounds, wait=lambda _: torch_sync(device)
    )["torch"]
    return {f"PyTorch {n} ({device})": 2 * n**3 / timing.median / 1e9}


# ---------------------------------------------------------------------------------------------
# FLOPs


def step_flops(apply: Callable[..., Any], params: Any, x: Any) -> int:
    """The exact matmul and convolution FLOPs of one training step of ``apply(params, x)``
    (forward and backward; elementwise work not counted).

    Read from the forward jaxpr: each ``dot_general`` or ``conv_general_dilated`` of f FLOPs
    (2 per multiply-add) costs f forward plus f for each operand that depends on ``params``
    (its cotangent is one more contraction of the same size); an operand computed from the data
    alone (the first layer's input, im2col patches of the images) needs none. Calls, custom-VJP
    and custom-JVP bodies are walked into."""
    jaxpr = jax.make_jaxpr(apply)(params, x).jaxpr
    n_params = len(jax.tree.leaves(params))
    depends = [True] * n_params + [False] * (len(jaxpr.invars) - n_params)
    return _jaxpr_flops(jaxpr, depends)[0]


def _operand_depends(var: Any, dep: dict) -> bool:
    return not hasattr(var, "val") and dep.get(var, False)


def _jaxpr_flops(jaxpr: Any, depends: Sequence[bool]) -> tuple[int, list[bool]]:
    dep = dict(zip(jaxpr.invars, depends))
    total = 0
    for eqn in jaxpr.eqns:
        ins = [_operand_depends(v, dep) for v in eqn.invars]
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            out = math.prod(eqn.outvars[0].aval.shape)
            if name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                shape = eqn.invars[0].aval.shape
                per_output = math.prod(shape[d] for d in contract)
            else:
                rhs = eqn.invars[1].aval.shape
                out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
                per_output = math.prod(rhs) // rhs[out_feature]
            total += 2 * out * per_output * (1 + sum(ins[:2]))
            outs = [any(ins)] * len(eqn.outvars)
        else:
            sub = next(
                (
                    getattr(v, "jaxpr", v)
                    for k, v in eqn.params.items()
                    if k in ("jaxpr", "call_jaxpr", "fun_jaxpr")
                ),
                None,
            )
            if sub is not None and len(sub.invars) == len(ins):
                flops, outs = _jaxpr_flops(sub, ins)
                total += flops
            else:
                outs = [any(ins)] * len(eqn.outvars)
        dep.update(zip(eqn.outvars, outs))
    return total, [_operand_depends(v, dep) for v in jaxpr.outvars]


# ---------------------------------------------------------------------------------------------
# Reports


class Report:
    """A markdown report: a header naming the script, command, device, versions and load, then
    tables and notes; :meth:`finish` adds the load at the end, prints it and writes it."""

    def __init__(self, title: str, args: argparse.Namespace | None = None) -> None:
        self.started = load_average()
        self.out = getattr(args, "out", None)
        command = "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.lines = [
            f"## {title}",
            "",
            f"- command: `{command}`",
            f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
            f"- JAX device: {jax_device()}; PyTorch device: {torch_device() or 'none'}",
            f"- {versions()}",
        ]

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(
        self,
        header: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
        align: str | None = None,
    ) -> None:
        """A markdown table with the load average now, so each table carries its own."""
        if title:
            self.add("", f"### {title}")
        self.add("", f"load average (1 min) at this table: {load_average():.1f}", "")
        self.add(markdown_table(header, rows, align))

    def finish(self, default_name: str) -> str:
        ended = load_average()
        self.add(
            "",
            f"- load average (1 min): {self.started:.1f} at start, {ended:.1f} at end",
        )
        warning = busy_warning(max(self.started, ended))
        if warning:
            self.add(f"- {warning}")
        text = "\n".join(self.lines) + "\n"
        print(text, flush=True)
        out = Path(self.out) if self.out else RESULTS / f"{default_name}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"written to {out}")
        return text


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None
) -> str:
    """``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    body = ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(["| " + " | ".join(header) + " |", rule, *body])


def busy_warning(load: float) -> str:
    """A warning when ``load`` says other jobs held the cores of a small machine ('' if not)."""
    cores = os.cpu_count() or 1
    if jax_platform() == "cpu" and load > max(BUSY_LOAD, 1.25 * cores):
        return (
            f"WARNING: load average {load:.1f} on {cores} cores: other jobs were running; "
            "these times are slower and noisier than the machine can do."
        )
    return ""


def log(*args: Any) -> None:
    """Progress messages go to stderr, so that stdout is the report alone."""
    print(*args, file=sys.stderr, flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--quick`` (smaller sizes,
    fewer rounds: the whole set in minutes) and ``--out`` (where the markdown goes)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds")
    p.add_argument("--out", default=None, help="markdown output (default scripts/results/)")
    return p


def fmt(value: float | None, spec: str) -> str:
    """``format(value, spec)``, or an em dash for a missing value."""
    return "—" if value is None else format(value, spec)

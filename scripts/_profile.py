"""Where a compiled program's time goes: XLA's per-operation trace, grouped by what each
operation does.

:func:`op_profile` runs a compiled function under ``jax.profiler`` and sums the duration of each
HLO operation (fusion, dot, convolution, copy, ...) per call; :func:`categorize` names what an
operation does from its HLO text (a convolution, a matmul, im2col data movement, a reduction or
elementwise work). On CPU, matmuls that XLA hands to Eigen run asynchronously and their trace
events end before the work does: profile with XLA's default options (``compiler_options={}``,
matmuls on YNNPACK, whose events cover the work) for a faithful split; the table says how much of
the wall time the operations' events cover.
"""

from __future__ import annotations

import collections
import glob
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

_INSTRUCTION = re.compile(r"^(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_MOVEMENT = {"concatenate", "slice", "pad", "copy", "dynamic-slice", "dynamic-update-slice",
             "transpose", "reshape", "gather"}  # fmt: skip
_IGNORED = {"parameter", "constant", "bitcast", "broadcast", "tuple", "get-tuple-element"}


@dataclass
class OpTime:
    """One HLO operation: its name, total event time per call (s), and what it does."""

    name: str
    seconds: float
    category: str
    description: str


def _index(hlo: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, str, str]]]:
    """(computation name -> its instruction lines, instruction name -> (shape, opcode, line))."""
    computations: dict[str, list[str]] = {}
    instructions: dict[str, tuple[str, str, str]] = {}
    current = None
    for line in hlo.splitlines():
        if not line.startswith(" "):
            match = _HEADER.match(line.strip())
            current = match.group(1) if match else None
            if current:
                computations[current] = []
            continue
        if current is None:
            continue
        text = line.strip()
        computations[current].append(text)
        match = _INSTRUCTION.match(text)
        if match:
            instructions[match.group(1)] = (match.group(2), match.group(3), text)
    return computations, instructions


def _opcodes(lines: list[str]) -> collections.Counter:
    ops: collections.Counter = collections.Counter()
    for text in lines:
        match = _INSTRUCTION.match(text)
        if match and match.group(3) not in _IGNORED:
            ops[match.group(3)] += 1
    return ops


def categorize(name: str, computations: dict, instructions: dict) -> tuple[str, str]:
    """(category, short description) of the HLO instruction ``name``."""
    if name not in instructions:
        return "runtime (loops, waits)", name
    shape, opcode, line = instructions[name]
    ops = collections.Counter({opcode: 1})
    if opcode == "fusion":
        called = re.search(r"calls=%?([\w.\-]+)", line)
        ops = _opcodes(computations.get(called.group(1), [])) if called else ops
    description = f"{shape.split('{')[0]} {opcode}[{','.join(ops)}]"
    if "convolution" in ops:
        return "convolution", description
    if "dot" in ops:
        return "matmul", description
    if set(ops) <= _MOVEMENT:
        return "data movement (im2col, pads, copies)", description
    if "reduce" in ops or "reduce-window" in ops or "select-and-scatter" in ops:
        return "reductions (bias gradients, pooling, loss)", description
    return "elementwise (activations, pooling, optimizer)", description


def op_profile(fn: Callable[..., Any], args: tuple, calls: int = 3) -> tuple[list[OpTime], float]:
    """Profile ``calls`` calls of the jitted ``fn(*args)`` (compiled first, warm-up excluded):
    (operations sorted by time per call, wall seconds per call)."""
    compiled = fn.lower(*args).compile()
    computations, instructions = _index(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    folder = tempfile.mkdtemp()
    try:
        jax.profiler.start_trace(folder)
        start = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(compiled(*args))
        wall = (time.perf_counter() - start) / calls
        jax.profiler.stop_trace()
        path = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(path)
        totals: collections.Counter = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if line.name == "python":
                    continue
                for event in line.events:
                    if not event.name.startswith(("ThunkExecutor", "$")):
                        totals[event.name] += event.duration_ns
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ops = []
    for name, ns in totals.most_common():
        category, description = categorize(name, computations, instructions)
        ops.append(OpTime(name, ns / 1e9 / calls, category, description))
    return ops, wall


def by_category(ops: list[OpTime]) -> dict[str, float]:
    """Seconds per call summed by category, largest first."""
    sums: collections.Counter = collections.Counter()
    for op in ops:
        sums[op.category] += op.seconds
    return dict(sums.most_common())

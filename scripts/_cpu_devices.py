"""Imported before JAX: one XLA CPU device per core, for the benchmarks' data-parallel rows.

``fit(mesh=...)`` over several CPU devices runs one program per device, each on its own thread:
for a model of many small operations (each too small to split across cores) that keeps every
core busy. Single-device rows are unaffected (they run on device 0 with the same thread pool).
Does nothing when ``XLA_FLAGS`` already sets a device count, or on a machine with one core.
"""

import os

_FLAG = "--xla_force_host_platform_device_count"
_flags = os.environ.get("XLA_FLAGS", "")
if _FLAG not in _flags and (os.cpu_count() or 1) > 1:
    os.environ["XLA_FLAGS"] = f"{_flags} {_FLAG}={os.cpu_count()}".strip()

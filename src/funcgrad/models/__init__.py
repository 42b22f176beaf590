"""Models as pure functions over parameter pytrees.

Each model is a module with ``init(key, ...) -> params`` and ``apply(params, x, ...) -> y``;
params are plain nested dicts/lists of arrays named as a person would say them
(``layers[0].W``, ``convs[1].b``, ``blocks[0].attn.wq``), so they work with ``jax.grad``, optax and
checkpoints, and read well in reports and graphs.

- :mod:`~funcgrad.models.linear`: linear regression, y = x @ W + b
- :mod:`~funcgrad.models.mlp`: dense layers with named activations and optional dropout
- :mod:`~funcgrad.models.cnn`: conv / pool blocks and a dense head (NHWC), MNIST-style by default
- :mod:`~funcgrad.models.transformer`: a tiny pre-LN transformer classifier or language model
- :mod:`~funcgrad.models.layers`: the building blocks; :mod:`~funcgrad.models.initializers`:
  Glorot, He, LeCun, zeros; :mod:`~funcgrad.models.activations`: activations by name
- :func:`summary`: a per-layer table of shapes and parameter counts
"""

from funcgrad.models import activations, cnn, initializers, layers, linear, mlp, transformer
from funcgrad.models.summary import summary, summary_rows

init_schemes = initializers

__all__ = [
    "activations",
    "cnn",
    "init_schemes",
    "initializers",
    "layers",
    "linear",
    "mlp",
    "summary",
    "summary_rows",
    "transformer",
]

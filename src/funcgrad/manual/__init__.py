"""Hand-derived gradients of the seed models, written out like a textbook.

Each module exports a ``loss`` and a gradient function with the signature and output structure
of ``jax.grad(loss, argnums)``, derived step by step with one line of math per step, so a learner
can hold every step against JAX and funcgrad with :func:`funcgrad.compare_grads`:

- :mod:`~funcgrad.manual.linear`: linear regression with mean squared error (one neuron, 2 inputs)
- :mod:`~funcgrad.manual.xor`: the 2-n-1 XOR network, sigmoid units, ½·MSE, with the δ-terms
- :mod:`~funcgrad.manual.mlp`: the 784-100-100-10 tanh MLP with softmax and average NLL, every
  intermediate (dlogprobs, dprobs, dcounts, ..., dW1) and the fused ``(softmax - onehot) / N``
- :mod:`~funcgrad.manual.conv`: a conv2d layer (input, weight and bias) and 2×2 max pooling
- :mod:`~funcgrad.manual.cnn`: the conv → activation → max-pool → dense CNN of
  :mod:`funcgrad.models.cnn`, assembled from the pieces above

Param layouts are those of :mod:`funcgrad.models` (``layers[0].W``, ``convs[0].b``), so a model's
``init`` builds them; the math in the docstrings names them as the textbooks do (W1, b1, ...).
"""

from funcgrad.manual import cnn, conv, linear, mlp, xor

__all__ = ["cnn", "conv", "linear", "mlp", "xor"]

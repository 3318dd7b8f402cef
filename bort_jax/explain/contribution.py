"""Contribution maps of bias-free piecewise-linear MLPs: ``logits = x · A(x)``.

A bias-free MLP with ReLU (or LeakyReLU) activations is linear on each
activation pattern:

.. math::
  \\text{logits} = x · A(x), \\quad
  A(x) = W_1\\, D_1(x)\\, W_2\\, D_2(x) ⋯ W_L

(Flax kernels ``W_i`` of shape ``(in, out)``; ``D_i`` the diagonal of
activation slopes at ``x``: 1 where the pre-activation is positive, 0 for
ReLU or the negative slope for LeakyReLU elsewhere). Column ``j`` of ``A(x)``
is class ``j``'s template in input space for this input; on a Bort-trained
network it is readable as an image. The identity is exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bort_jax.dbort import DBort
from bort_jax.explain import backtracking
from bort_jax.explain import inverses
from bort_jax.models import invertible


def _slopes(layer, pre_activation):
  if isinstance(layer, invertible.LeakyReLU):
    return jnp.where(pre_activation >= 0, 1.0, layer.negative_slope)
  return (pre_activation > 0).astype(pre_activation.dtype)


def contribution_map(model: Any, x: jax.Array) -> jax.Array:
  """``A(x)`` with ``logits = Σ_i x_i A(x)_{i, :}`` for a bias-free MLP.

  Args:
    model: a sequential model (``.layers`` or a list) of bias-free
      ``nnx.Linear`` layers (or :class:`~bort_jax.dbort.DBort` wrappers of
      them), :class:`~bort_jax.models.invertible.ReLU` or
      :class:`~bort_jax.models.invertible.LeakyReLU` activations and
      :class:`~bort_jax.models.invertible.Flatten`, e.g.
      ``InvertibleMLP(..., use_bias=False)``.
    x: a batch of inputs ``(N, *input_shape)``.

  Returns:
    ``(N, *input_shape, num_classes)``: ``[..., j]`` is class ``j``'s
    input-space template; ``(x[..., None] * A).sum(input axes)`` equals the
    logits.

  Raises:
    ValueError: for a layer with a bias or of another kind (the identity
      would not hold).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleMLP
    >>> mlp = InvertibleMLP((4,), (8,), 3, activation="relu", use_bias=False,
    ...                     rngs=nnx.Rngs(0))
    >>> x = jnp.array([[1.0, -2.0, 0.5, 3.0]])
    >>> a = contribution_map(mlp, x)
    >>> bool(jnp.allclose(jnp.einsum("ni,nij->nj", x, a), mlp(x), atol=1e-5))
    True
  """
  # A DBort wrapper computes the layer it wraps (its term is a loss only).
  layers = [layer.layer if isinstance(layer, DBort) else layer
            for layer in backtracking.model_layers(model)]
  for i, layer in enumerate(layers):
    name = f"layers[{i}] ({type(layer).__name__})"
    if isinstance(layer, nnx.Linear):
      if layer.bias is not None:
        raise ValueError(
            f"contribution_map needs bias-free Linear layers; {name} has a "
            "bias (build it with use_bias=False)."
        )
    elif not isinstance(
        layer, (invertible.ReLU, invertible.LeakyReLU, invertible.Flatten)):
      raise ValueError(
          f"contribution_map supports Linear, ReLU, LeakyReLU and Flatten "
          f"layers only; got {name}."
      )
  cache = backtracking.forward_cache(model, x)
  if cache[-1].ndim != 2:
    raise ValueError(
        f"contribution_map needs (N, classes) outputs, got {cache[-1].shape}.")
  classes = cache[-1].shape[-1]
  # Right to left, (N, width, classes) at every step: the cheap direction.
  templates = jnp.broadcast_to(jnp.eye(classes, dtype=cache[-1].dtype),
                               (x.shape[0], classes, classes))
  for i in range(len(layers) - 1, -1, -1):
    layer = layers[i]
    if isinstance(layer, nnx.Linear):
      templates = jnp.einsum("io,noc->nic", inverses.dense_kernel(layer),
                             templates)
    elif isinstance(layer, invertible.Flatten):
      templates = templates.reshape(cache[i].shape + (classes,))
    else:
      templates = _slopes(layer, cache[i])[..., None] * templates
  return templates

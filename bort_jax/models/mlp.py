"""A multilayer perceptron whose kernels Bort's default selection picks."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
  """A ReLU multilayer perceptron for flattened images.

  ``logits = W_L σ(… σ(W_1 x + b_1) …) + b_L`` with ``x`` the input flattened
  over every axis but the first. Every layer is an ``nnx.Linear`` whose
  ``kernel`` ``(in, out)`` is a Bort parameter under the default selection
  (:func:`bort_jax.flax_dimension_numbers`); biases are not.

  Args:
    in_features: the size of a flattened input (e.g. ``28 * 28``).
    hidden_features: the widths of the hidden layers.
    num_classes: the number of outputs (logits).
    activation: the nonlinearity between layers.
    use_bias: whether the layers have biases.
    rngs: the random streams for initialisation.

  Examples:
    >>> import jax, jax.numpy as jnp, bort_jax
    >>> from flax import nnx
    >>> from bort_jax.models.mlp import MLP
    >>> model = MLP(64, (32, 16), 10, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
    >>> params = nnx.state(model, nnx.Param)
    >>> sorted(jax.eval_shape(bort_jax.orthogonality_error, params))
    ['head/kernel', 'hidden/0/kernel', 'hidden/1/kernel']
  """

  def __init__(
      self,
      in_features: int,
      hidden_features: Sequence[int] = (256, 256),
      num_classes: int = 10,
      *,
      activation: Callable[[jax.Array], jax.Array] = nnx.relu,
      use_bias: bool = True,
      rngs: nnx.Rngs,
  ):
    widths = (in_features, *hidden_features)
    self.hidden = nnx.List([
        nnx.Linear(fan_in, fan_out, use_bias=use_bias, rngs=rngs)
        for fan_in, fan_out in zip(widths[:-1], widths[1:])
    ])
    self.head = nnx.Linear(widths[-1], num_classes, use_bias=use_bias,
                           rngs=rngs)
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # an empty batch too
    for layer in self.hidden:
      x = self.activation(layer(x))
    return self.head(x)

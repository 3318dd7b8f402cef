"""What a trained model shows: its first Bort kernel and its stage-1 inversion.

The stage-1 reconstruction backtracks the first hidden layer's output (after
its activation) to the input with :func:`bort_jax.explain.reconstruct`: each
Bort layer is undone by its scaled transpose, so the reconstruction is exact
only when the layer is orthogonal and its rows span the data. Its PSNR is
the figure the demo and the frontier report.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

import bort_jax


class Reconstruction(NamedTuple):
  """A stage-1 reconstruction of a batch of images.

  Attributes:
    layer: the index (in :func:`bort_jax.explain.model_layers`) of the
      representation that was backtracked.
    mse: the mean squared error, averaged over the images.
    psnr: the mean PSNR in dB (peak 1).
    images: the reconstructed images.
  """

  layer: int
  mse: float
  psnr: float
  images: jax.Array


def first_kernel(model: nnx.Module) -> tuple[str, jax.Array]:
  """The path and value of the model's first Bort kernel, in state order.

  For the sequential models of :mod:`bort_jax.models.invertible` (and the
  SimpleCNN) the state order is the layer order, so this is the input layer.

  Examples:
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleMLP
    >>> from bort_jax.experiments.probes import first_kernel
    >>> model = InvertibleMLP((4,), (8,), 3, rngs=nnx.Rngs(0))
    >>> path, kernel = first_kernel(model)
    >>> path, kernel.shape
    ('layers/0/kernel', (4, 8))
  """
  params = nnx.state(model, nnx.Param)
  selected = jax.eval_shape(bort_jax.orthogonality_error, params)  # no math
  for path, variable in nnx.to_flat_state(params):
    name = "/".join(str(p) for p in path)
    if name in selected:
      return name, variable[...]
  raise ValueError("the model has no Bort kernel")


def is_invertible(model: nnx.Module) -> bool:
  """Whether :mod:`bort_jax.explain` can backtrack the model's layers."""
  from bort_jax import explain
  try:
    explain.model_layers(model)
  except (TypeError, ValueError):
    return False
  return True


def first_stage_reconstruction(model: nnx.Module, images: Any
                               ) -> Reconstruction:
  """Backtracks the first hidden layer's output (after its activation).

  Args:
    model: a model :mod:`bort_jax.explain` can backtrack (e.g. the
      ``invertible-mlp``, ``cnn`` or ``simple-cnn`` of the application).
    images: ``(N, H, W, C)`` images in [0, 1].

  Returns:
    A :class:`Reconstruction`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleMLP
    >>> from bort_jax.experiments.probes import first_stage_reconstruction
    >>> model = InvertibleMLP((4, 4, 1), (16,), 3, rngs=nnx.Rngs(0))
    >>> rec = first_stage_reconstruction(model, jnp.ones((2, 4, 4, 1)) / 2)
    >>> rec.layer, rec.images.shape
    (2, (2, 4, 4, 1))
  """
  from bort_jax import explain
  layers = explain.model_layers(model)
  first = next(i for i, layer in enumerate(layers) if hasattr(layer, "kernel"))
  layer = min(first + 1, len(layers) - 1)
  x = jnp.asarray(images)
  x_hat = nnx.jit(lambda m, x: explain.reconstruct(m, x, layer))(model, x)
  return Reconstruction(
      layer, float(jnp.mean(explain.reconstruction_mse(x, x_hat))),
      float(jnp.mean(explain.psnr(x, x_hat))), x_hat)

"""What a trained model shows: its first Bort kernel and its stage-1 inversion.

The stage-1 reconstruction backtracks the first hidden layer's output (after
its activation) to the input with :func:`bort_jax.explain.reconstruct`: each
Bort layer is undone by its scaled transpose, so the reconstruction is exact
only when the layer is orthogonal and its rows span the data. Its PSNR is
the figure the demo and the frontier report.

Its reference (``first_layer="pinv"``) inverts the first layer by its
pseudo-inverse instead: the least-squares inverse, exact for any full-rank
layer that keeps as many features as it takes, orthogonal or not. The gap
between the two PSNRs is what the transpose loses because layer 0 is not
orthogonal; a low reference PSNR means the layer (or the activation after
it) discards the information, which no orthogonality can restore.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import bort_jax
from bort_jax.dbort import DBort

#: How :func:`first_stage_reconstruction` inverts the first layer.
FIRST_LAYER_INVERSES = ("transpose", "pinv")


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


def _unwrapped(layer: Any) -> Any:
  """The layer inside its DBort wrappers (they record energies, no math)."""
  while isinstance(layer, DBort):
    layer = layer.layer
  return layer


def _pinv_inverse(layer: Any, y: jax.Array, x: Any) -> jax.Array:
  """``x̂ = L⁺ (y − layer(0))``: the layer's least-squares, minimum-norm inverse.

  ``L`` is the linear part of the affine layer (dense or convolutional, seen
  as one matrix on the whole input, so padding and strides are the layer's
  own). ``L⁺ = (LᵀL)⁺ Lᵀ``: the Gram ``LᵀL`` is built column by column from
  the layer itself and pseudo-inverted in float64, discarding eigenvalues
  below ``n · eps`` of the largest (float32 noise, or a layer with fewer
  outputs than inputs).
  """
  layer = _unwrapped(layer)
  shape = tuple(x.shape[1:])
  n = math.prod(shape)
  dtype = y.dtype
  offset = layer(jnp.zeros((1,) + shape, dtype))
  linear = lambda v: (layer(v.reshape((-1,) + shape)) - offset).reshape(
      v.shape[0], -1)
  spec = lambda rows: jax.ShapeDtypeStruct((rows, n), dtype)
  transpose = lambda r: jax.linear_transpose(linear, spec(r.shape[0]))(r)[0]
  # Gram columns L^T L e_i, a chunk of basis vectors at a time (memory).
  gram = jax.lax.map(lambda e: transpose(linear(e)),
                     jnp.eye(n, dtype=dtype).reshape(-1, 1, n),
                     batch_size=256).reshape(n, n)
  values, vectors = np.linalg.eigh(np.asarray(gram, np.float64))
  keep = values > n * np.finfo(np.float32).eps * max(values.max(), 0.0)
  inverse = (vectors[:, keep] / values[keep]) @ vectors[:, keep].T
  projected = np.asarray(transpose((y - offset).reshape(y.shape[0], -1)),
                         np.float64)
  return jnp.asarray(projected @ inverse, dtype).reshape((y.shape[0],) + shape)


def first_stage_reconstruction(model: nnx.Module, images: Any,
                               first_layer: str = "transpose"
                               ) -> Reconstruction:
  """Backtracks the first hidden layer's output (after its activation).

  Args:
    model: a model :mod:`bort_jax.explain` can backtrack (e.g. the
      ``invertible-mlp``, ``cnn`` or ``simple-cnn`` of the application).
    images: ``(N, H, W, C)`` images in [0, 1].
    first_layer: how the first dense or convolutional layer is inverted:
      ``"transpose"`` (its scaled transpose, as
      :func:`bort_jax.explain.reconstruct` does; exact only for an
      orthogonal layer) or ``"pinv"`` (its pseudo-inverse, the reference:
      exact for any full-rank layer with at least as many outputs as
      inputs). The other layers are inverted as
      :func:`bort_jax.explain.backtrack` does.

  Returns:
    A :class:`Reconstruction`.

  Raises:
    ValueError: ``first_layer`` is not one of :data:`FIRST_LAYER_INVERSES`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleMLP
    >>> from bort_jax.experiments.probes import first_stage_reconstruction
    >>> model = InvertibleMLP((4, 4, 1), (16,), 3, rngs=nnx.Rngs(0))
    >>> rec = first_stage_reconstruction(model, jnp.ones((2, 4, 4, 1)) / 2)
    >>> rec.layer, rec.images.shape
    (2, (2, 4, 4, 1))
    >>> ref = first_stage_reconstruction(model, jnp.ones((2, 4, 4, 1)) / 2,
    ...                                  first_layer="pinv")
    >>> bool(ref.psnr > 60)  # a random square layer: pinv inverts it exactly
    True
  """
  from bort_jax import explain
  if first_layer not in FIRST_LAYER_INVERSES:
    raise ValueError(
        f"first_layer must be one of {FIRST_LAYER_INVERSES}, got "
        f"{first_layer!r}.")
  layers = explain.model_layers(model)
  first = next(i for i, layer in enumerate(layers)
               if hasattr(_unwrapped(layer), "kernel"))
  layer = min(first + 1, len(layers) - 1)
  x = jnp.asarray(images)
  if first_layer == "transpose":
    x_hat = nnx.jit(lambda m, x: explain.reconstruct(m, x, layer))(model, x)
  else:
    cache = explain.forward_cache(model, x)
    x_hat = cache[layer + 1]
    for i in range(layer, -1, -1):
      x_hat = (_pinv_inverse(layers[i], x_hat, cache[i]) if i == first
               else explain.invert_layer(layers[i], x_hat, cache[i]))
  return Reconstruction(
      layer, float(jnp.mean(explain.reconstruction_mse(x, x_hat))),
      float(jnp.mean(explain.psnr(x, x_hat))), x_hat)

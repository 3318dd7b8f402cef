"""Per-layer inverses for backtracking: a ``functools.singledispatch`` registry.

:func:`layer_inverse` maps a layer to its inverse by the layer's type (a
subclass inherits its base's); :func:`register_inverse` adds a type and
:func:`invert_layer` applies it, naming the layer in errors. The inverses of
``nnx.Linear`` (and ``nnx.LoRALinear``, by its merged kernel), ``nnx.Conv``,
the blocks of :mod:`bort_jax.models.invertible`
and :class:`bort_jax.dbort.DBort` wrappers are registered here, built on the
functions of :mod:`bort_jax.explain.invert`; a convolution is transposed
through the ``nnx.Conv`` layer itself (its VJP).

References:
  Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks with
  Bounded Orthogonal Constraint", ICLR 2023 (network backtracking).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from flax import nnx

from bort_jax.dbort import DBort
from bort_jax.explain import invert
from bort_jax.models import invertible

RELU_MODES = ("pass", "guided")

# An inverse takes (layer, y, x, relu) where x is the layer's forward input:
# an array, or a jax.ShapeDtypeStruct when only its shape is known.
LayerInverse = Callable[..., jax.Array]

_NOT_INVERTIBLE = (
    "Invertible models are built from nnx.Linear, nnx.Conv, LeakyReLU, ReLU, "
    "AvgPool, Flatten and DBort wrappers of these "
    "(bort_jax.models.invertible); dropout, normalisation and max pooling "
    "have no inverse. Register one with bort_jax.explain.register_inverse if "
    "your layer is invertible."
)


@functools.singledispatch
def layer_inverse(layer: Any, y: jax.Array, x: Any, relu: str) -> jax.Array:
  """The inverse of one layer, dispatched on the layer's type.

  A :func:`functools.singledispatch` function: :func:`register_inverse` (or
  ``layer_inverse.register(MyLayer)``) adds a type, and subclasses inherit
  their base class's inverse. This default raises: the layer's type has no
  registered inverse.

  Args:
    layer: the layer.
    y: its (possibly edited) output.
    x: its forward input (an array, or a ``jax.ShapeDtypeStruct``).
    relu: the ReLU mode, ``"pass"`` or ``"guided"``.

  Returns:
    ``x̂`` of ``x``'s shape.
  """
  del y, x, relu
  raise _NotInvertible(type(layer).__name__)


class _NotInvertible(ValueError):
  """The layer's type has no registered inverse."""


def register_inverse(
    layer_type: type, inverse: LayerInverse | None = None
) -> Any:
  """Registers how to invert a layer type (and its subclasses) when backtracking.

  Adds ``layer_type`` to :func:`layer_inverse` (a
  :func:`functools.singledispatch` function); a later registration of the
  same type replaces the earlier one. Called with the type alone, it is a
  decorator.

  Args:
    layer_type: a module class.
    inverse: ``inverse(layer, y, x, relu) -> x̂`` where ``y`` is the (edited)
      output, ``x`` the layer's forward input (an array, or a
      ``jax.ShapeDtypeStruct`` when only its shape is known) and ``relu`` the
      ReLU mode (``"pass"`` or ``"guided"``).

  Returns:
    ``inverse`` (or, without it, a decorator that registers its function).

  Raises:
    TypeError: if ``layer_type`` is not a class or ``inverse`` not callable.

  Examples:
    >>> from flax import nnx
    >>> class Identity(nnx.Module):
    ...   def __call__(self, x):
    ...     return x
    >>> _ = register_inverse(Identity, lambda layer, y, x, relu: y)
    >>> @register_inverse(Identity)
    ... def _identity_inverse(layer, y, x, relu):
    ...   return y
  """
  if not isinstance(layer_type, type):
    raise TypeError(
        f"register_inverse(layer_type, inverse) needs a class as layer_type, "
        f"got {layer_type!r}."
    )
  if inverse is None:
    return lambda fn: register_inverse(layer_type, fn)
  if not callable(inverse):
    raise TypeError(
        f"register_inverse needs a callable inverse(layer, y, x, relu), got "
        f"{inverse!r}."
    )
  layer_inverse.register(layer_type, inverse)
  return inverse


def check_relu_mode(relu: str) -> None:
  if relu not in RELU_MODES:
    raise ValueError(f"relu must be one of {RELU_MODES}, got {relu!r}.")


def invert_layer(
    layer: Any, y: jax.Array, x: Any, *, relu: str = "pass",
    name: str | None = None,
) -> jax.Array:
  """Inverts one layer with its registered inverse.

  Args:
    layer: the layer.
    y: its (possibly edited) output.
    x: its forward input: an array, or a ``jax.ShapeDtypeStruct``.
    relu: ``"pass"`` or ``"guided"`` (ReLU layers only).
    name: how to name the layer in errors (default: its class name).

  Returns:
    ``x̂`` of ``x``'s shape (batch size: ``y``'s).

  Raises:
    ValueError: if the layer has no inverse, or ``y`` does not fit it.

  Examples:
    >>> import jax.numpy as jnp
    >>> from bort_jax.models.invertible import LeakyReLU
    >>> invert_layer(LeakyReLU(0.5), jnp.array([-1.0]), jnp.zeros(1))
    Array([-2.], dtype=float32)
  """
  check_relu_mode(relu)
  name = name or type(layer).__name__
  try:
    return layer_inverse(layer, y, x, relu)
  except _NotInvertible:
    if callable(layer) and not isinstance(layer, nnx.Module):
      # nnx.Sequential(..., nnx.relu, ...): a function has no type to
      # register, and its name (custom_jvp, PjitFunction) says nothing.
      raise ValueError(
          f"Cannot invert layer {name}: it is the function "
          f"{getattr(layer, '__name__', layer)!r}, not a layer; write "
          f"activations as modules, bort_jax.models.invertible.ReLU() or "
          f"LeakyReLU(), which invert.") from None
    raise ValueError(f"Cannot invert layer {name}. {_NOT_INVERTIBLE}") from None
  except ValueError as e:
    raise ValueError(f"Cannot invert layer {name}: {e}") from e


def _batch_shape(y: jax.Array, x: Any) -> tuple[int, ...]:
  """x's shape with y's batch size."""
  return (y.shape[0],) + tuple(x.shape[1:])


def dense_kernel(layer: nnx.Linear) -> jax.Array:
  """The kernel a Linear layer applies: ``K + A B`` for ``nnx.LoRALinear``,
  ``y = x (K + A B) + b`` (its own kernel alone would drop the low-rank
  path ``A B``)."""
  kernel = layer.kernel[...]
  if isinstance(layer, nnx.LoRALinear):
    kernel = kernel + layer.lora.lora_a[...] @ layer.lora.lora_b[...]
  return kernel


def _linear_inverse(layer: nnx.Linear, y, x, relu):
  del x, relu
  bias = None if layer.bias is None else layer.bias[...]
  return invert.invert_dense(y, dense_kernel(layer), bias)


def _conv_inverse(layer: nnx.Conv, y, x, relu):
  """The layer's own transpose (its VJP), so Flax's padding rules hold."""
  del relu
  kernel = layer.kernel[...]
  if layer.mask is not None:
    kernel = kernel * layer.mask
  bias = None if layer.bias is None else layer.bias[...]
  geometry = dict(strides=layer.strides, padding=layer.padding,
                  input_dilation=layer.input_dilation,
                  kernel_dilation=layer.kernel_dilation)
  return invert._invert_convolution(
      layer, kernel, bias, y, tuple(x.shape[1:]),
      feature_group_count=layer.feature_group_count, geometry=geometry)


def _leaky_relu_inverse(layer: invertible.LeakyReLU, y, x, relu):
  del x, relu
  return invert.invert_leaky_relu(y, layer.negative_slope)


def _relu_inverse(layer: invertible.ReLU, y, x, relu):
  del layer
  if relu == "pass":
    return invert.invert_relu(y)
  if isinstance(x, jax.ShapeDtypeStruct):
    raise ValueError(
        "relu='guided' needs the forward pre-activations: pass "
        "forward_cache=model.forward(x)."
    )
  return invert.invert_relu(y, x)


def _flatten_inverse(layer: invertible.Flatten, y, x, relu):
  del layer, relu
  shape = _batch_shape(y, x)
  size = 1
  for d in shape[1:]:
    size *= d
  if y.ndim != 2 or y.shape[1] != size:
    raise ValueError(
        f"features of shape {y.shape} do not flatten inputs of shape {shape}.")
  return y.reshape(shape)


def _global_max_pool_inverse(layer: invertible.GlobalMaxPool, y, x, relu):
  del layer, y, x, relu
  raise ValueError(
      "global max pooling keeps one value per channel and forgets where it "
      "came from, so it has no inverse; backtrack from the layer below it "
      "(e.g. SimpleCNN.pool_index - 1)."
  )


def _dbort_inverse(layer: DBort, y, x, relu):
  return layer_inverse(layer.layer, y, x, relu)


def _avg_pool_inverse(layer: invertible.AvgPool, y, x, relu):
  del relu
  return invert.invert_avg_pool(
      y, input_shape=tuple(x.shape[1:]), window_shape=layer.window_shape,
      strides=layer.strides, padding=layer.padding,
  )


register_inverse(nnx.Linear, _linear_inverse)
register_inverse(nnx.Conv, _conv_inverse)
register_inverse(invertible.LeakyReLU, _leaky_relu_inverse)
register_inverse(invertible.ReLU, _relu_inverse)
register_inverse(invertible.Flatten, _flatten_inverse)
register_inverse(invertible.AvgPool, _avg_pool_inverse)
register_inverse(invertible.GlobalMaxPool, _global_max_pool_inverse)
register_inverse(DBort, _dbort_inverse)

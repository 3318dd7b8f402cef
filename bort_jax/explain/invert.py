"""Inverting single layers: a Bort layer is undone by its scaled transpose.

For a layer ``y = W x + b`` whose rows ``w_i`` (output units) are orthogonal,

.. math::
  x̂ = \\sum_i \\frac{y_i − b_i}{‖w_i‖²} w_i

is the orthogonal projection of ``x`` onto the row space: ``x`` itself when
``W`` is square. A *wide* layer (more units than fan-in, ``m > n``) cannot
have orthogonal rows; Bort then makes its columns orthogonal (``Wᵀ W = cI``)
and the exact inverse is ``Wᵀ (y − b) / c`` with ``c = ‖W‖²_F / n``. Both are
the pseudo-inverse of a bounded-orthogonal ``W``; on a layer that is not, they
are the approximate inverse the paper backtracks with.

A convolution is a dense layer applied to every patch: each patch is inverted
as above and the patch estimates are put back where they came from
(transposed convolution, computed as the VJP of the forward convolution) and
averaged over the patches covering each input pixel.

Activations: LeakyReLU is inverted exactly; ReLU is passed through, or, when
``relu="guided"``, kept only where the forward pre-activation was positive.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bort_jax.models import invertible

RELU_MODES = ("pass", "guided")

# An inverse takes (layer, y, x) where x is the layer's forward input: an
# array, or a jax.ShapeDtypeStruct when only its shape is known.
LayerInverse = Callable[..., jax.Array]
_INVERSES: dict[type, LayerInverse] = {}

_NOT_INVERTIBLE = (
    "Invertible models are built from nnx.Linear, nnx.Conv, LeakyReLU, ReLU, "
    "AvgPool and Flatten (bort_jax.models.invertible); dropout, "
    "normalisation and max pooling have no inverse. Register one with "
    "bort_jax.explain.register_inverse if your layer is invertible."
)


def unit_scales(w: jax.Array) -> jax.Array:
  """The divisor of each output unit in the inverse ``Wᵀ ((y − b) / s)``.

  ``s_i = ‖w_i‖²`` when ``W`` (``m × n``, rows are units) has no more rows
  than columns (rows orthogonal: orthogonal projection); ``s_i = ‖W‖²_F / n``
  for every unit when it is wide (columns orthogonal: ``Wᵀ W = cI``). Zero
  rows get ``s = 1`` so that they contribute nothing instead of NaN.

  Args:
    w: a matrix ``(m, n)`` or a batch ``(g, m, n)`` of independent matrices
      (convolution groups).

  Returns:
    ``(m,)`` (or ``(g, m)``) positive divisors.

  Examples:
    >>> import jax.numpy as jnp
    >>> unit_scales(jnp.array([[2.0, 0.0], [0.0, 1.0]]))
    Array([4., 1.], dtype=float32)
    >>> unit_scales(jnp.array([[1.0], [1.0]]))  # wide: c = ‖W‖²_F / n
    Array([2., 2.], dtype=float32)
  """
  m, n = w.shape[-2:]
  norms_sq = jnp.sum(jnp.square(w), axis=-1)
  if m > n:
    frobenius = jnp.sum(norms_sq, axis=-1, keepdims=True) / n
    norms_sq = jnp.broadcast_to(frobenius, norms_sq.shape)
  return jnp.where(norms_sq > 0, norms_sq, 1.0)


def invert_dense(
    y: jax.Array, kernel: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
  """Inverts ``y = x @ kernel + bias`` (Flax layout, kernel ``(in, out)``).

  .. math::
    x̂ = ((y − b) / s) · kernelᵀ,  \\quad s = \\text{unit\\_scales}(kernelᵀ)

  Args:
    y: outputs ``(..., out)``.
    kernel: the kernel ``(in, out)``.
    bias: the bias ``(out,)`` or ``None``.

  Returns:
    ``x̂`` of shape ``(..., in)``: ``x`` when the kernel is square or wide and
    bounded-orthogonal; its projection onto the row space when narrow.

  Examples:
    >>> import jax.numpy as jnp
    >>> kernel = jnp.array([[0.0, 2.0], [2.0, 0.0]])  # W Wᵀ = 4 I
    >>> x = jnp.array([1.0, -3.0])
    >>> invert_dense(x @ kernel + 1.0, kernel, jnp.ones(2))
    Array([ 1., -3.], dtype=float32)
  """
  if y.shape[-1] != kernel.shape[-1]:
    raise ValueError(
        f"invert_dense: features of shape {y.shape} do not match a kernel "
        f"{kernel.shape} with {kernel.shape[-1]} outputs."
    )
  if bias is not None:
    y = y - bias
  return (y / unit_scales(kernel.T)) @ kernel.T


def _as_tuple(value: Any, n: int, name: str) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  if isinstance(value, int):
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise ValueError(f"{name} must have {n} entries, got {value}.")
  return value


class ConvGeometry:
  """How an ``nnx.Conv``-style convolution walks over its input.

  Mirrors ``nnx.Conv``: inputs ``(N, *spatial, C)``, kernels
  ``(*window, C/groups, out)``; string paddings ``SAME``, ``VALID``,
  ``CIRCULAR``, ``REFLECT``, ``CAUSAL`` (1-D), an int, or ``(low, high)`` pairs.
  :meth:`apply` is the bias-free convolution whose VJP :func:`invert_conv`
  uses as the transposed convolution.

  Args:
    num_spatial: the number of spatial axes.
    strides: an int or one per spatial axis.
    padding: as in ``nnx.Conv``.
    input_dilation: an int or one per spatial axis.
    kernel_dilation: an int or one per spatial axis.
    feature_group_count: the number of groups.

  Examples:
    >>> import jax.numpy as jnp
    >>> geometry = ConvGeometry(2, strides=2, padding="SAME")
    >>> geometry.apply(jnp.ones((1, 7, 7, 3)), jnp.ones((3, 3, 3, 4))).shape
    (1, 4, 4, 4)
  """

  def __init__(
      self,
      num_spatial: int,
      strides: Any = 1,
      padding: Any = "SAME",
      input_dilation: Any = 1,
      kernel_dilation: Any = 1,
      feature_group_count: int = 1,
  ):
    n = num_spatial
    self.num_spatial = n
    self.strides = _as_tuple(strides, n, "strides")
    self.input_dilation = _as_tuple(input_dilation, n, "input_dilation")
    self.kernel_dilation = _as_tuple(kernel_dilation, n, "kernel_dilation")
    self.feature_group_count = int(feature_group_count)
    if isinstance(padding, str):
      self.padding = padding.upper()
      if self.padding not in (
          "SAME", "VALID", "SAME_LOWER", "CIRCULAR", "REFLECT", "CAUSAL"):
        raise ValueError(f"Unknown convolution padding {padding!r}.")
    elif isinstance(padding, int):
      self.padding = ((padding, padding),) * n
    else:
      pads = tuple(padding)
      self.padding = tuple(
          (p, p) if isinstance(p, int) else tuple(p) for p in pads)
      if len(self.padding) != n:
        raise ValueError(f"padding must have {n} entries, got {padding}.")

  def apply(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The convolution without bias, ``(N, *spatial, C) → (N, *out, O)``."""
    n = self.num_spatial
    padding = self.padding
    if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
      window = [(k - 1) * d + 1
                for k, d in zip(kernel.shape[:n], self.kernel_dilation)]
      if padding == "CAUSAL":
        pads = [(w - 1, 0) for w in window]
      else:
        pads = [((w - 1) // 2, w // 2) for w in window]
      mode = {"CIRCULAR": "wrap", "REFLECT": "reflect", "CAUSAL": "constant"}
      x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)], mode=mode[padding])
      padding = "VALID"
    numbers = jax.lax.ConvDimensionNumbers(
        lhs_spec=(0, n + 1) + tuple(range(1, n + 1)),
        rhs_spec=(n + 1, n) + tuple(range(n)),
        out_spec=(0, n + 1) + tuple(range(1, n + 1)),
    )
    return jax.lax.conv_general_dilated(
        x, kernel, self.strides, padding,
        lhs_dilation=self.input_dilation,
        rhs_dilation=self.kernel_dilation,
        dimension_numbers=numbers,
        feature_group_count=self.feature_group_count,
    )


def invert_conv(
    y: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    input_shape: Sequence[int],
    strides: Any = 1,
    padding: Any = "SAME",
    input_dilation: Any = 1,
    kernel_dilation: Any = 1,
    feature_group_count: int = 1,
) -> jax.Array:
  """Inverts a convolution: per-patch dense inversion, then col2im averaging.

  Each output channel ``o`` is divided by its unit scale (``‖w_o‖²``, see
  :func:`unit_scales`; per group), the result is spread back over the patches
  by the transposed convolution (the VJP of the forward convolution), and
  each input pixel is divided by the number of patches covering it (the VJP
  of an all-ones kernel applied to ones). Pixels no patch covers are 0.

  Args:
    y: outputs ``(N, *out_spatial, out)``.
    kernel: ``(*window, in/groups, out)`` (Flax layout).
    bias: ``(out,)`` or ``None``.
    input_shape: one input's shape ``(*spatial, in)`` (strided convolutions
      map several input sizes to one output size).
    strides: as in ``nnx.Conv``.
    padding: as in ``nnx.Conv``.
    input_dilation: as in ``nnx.Conv``.
    kernel_dilation: as in ``nnx.Conv``.
    feature_group_count: as in ``nnx.Conv``.

  Returns:
    ``x̂`` of shape ``(N, *input_shape)``: ``x`` when every patch is inverted
    exactly (square or wide bounded-orthogonal kernel); otherwise the average
    of the patches' orthogonal projections.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> kernel = 0.5 * jnp.eye(4).reshape(2, 2, 1, 4)  # square, orthogonal
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> y = jax.lax.conv_general_dilated(
    ...     x, kernel, (2, 2), "VALID",
    ...     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    >>> x_hat = invert_conv(y, kernel, input_shape=(4, 4, 1), strides=2,
    ...                     padding="VALID")
    >>> bool(jnp.allclose(x_hat, x))
    True
  """
  n = kernel.ndim - 2
  input_shape = tuple(input_shape)
  geometry = ConvGeometry(n, strides, padding, input_dilation,
                          kernel_dilation, feature_group_count)
  if len(input_shape) != n + 1 or y.ndim != n + 2:
    raise ValueError(
        f"invert_conv: a {n}-D convolution needs features (N, *spatial, C) "
        f"and input_shape (*spatial, C); got features {y.shape} and "
        f"input_shape {input_shape}."
    )
  x_shape = (y.shape[0],) + input_shape
  out_shape = jax.eval_shape(
      geometry.apply, jax.ShapeDtypeStruct(x_shape, y.dtype), kernel).shape
  if tuple(y.shape) != tuple(out_shape):
    raise ValueError(
        f"invert_conv: features of shape {y.shape} do not match the "
        f"convolution's output {out_shape} for inputs {x_shape}."
    )
  groups = geometry.feature_group_count
  out = kernel.shape[-1]
  # Rows are output units; group g owns outputs [g·out/groups, (g+1)·out/groups).
  w = kernel.reshape(-1, groups, out // groups).transpose(1, 2, 0)
  scales = unit_scales(w).reshape(out)
  if bias is not None:
    y = y - bias
  _, transpose = jax.vjp(
      lambda x: geometry.apply(x, kernel), jnp.zeros(x_shape, y.dtype))
  (summed,) = transpose(y / scales)
  count_geometry = ConvGeometry(n, strides, geometry.padding, input_dilation,
                                kernel_dilation, 1)
  ones = jnp.ones(kernel.shape[:n] + (1, 1), y.dtype)
  _, count_transpose = jax.vjp(
      lambda x: count_geometry.apply(x, ones),
      jnp.zeros((1,) + input_shape[:-1] + (1,), y.dtype))
  (count,) = count_transpose(jnp.ones((1,) + y.shape[1:-1] + (1,), y.dtype))
  return jnp.where(count > 0, summed / jnp.where(count > 0, count, 1.0), 0.0)


def invert_leaky_relu(y: jax.Array, negative_slope: float) -> jax.Array:
  """The exact inverse of LeakyReLU: ``y if y ≥ 0 else y / negative_slope``.

  Examples:
    >>> import jax.numpy as jnp
    >>> invert_leaky_relu(jnp.array([-0.2, 3.0]), 0.1)
    Array([-2.,  3.], dtype=float32)
  """
  return jnp.where(y >= 0, y, y / negative_slope)


def invert_relu(
    y: jax.Array, pre_activation: jax.Array | None = None
) -> jax.Array:
  """ReLU "inverted": passed through, or gated by the forward pre-activation.

  ReLU forgets its negative inputs. Passing ``y`` through keeps whatever the
  layer above asks for (a backtracked edit may be negative); the *guided*
  variant keeps it only where the forward pre-activation was positive.

  Args:
    y: the (possibly edited) ReLU outputs.
    pre_activation: the forward input of the ReLU for the guided variant, or
      ``None`` to pass ``y`` through.

  Returns:
    An array of ``y``'s shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> invert_relu(jnp.array([1.0, 2.0]), jnp.array([-1.0, 1.0]))
    Array([0., 2.], dtype=float32)
  """
  if pre_activation is None:
    return y
  return jnp.where(pre_activation > 0, y, 0.0)


def invert_avg_pool(
    y: jax.Array,
    *,
    input_shape: Sequence[int],
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: Any = "VALID",
) -> jax.Array:
  """Inverts average pooling as the depthwise convolution it is.

  Non-overlapping pooling is undone by repeating each value over its window
  (the minimum-norm, least-squares inverse).

  Examples:
    >>> import jax.numpy as jnp
    >>> invert_avg_pool(jnp.array([[[[2.0]]]]), input_shape=(2, 2, 1),
    ...                 window_shape=(2, 2))[0, :, :, 0]
    Array([[2., 2.],
           [2., 2.]], dtype=float32)
  """
  window = tuple(window_shape)
  channels = input_shape[-1]
  kernel = jnp.full(window + (1, channels), 1.0 / math.prod(window), y.dtype)
  return invert_conv(
      y, kernel, input_shape=input_shape,
      strides=window if strides is None else strides, padding=padding,
      feature_group_count=channels,
  )


def register_inverse(layer_type: type, inverse: LayerInverse) -> None:
  """Registers how to invert a layer type (and its subclasses) when backtracking.

  Args:
    layer_type: a module class.
    inverse: ``inverse(layer, y, x, relu) -> x̂`` where ``y`` is the (edited)
      output, ``x`` the layer's forward input (an array, or a
      ``jax.ShapeDtypeStruct`` when only its shape is known) and ``relu`` the
      ReLU mode (``"pass"`` or ``"guided"``).

  Examples:
    >>> from flax import nnx
    >>> class Identity(nnx.Module):
    ...   def __call__(self, x):
    ...     return x
    >>> register_inverse(Identity, lambda layer, y, x, relu: y)
  """
  _INVERSES[layer_type] = inverse


def find_inverse(layer: Any) -> LayerInverse | None:
  """The registered inverse of a layer (by its class's MRO), or ``None``."""
  for cls in type(layer).__mro__:
    if cls in _INVERSES:
      return _INVERSES[cls]
  return None


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
  inverse = find_inverse(layer)
  if inverse is None:
    raise ValueError(f"Cannot invert layer {name}. {_NOT_INVERTIBLE}")
  try:
    return inverse(layer, y, x, relu)
  except ValueError as e:
    raise ValueError(f"Cannot invert layer {name}: {e}") from e


def _batch_shape(y: jax.Array, x: Any) -> tuple[int, ...]:
  """x's shape with y's batch size."""
  return (y.shape[0],) + tuple(x.shape[1:])


def _linear_inverse(layer: nnx.Linear, y, x, relu):
  del x, relu
  bias = None if layer.bias is None else layer.bias[...]
  return invert_dense(y, layer.kernel[...], bias)


def _conv_inverse(layer: nnx.Conv, y, x, relu):
  del relu
  kernel = layer.kernel[...]
  if layer.mask is not None:
    kernel = kernel * layer.mask
  bias = None if layer.bias is None else layer.bias[...]
  return invert_conv(
      y, kernel, bias, input_shape=tuple(x.shape[1:]),
      strides=layer.strides, padding=layer.padding,
      input_dilation=layer.input_dilation,
      kernel_dilation=layer.kernel_dilation,
      feature_group_count=layer.feature_group_count,
  )


def _leaky_relu_inverse(layer: invertible.LeakyReLU, y, x, relu):
  del x, relu
  return invert_leaky_relu(y, layer.negative_slope)


def _relu_inverse(layer: invertible.ReLU, y, x, relu):
  del layer
  if relu == "pass":
    return invert_relu(y)
  if isinstance(x, jax.ShapeDtypeStruct):
    raise ValueError(
        "relu='guided' needs the forward pre-activations: pass "
        "forward_cache=model.forward(x)."
    )
  return invert_relu(y, x)


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


def _avg_pool_inverse(layer: invertible.AvgPool, y, x, relu):
  del relu
  return invert_avg_pool(
      y, input_shape=tuple(x.shape[1:]), window_shape=layer.window_shape,
      strides=layer.strides, padding=layer.padding,
  )


register_inverse(nnx.Linear, _linear_inverse)
register_inverse(nnx.Conv, _conv_inverse)
register_inverse(invertible.LeakyReLU, _leaky_relu_inverse)
register_inverse(invertible.ReLU, _relu_inverse)
register_inverse(invertible.Flatten, _flatten_inverse)
register_inverse(invertible.AvgPool, _avg_pool_inverse)

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
(transposed convolution: the VJP of the ``nnx.Conv`` layer itself, so
Flax's padding rules are never re-derived) and averaged over the patches
covering each input pixel.

Activations: LeakyReLU is inverted exactly; ReLU is passed through, or, when
``relu="guided"``, kept only where the forward pre-activation was positive.

How each layer type is inverted when backtracking (a
:func:`functools.singledispatch` registry) is in
:mod:`bort_jax.explain.inverses`.

References:
  Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks with
  Bounded Orthogonal Constraint", ICLR 2023 (layer inversion and network
  backtracking).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

def unit_scales(w: jax.Array) -> jax.Array:
  """The divisor of each output unit in the inverse ``Wᵀ ((y − b) / s)``.

  ``s_i = ‖w_i‖²`` when ``W`` (``m × n``, rows are units) has no more rows
  than columns (rows orthogonal: orthogonal projection); ``s_i = ‖W‖²_F /
  n'`` for every unit when it is wide (columns orthogonal: ``Wᵀ W = cI``),
  ``n'`` the columns that are not all zero (a masked convolution tap is no
  input the units read). Zero rows get ``s = 1`` so that they contribute
  nothing instead of NaN.

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
  if jnp.ndim(w) < 2:
    raise ValueError(
        f"w must be a matrix (m, n) whose rows are units, or a batch of them, "
        f"got shape {jnp.shape(w)}.")
  m, n = w.shape[-2:]
  norms_sq = jnp.sum(jnp.square(w), axis=-1)
  if m > n:
    # c over the columns the units read: an all-zero column (a masked
    # convolution tap) is outside Wᵀ W = cI.
    used = jnp.maximum(jnp.sum(jnp.any(w != 0, axis=-2), axis=-1,
                               keepdims=True), 1)
    frobenius = jnp.sum(norms_sq, axis=-1, keepdims=True) / used
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
    y = y - _checked_bias(bias, kernel.shape[-1], "invert_dense")
  return (y / unit_scales(kernel.T)) @ kernel.T


def _checked_bias(bias: jax.Array, out: int, where: str) -> jax.Array:
  """The layer's bias, one per output: another shape would broadcast."""
  bias = jnp.asarray(bias)
  if bias.shape != (out,):
    raise ValueError(
        f"{where}: bias must be the layer's bias, shape ({out},), one per "
        f"output; got shape {bias.shape}.")
  return bias


def _conv_layer(
    kernel: jax.Array,
    *,
    strides: Any = 1,
    padding: Any = "SAME",
    input_dilation: Any = 1,
    kernel_dilation: Any = 1,
    feature_group_count: int = 1,
) -> nnx.Conv:
  """A bias-free ``nnx.Conv`` holding ``kernel``: Flax's own forward map.

  Its transpose (:func:`jax.linear_transpose`) is the transposed
  convolution, so the padding, stride and dilation rules are Flax's, never
  re-derived here.
  """
  *window, group_features, out_features = kernel.shape
  return nnx.Conv(
      group_features * feature_group_count, out_features, tuple(window),
      strides=strides, padding=padding, input_dilation=input_dilation,
      kernel_dilation=kernel_dilation, feature_group_count=feature_group_count,
      use_bias=False, kernel_init=lambda *_: kernel, rngs=nnx.Rngs(0),
  )


def _output_shape(conv: Callable, x_shape: tuple[int, ...], dtype,
                  padding: Any) -> tuple[int, ...]:
  """The shape ``conv`` maps ``x_shape`` to; its own errors as ValueError."""
  try:
    return tuple(jax.eval_shape(
        conv, jax.ShapeDtypeStruct(x_shape, dtype)).shape)
  except (RuntimeError, TypeError, ValueError) as e:
    if isinstance(padding, str) and "padding" in str(e).lower():
      raise ValueError(
          f"Unknown convolution padding {padding!r} (nnx.Conv: {e})."
      ) from None
    raise ValueError(
        f"the convolution cannot run on inputs of shape {x_shape}: {e}"
    ) from None


def _invert_convolution(
    conv: Callable[[jax.Array], jax.Array],
    kernel: jax.Array,
    bias: jax.Array | None,
    y: jax.Array,
    input_shape: tuple[int, ...],
    *,
    feature_group_count: int,
    geometry: dict[str, Any],
) -> jax.Array:
  """Per-unit division, the transpose of ``conv``, then patch averaging."""
  n = kernel.ndim - 2
  if len(input_shape) != n + 1 or y.ndim != n + 2:
    raise ValueError(
        f"invert_conv: a {n}-D convolution needs features (N, *spatial, C) "
        f"and input_shape (*spatial, C); got features {y.shape} and "
        f"input_shape {input_shape}."
    )
  x_shape = (y.shape[0],) + input_shape
  out_shape = _output_shape(conv, x_shape, y.dtype, geometry["padding"])
  if tuple(y.shape) != out_shape:
    raise ValueError(
        f"invert_conv: features of shape {y.shape} do not match the "
        f"convolution's output {out_shape} for inputs {x_shape}."
    )
  groups = feature_group_count
  out = kernel.shape[-1]
  # Rows are output units; group g owns outputs [g·out/groups, (g+1)·out/groups).
  w = kernel.reshape(-1, groups, out // groups).transpose(1, 2, 0)
  scales = unit_scales(w).reshape(out)
  if bias is not None:
    y = y - _checked_bias(bias, out, "invert_conv")
  # The VJP of the (affine) layer is the transpose of its linear part.
  _, transpose = jax.vjp(conv, jnp.zeros(x_shape, y.dtype))
  (summed,) = transpose((y / scales).astype(y.dtype))
  # How many patches read each pixel of each input channel: the transpose
  # of a depthwise convolution with the same geometry, whose taps are the
  # kernel's support (a tap that no output of the channel's group reads,
  # e.g. masked by nnx.Conv's mask, reconstructs nothing there), applied
  # to ones.
  group_in = kernel.shape[-2]
  reads = jnp.any(kernel.reshape(kernel.shape[:-1] + (groups, out // groups))
                  != 0, axis=-1)  # (*window, group_in, groups)
  support = jnp.moveaxis(reads, -1, -2).reshape(
      kernel.shape[:n] + (1, groups * group_in)).astype(y.dtype)
  counter = _conv_layer(support, feature_group_count=groups * group_in,
                        **geometry)
  count_transpose = jax.linear_transpose(
      counter, jax.ShapeDtypeStruct((1,) + input_shape, y.dtype))
  (count,) = count_transpose(
      jnp.ones((1,) + y.shape[1:-1] + (groups * group_in,), y.dtype))
  return jnp.where(count > 0, summed / jnp.where(count > 0, count, 1.0), 0.0)


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
  by the transposed convolution, and each input pixel is divided by the
  number of patches covering it. Both transposes are
  :func:`jax.linear_transpose`/:func:`jax.vjp` of an ``nnx.Conv`` with these
  settings, so every padding ``nnx.Conv`` accepts (``SAME``, ``VALID``,
  ``CIRCULAR``, ``REFLECT``, ``CAUSAL``, ints, ``(low, high)`` pairs) is
  handled exactly as Flax pads. Pixels no patch covers are 0.

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

  Raises:
    ValueError: if ``y`` or ``input_shape`` do not fit the convolution, or
      the padding is not one ``nnx.Conv`` knows.

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
  geometry = dict(strides=strides, padding=padding,
                  input_dilation=input_dilation,
                  kernel_dilation=kernel_dilation)
  conv = _conv_layer(kernel, feature_group_count=feature_group_count,
                     **geometry)
  return _invert_convolution(
      conv, kernel, bias, y, tuple(input_shape),
      feature_group_count=feature_group_count, geometry=geometry)


def invert_leaky_relu(y: jax.Array, negative_slope: float) -> jax.Array:
  """The exact inverse of LeakyReLU: ``y if y ≥ 0 else y / negative_slope``.

  Examples:
    >>> import jax.numpy as jnp
    >>> invert_leaky_relu(jnp.array([-0.2, 3.0]), 0.1)
    Array([-2.,  3.], dtype=float32)
  """
  if not isinstance(negative_slope, jax.core.Tracer) and not negative_slope > 0:
    raise ValueError(
        f"negative_slope must be > 0 (a slope of 0 is a ReLU, which loses "
        f"the negative side), got {negative_slope!r}.")
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
  """Inverts average pooling (zero padding counted, as ``AvgPool``) as the
  depthwise convolution it is.

  Non-overlapping pooling is undone by repeating each value ``y`` over its
  window's pixels inside the input, scaled by ``window / inside`` where a
  padded border leaves ``inside`` of them: the minimum-norm, least-squares
  inverse, ``pool(x̂) = y``.

  Examples:
    >>> import jax.numpy as jnp
    >>> invert_avg_pool(jnp.array([[[[2.0]]]]), input_shape=(2, 2, 1),
    ...                 window_shape=(2, 2))[0, :, :, 0]
    Array([[2., 2.],
           [2., 2.]], dtype=float32)
  """
  window = tuple(window_shape)
  strides = window if strides is None else tuple(strides)
  input_shape = tuple(input_shape)
  y = jnp.asarray(y)
  if not (len(window) == len(strides) == len(input_shape) - 1 == y.ndim - 2):
    raise ValueError(
        f"invert_avg_pool: a {len(window)}-D window needs features (N, "
        f"*spatial, C) and input_shape (*spatial, C) of as many spatial "
        f"axes, and strides of as many; got features {y.shape}, "
        f"input_shape {input_shape}, strides {strides}.")
  channels = input_shape[-1]
  inside = nnx.avg_pool(jnp.ones((1, *input_shape), y.dtype), window,
                        strides, padding, count_include_pad=True)
  if tuple(y.shape[1:]) != inside.shape[1:]:
    raise ValueError(
        f"invert_avg_pool: features of shape {y.shape} do not match the "
        f"pooling's output (N, *{inside.shape[1:]}) for inputs "
        f"{input_shape}.")
  if all(s >= w for s, w in zip(strides, window)):  # windows apart
    # The share of each window inside the input (1 but at a padded border).
    y = y / jnp.where(inside > 0, inside, 1)
  kernel = jnp.full(window + (1, channels), 1.0 / math.prod(window), y.dtype)
  return invert_conv(
      y, kernel, input_shape=input_shape,
      strides=strides, padding=padding, feature_group_count=channels,
  )

"""Sequential Flax NNX models that can be inverted layer by layer.

A Bort-trained layer is undone by its scaled transpose (``W Wᵀ = cI``), so a
network built only from such layers, exactly invertible activations and
reshapes can be *backtracked*: any hidden representation is mapped back to the
input space (:func:`bort_jax.explain.backtrack`). The models here are plain
lists of ``nnx.Linear``, ``nnx.Conv`` and the small parameter-free blocks of
this module; their kernels are named ``kernel``, so Bort's default parameter
selection finds every one of them.

Downsampling is a 2×2 stride-2 convolution (not max pooling, which forgets
where its maximum came from). It has ``4c`` outputs for ``c`` inputs, so its
matrix is square and can be exactly orthogonal.

LeakyReLU is inverted exactly by dividing its negative outputs by the slope,
which also multiplies the inversion error of the layer above by
``1 / negative_slope`` on those units. A larger slope (0.5 in
``examples/explain_mnist.py``) keeps backtracking from deep layers stable;
0.1 (the default) is the more common classifier.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class LeakyReLU(nnx.Module):
  """``x if x ≥ 0 else negative_slope · x``: exactly invertible for slope > 0.

  Args:
    negative_slope: the slope on negative inputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> LeakyReLU(0.1)(jnp.array([-2.0, 3.0]))
    Array([-0.2,  3. ], dtype=float32)
  """

  def __init__(self, negative_slope: float = 0.1):
    if not negative_slope > 0:
      raise ValueError(
          "LeakyReLU needs negative_slope > 0 to be invertible, got "
          f"{negative_slope!r}."
      )
    self.negative_slope = float(negative_slope)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, self.negative_slope)


class ReLU(nnx.Module):
  """``max(x, 0)``; backtracking passes it through (or gates it, "guided").

  Examples:
    >>> import jax.numpy as jnp
    >>> ReLU()(jnp.array([-2.0, 3.0]))
    Array([0., 3.], dtype=float32)
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


class Flatten(nnx.Module):
  """Flattens every axis but the first (the batch axis).

  Examples:
    >>> import jax.numpy as jnp
    >>> Flatten()(jnp.zeros((2, 4, 4, 3))).shape
    (2, 48)
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    # Not -1: with an empty batch the size of the rest is unknown to it.
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


class AvgPool(nnx.Module):
  """Average pooling over the spatial axes of ``(N, *spatial, C)`` inputs.

  It is the depthwise convolution with a constant ``1/k`` kernel (padding
  counts as zeros), which is how it is inverted.

  Args:
    window_shape: the pooling window, e.g. ``(2, 2)``.
    strides: the strides (default: the window, non-overlapping).
    padding: ``"VALID"``, ``"SAME"`` or explicit ``(low, high)`` pairs.

  Examples:
    >>> import jax.numpy as jnp
    >>> AvgPool((2, 2))(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
    Array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
  """

  def __init__(
      self,
      window_shape: Sequence[int],
      strides: Sequence[int] | None = None,
      padding: str | Sequence[tuple[int, int]] = "VALID",
  ):
    self.window_shape = tuple(window_shape)
    self.strides = tuple(strides) if strides is not None else self.window_shape
    self.padding = padding if isinstance(padding, str) else tuple(
        tuple(p) for p in padding
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.avg_pool(
        x, self.window_shape, self.strides, self.padding,
        count_include_pad=True,
    )


class GlobalMaxPool(nnx.Module):
  """The maximum of each channel over the spatial axes: ``(N, *spatial, C) → (N, C)``.

  It is **not invertible**: it keeps one value per channel and forgets where
  it came from. Models that end with it (:class:`bort_jax.models.SimpleCNN`)
  are backtracked from the layer below it; asking
  :func:`bort_jax.explain.backtrack` to invert it raises an error naming it.

  Examples:
    >>> import jax.numpy as jnp
    >>> GlobalMaxPool()(jnp.arange(8.0).reshape(1, 2, 2, 2))
    Array([[6., 7.]], dtype=float32)
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.max(x, axis=tuple(range(1, x.ndim - 1)))


class InvertibleSequential(nnx.Module):
  """A list of layers applied in order, with its intermediate activations.

  ``forward(x)`` returns the *forward cache* ``(x, a_0, …, a_{L-1})``: entry
  ``i`` is the input of ``layers[i]`` and entry ``i + 1`` its output. That
  cache is what :func:`bort_jax.explain.backtrack` reads (input shapes, and
  pre-activations for guided ReLU).

  Args:
    layers: the layers (``nnx.Linear``, ``nnx.Conv``, :class:`LeakyReLU`,
      :class:`ReLU`, :class:`AvgPool`, :class:`Flatten`, or any module with a
      registered inverse).
    input_shape: the shape of one example (no batch axis), e.g. ``(28, 28, 1)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = InvertibleSequential(
    ...     [nnx.Linear(4, 3, rngs=nnx.Rngs(0)), LeakyReLU()], input_shape=(4,))
    >>> [a.shape for a in model.forward(jnp.ones((2, 4)))]
    [(2, 4), (2, 3), (2, 3)]
  """

  def __init__(self, layers: Sequence[nnx.Module], input_shape: Sequence[int]):
    self.layers = nnx.List(list(layers))
    self.input_shape = tuple(int(d) for d in input_shape)

  def forward(
      self, x: jax.Array, upto: int | None = None
  ) -> tuple[jax.Array, ...]:
    """The forward cache ``(x, a_0, …)`` up to the output of ``layers[upto]``.

    Args:
      x: a batch of inputs, ``(N, *input_shape)``.
      upto: the last layer to run (default: all).

    Returns:
      A tuple of ``upto + 2`` arrays (``len(layers) + 1`` by default).
    """
    stop = len(self.layers) if upto is None else _layer_index(
        upto, len(self.layers)) + 1
    activations = [x]
    for layer in self.layers[:stop]:
      activations.append(layer(activations[-1]))
    return tuple(activations)

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = layer(x)
    return x


def _layer_index(index: int, num_layers: int) -> int:
  if not -num_layers <= index < num_layers:
    raise ValueError(
        f"layer index {index} is out of range for a model of {num_layers} "
        "layers."
    )
  return index % num_layers


def _activation(name: str, negative_slope: float) -> nnx.Module:
  if name == "leaky_relu":
    return LeakyReLU(negative_slope)
  if name == "relu":
    return ReLU()
  raise ValueError(f"activation must be 'leaky_relu' or 'relu', got {name!r}.")


class InvertibleMLP(InvertibleSequential):
  """``[Flatten] → (Linear → activation)* → Linear``, a backtrackable MLP.

  Args:
    input_shape: one example's shape; more than one axis adds a ``Flatten``.
    hidden: the hidden widths.
    num_classes: the output width.
    activation: ``"leaky_relu"`` (exactly invertible) or ``"relu"``.
    negative_slope: the LeakyReLU slope.
    use_bias: whether the Linear layers have biases (contribution maps need
      bias-free layers).
    kernel_init: the Linear kernels' initializer.
    rngs: the NNX random streams.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> mlp = InvertibleMLP((8, 8, 1), (32,), 10, rngs=nnx.Rngs(0))
    >>> mlp(jnp.zeros((2, 8, 8, 1))).shape, len(mlp.layers)
    ((2, 10), 4)
  """

  def __init__(
      self,
      input_shape: Sequence[int],
      hidden: Sequence[int],
      num_classes: int,
      *,
      activation: str = "leaky_relu",
      negative_slope: float = 0.1,
      use_bias: bool = True,
      kernel_init: Callable | None = None,
      rngs: nnx.Rngs,
  ):
    input_shape = tuple(input_shape)
    extra = {} if kernel_init is None else {"kernel_init": kernel_init}
    layers: list[nnx.Module] = [Flatten()] if len(input_shape) > 1 else []
    width = 1
    for d in input_shape:
      width *= d
    for h in hidden:
      layers += [
          nnx.Linear(width, h, use_bias=use_bias, rngs=rngs, **extra),
          _activation(activation, negative_slope),
      ]
      width = h
    layers.append(
        nnx.Linear(width, num_classes, use_bias=use_bias, rngs=rngs, **extra))
    super().__init__(layers, input_shape)


class InvertibleCNN(InvertibleSequential):
  """A backtrackable CNN: conv stages with conv downsampling, then a dense head.

  Each stage ``c`` in ``channels`` is ``Conv 3×3 (stride 1, SAME) → LeakyReLU
  → Conv 2×2 stride 2 (4c outputs) → LeakyReLU``; then ``Flatten → (Linear →
  LeakyReLU)* → Linear``. With ``channels=(8, 32)`` on 28×28×1 MNIST every
  Bort matrix can be exactly orthogonal: 8×9, 32×32, 32×288, 128×128 and the
  dense layers (more fan-in than units). :attr:`stage_ends` holds the index of
  each stage's last layer (its output is a natural point to backtrack from).

  Args:
    input_shape: ``(H, W, C)`` of one image; H and W divisible by
      ``2 ** len(channels)`` is not required (SAME padding) but keeps shapes
      simple.
    channels: the 3×3 convolutions' widths, one per stage.
    hidden: the dense head's hidden widths.
    num_classes: the number of classes.
    negative_slope: the LeakyReLU slope.
    kernel_init: the kernels' initializer (default: Flax's).
    rngs: the NNX random streams.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> cnn = nnx.eval_shape(lambda: InvertibleCNN(  # abstract: shapes only
    ...     (8, 8, 1), (4, 8), (16,), 10, rngs=nnx.Rngs(0)))
    >>> x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    >>> nnx.eval_shape(lambda m, x: m(x), cnn, x).shape, cnn.stage_ends
    ((2, 10), (3, 7))
    >>> nnx.eval_shape(lambda m, x: m.forward(x)[4], cnn, x).shape  # stage 1
    (2, 4, 4, 16)
  """

  def __init__(
      self,
      input_shape: Sequence[int],
      channels: Sequence[int] = (8, 32),
      hidden: Sequence[int] = (128,),
      num_classes: int = 10,
      *,
      negative_slope: float = 0.1,
      kernel_init: Callable | None = None,
      rngs: nnx.Rngs,
  ):
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
      raise ValueError(
          f"InvertibleCNN expects input_shape (H, W, C), got {input_shape}.")
    extra = {} if kernel_init is None else {"kernel_init": kernel_init}
    height, width, features = input_shape
    layers: list[nnx.Module] = []
    stage_ends = []
    for c in channels:
      layers += [
          nnx.Conv(features, c, (3, 3), padding="SAME", rngs=rngs, **extra),
          LeakyReLU(negative_slope),
          nnx.Conv(c, 4 * c, (2, 2), strides=(2, 2), padding="SAME",
                   rngs=rngs, **extra),
          LeakyReLU(negative_slope),
      ]
      stage_ends.append(len(layers) - 1)
      features = 4 * c
      height, width = -(-height // 2), -(-width // 2)
    layers.append(Flatten())
    size = height * width * features
    for h in hidden:
      layers += [nnx.Linear(size, h, rngs=rngs, **extra),
                 LeakyReLU(negative_slope)]
      size = h
    layers.append(nnx.Linear(size, num_classes, rngs=rngs, **extra))
    super().__init__(layers, input_shape)
    self.stage_ends = tuple(stage_ends)

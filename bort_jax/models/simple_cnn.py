"""SimpleCNN: the authors' explainability model, built from invertible parts.

The convolutional network of the Bort authors' MNIST/CIFAR experiments
(Zhang, Zheng, Zhou, Lu, "Bort", ICLR 2023, and the TPAMI 2026 extension
"Alignment-Invertibility Regularization for Explainable Neural Networks"):

.. code-block:: text

  conv 5×5 (pad 1) → act → conv 2×2 stride 2 → conv 4×4 (pad 1) → act
  → conv 2×2 stride 2 → conv 3×3 (pad 1) → act → global max pool → Linear

Every convolution keeps ``out ≤ in · k²`` (its Bort matrix ``out × in·k²``
is square or narrow), so each kernel can be exactly row-orthogonal and each
conv is inverted by its scaled transpose. The global max pool is not
invertible: backtracking (:func:`bort_jax.explain.backtrack`) starts below
it, at :attr:`SimpleCNN.feature_index`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from flax import nnx

from bort_jax import validation
from bort_jax.models.invertible import GlobalMaxPool
from bort_jax.models.invertible import InvertibleSequential
from bort_jax.models.invertible import LeakyReLU
from bort_jax.models.invertible import ReLU

#: The output channels of the five convolutions, per dataset.
PRESETS: dict[str, tuple[int, ...]] = {
    "mnist": (8, 24, 288, 864, 2592),
    "cifar": (24, 64, 512, 1536, 4608),
}

#: One example's shape per preset.
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (28, 28, 1),
    "cifar": (32, 32, 3),
}

#: The five convolutions: (window, stride, padding), in order.
CONVOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (5, 1, 1), (2, 2, 0), (4, 1, 1), (2, 2, 0), (3, 1, 1),
)

ACTIVATIONS = ("leaky_relu", "relu")


def simple_cnn_widths(
    preset: str = "mnist",
    width_multiplier: float = 1.0,
    in_features: int | None = None,
) -> tuple[int, ...]:
  """The five convolutions' widths: a preset scaled by a multiplier.

  Each width is ``max(1, round(width · multiplier))``, then capped at
  ``in · k²`` of its convolution so that ``out ≤ in · k²`` holds after
  rounding (and for the first convolution, whose input is the image).

  Args:
    preset: ``"mnist"`` or ``"cifar"``.
    width_multiplier: scales every width (``< 1`` for CPU-sized runs).
    in_features: the image channels (default: the preset's).

  Returns:
    Five positive ints.

  Examples:
    >>> simple_cnn_widths("mnist")
    (8, 24, 288, 864, 2592)
    >>> simple_cnn_widths("mnist", 1 / 16)
    (1, 2, 18, 54, 162)
  """
  validation.check_choice("preset", preset, tuple(PRESETS))
  width_multiplier = validation.check_real(
      "width_multiplier", width_multiplier, low=0, low_inclusive=False)
  if in_features is None:
    in_features = INPUT_SHAPES[preset][-1]
  widths = []
  features = validation.check_positive_int("in_features", in_features)
  for width, (window, _, _) in zip(PRESETS[preset], CONVOLUTIONS):
    width = max(1, round(width * width_multiplier))
    width = min(width, features * window * window)
    widths.append(width)
    features = width
  return tuple(widths)


def _activation(name: str, negative_slope: float) -> nnx.Module:
  return LeakyReLU(negative_slope) if name == "leaky_relu" else ReLU()


def _check_sizes(input_shape: tuple[int, ...]) -> None:
  """Every convolution's output must have at least one pixel."""
  height, width = input_shape[:2]
  for window, stride, pad in CONVOLUTIONS:
    height = (height + 2 * pad - window) // stride + 1
    width = (width + 2 * pad - window) // stride + 1
    if min(height, width) < 1:
      raise ValueError(
          f"input_shape {input_shape} is too small for SimpleCNN's "
          "convolutions; pass images of at least 8×8 pixels.")


class SimpleCNN(InvertibleSequential):
  """The authors' SimpleCNN, a backtrackable :class:`InvertibleSequential`.

  ``layers``: ``0`` conv 5×5 → ``1`` act → ``2`` conv 2×2/2 → ``3`` conv 4×4
  → ``4`` act → ``5`` conv 2×2/2 → ``6`` conv 3×3 → ``7`` act → ``8``
  :class:`GlobalMaxPool` → ``9`` ``nnx.Linear``. The 5×5, 4×4 and 3×3
  convolutions pad by 1, the stride-2 ones do not. On 28×28 MNIST the
  feature maps are 26, 13, 12, 6, 6 pixels wide; on 32×32 CIFAR 30, 15, 14,
  7, 7.

  Backtracking starts at :attr:`feature_index` (``7``, the top activation,
  below the max pool), e.g. ``explain.reconstruct(model, x,
  model.feature_index)`` or ``explain.backtrack_saliency(model, x,
  model.feature_index, top_k=256)`` (the authors' saliency setting, which
  needs the wide top layer). Inverting the max pool raises an error naming
  it.

  Args:
    preset: ``"mnist"`` (widths 8, 24, 288, 864, 2592; 28×28×1 inputs) or
      ``"cifar"`` (24, 64, 512, 1536, 4608; 32×32×3).
    num_classes: the number of classes.
    width_multiplier: scales every width (see :func:`simple_cnn_widths`),
      e.g. ``1/8`` for CPU-sized runs.
    widths: five explicit widths instead (``out ≤ in · k²`` is then up to
      you).
    input_shape: one image's shape ``(H, W, C)`` (default: the preset's).
    activation: ``"leaky_relu"`` (exactly invertible, the default) or
      ``"relu"``; for the authors' guided ReLU, use ``"relu"`` and backtrack
      with ``relu="guided"``.
    negative_slope: the LeakyReLU slope.
    kernel_init: the kernels' initializer (default: Flax's).
    rngs: the NNX random streams.

  Attributes:
    widths: the five convolutions' widths.
    stage_ends: the indices of the three activations ``(1, 4, 7)``.
    feature_index: ``7``, the layer to backtrack from.
    pool_index: ``8``, the global max pool.

  Raises:
    ValueError: for an unknown preset or activation, a bad multiplier or
      widths, or an input too small for the convolutions.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax import explain
    >>> model = nnx.eval_shape(lambda: SimpleCNN(  # abstract: shapes only
    ...     "mnist", width_multiplier=1 / 16, rngs=nnx.Rngs(0)))
    >>> model.widths
    (1, 2, 18, 54, 162)
    >>> x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    >>> nnx.eval_shape(lambda m, x: m(x), model, x).shape
    (2, 10)
    >>> def reconstruct(model, x):  # from below the global max pool
    ...   return explain.reconstruct(model, x, model.feature_index)
    >>> nnx.eval_shape(reconstruct, model, x).shape
    (2, 28, 28, 1)
  """

  def __init__(
      self,
      preset: str = "mnist",
      num_classes: int = 10,
      *,
      width_multiplier: float = 1.0,
      widths: Sequence[int] | None = None,
      input_shape: Sequence[int] | None = None,
      activation: str = "leaky_relu",
      negative_slope: float = 0.1,
      kernel_init: Callable | None = None,
      rngs: nnx.Rngs,
  ):
    validation.check_choice("preset", preset, tuple(PRESETS))
    num_classes = validation.check_positive_int("num_classes", num_classes)
    input_shape = tuple(INPUT_SHAPES[preset] if input_shape is None
                        else input_shape)
    if len(input_shape) != 3:
      raise ValueError(
          f"input_shape must be (H, W, C), got {input_shape}; pass one "
          "image's shape without the batch axis.")
    if widths is None:
      widths = simple_cnn_widths(preset, width_multiplier, input_shape[-1])
    else:
      widths = tuple(widths)
      if len(widths) != len(CONVOLUTIONS):
        raise ValueError(
            f"widths must have {len(CONVOLUTIONS)} entries (one per "
            f"convolution), got {widths}.")
      widths = tuple(validation.check_positive_int(f"widths[{i}]", w)
                     for i, w in enumerate(widths))
    validation.check_choice("activation", activation, ACTIVATIONS)
    _check_sizes(input_shape)
    extra = {} if kernel_init is None else {"kernel_init": kernel_init}
    features = input_shape[-1]
    layers: list[nnx.Module] = []
    stage_ends = []
    for out, (window, stride, pad) in zip(widths, CONVOLUTIONS):
      layers.append(nnx.Conv(
          features, out, (window, window), strides=(stride, stride),
          padding=((pad, pad), (pad, pad)), rngs=rngs, **extra))
      if stride == 1:
        layers.append(_activation(activation, negative_slope))
        stage_ends.append(len(layers) - 1)
      features = out
    self.pool_index = len(layers)
    layers.append(GlobalMaxPool())
    layers.append(nnx.Linear(features, num_classes, rngs=rngs, **extra))
    super().__init__(layers, input_shape)
    self.widths = widths
    self.stage_ends = tuple(stage_ends)
    self.feature_index = self.pool_index - 1
    self.activation = activation


def conv_fan_ins(model: SimpleCNN) -> tuple[tuple[int, int], ...]:
  """``(out, in · k²)`` of each convolution: ``out ≤ in · k²`` allows Bort.

  Examples:
    >>> from flax import nnx
    >>> model = nnx.eval_shape(lambda: SimpleCNN(rngs=nnx.Rngs(0)))
    >>> conv_fan_ins(model)[0]
    (8, 25)
  """
  pairs = []
  for layer in model.layers:
    if isinstance(layer, nnx.Conv):
      *window, group_in, out = layer.kernel.shape
      pairs.append((out, group_in * math.prod(window)))
  return tuple(pairs)

"""A CIFAR-style ResNet-18 in Flax NNX (3×3 stem, no max-pool, BatchNorm)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (Flax keeps the old value's
# weight); Flax's default 0.99 is too slow for short runs.
_BN_MOMENTUM = 0.9


def _conv(in_channels: int, out_channels: int, size: int, stride: int,
          rngs: nnx.Rngs) -> nnx.Conv:
  # Explicit symmetric padding: "SAME" pads (0, 1) for stride 2, PyTorch (1, 1).
  pad = (size - 1) // 2
  return nnx.Conv(
      in_channels, out_channels, (size, size), strides=stride,
      padding=((pad, pad), (pad, pad)), use_bias=False,
      kernel_init=nnx.initializers.he_normal(), rngs=rngs,
  )


class BasicBlock(nnx.Module):
  """Two 3×3 convolutions with BatchNorm and an identity or 1×1 shortcut.

  Args:
    in_channels: input channels.
    out_channels: output channels.
    stride: the first convolution's (and the shortcut's) stride.
    rngs: the random streams for initialisation.
  """

  def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
               rngs: nnx.Rngs):
    self.conv1 = _conv(in_channels, out_channels, 3, stride, rngs)
    self.bn1 = nnx.BatchNorm(out_channels, momentum=_BN_MOMENTUM, rngs=rngs)
    self.conv2 = _conv(out_channels, out_channels, 3, 1, rngs)
    self.bn2 = nnx.BatchNorm(out_channels, momentum=_BN_MOMENTUM, rngs=rngs)
    if stride != 1 or in_channels != out_channels:
      self.shortcut = _conv(in_channels, out_channels, 1, stride, rngs)
      self.shortcut_bn = nnx.BatchNorm(out_channels, momentum=_BN_MOMENTUM,
                                       rngs=rngs)
    else:
      self.shortcut = None
      self.shortcut_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.shortcut is not None:
      x = self.shortcut_bn(self.shortcut(x))
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """A CIFAR-style ResNet of :class:`BasicBlock` stages.

  A 3×3 stride-1 stem (no max-pool, as for 32×32 inputs), stages of widths
  ``width · (1, 2, 4, 8)`` (stride 2 from the second stage on), global
  average pooling and a linear classifier. Every ``nnx.Conv`` kernel
  ``(kh, kw, in, out)`` and the classifier's kernel are Bort parameters under
  the default selection; BatchNorm scales and biases are not.

  Args:
    stage_sizes: the number of blocks per stage (``(2, 2, 2, 2)``: ResNet-18).
    num_classes: the number of outputs (logits).
    in_channels: the input's channels (3 for CIFAR, 1 for MNIST).
    width: the first stage's width (64 in the paper's ResNet-18).
    rngs: the random streams for initialisation.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.resnet import ResNet
    >>> model = nnx.eval_shape(lambda: ResNet(
    ...     (1, 1), num_classes=10, in_channels=1, width=4, rngs=nnx.Rngs(0)))
    >>> images = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    >>> nnx.eval_shape(lambda m, x: m(x), model, images).shape
    (2, 10)
    >>> model.blocks[1].shortcut.kernel.shape  # 1x1, stride 2, 4 -> 8
    (1, 1, 4, 8)

    Call ``model.eval()`` before evaluating, so BatchNorm uses its running
    averages, and ``model.train()`` to train again.
  """

  def __init__(
      self,
      stage_sizes: Sequence[int] = (2, 2, 2, 2),
      num_classes: int = 10,
      in_channels: int = 3,
      width: int = 64,
      *,
      rngs: nnx.Rngs,
  ):
    self.stem = _conv(in_channels, width, 3, 1, rngs)
    self.stem_bn = nnx.BatchNorm(width, momentum=_BN_MOMENTUM, rngs=rngs)
    blocks = []
    channels = width
    for stage, size in enumerate(stage_sizes):
      out_channels = width * 2**stage
      for i in range(size):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(BasicBlock(channels, out_channels, stride, rngs=rngs))
        channels = out_channels
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(channels, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 64,
    *,
    rngs: nnx.Rngs,
) -> ResNet:
  """The CIFAR-style ResNet-18: four stages of two :class:`BasicBlock`.

  Args:
    num_classes: the number of outputs (logits).
    in_channels: the input's channels.
    width: the first stage's width (64 in the paper; smaller for tests).
    rngs: the random streams for initialisation.

  Returns:
    A :class:`ResNet` with 17 convolutions in its trunk, 3 shortcut
    convolutions and a linear classifier: 21 Bort kernels.

  Examples:
    Shapes only (``nnx.eval_shape`` allocates and computes nothing):

    >>> import jax, jax.numpy as jnp, bort_jax
    >>> from flax import nnx
    >>> from bort_jax.models.resnet import resnet18
    >>> model = nnx.eval_shape(lambda: resnet18(10, 3, rngs=nnx.Rngs(0)))
    >>> images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    >>> nnx.eval_shape(lambda m, x: m(x), model, images).shape
    (2, 10)
    >>> params = nnx.state(model, nnx.Param)
    >>> len(jax.eval_shape(bort_jax.orthogonality_error, params))
    21
  """
  return ResNet((2, 2, 2, 2), num_classes, in_channels, width, rngs=rngs)

"""Models by their command-line names: one table of builders.

The models themselves live in :mod:`bort_jax.models`; each builder here maps
an image shape, a class count and an optional width to one of them, and
imports it only when asked for.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from flax import nnx

from bort_jax.experiments import data as data_lib


def _mlp(shape, num_classes, width, rngs):
  from bort_jax.models.mlp import MLP
  w = width or 256
  return MLP(int(np.prod(shape)), (w, w), num_classes, rngs=rngs)


def _invertible_mlp(shape, num_classes, width, rngs):
  from bort_jax.models.invertible import InvertibleMLP
  w = width or 256
  return InvertibleMLP(tuple(shape), (w, w), num_classes, rngs=rngs)


def _cnn(shape, num_classes, width, rngs):
  from bort_jax.models.invertible import InvertibleCNN
  w = width or 8
  return InvertibleCNN(tuple(shape), (w, 4 * w), (128,), num_classes,
                       rngs=rngs)


def _resnet18(shape, num_classes, width, rngs):
  from bort_jax.models.resnet import resnet18
  return resnet18(num_classes, shape[-1], width or 64, rngs=rngs)


def _vit(shape, num_classes, width, rngs):
  from bort_jax.models.vit import ViT
  dim = width or 192
  heads = max(1, dim // 64)
  while dim % heads:
    heads -= 1
  return ViT(shape[0], 4, shape[-1], num_classes, dim=dim, depth=6,
             num_heads=heads, rngs=rngs)


def _simple_cnn(shape, num_classes, width, rngs):
  from bort_jax.models.simple_cnn import PRESETS, SimpleCNN
  preset = "mnist" if shape[-1] == 1 else "cifar"
  multiplier = 1.0 if width is None else width / PRESETS[preset][0]
  return SimpleCNN(preset, num_classes, width_multiplier=multiplier,
                   input_shape=shape, rngs=rngs)


Builder = Callable[[tuple, int, "int | None", nnx.Rngs], nnx.Module]

#: name -> builder ``(input_shape, num_classes, width, rngs) -> nnx.Module``.
#: ``width`` is the MLPs' hidden units (default 256), the CNN's first-stage
#: channels (8), ResNet's first-stage channels (64) or the ViT's token width
#: (192); the ViT uses patch 4 and 6 blocks. ``simple-cnn`` is the authors'
#: SimpleCNN (:class:`bort_jax.models.simple_cnn.SimpleCNN`, preset ``mnist``
#: for one channel, ``cifar`` for three); its ``width`` is the first
#: convolution's channels (8 or 24 at the authors' widths) and the other four
#: scale with it.
BUILDERS: dict[str, Builder] = {
    "mlp": _mlp,
    "invertible-mlp": _invertible_mlp,
    "cnn": _cnn,
    "resnet18": _resnet18,
    "vit": _vit,
    "simple-cnn": _simple_cnn,
}

#: The model names, in the order the command line lists them.
MODELS: tuple[str, ...] = tuple(BUILDERS)


def make_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width: int | None = None,
    rngs: nnx.Rngs,
) -> nnx.Module:
  """A classifier by its command-line name (see :data:`BUILDERS`).

  Args:
    name: one of :data:`MODELS`.
    input_shape: one image's ``(H, W, C)``.
    num_classes: the number of classes.
    width: the model's width, or ``None`` for its default.
    rngs: the random streams.

  Returns:
    An ``nnx.Module`` mapping ``(N, H, W, C)`` images to ``(N, num_classes)``
    logits.

  Raises:
    ValueError: for an unknown name.

  Examples:
    >>> from flax import nnx
    >>> from bort_jax.experiments.models import make_model
    >>> model = make_model("mlp", (8, 8, 1), 10, width=32, rngs=nnx.Rngs(0))
    >>> type(model).__name__
    'MLP'
  """
  builder = BUILDERS.get(name)
  if builder is None:
    raise ValueError(
        f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")
  return builder(tuple(input_shape), num_classes, width, rngs)


def num_classes(dataset: data_lib.Dataset) -> int:
  """The class count: at least :data:`data.NUM_CLASSES`, more if labelled."""
  top = max(int(np.max(dataset.train.labels)), int(np.max(dataset.test.labels)))
  return max(top + 1, data_lib.NUM_CLASSES)

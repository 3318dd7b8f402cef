"""Models by their command-line names: a table of builders, and their heads.

The models themselves live in :mod:`bort_jax.models`; each builder here maps
an image shape, a class count and an optional width to one of them, and
imports it only when asked for. :data:`HEAD_IS_LAST_LAYER` says where each
keeps its classifier head, which ``bort_head=False`` leaves out of Bort
(:func:`bort_mask`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
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


#: The models that keep their classifier head (their last linear layer, the
#: logits) as the last of ``model.layers`` (the invertible sequential
#: models); the others keep it as ``model.head``.
HEAD_IS_LAST_LAYER = frozenset({"invertible-mlp", "cnn", "simple-cnn"})


def head_path(name: str, model: nnx.Module) -> tuple[str | int, ...]:
  """The path of a model's classifier head, its last ``nnx.Linear``.

  Args:
    name: the model's name (one of :data:`MODELS`).
    model: the model :func:`make_model` built under that name.

  Returns:
    The attribute path, e.g. ``("head",)`` or ``("layers", 5)``; the head's
    kernel is ``path + ("kernel",)`` in ``nnx.state(model, nnx.Param)``.

  Raises:
    ValueError: for an unknown name, or a model whose head is not an
      ``nnx.Linear`` (not the model that name builds).

  Examples:
    >>> from flax import nnx
    >>> from bort_jax.experiments.models import head_path, make_model
    >>> model = make_model("invertible-mlp", (8, 8, 1), 10, width=16,
    ...                    rngs=nnx.Rngs(0))
    >>> head_path("invertible-mlp", model)
    ('layers', 5)
  """
  if name not in BUILDERS:
    raise ValueError(
        f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")
  path = (("layers", len(model.layers) - 1) if name in HEAD_IS_LAST_LAYER
          else ("head",))
  node = model
  for key in path:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  if not isinstance(node, nnx.Linear):
    raise ValueError(
        f"the head of {name!r} at {'/'.join(map(str, path))} is a "
        f"{type(node).__name__}, not an nnx.Linear; pass the model "
        f"make_model({name!r}, ...) builds.")
  return path


def bort_mask(name: str, model: nnx.Module, *, head: bool = True
              ) -> Callable[[Any], Any] | None:
  """The ``bort_mask`` of a run: ``None``, or one leaving the head out.

  Args:
    name: the model's name.
    model: the model.
    head: whether Bort may act on the classifier head (:func:`head_path`).

  Returns:
    ``None`` when ``head`` (the default selection stands), else a callable
    ``params -> tree of bool``, false at the head's parameters, for
    :func:`bort_jax.add_bort_correction`'s and
    :func:`bort_jax.project_to_constraint`'s ``bort_mask``.

  Examples:
    >>> from flax import nnx
    >>> from bort_jax.experiments.models import bort_mask, make_model
    >>> model = make_model("mlp", (8, 8, 1), 10, width=16, rngs=nnx.Rngs(0))
    >>> mask = bort_mask("mlp", model, head=False)
    >>> mask(nnx.to_pure_dict(nnx.state(model, nnx.Param)))["head"]
    {'bias': False, 'kernel': False}
  """
  if head:
    return None
  prefix = head_prefix(name, model) + "/"

  def mask(params):  # the trees nnx.Optimizer hands over end in /value
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not (jax.tree_util.keystr(
            path, simple=True, separator="/") + "/").startswith(prefix),
        params)

  return mask


def head_prefix(name: str, model: nnx.Module) -> str:
  """The head's path as the prefix of its keys in
  :func:`bort_jax.orthogonality_error` (``"head"``, ``"layers/5"``)."""
  return "/".join(str(key) for key in head_path(name, model))


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

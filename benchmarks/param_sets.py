"""Parameter shapes of ResNet-50, DeiT-S and ViT-B/16 in Flax layout.

Kernels are named ``kernel`` (output units last, attention kernels as
``nnx.MultiHeadAttention`` lays them out) so Bort's default selection applies;
norm scales and biases are 1-D leaves that Bort leaves alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import bort_jax


def resnet50() -> dict:
  params = {"stem": {"kernel": (7, 7, 3, 64), "scale": (64,), "bias": (64,)}}
  in_ch = 64
  for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6),
                                           (512, 3)]):
    for block in range(blocks):
      name = f"stage{stage}_block{block}"
      layer = {
          "conv1": {"kernel": (1, 1, in_ch, width)},
          "conv2": {"kernel": (3, 3, width, width)},
          "conv3": {"kernel": (1, 1, width, 4 * width)},
          "bn1": {"scale": (width,), "bias": (width,)},
          "bn2": {"scale": (width,), "bias": (width,)},
          "bn3": {"scale": (4 * width,), "bias": (4 * width,)},
      }
      if block == 0:
        layer["downsample"] = {"kernel": (1, 1, in_ch, 4 * width)}
      params[name] = layer
      in_ch = 4 * width
  params["head"] = {"kernel": (2048, 1000), "bias": (1000,)}
  return params


def vit(dim: int, depth: int, heads: int, mlp: int, patch: int = 16,
        classes: int = 1000, tokens: int = 197) -> dict:
  head_dim = dim // heads
  params = {
      "patch": {"kernel": (patch, patch, 3, dim), "bias": (dim,)},
      "cls": {"embedding": (1, dim)},
      "pos": {"embedding": (tokens, dim)},
  }
  for i in range(depth):
    attention = {name: {"kernel": (dim, heads, head_dim),
                        "bias": (heads, head_dim)}
                 for name in ("query", "key", "value")}
    attention["out"] = {"kernel": (heads, head_dim, dim), "bias": (dim,)}
    params[f"block{i}"] = {
        "norm1": {"scale": (dim,), "bias": (dim,)},
        "attention": attention,
        "norm2": {"scale": (dim,), "bias": (dim,)},
        "fc1": {"kernel": (dim, mlp), "bias": (mlp,)},
        "fc2": {"kernel": (mlp, dim), "bias": (dim,)},
    }
  params["head"] = {"kernel": (dim, classes), "bias": (classes,)}
  return params


PARAM_SETS = {
    "resnet50": resnet50,
    "deit_s": lambda: vit(384, 12, 6, 1536),
    "vit_b16": lambda: vit(768, 12, 12, 3072),
}


def materialise(shapes: dict, seed: int = 0, dtype=jnp.float32) -> dict:
  """Random parameters (fan-in scaled normal) of the given shapes."""
  leaves, treedef = jax.tree.flatten(
      shapes, is_leaf=lambda x: isinstance(x, tuple))
  rng = np.random.default_rng(seed)
  arrays = []
  for shape in leaves:
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    arrays.append(jnp.asarray(
        rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in), dtype))
  return jax.tree.unflatten(treedef, arrays)


def _axes(axes, ndim: int) -> tuple[int, ...]:
  axes = () if axes is None else (axes,) if isinstance(axes, int) else axes
  return tuple(a % ndim for a in axes)


def matrix_shape(shape: tuple[int, ...],
                 dims: bort_jax.BortDimensionNumbers) -> tuple[int, int, int]:
  """``(batch, m, n)``: the matrices Bort sees in a leaf, from its numbers.

  As :class:`bort_jax.BortDimensionNumbers` documents them: with
  ``reduction_axis=None`` every unnamed axis is fan-in, otherwise every
  unnamed axis is a batch axis.

  Examples:
    >>> matrix_shape((3, 3, 16, 32), bort_jax.BortDimensionNumbers())
    (1, 32, 144)
    >>> matrix_shape((768, 12, 64), bort_jax.BortDimensionNumbers(
    ...     reduction_axis=0, output_axis=(1, 2)))
    (1, 768, 768)
  """
  ndim = len(shape)
  output = _axes(dims.output_axis, ndim)
  if dims.reduction_axis is None:
    batch = _axes(dims.batch_axis, ndim)
    reduction = tuple(a for a in range(ndim) if a not in output + batch)
  else:
    reduction = _axes(dims.reduction_axis, ndim)
    batch = tuple(a for a in range(ndim) if a not in output + reduction)
  size = lambda axes: math.prod(shape[a] for a in axes)
  return size(batch), size(output), size(reduction)


#: Multiply-adds of one Bort matrix's correction, ``m`` units of fan-in
#: ``n``: the Gram, then its product with the matrix (the smaller Gram for
#: the full row modes, which take the fan-in's on more units than fan-in).
#: The norm modes' elementwise work counts as none.
_SMALLER_GRAM = lambda m, n: 2 * min(m, n) * m * n
PRODUCT_MACS = {
    "l2-full": _SMALLER_GRAM,
    "l1-fullrow": _SMALLER_GRAM,
    "huber-fullrow": _SMALLER_GRAM,
    "l1-fullcol": lambda m, n: 2 * n * n * m,
    "huber-fullcol": lambda m, n: 2 * n * n * m,
}


def matrix_flop(mode: str, m: int, n: int) -> float:
  """One (m, n) matrix's correction in floating-point operations (2 per
  multiply-add, :data:`PRODUCT_MACS`); ``4·m·n`` for the norm modes, whose
  elementwise work is memory-bound.

  >>> matrix_flop("l1-fullrow", 1024, 256) == 4 * 256 * 1024 * 256
  True
  """
  macs = PRODUCT_MACS.get(mode)
  return 2.0 * macs(m, n) if macs else 4.0 * m * n


def correction_flop(params: dict, mode: str) -> float:
  """The correction's floating-point operations (:func:`matrix_flop`)."""
  total = 0.0
  # The leaves Bort's default selection takes, as a user reads them.
  selection = bort_jax.flax_dimension_numbers(params)
  is_dims = lambda d: d is None or isinstance(d, bort_jax.BortDimensionNumbers)
  for leaf, dims in zip(jax.tree.leaves(params),
                        jax.tree.leaves(selection, is_leaf=is_dims)):
    if dims is None:
      continue
    batch, m, n = matrix_shape(tuple(leaf.shape), dims)
    total += batch * matrix_flop(mode, m, n)
  return total


def count(params: dict) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

"""Parameter shapes of ResNet-50, DeiT-S and ViT-B/16 in Flax layout.

Kernels are named ``kernel`` (output units last, attention kernels as
``nnx.MultiHeadAttention`` lays them out) so Bort's default selection applies;
norm scales and biases are 1-D leaves that Bort leaves alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


def correction_flop(params: dict, mode: str) -> float:
  """The correction's floating-point operations (2 per multiply-add)."""
  from bort_jax._src.dimension_numbers import resolve_views
  total = 0.0
  for view in resolve_views(None, params):
    if view is None:
      continue
    batch, m, n = view.matrix_shape
    if mode == "l2-full":
      total += batch * 4.0 * min(m, n) * m * n
    elif mode == "l1-fullrow":
      total += batch * 4.0 * m * m * n
    elif mode == "l1-fullcol":
      total += batch * 4.0 * n * n * m
    else:
      total += batch * 4.0 * m * n
  return total


def count(params: dict) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

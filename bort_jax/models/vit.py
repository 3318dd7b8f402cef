"""A small Vision Transformer (DeiT-style) in Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class MLPBlock(nnx.Module):
  """The transformer's feed-forward block: ``fc2(gelu(fc1(x)))``.

  Args:
    dim: the token width.
    hidden_dim: the hidden width.
    rngs: the random streams for initialisation.
  """

  def __init__(self, dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden_dim, rngs=rngs)
    self.fc2 = nnx.Linear(hidden_dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(nnx.gelu(self.fc1(x)))


class EncoderBlock(nnx.Module):
  """A pre-norm transformer block: attention and MLP with residuals.

  Args:
    dim: the token width.
    num_heads: attention heads (``dim`` must divide by it).
    mlp_ratio: the MLP's hidden width over ``dim``.
    rngs: the random streams for initialisation.
  """

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, *,
               rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
        num_heads=num_heads, in_features=dim, qkv_features=dim,
        out_features=dim, decode=False, rngs=rngs,
    )
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
    self.mlp = MLPBlock(dim, mlp_ratio * dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
  """A Vision Transformer with a class token (DeiT without distillation).

  Images ``(N, H, W, C)`` are cut into ``patch_size``² patches by a strided
  ``nnx.Conv`` (a linear map per patch), a class token and learned position
  embeddings are added, ``depth`` pre-norm :class:`EncoderBlock` follow and a
  linear head reads the class token. Bort's default selection picks the patch
  embedding, every attention ``query``/``key``/``value``/``out`` kernel (with
  their head axes declared by :func:`bort_jax.flax_dimension_numbers`), the
  MLP kernels and the head; the class token, position embeddings, norms and
  biases are not Bort parameters.

  Args:
    image_size: the input's height and width (divisible by ``patch_size``).
    patch_size: the patch side (4 for 32×32 or 28×28 images).
    in_channels: the input's channels.
    num_classes: the number of outputs (logits).
    dim: the token width (192 for DeiT-Tiny).
    depth: the number of encoder blocks.
    num_heads: attention heads.
    mlp_ratio: the MLP's hidden width over ``dim``.
    rngs: the random streams for initialisation.

  Examples:
    Shapes only (``nnx.eval_shape`` allocates and computes nothing):

    >>> import jax, jax.numpy as jnp, bort_jax
    >>> from flax import nnx
    >>> from bort_jax.models.vit import ViT
    >>> model = nnx.eval_shape(lambda: ViT(
    ...     32, 4, 3, 10, dim=192, depth=6, num_heads=3, rngs=nnx.Rngs(0)))
    >>> images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    >>> nnx.eval_shape(lambda m, x: m(x), model, images).shape
    (2, 10)
    >>> params = nnx.state(model, nnx.Param)
    >>> sorted(jax.eval_shape(bort_jax.orthogonality_error, params))[:4]
    ['blocks/0/attn/key/kernel', 'blocks/0/attn/out/kernel', 'blocks/0/attn/query/kernel', 'blocks/0/attn/value/kernel']
  """

  def __init__(
      self,
      image_size: int = 32,
      patch_size: int = 4,
      in_channels: int = 3,
      num_classes: int = 10,
      *,
      dim: int = 192,
      depth: int = 6,
      num_heads: int = 3,
      mlp_ratio: int = 4,
      rngs: nnx.Rngs,
  ):
    if image_size % patch_size:
      raise ValueError(
          f"ViT: image_size {image_size} is not divisible by patch_size "
          f"{patch_size}."
      )
    if dim % num_heads:
      raise ValueError(f"ViT: dim {dim} is not divisible by {num_heads} heads.")
    num_patches = (image_size // patch_size) ** 2
    self.patch_size = patch_size
    self.image_size = image_size
    self.patch_embed = nnx.Conv(
        in_channels, dim, (patch_size, patch_size), strides=patch_size,
        padding="VALID", rngs=rngs,
    )
    self.cls_token = nnx.Param(jnp.zeros((1, 1, dim)))
    self.pos_embed = nnx.Param(
        0.02 * jax.random.truncated_normal(
            rngs.params(), -2.0, 2.0, (1, num_patches + 1, dim)
        )
    )
    self.blocks = nnx.List([
        EncoderBlock(dim, num_heads, mlp_ratio, rngs=rngs)
        for _ in range(depth)
    ])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    size = self.image_size
    if jnp.ndim(x) != 4 or tuple(jnp.shape(x)[1:3]) != (size, size):
      # The position embeddings hold one token per patch of that size.
      raise ValueError(
          f"ViT: images must be (N, {size}, {size}, C), the image_size it "
          f"was built for, got shape {jnp.shape(x)}.")
    tokens = self.patch_embed(x)
    n = tokens.shape[0]
    tokens = tokens.reshape(n, -1, tokens.shape[-1])
    cls = jnp.broadcast_to(self.cls_token[...], (n, 1, tokens.shape[-1]))
    x = jnp.concatenate([cls, tokens], axis=1) + self.pos_embed[...]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)[:, 0])

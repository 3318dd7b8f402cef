"""The example models: shapes, Bort's default selection, a Bort-AdamW step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bort_jax
from bort_jax.models.mlp import MLP
from bort_jax.models.resnet import ResNet
from bort_jax.models.resnet import resnet18
from bort_jax.models.vit import ViT


def _rngs():
  # RBG keys: initialisers compile several times faster on CPU than threefry.
  return nnx.Rngs(jax.random.key(0, impl="rbg"))


def _bort_paths(model) -> list[str]:
  params = nnx.state(model, nnx.Param)
  return sorted(jax.eval_shape(bort_jax.orthogonality_error, params))


def _output_shape(model, shape):
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  return nnx.eval_shape(lambda m, x: m(x), model, images).shape


def test_mlp_selection_and_shapes():
  model = nnx.eval_shape(lambda: MLP(784, (256, 128), 10, rngs=nnx.Rngs(0)))
  assert _bort_paths(model) == [
      "head/kernel", "hidden/0/kernel", "hidden/1/kernel"]
  assert _output_shape(model, (3, 28, 28, 1)) == (3, 10)
  assert model.hidden[0].kernel.shape == (784, 256)  # (in, out): Flax layout


def test_resnet18_selection_and_shapes():
  model = nnx.eval_shape(lambda: resnet18(10, 3, rngs=nnx.Rngs(0)))
  expected = ["head/kernel", "stem/kernel"]
  for b in range(8):
    expected += [f"blocks/{b}/conv1/kernel", f"blocks/{b}/conv2/kernel"]
  expected += [f"blocks/{b}/shortcut/kernel" for b in (2, 4, 6)]
  assert _bort_paths(model) == sorted(expected)
  assert _output_shape(model, (2, 32, 32, 3)) == (2, 10)
  assert model.stem.kernel.shape == (3, 3, 3, 64)
  assert model.blocks[7].conv2.kernel.shape == (3, 3, 512, 512)
  # BatchNorm scales/biases and statistics are not Bort parameters.
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  assert any("bn1" in jax.tree_util.keystr(p) for p, _ in leaves)
  # About 11.2M parameters, as the CIFAR ResNet-18.
  size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      nnx.state(model, nnx.Param)))
  assert 11_000_000 < size < 11_300_000


def test_vit_selection_and_shapes():
  depth = 2
  model = nnx.eval_shape(lambda: ViT(
      32, 4, 3, 10, dim=192, depth=depth, num_heads=3, rngs=nnx.Rngs(0)))
  expected = ["head/kernel", "patch_embed/kernel"]
  for b in range(depth):
    expected += [f"blocks/{b}/attn/{n}/kernel"
                 for n in ("query", "key", "value", "out")]
    expected += [f"blocks/{b}/mlp/fc1/kernel", f"blocks/{b}/mlp/fc2/kernel"]
  assert _bort_paths(model) == sorted(expected)
  assert _output_shape(model, (2, 32, 32, 3)) == (2, 10)
  assert _output_shape(model, (2, 32, 32, 3)) == (2, 10)
  assert model.pos_embed.shape == (1, 8 * 8 + 1, 192)
  # The attention kernels are viewed with their head axes as output units.
  views = bort_jax.flax_dimension_numbers(nnx.state(model, nnx.Param))
  q = views["blocks"][0]["attn"]["query"]["kernel"]
  out = views["blocks"][0]["attn"]["out"]["kernel"]
  assert (q.reduction_axis, q.output_axis) == (0, (1, 2))
  assert (out.reduction_axis, out.output_axis) == ((0, 1), 2)


def test_vit_rejects_bad_patch_size():
  with pytest.raises(ValueError, match="divisible by patch_size"):
    ViT(30, 4, 3, 10, dim=16, depth=1, num_heads=2, rngs=nnx.Rngs(0))


def _bort_adamw_steps(model, images, labels, steps=3):
  """Runs jitted Bort-AdamW steps; returns the initial and final losses."""
  optimizer = nnx.Optimizer(
      model, bort_jax.bort_adamw(3e-3, gamma=0.1, mode="l1-fullrow",
                                 amplitude="ada"), wrt=nnx.Param)

  def loss_fn(model):
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  losses = [float(step(model, optimizer)) for _ in range(steps)]
  after = nnx.state(model, nnx.Param)
  for (path, b), a in zip(jax.tree_util.tree_flatten_with_path(before)[0],
                          jax.tree.leaves(after)):
    assert np.all(np.isfinite(a)), path
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), after, before)
  assert all(jax.tree.leaves(changed))
  return losses


def _digits_batch(n=32):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, n).astype(np.int32)
  # Class-dependent blobs: learnable in a few steps.
  images = rng.normal(0, 0.1, (n, 8, 8, 1)).astype(np.float32)
  images[np.arange(n), labels % 8, labels // 2 % 8, 0] += 3.0
  return jnp.asarray(images), jnp.asarray(labels)


def test_bort_adamw_step_mlp():
  images, labels = _digits_batch()
  model = MLP(64, (32,), 10, rngs=_rngs())
  losses = _bort_adamw_steps(model, images, labels, steps=5)
  assert losses[-1] < losses[0]


@pytest.mark.slow
def test_bort_adamw_step_resnet():
  images, labels = _digits_batch()
  # ResNet-18's blocks (stride-2 shortcut included), two stages for speed.
  model = ResNet((1, 1), 10, in_channels=1, width=4, rngs=_rngs())
  stats = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  _bort_adamw_steps(model, images, labels)
  # Training mode updates the BatchNorm statistics.
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                       nnx.state(model, nnx.BatchStat), stats)
  assert all(jax.tree.leaves(moved))
  model.eval()
  logits = nnx.jit(lambda m, x: m(x))(model, images[:2])
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


@pytest.mark.slow
def test_bort_adamw_step_vit():
  images, labels = _digits_batch()
  model = ViT(8, 4, 1, 10, dim=16, depth=1, num_heads=2, rngs=_rngs())
  _bort_adamw_steps(model, images, labels)


def test_vit_names_the_image_size_it_was_built_for():
  # Another size, a missing batch axis or non-square images failed deep in
  # the position embeddings' addition ((2,65,12) and (1,17,12)).
  model = ViT(16, 4, 3, 10, dim=12, depth=1, num_heads=3, rngs=nnx.Rngs(0))
  assert model(jnp.ones((2, 16, 16, 3))).shape == (2, 10)
  for shape in ((2, 32, 32, 3), (2, 16, 12, 3), (16, 16, 3)):
    with pytest.raises(ValueError, match=r"images must be \(N, 16, 16, C\)"):
      model(jnp.ones(shape))

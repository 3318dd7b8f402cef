"""SimpleCNN, the authors' explainability model: shapes, Bort, backtracking."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bort_jax
from bort_jax import explain
from bort_jax.models import simple_cnn
from bort_jax.models.simple_cnn import SimpleCNN


def _rngs(seed=0):
  # RBG keys: initialisers compile several times faster on CPU than threefry.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _abstract(preset, **kwargs):
  return nnx.eval_shape(lambda: SimpleCNN(preset, rngs=nnx.Rngs(0), **kwargs))


def _cache_shapes(model, batch=2):
  x = jax.ShapeDtypeStruct((batch,) + model.input_shape, jnp.float32)
  return [a.shape for a in nnx.eval_shape(lambda m, x: m.forward(x), model, x)]


@pytest.mark.parametrize(
    "preset,widths,sizes",
    [("mnist", (8, 24, 288, 864, 2592), (26, 13, 12, 6, 6)),
     ("cifar", (24, 64, 512, 1536, 4608), (30, 15, 14, 7, 7))],
)
def test_presets_have_the_authors_widths_and_shapes(preset, widths, sizes):
  model = _abstract(preset)
  assert model.widths == widths
  convs = [layer for layer in model.layers if isinstance(layer, nnx.Conv)]
  assert [c.kernel.shape[-1] for c in convs] == list(widths)
  assert [c.kernel.shape[:2] for c in convs] == [
      (5, 5), (2, 2), (4, 4), (2, 2), (3, 3)]
  shapes = _cache_shapes(model)
  conv_outputs = [shapes[i + 1] for i, layer in enumerate(model.layers)
                  if isinstance(layer, nnx.Conv)]
  assert [s[1:] for s in conv_outputs] == [
      (size, size, width) for size, width in zip(sizes, widths)]
  assert shapes[model.pool_index + 1] == (2, widths[-1])
  assert shapes[-1] == (2, 10)
  assert type(model.layers[model.pool_index]).__name__ == "GlobalMaxPool"
  assert model.feature_index == model.pool_index - 1 == 7
  assert model.stage_ends == (1, 4, 7)


@pytest.mark.parametrize("preset", ["mnist", "cifar"])
@pytest.mark.parametrize("multiplier", [1.0, 0.5, 1 / 8, 1 / 16, 1 / 64])
def test_every_conv_keeps_out_at_most_in_times_k_squared(preset, multiplier):
  model = _abstract(preset, width_multiplier=multiplier)
  pairs = simple_cnn.conv_fan_ins(model)
  assert len(pairs) == 5
  for out, fan_in in pairs:
    assert out <= fan_in, pairs
  if multiplier == 1.0:
    first_in = simple_cnn.INPUT_SHAPES[preset][-1]
    assert pairs[0] == (simple_cnn.PRESETS[preset][0], first_in * 25)


@pytest.mark.slow
def test_bort_selects_every_kernel_and_one_authors_step_runs():
  model = SimpleCNN("mnist", width_multiplier=1 / 16, rngs=_rngs())
  paths = sorted(jax.eval_shape(bort_jax.orthogonality_error,
                                nnx.state(model, nnx.Param)))
  assert paths == [f"layers/{i}/kernel" for i in (0, 2, 3, 5, 6, 9)]
  # The authors' MNIST recipe: Bort-SGD, l1-fullrow, c = 1, with DBort.
  tx = bort_jax.bort_sgd(0.005, momentum=0.9, weight_decay=0.005, gamma=0.05,
                         mode="l1-fullrow", amplitude=1.0)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)),
                  jnp.float32)
  labels = jnp.arange(4) % 10

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      logits = model(x)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return ce.mean() + bort_jax.dbort.dbort_loss(logits, weight=1e-3,
                                                   power=0.1)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  before = np.asarray(model.layers[6].kernel[...])
  losses = [float(step(model, optimizer)) for _ in range(2)]
  assert all(np.isfinite(losses))
  assert not np.allclose(model.layers[6].kernel[...], before)


def _orthogonal_rows(rng, m, n):
  q, _ = np.linalg.qr(rng.normal(size=(n, m)))
  return q.T  # (m, n), orthonormal rows


@pytest.mark.slow
def test_backtracking_reconstructs_the_input_of_the_top_conv_stage():
  # A square top conv (16 · 3² = 144 outputs) with orthogonal rows inverts
  # exactly; backtracking the top stage (conv 3×3 → LeakyReLU) from below
  # the max pool gives back its input.
  rng = np.random.default_rng(0)
  model = SimpleCNN("mnist", widths=(2, 4, 8, 16, 144),
                    input_shape=(12, 12, 1), rngs=_rngs())
  top = model.layers[6]
  w = 0.7 * _orthogonal_rows(rng, 144, 144)
  top.kernel[...] = jnp.asarray(w.T.reshape(3, 3, 16, 144), jnp.float32)
  top.bias[...] = jnp.asarray(rng.normal(size=144) * 0.1, jnp.float32)
  x = jnp.asarray(rng.uniform(size=(3, 12, 12, 1)), jnp.float32)

  @nnx.jit
  def run(model, x):
    cache = model.forward(x)
    stage = list(model.layers[6:model.feature_index + 1])
    stage_input = explain.backtrack(stage, cache[model.feature_index + 1], 1,
                                    forward_cache=cache[6:])
    image = explain.reconstruct(model, x, model.feature_index)
    below = explain.backtrack(list(model.layers[:6]), stage_input, 5,
                              forward_cache=cache)
    return cache[6], stage_input, image, below

  top_input, stage_input, image, below = run(model, x)
  np.testing.assert_allclose(stage_input, top_input, atol=1e-5)
  # The whole way down: an image-shaped estimate whose top stage is the
  # exact inverse computed above.
  assert image.shape == x.shape and bool(jnp.all(jnp.isfinite(image)))
  np.testing.assert_allclose(image, below, atol=1e-5)


@pytest.mark.slow
def test_reconstruction_and_saliency_from_below_the_pool_at_a_preset():
  model = SimpleCNN("mnist", width_multiplier=1 / 16,
                    kernel_init=nnx.initializers.orthogonal(),
                    negative_slope=0.5, rngs=_rngs(1))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 28, 28, 1)),
                  jnp.float32)
  image = nnx.jit(lambda m, x: explain.reconstruct(m, x, m.feature_index))(
      model, x)
  assert image.shape == x.shape and bool(jnp.all(jnp.isfinite(image)))
  saliency = nnx.jit(lambda m, x: explain.backtrack_saliency(
      m, x, m.feature_index, top_k=8))(model, x)
  assert saliency.shape == (2, 28, 28)
  assert 0.0 <= float(saliency.min()) and float(saliency.max()) <= 1.0


@pytest.mark.slow
def test_guided_relu_model_backtracks_with_relu_guided():
  model = SimpleCNN("cifar", width_multiplier=1 / 16, activation="relu",
                    input_shape=(8, 8, 3), rngs=_rngs())
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 8, 8, 3)),
                  jnp.float32)

  @nnx.jit(static_argnames="relu")
  def backtrack(model, x, relu):
    cache = model.forward(x)
    return explain.backtrack(model, cache[model.feature_index + 1],
                             model.feature_index, cache, relu=relu)

  guided = backtrack(model, x, "guided")
  passed = backtrack(model, x, "pass")
  assert guided.shape == passed.shape == x.shape
  assert not np.allclose(guided, passed)


def test_inverting_the_global_max_pool_raises_naming_it():
  model = SimpleCNN("mnist", width_multiplier=1 / 16, input_shape=(8, 8, 1),
                    kernel_init=nnx.initializers.zeros_init(), rngs=_rngs())
  # Shapes come from jax.eval_shape of the model: no forward pass needed.
  with pytest.raises(ValueError,
                     match=r"layers\[8\] \(GlobalMaxPool\).*below it"):
    explain.backtrack(model, jnp.ones((1, model.widths[-1])),
                      model.pool_index)
  with pytest.raises(ValueError, match=r"layers\[8\] \(GlobalMaxPool\)"):
    explain.backtrack(model, jnp.ones((1, 10)), -1)  # through the head first


@pytest.mark.parametrize(
    "kwargs,error,match",
    [(dict(preset="imagenet"), ValueError, "preset must be one of"),
     (dict(activation="gelu"), ValueError, "activation must be one of"),
     (dict(width_multiplier=0.0), ValueError, "width_multiplier must be > 0"),
     (dict(widths=(1, 2, 3)), ValueError, "widths must have 5 entries"),
     (dict(widths=(1, 2, 3, 4, 0)), ValueError, r"widths\[4\]"),
     (dict(num_classes=0), ValueError, "num_classes"),
     (dict(input_shape=(7, 7, 1)), ValueError, "at least 8×8"),
     (dict(input_shape=(28, 28)), ValueError, r"input_shape must be \(H, W, C\)")],
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, match):
  with pytest.raises(error, match=match):
    SimpleCNN(rngs=nnx.Rngs(0), **kwargs)

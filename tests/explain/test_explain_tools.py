"""Saliency, attribution metrics, contribution maps, attacks and figures."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

import bort_jax
from bort_jax import explain
from bort_jax.models import invertible


@pytest.fixture(scope="module")
def digits():
  bunch = load_digits()
  images = (bunch.images[..., None] / 16.0).astype(np.float32)
  return images, bunch.target.astype(np.int32)


@pytest.fixture(scope="module")
def trained_cnn(digits):
  """A tiny InvertibleCNN trained on 8×8 digits with Bort-AdamW (300 steps)."""
  images, labels = digits
  model = invertible.InvertibleCNN((8, 8, 1), (4,), (32,), 10, rngs=nnx.Rngs(0))
  tx = bort_jax.bort_adamw(3e-3, gamma=0.1, mode="l1-fullrow", amplitude="ada")
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  order = np.random.default_rng(0).permutation(len(images))
  train = order[:1500]
  for i in range(300):
    batch = train[(i * 64) % 1472:(i * 64) % 1472 + 64]
    step(model, optimizer, jnp.asarray(images[batch]), jnp.asarray(labels[batch]))
  test = order[1500:]
  accuracy = np.mean(np.argmax(model(images[test]), -1) == labels[test])
  assert accuracy > 0.85, accuracy
  return model, images[test], labels[test]


# Saliency.


@pytest.mark.slow
def test_backtrack_saliency_is_deterministic_shaped_and_in_range(trained_cnn):
  model, images, _ = trained_cnn
  x = jnp.asarray(images[:4])
  layer = model.stage_ends[0]
  maps = explain.backtrack_saliency(model, x, layer, top_k=8)
  assert maps.shape == (4, 8, 8)
  assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
  np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)  # some channel fires
  again = nnx.jit(lambda m, x: explain.backtrack_saliency(m, x, layer, top_k=8))(model, x)
  np.testing.assert_allclose(again, maps, atol=1e-6)
  guided = explain.backtrack_saliency(model, x, 1, top_k=4, border=0, relu="guided")
  assert guided.shape == (4, 8, 8)


def test_backtrack_saliency_weighs_masks_by_channel_maxima():
  # An identity 1×1 conv: its one channel peaks at the bright pixel, whose
  # backtracked spike is the only pixel above 3× the mean.
  conv = nnx.Conv(1, 1, (1, 1), rngs=nnx.Rngs(0))
  conv.kernel[...] = jnp.ones((1, 1, 1, 1))
  model = invertible.InvertibleSequential([conv], input_shape=(5, 5, 1))
  x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(2.0)
  maps = explain.backtrack_saliency(model, x, 0, top_k=1)
  np.testing.assert_allclose(maps[0], (x[0, ..., 0] > 0).astype(jnp.float32))
  # A maximum on the border is skipped: nothing is left.
  edge = jnp.zeros((1, 5, 5, 1)).at[0, 0, 3, 0].set(2.0)
  np.testing.assert_array_equal(explain.backtrack_saliency(model, edge, 0), 0.0)
  np.testing.assert_allclose(
      explain.backtrack_saliency(model, edge, 0, border=0)[0], edge[0, ..., 0] / 2)


@pytest.mark.slow
def test_gradient_baselines_are_shaped_in_range_and_complete(trained_cnn):
  model, images, _ = trained_cnn
  x = jnp.asarray(images[:3])
  for maps in (explain.gradient_saliency(model, x),
               explain.integrated_gradients_saliency(model, x, steps=8)):
    assert maps.shape == (3, 8, 8)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
  # Completeness: the attributions sum to logit(x) − logit(0).
  targets = jnp.argmax(model(x), -1)
  attributions = explain.integrated_gradients(model, x, targets, steps=64)
  rows = jnp.arange(3)
  gap = model(x)[rows, targets] - model(jnp.zeros_like(x))[rows, targets]
  np.testing.assert_allclose(attributions.sum((1, 2, 3)), gap, rtol=0.05, atol=0.05)


# Deletion and insertion.


def _small_cnn():
  """An untrained InvertibleCNN on 8×8 one-channel images, 10 classes."""
  return invertible.InvertibleCNN((8, 8, 1), (4,), (16,), 10,
                                  rngs=nnx.Rngs(0))


def linear_model(weights):
  w = jnp.stack([weights.reshape(-1), -weights.reshape(-1)], axis=1) / 4
  return lambda x: x.reshape(len(x), -1) @ w


@pytest.mark.slow
def test_gradient_baselines_refuse_bad_targets_and_steps():
  w = jnp.arange(8.0).reshape(4, 2)
  logits_fn = lambda x: x.reshape(len(x), -1) @ w
  images = jnp.ones((2, 2, 2, 1))
  for saliency in (explain.gradient_saliency,
                   explain.integrated_gradients_saliency):
    # An out-of-range class has no logit: its map would be all zeros.
    with pytest.raises(ValueError, match=r"targets must be in \[0, 2\).*5\.\.7"):
      saliency(logits_fn, images, jnp.array([5, 7]))
    # One target for two images would be broadcast to both.
    with pytest.raises(ValueError, match=r"one integer class per image"):
      saliency(logits_fn, images, jnp.array([1]))
    with pytest.raises(ValueError, match=r"one integer class per image"):
      saliency(logits_fn, images, jnp.array([0.0, 1.0]))
  for steps in (0, -3, 2.5):  # NaN attributions, or not the midpoint rule
    with pytest.raises((ValueError, TypeError), match="steps must be"):
      explain.integrated_gradients(logits_fn, images, steps=steps)
  # Traced targets are not checked by value, and still work under jit.
  maps = jax.jit(lambda t: explain.gradient_saliency(logits_fn, images, t))(
      jnp.array([0, 1]))
  assert maps.shape == (2, 2, 2)


def test_deletion_and_insertion_rank_a_good_map_above_a_bad_one():
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(6, 6)) + 0.2, jnp.float32)
  logits_fn = linear_model(weights)
  images = jnp.asarray(rng.uniform(0.5, 1.0, size=(3, 6, 6, 1)), jnp.float32)
  classes = jnp.zeros(3, jnp.int32)
  good = weights * images[..., 0]  # each pixel's contribution to class 0
  bad = -good
  deletion = explain.deletion_curve(logits_fn, images, good, 4, classes)
  assert deletion.fractions.shape == (10,) and deletion.scores.shape == (3, 10)
  np.testing.assert_allclose(deletion.fractions[jnp.array([0, -1])], [0.0, 1.0])
  clean = jax.nn.softmax(logits_fn(images))[:, 0]
  np.testing.assert_allclose(deletion.scores[:, 0], clean, rtol=1e-6)
  np.testing.assert_allclose(deletion.scores[:, -1], 0.5, rtol=1e-6)  # black image
  insertion = explain.insertion_curve(logits_fn, images, good, 4, classes)
  np.testing.assert_allclose(insertion.scores[:, -1], clean, rtol=1e-6)
  for metric in (explain.deletion_auc, explain.insertion_auc):
    good_auc = metric(logits_fn, images, good, 4, classes)
    assert good_auc.shape == (3,)
    assert np.all((good_auc >= 0) & (good_auc <= 1))
    np.testing.assert_array_equal(good_auc, metric(logits_fn, images, good, 4, classes))
  assert np.all(explain.deletion_auc(logits_fn, images, good, 4, classes)
                < explain.deletion_auc(logits_fn, images, bad, 4, classes))
  assert np.all(explain.insertion_auc(logits_fn, images, good, 4, classes)
                > explain.insertion_auc(logits_fn, images, bad, 4, classes))


@pytest.mark.slow
def test_auc_on_the_trained_model_is_in_range(trained_cnn):
  model, images, _ = trained_cnn
  x = jnp.asarray(images[:4])
  maps = explain.gradient_saliency(model, x)
  for auc in (explain.deletion_auc(model, x, maps, 8),
              explain.insertion_auc(model, x, maps, 8, blur_sigma=1.0)):
    assert auc.shape == (4,) and np.all((auc >= 0) & (auc <= 1))


def test_curve_inputs_are_checked():
  logits_fn = linear_model(jnp.ones((4, 4)))
  with pytest.raises(ValueError, match=r"saliency \(N, H, W\)"):
    explain.deletion_auc(logits_fn, jnp.ones((2, 4, 4, 1)), jnp.ones((2, 4, 5)))
  with pytest.raises(ValueError, match="pixels_per_step"):
    explain.insertion_auc(logits_fn, jnp.ones((2, 4, 4, 1)), jnp.ones((2, 4, 4)), 0)
  # An out-of-range class was clamped to the last one by the indexing.
  for curve in (explain.deletion_auc, explain.insertion_auc):
    with pytest.raises(ValueError, match=r"classes must be in \[0, 2\).*7\.\.99"):
      curve(logits_fn, jnp.ones((2, 4, 4, 1)), jnp.ones((2, 4, 4)),
            classes=jnp.array([7, 99]))
  # A NumPy integer is an integer (it was refused as not a positive int).
  auc = explain.deletion_auc(logits_fn, jnp.ones((2, 4, 4, 1)),
                             jnp.ones((2, 4, 4)), np.int64(4))
  assert auc.shape == (2,)


# Contribution maps.


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.slow
def test_contribution_map_identity_is_exact(activation, digits):
  images, _ = digits
  mlp = invertible.InvertibleMLP((8, 8, 1), (32, 16), 10, activation=activation,
                                 use_bias=False, rngs=nnx.Rngs(1))
  x = jnp.asarray(images[:5])
  templates = explain.contribution_map(mlp, x)
  assert templates.shape == (5, 8, 8, 1, 10)
  logits = jnp.einsum("nhwc,nhwck->nk", x, templates)
  np.testing.assert_allclose(logits, mlp(x), rtol=1e-5, atol=1e-5)


def test_contribution_map_rejects_biases_and_other_layers():
  with pytest.raises(ValueError, match=r"layers\[1\] \(Linear\) has a bias"):
    explain.contribution_map(
        invertible.InvertibleMLP((4, 1), (3,), 2, rngs=nnx.Rngs(0)), jnp.ones((1, 4, 1)))
  conv_model = invertible.InvertibleCNN((8, 8, 1), (2,), (), 10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"layers\[0\] \(Conv\)"):
    explain.contribution_map(conv_model, jnp.ones((1, 8, 8, 1)))


# Adversarial examples.


@pytest.mark.slow
def test_latent_edit_flips_predictions_of_a_trained_model(trained_cnn):
  model, images, labels = trained_cnn
  x, y = jnp.asarray(images[:64]), jnp.asarray(labels[:64])
  correct = np.asarray(jnp.argmax(model(x), -1) == y)
  x, y = x[correct], y[correct]
  head_input = len(model.layers) - 2  # the LeakyReLU feeding the last Linear
  eps = 3.0

  @nnx.jit
  def attacks(model, x, y):
    return (
        explain.latent_edit_attack(model, x, y, layer=head_input, epsilon=eps,
                                   clip=None),
        explain.latent_edit_attack(model, x, y, layer=model.stage_ends[0],
                                   epsilon=eps),
        explain.fgsm_l2(model, x, y, eps),
        explain.pgd_l2(model, x, y, eps, steps=10),
    )

  unclipped, staged, fgsm, pgd = attacks(model, x, y)
  np.testing.assert_allclose(explain.perturbation_norms(x, unclipped), eps, rtol=1e-4)
  assert float(explain.attack_success_rate(model, unclipped, y)) > 0.5
  # From the conv stage, in the valid range, at ε measured after clipping.
  assert float(staged.min()) >= 0 and float(staged.max()) <= 1
  np.testing.assert_allclose(explain.perturbation_norms(x, staged), eps, rtol=1e-3)
  assert float(explain.attack_success_rate(model, staged, y)) > 0.3
  np.testing.assert_allclose(explain.perturbation_norms(x, fgsm), eps, rtol=1e-3)
  assert np.all(np.asarray(explain.perturbation_norms(x, pgd)) <= eps + 1e-4)
  pgd_rate = float(explain.attack_success_rate(model, pgd, y))
  assert pgd_rate >= float(explain.attack_success_rate(model, fgsm, y)) - 0.05
  assert pgd_rate > 0.5


def test_an_empty_batch_goes_through_the_models_and_the_tools():
  # Flatten's reshape(n, -1) raised ZeroDivisionError on 0 images, and with
  # it every tool (an attack on the correctly classified subset can be
  # empty).
  cnn = invertible.InvertibleCNN((8, 6, 1), (4,), (16,), 10,
                                 rngs=nnx.Rngs(0))
  mlp = bort_jax.models.MLP(48, (8,), 10, rngs=nnx.Rngs(0))
  empty = jnp.zeros((0, 8, 6, 1))
  assert cnn(empty).shape == (0, 10)
  assert mlp(empty).shape == (0, 10)
  assert explain.reconstruct(cnn, empty, cnn.stage_ends[0]).shape == (
      0, 8, 6, 1)
  assert explain.backtrack_saliency(cnn, empty, 1, top_k=4).shape == (0, 8, 6)
  assert explain.deletion_auc(cnn, empty, jnp.ones((0, 8, 6)), 4).shape == (
      0,)
  labels = jnp.zeros(0, jnp.int32)
  assert explain.fgsm_l2(cnn, empty, labels, 0.5).shape == (0, 8, 6, 1)


def test_a_model_in_training_mode_is_refused_before_it_changes():
  # BatchNorm updated its running statistics (and Dropout its RNG count)
  # in the eager forward pass, then the tool failed inside jax.grad with
  # Flax's trace-level error.
  net = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0)),
                       nnx.BatchNorm(4, rngs=nnx.Rngs(0)), invertible.Flatten(),
                       nnx.Linear(64, 3, rngs=nnx.Rngs(0)))
  images = jax.random.uniform(jax.random.key(0), (2, 4, 4, 1))
  labels = jnp.array([0, 1])
  before = jax.tree.map(np.asarray, nnx.state(net))
  tools = [
      lambda: explain.gradient_saliency(net, images),
      lambda: explain.integrated_gradients(net, images),
      lambda: explain.deletion_auc(net, images, jnp.ones((2, 4, 4))),
      lambda: explain.insertion_auc(net, images, jnp.ones((2, 4, 4))),
      lambda: explain.fgsm_l2(net, images, labels, 0.5),
      lambda: explain.pgd_l2(net, images, labels, 0.5, steps=2),
      lambda: explain.attack_success_rate(net, images, labels),
      lambda: explain.forward_cache(net, images),
      lambda: explain.reconstruct(net, images, 0),
  ]
  for tool in tools:
    with pytest.raises(ValueError, match="in training mode: BatchNorm at "
                       "layers/1.*call model.eval"):
      tool()
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, nnx.state(net)))
  net.eval()
  assert explain.gradient_saliency(net, images).shape == (2, 4, 4)


def test_attacks_and_layer_indices_check_their_numbers():
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  labels = jnp.array([0, 1])
  # A negative epsilon was accepted: FGSM then stepped down the loss.
  for attack in (lambda e: explain.fgsm_l2(model, images, labels, e),
                 lambda e: explain.pgd_l2(model, images, labels, e, steps=2),
                 lambda e: explain.latent_edit_attack(
                     model, images, labels, layer=1, epsilon=e)):
    with pytest.raises(ValueError, match="epsilon must be a finite L2 norm"):
      attack(-0.5)
  with pytest.raises((TypeError, ValueError), match="steps must be"):
    explain.pgd_l2(model, images, labels, 0.5, steps=2.5)
  # A negative step or strength stepped down the loss (0 % success), NaN
  # made NaN images, and strength 0 rescaled rounding noise to epsilon.
  for bad in (-0.5, 0.0, float("nan")):
    with pytest.raises(ValueError, match="step_size must be a finite number "
                       "> 0"):
      explain.pgd_l2(model, images, labels, 0.5, steps=2, step_size=bad)
    with pytest.raises(ValueError, match="strength must be a finite number "
                       "> 0"):
      explain.latent_edit_attack(model, images, labels, layer=1,
                                 epsilon=0.5, strength=bad)
  # NumPy and concrete JAX integers are layer indices (they were "out of
  # range"); a bool is not one.
  want = explain.reconstruct(model, images, 1)
  for index in (np.int64(1), jnp.int32(1)):
    np.testing.assert_array_equal(explain.reconstruct(model, images, index),
                                  want)
  with pytest.raises(ValueError, match="layer index must be an integer"):
    explain.reconstruct(model, images, True)


def test_saliency_maps_need_a_channel_axis_and_keep_a_nan():
  # Flat inputs (N, features) gave (N,) maps, all zeros or all ones; an
  # image holding a NaN got a finite all-zero backtracking map.
  mlp = invertible.InvertibleMLP((16,), (8,), 3, rngs=nnx.Rngs(0))
  flat = jax.random.uniform(jax.random.key(0), (3, 16))
  for saliency in (lambda x: explain.backtrack_saliency(mlp, x, 0, border=0),
                   lambda x: explain.gradient_saliency(mlp, x),
                   lambda x: explain.integrated_gradients_saliency(mlp, x)):
    with pytest.raises(ValueError, match=r"images must be \(N, \*spatial, "
                       r"C\).*got shape \(3, 16\).*\(N, features, 1\)"):
      saliency(flat)
  # Raw attributions of flat inputs stay allowed.
  assert explain.integrated_gradients(mlp, flat).shape == (3, 16)
  cnn = _small_cnn()
  images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
  maps = explain.backtrack_saliency(cnn, images.at[0, 3, 3, 0].set(jnp.nan),
                                    1, top_k=4)
  assert bool(jnp.isnan(maps[0]).all()) and bool(jnp.isfinite(maps[1]).all())


def test_latent_edit_rejects_the_output_layer():
  mlp = invertible.InvertibleMLP((4,), (3,), 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="hidden layer"):
    explain.latent_edit_attack(mlp, jnp.ones((1, 4)), jnp.array([0]), layer=-1, epsilon=1.0)


def test_runner_up_excludes_the_label():
  logits = jnp.array([[5.0, 4.0, 3.0], [1.0, 2.0, 3.0]])
  np.testing.assert_array_equal(explain.runner_up_classes(logits, jnp.array([0, 1])), [1, 2])


# Figures.


@pytest.mark.slow
def test_figures_write_pngs(tmp_path, trained_cnn):
  model, images, labels = trained_cnn
  x = np.asarray(images[:3])
  figures = {
      "reconstructions": explain.plot_reconstructions(x, {"Bort": x, "AdamW": 1 - x}),
      "saliency": explain.plot_saliency(x, {"backtrack": x[..., 0]}),
      "gram": explain.plot_gram({"conv": model.layers[0].kernel[...],
                                 "dense": model.layers[-1].kernel[...]}),
      "adversarial": explain.plot_adversarial(x, {"edit": 1 - x}, labels[:3],
                                              {"edit": [1, 2, 3]}),
  }
  for name, fig in figures.items():
    path = tmp_path / f"{name}.png"
    explain.save_figure(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attacks_check_their_labels():
  # (N, 1) labels failed inside the loss's VJP; an out-of-range label has no
  # logit.
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  for labels, message in ((jnp.zeros((2, 1), jnp.int32), "one integer class"),
                          (jnp.array([0, 10]), r"in \[0, 10\)")):
    for attack in (
        lambda: explain.fgsm_l2(model, images, labels, 0.5),
        lambda: explain.pgd_l2(model, images, labels, 0.5, steps=2),
        lambda: explain.latent_edit_attack(model, images, labels, layer=1,
                                           epsilon=0.5),
        lambda: explain.attack_success_rate(model, images, labels)):
      with pytest.raises(ValueError, match="labels must be .*" + message):
        attack()


def test_integer_images_are_refused_in_one_line():
  # uint8 images wrapped around in x − x₀ (integrated gradients), blurred to
  # zeros (the weights cast to uint8: insertion AUC 0.69 for 0.40), and
  # failed deep inside the attacks' loops.
  model = _small_cnn()
  images = jnp.full((2, 8, 8, 1), 200, jnp.uint8)
  labels = jnp.array([0, 1])
  for tool in (
      lambda: explain.gaussian_blur(images, 1.0),
      lambda: explain.integrated_gradients(model, images, steps=2),
      lambda: explain.gradient_saliency(model, images),
      lambda: explain.fgsm_l2(model, images, labels, 0.5, clip=None),
      lambda: explain.pgd_l2(model, images, labels, 0.5, steps=2, clip=None),
      lambda: explain.latent_edit_attack(model, images, labels, layer=1,
                                         epsilon=0.5, clip=None)):
    with pytest.raises(TypeError, match="images must be floating point, got "
                                        "uint8"):
      tool()


def test_integrated_gradients_takes_an_integer_baseline_in_floating_point():
  weights = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
  logits_fn = linear_model(weights)
  images = jnp.full((1, 2, 2, 1), 100.0)
  got = explain.integrated_gradients(logits_fn, images, jnp.array([0]),
                                     baseline=jnp.uint8(128), steps=4)
  want = logits_fn(images)[0, 0] - logits_fn(jnp.full_like(images, 128.0))[0, 0]
  np.testing.assert_allclose(float(got.sum()), float(want), rtol=1e-5)


def test_attacks_refuse_images_outside_clip_and_keep_epsilon_when_traced():
  # Normalised images (mean 0, std 1) with the default clip=(0, 1): the clip
  # moved the clean image into the range, so a 0.5 attack moved it by 6.3.
  model = _small_cnn()
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  labels = jnp.array([0, 1])
  attacks = {
      "fgsm": lambda x: explain.fgsm_l2(model, x, labels, 0.5),
      "pgd": lambda x: explain.pgd_l2(model, x, labels, 0.5, steps=3),
      "latent": lambda x: explain.latent_edit_attack(model, x, labels,
                                                     layer=1, epsilon=0.5),
  }
  for name, attack in attacks.items():
    with pytest.raises(ValueError, match=r"outside clip=\(0\.0, 1\.0\)"):
      attack(images)
    # Traced, the values are unknown: the range widens to hold each pixel,
    # so the perturbation is the attack's own.
    adversarial = jax.jit(attack)(images)
    norms = explain.perturbation_norms(images, adversarial)
    assert float(norms.max()) <= 0.5 + 1e-4, name
    assert float(norms.min()) > 0.1, name
  with pytest.raises(ValueError, match="clip must be"):
    explain.fgsm_l2(model, images, labels, 0.5, clip=(1.0, 0.0))


def test_latent_edit_asks_for_the_model_not_a_list_of_its_layers():
  # A list of layers (which backtracking accepts) failed inside
  # jax.eval_shape: "the first argument must be callable".
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  with pytest.raises(TypeError, match="needs the model itself"):
    explain.latent_edit_attack(list(model.layers), images, jnp.array([0, 1]),
                               layer=1, epsilon=0.5)


def test_latent_edit_checks_its_targets():
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  labels = jnp.array([0, 1])
  for targets, message in ((jnp.array([2, 10]), r"targets must be in \[0, 10\)"),
                           (jnp.array([[2], [0]]), "targets must be one"),
                           (labels, r"targets equal labels for image\(s\) "
                                    r"\[0, 1\]")):
    with pytest.raises(ValueError, match=message):
      explain.latent_edit_attack(model, images, labels, layer=1,
                                 epsilon=0.5, targets=targets)


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=float("nan")), "threshold must be"),
    (dict(threshold=-1.0), "threshold must be >= 0"),
    (dict(spike=0.0), "spike must be > 0"),
    (dict(spike=float("inf")), "spike must be"),
    (dict(top_k=2.7), "top_k must be"),
    (dict(top_k=0), "top_k must be"),
])
def test_backtrack_saliency_refuses_settings_that_zero_or_fill_every_map(
    kwargs, message):
  # threshold NaN or spike 0/inf gave all-zero maps, threshold −1 every
  # pixel, top_k=2.7 two channels: silently.
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1))
  with pytest.raises(ValueError, match=message):
    explain.backtrack_saliency(model, images, layer=1, **kwargs)


def test_attacks_check_the_shape_of_epsilon():
  # A (3,) or (N, 1) epsilon failed inside broadcasting, unnamed.
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  labels = jnp.array([0, 1])
  for epsilon in (jnp.array([0.5, 1.0, 2.0]), jnp.array([[0.5], [1.0]])):
    for attack in (
        lambda: explain.fgsm_l2(model, images, labels, epsilon),
        lambda: explain.pgd_l2(model, images, labels, epsilon, steps=2),
        lambda: explain.latent_edit_attack(model, images, labels, layer=1,
                                           epsilon=epsilon)):
      with pytest.raises(ValueError, match=r"epsilon must be a scalar or one "
                                           r"norm per image, shape \(2,\)"):
        attack()
  norms = explain.perturbation_norms(
      images, jax.jit(lambda e: explain.fgsm_l2(model, images, labels, e))(
          jnp.array([0.5, 1.0])))
  np.testing.assert_allclose(norms, [0.5, 1.0], rtol=1e-4)


@pytest.mark.parametrize("clip", [(0.0, 1.0), (np.float32(0), np.float32(1))])
def test_every_attack_returns_the_images_dtype(clip):
  # latent_edit_attack returned float32 for bfloat16 images; with float32
  # clip bounds, fgsm_l2 returned float32 and pgd_l2 failed in its loop
  # (the carry changed type). The bounds are settings: Python floats.
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), jnp.bfloat16)
  labels = jnp.array([0, 1])
  for attack in (
      lambda: explain.fgsm_l2(model, images, labels, 0.5, clip=clip),
      lambda: explain.pgd_l2(model, images, labels, 0.5, steps=2, clip=clip),
      lambda: explain.latent_edit_attack(model, images, labels, layer=1,
                                         epsilon=0.5, clip=clip)):
    assert attack().dtype == jnp.bfloat16


@pytest.mark.slow
def test_eager_tools_compile_once_per_model_and_read_its_current_weights(
    caplog):
  # Eagerly, each call compiled its lax.map / fori_loop body again (a new
  # closure every time): 0.2-1.0 s a call on this 8x8 CNN, against ms.
  model = _small_cnn()
  labels = jnp.array([0, 1])
  saliency = jnp.ones((2, 8, 8))
  tools = {
      "backtrack_saliency": lambda m, x: explain.backtrack_saliency(
          m, x, 3, top_k=4),
      "integrated_gradients": lambda m, x: explain.integrated_gradients(
          m, x, steps=4),
      "fgsm_l2": lambda m, x: explain.fgsm_l2(m, x, labels, 0.5),
      "pgd_l2": lambda m, x: explain.pgd_l2(m, x, labels, 0.5, steps=3),
      "latent_edit_attack": lambda m, x: explain.latent_edit_attack(
          m, x, labels, layer=1, epsilon=0.5),
      "deletion_auc": lambda m, x: explain.deletion_auc(m, x, saliency, 8),
      "insertion_auc": lambda m, x: explain.insertion_auc(m, x, saliency, 8),
  }
  def images(seed):
    return jax.random.uniform(jax.random.key(seed), (2, 8, 8, 1),
                              minval=0.1, maxval=0.9)
  for tool in tools.values():  # the first calls compile
    jax.block_until_ready(tool(model, images(0)))
  caplog.set_level(logging.DEBUG)
  with jax.log_compiles(True):
    for tool in tools.values():
      jax.block_until_ready(tool(model, images(1)))
  compiled = [r.getMessage() for r in caplog.records
              if "Compiling" in r.getMessage()]
  assert not compiled, compiled
  # The cached code reads the model's weights of the moment, never those of
  # its first call: the same as a fresh copy of the changed model.
  before = {name: tool(model, images(2)) for name, tool in tools.items()}
  for i, (path, leaf) in enumerate(nnx.iter_graph(model)):
    if isinstance(leaf, nnx.Param) and path[-1] == "kernel":
      leaf[...] = leaf[...] + 0.3 * jax.random.normal(jax.random.key(i),
                                                      leaf.shape)
  for name, tool in tools.items():
    got = np.asarray(tool(model, images(2)))
    np.testing.assert_allclose(got, np.asarray(tool(nnx.clone(model),
                                                    images(2))),
                               rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(got, np.asarray(before[name])), name


class _WithSettings(nnx.Module):
  """A dict attribute: the module's graph cannot be hashed."""

  def __init__(self):
    self.linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    self.settings = {"scale": [2.0]}

  def __call__(self, x):
    return self.settings["scale"][0] * self.linear(x.reshape(len(x), -1))


class _WithRepeat(nnx.Module):
  """A Python int in a Variable, used as a shape: not an array leaf."""

  def __init__(self):
    self.linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    self.repeat = nnx.Variable(2)

  def __call__(self, x):
    h = self.linear(x.reshape(len(x), -1))
    return jnp.tile(h, (1, self.repeat.get_value()))[:, :3]


@pytest.mark.parametrize("build", [_WithSettings, _WithRepeat])
def test_a_model_that_cannot_go_through_the_cache_runs_as_before(build):
  # The compiled path raised "unhashable type: 'dict'", and "reps was not
  # hashable" for the int traced as an argument; they run uncached.
  model = build()
  images = jax.random.uniform(jax.random.key(0), (2, 2, 2, 1))
  got = explain.integrated_gradients(model, images, steps=4)
  want = explain.integrated_gradients(lambda x: model(x), images, steps=4)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


@pytest.mark.parametrize("relu", ["pass", "guided"])
def test_a_nested_sequential_backtracks_as_its_flat_equivalent(relu):
  # A sequential model used as a layer had no inverse ("Cannot invert layer
  # layers[0] (InvertibleSequential)").
  rngs = nnx.Rngs(0)
  layers = [nnx.Linear(4, 4, rngs=rngs), invertible.LeakyReLU(),
            nnx.Linear(4, 4, rngs=rngs), invertible.ReLU(),
            nnx.Linear(4, 3, rngs=rngs)]
  flat = invertible.InvertibleSequential(layers, (4,))
  nested = invertible.InvertibleSequential(
      [invertible.InvertibleSequential(layers[:2], (4,)),
       nnx.Sequential(*layers[2:4]), layers[4]], (4,))
  x = jax.random.normal(jax.random.key(0), (2, 4))
  want = explain.reconstruct(flat, x, 4, relu=relu)
  np.testing.assert_allclose(explain.reconstruct(nested, x, 2, relu=relu),
                             want, rtol=1e-6, atol=1e-6)
  # Without a forward cache, from the input shape alone (ReLU passes).
  if relu == "pass":
    np.testing.assert_allclose(
        explain.backtrack(nested, nested.forward(x)[3], 2), want, rtol=1e-6,
        atol=1e-6)


def test_psnr_refuses_shapes_that_only_broadcast():
  # One image against a batch gave a PSNR per image of the batch, silently.
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
  with pytest.raises(ValueError, match=r"x and x_hat must have the same "
                     r"shape .* got \(4, 8, 8, 1\) and \(8, 8, 1\)"):
    explain.psnr(x, x[0])
  with pytest.raises(ValueError, match="x and x_hat must have the same"):
    explain.reconstruction_mse(x, x[:, :, :, 0])
  # An exact reconstruction is the floor's 200 dB, as documented.
  np.testing.assert_allclose(explain.psnr(x, x), 200.0)


def test_reconstruct_and_backtrack_saliency_check_their_images():
  # Another shape failed deep inside a layer (the head's dot_general), and
  # 8-bit pixels were backtracked as they are, where the other tools refuse.
  model = _small_cnn()
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  for tool in (lambda x: explain.reconstruct(model, x, 1),
               lambda x: explain.backtrack_saliency(model, x, 1)):
    with pytest.raises(ValueError, match=r"must be a batch \(N, \*\(8, 8, "
                       r"1\)\) of the model's inputs, got shape \(2, 9, 9, "
                       r"1\)"):
      tool(jnp.ones((2, 9, 9, 1)))
    with pytest.raises(TypeError, match="must be floating point, got uint8"):
      tool((images * 255).astype(jnp.uint8))


def test_plot_saliency_refuses_maps_that_do_not_fit_the_images():
  # 7x7 maps were drawn over 8x8 images without a word.
  images = np.zeros((2, 8, 8, 1))
  with pytest.raises(ValueError, match=r"maps\['grad'\] must be one \(H, W\) "
                     r"map per image, shape \(2, 8, 8\) .* got \(2, 7, 7\)"):
    explain.plot_saliency(images, {"grad": np.zeros((2, 7, 7))})
  assert len(explain.plot_saliency(
      images, {"grad": np.zeros((2, 8, 8))}).axes) == 4

"""The training objective: cross-entropy, label smoothing, the DBort term."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bort_jax.experiments import steps
from bort_jax.models.invertible import InvertibleMLP


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(16, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 3, size=16).astype(np.int32)
  model = InvertibleMLP((4, 4, 1), (12, 8), 3, rngs=nnx.Rngs(0))
  return model, jnp.asarray(x), jnp.asarray(y)


def _grads(fn, model):
  return jax.tree.leaves(nnx.grad(fn)(model))


def test_dbort_weight_zero_is_bit_for_bit_the_plain_loss(batch):
  model, x, y = batch
  def plain(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
  objective = steps.Objective(dbort_weight=0.0, dbort_power=0.3,
                              dbort_on="layers")
  def ours(m):
    return steps.objective_loss(m, x, y, objective)[0]
  assert np.asarray(ours(model)).tobytes() == np.asarray(plain(model)).tobytes()
  for a, b in zip(_grads(ours, model), _grads(plain, model)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("outputs", ["logits", "layers"])
def test_dbort_term_and_its_gradient_follow_the_written_formula(batch, outputs):
  model, x, y = batch
  weight, power = 1e-2, 0.1
  layers = [model.layers[i] for i, layer in enumerate(model.layers)
            if hasattr(layer, "kernel")]

  def written(m):  # CE − λ Σ_l (mean y_l²)^β, by hand
    h, ys = x.reshape(x.shape[0], -1), []
    for layer in m.layers:
      h = layer(h)
      if hasattr(layer, "kernel"):
        ys.append(h)
    logits = h
    chosen = [logits] if outputs == "logits" else ys
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce - weight * sum(jnp.mean(o ** 2) ** power for o in chosen)

  objective = steps.Objective(dbort_weight=weight, dbort_power=power,
                              dbort_on=outputs)
  def ours(m):
    return steps.objective_loss(m, x, y, objective)[0]
  assert len(layers) == 3
  np.testing.assert_allclose(ours(model), written(model), rtol=1e-6)
  for a, b in zip(_grads(ours, model), _grads(written, model)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  energy = steps.objective_loss(model, x, y, objective)[1][2]
  assert float(energy) > 0


def test_label_smoothing_is_optax_smoothed_cross_entropy(batch):
  model, x, y = batch
  loss, (losses, _, _) = steps.objective_loss(
      model, x, y, steps.Objective(label_smoothing=0.1))
  targets = optax.smooth_labels(jax.nn.one_hot(y, 3), 0.1)
  expected = optax.softmax_cross_entropy(model(x), targets)
  np.testing.assert_allclose(losses, expected, rtol=1e-6)
  plain = optax.softmax_cross_entropy_with_integer_labels(model(x), y)
  assert not np.allclose(losses, plain)

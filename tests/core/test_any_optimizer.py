"""Any optimizer at its usual learning rate, with no Bort argument, trains and
constrains (sklearn digits, an MLP 64-64-64-10, 300 steps of batch 128)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets

import bort_jax

SIZES = (64, 64, 64, 10)
STEPS, BATCH = 300, 128
#: Accuracy Bort may cost against the base optimizer, in points.
MARGIN = 0.03


@functools.lru_cache(maxsize=None)
def _digits():
  x, y = datasets.load_digits(return_X_y=True)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = (x[perm] / 16.0).astype(np.float32), y[perm].astype(np.int32)
  return jnp.asarray(x[:1400]), jnp.asarray(y[:1400]), x[1400:], y[1400:]


def _init(seed):
  keys = jax.random.split(jax.random.key(seed), len(SIZES) - 1)
  return {f"l{i}": {"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a),
                    "bias": jnp.zeros(b)}
          for i, (k, a, b) in enumerate(zip(keys, SIZES[:-1], SIZES[1:]))}


def _forward(params, x):
  for i in range(len(SIZES) - 1):
    x = x @ params[f"l{i}"]["kernel"] + params[f"l{i}"]["bias"]
    if i < len(SIZES) - 2:
      x = jax.nn.relu(x)
  return x


def _train(tx, seed=0):
  """Test accuracy, mean and head constraint errors, and finiteness."""
  x_train, y_train, x_test, y_test = _digits()
  params = _init(seed)
  batches = jnp.asarray(np.random.default_rng(seed).integers(
      0, len(x_train), (STEPS, BATCH)))

  def loss(p, i):
    return optax.softmax_cross_entropy_with_integer_labels(
        _forward(p, x_train[i]), y_train[i]).mean()

  @jax.jit
  def run(params):
    def step(carry, i):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p, i), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(step, (params, tx.init(params)), batches)[0][0]

  params = run(params)
  accuracy = float((_forward(params, x_test).argmax(-1) == y_test).mean())
  errors = bort_jax.orthogonality_error(params)
  mean = float(np.mean([e.constraint_error for e in errors.values()]))
  head = float(errors[f"l{len(SIZES) - 2}/kernel"].constraint_error)
  finite = all(bool(jnp.all(jnp.isfinite(leaf)))
               for leaf in jax.tree.leaves(params))
  return accuracy, mean, head, finite


_SHORTFALL = pytest.mark.xfail(
    strict=True, reason="at a per-step 1e-3 the correction outweighs these "
    "small steps: in 300 steps Bort costs more than 3 points")

# name: (base optimizer, the same optimizer with Bort and no Bort argument)
CASES = {
    "muon_0.02": (lambda: optax.contrib.muon(0.02),
                  lambda: bort_jax.with_bort(optax.contrib.muon(0.02))),
    "lion_1e-4": (lambda: optax.lion(1e-4),
                  lambda: bort_jax.with_bort(optax.lion(1e-4))),
    "lion_3e-4": (lambda: optax.lion(3e-4),
                  lambda: bort_jax.with_bort(optax.lion(3e-4))),
    "lamb_1e-3": (lambda: optax.lamb(1e-3),
                  lambda: bort_jax.with_bort(optax.lamb(1e-3))),
    "adamw_3e-3_with_bort": (lambda: optax.adamw(3e-3),
                             lambda: bort_jax.with_bort(optax.adamw(3e-3))),
    "adamw_3e-3_bort_adamw": (lambda: optax.adamw(3e-3),
                              lambda: bort_jax.bort_adamw(3e-3)),
    "sgd_0.1_with_bort": (lambda: optax.sgd(0.1, momentum=0.9),
                          lambda: bort_jax.with_bort(
                              optax.sgd(0.1, momentum=0.9))),
    "sgd_0.1_bort_sgd": (lambda: optax.sgd(0.1, momentum=0.9),
                         lambda: bort_jax.bort_sgd(0.1, momentum=0.9)),
    "sgd_0.5_with_bort": (lambda: optax.sgd(0.5, momentum=0.9),
                          lambda: bort_jax.with_bort(
                              optax.sgd(0.5, momentum=0.9))),
}
SHORT = {"lion_1e-4", "lion_3e-4", "lamb_1e-3"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=_SHORTFALL) if n in SHORT else n
             for n in CASES])
def test_any_optimizer_at_its_usual_learning_rate_trains_and_constrains(name):
  make_base, make_bort = CASES[name]
  base_accuracy, base_mean, base_head, base_finite = _train(make_base())
  accuracy, mean, head, finite = _train(make_bort())
  assert base_finite and finite
  assert accuracy >= base_accuracy - MARGIN, (accuracy, base_accuracy)
  # The head (10 orthogonal rows in 64-d) is reached in 300 steps; the square
  # hidden layers move more slowly, but must still move towards W Wᵀ = cI.
  assert head < 0.5 * base_head, (head, base_head)
  assert mean < 0.6 * base_mean, (mean, base_mean)

"""Bort reaches its constraint, and trains real Flax models end to end."""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets

import bort_jax
from tests.core.zero_loss import run_zero_loss


def _minimise_penalty_only(shape, tx, steps):
  """Runs ``tx`` with zero data gradients: only the Bort correction acts."""
  params = {"kernel": jnp.asarray(
      np.random.default_rng(0).normal(size=shape) * 0.5, jnp.float32)}
  params, _ = run_zero_loss(tx, params, steps)
  kernel = params["kernel"]
  w = kernel.reshape(-1, kernel.shape[-1]).T  # rows: output units
  return w, params


# Each case: (kernel shape, optimizer, steps). lr 0.1, γ = 1 unless stated.
SHAPES = {"linear_2x6": (6, 2), "conv_3x3x2x4": (3, 3, 2, 4)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_l2_full_reaches_identity_gram(shape):
  w, _ = _minimise_penalty_only(shape, bort_jax.bort_sgd(0.1, gamma=1.0, mode="l2-full", amplitude=1.0), 300)
  np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_ada_reaches_equal_norms_and_orthogonality(shape):
  """lr 0.05, γ = 1, 300 steps: W Wᵀ = cI for the c the weights chose."""
  w, params = _minimise_penalty_only(
      shape, bort_jax.bort_sgd(0.05, gamma=1.0, mode="l2-full", amplitude="ada"),
      300)
  gram = np.asarray(w @ w.T)
  c = np.mean(np.diag(gram))
  np.testing.assert_allclose(gram / c, np.eye(w.shape[0]), atol=1e-3)
  error = bort_jax.orthogonality_error(params)["kernel"]
  assert error.constraint_error < 1e-3 and error.norm_spread < 1e-3
  # "ada" keeps the scale the weights had instead of forcing c = 1.
  assert abs(c - 1.0) > 0.1


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_l1_fullrow_reaches_identity_gram(shape):
  """Sign steps need a decaying rate: lr 0.05 halved every 100 steps, 2000
  steps, γ = 1."""
  schedule = optax.exponential_decay(0.05, 100, 0.5)
  w, _ = _minimise_penalty_only(
      shape, bort_jax.bort_sgd(schedule, gamma=1.0, mode="l1-fullrow",
                                amplitude=1.0), 2000)
  np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-3)


# ---- end to end with nnx.Optimizer on real data ----------------------------

def _digits():
  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]  # (N, 8, 8, 1)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(y))
  x, y = x[order], y[order]
  return (x[:1400], y[:1400]), (x[1400:], y[1400:])


class MLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(64, 64, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


class CNN(nnx.Module):

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.out = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
    return self.out(x.reshape(x.shape[0], -1))


def _train(model_cls, tx, steps=300, batch=128):
  (x, y), (x_test, y_test) = _digits()
  model = model_cls(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    def loss_fn(model):
      logits = model(xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  rng = np.random.default_rng(1)
  for _ in range(steps):
    idx = rng.integers(0, len(y), batch)
    step(model, optimizer, x[idx], y[idx])
  accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
  errors = bort_jax.orthogonality_error(nnx.state(model, nnx.Param))
  return accuracy, float(bort_jax.mean_orthogonality_error(errors)
                         .constraint_error)


@pytest.mark.slow
@pytest.mark.parametrize("model_cls", [MLP, CNN])
def test_nnx_models_learn_digits_and_become_orthogonal(model_cls):
  """Bort-AdamW (l1-fullrow, "ada", γ = 1) vs AdamW, lr 3e-3, 300 steps."""
  base_acc, base_err = _train(model_cls, optax.adamw(3e-3))
  bort_acc, bort_err = _train(
      model_cls, bort_jax.bort_adamw(3e-3, gamma=1.0, mode="l1-fullrow",
                                    amplitude="ada"))
  assert base_acc > 0.9 and bort_acc > 0.9
  print(f"{model_cls.__name__}: accuracy {base_acc:.3f} -> {bort_acc:.3f}, "
        f"constraint error {base_err:.3f} -> {bort_err:.3f}")
  assert bort_err < 0.3 * base_err, (bort_err, base_err)

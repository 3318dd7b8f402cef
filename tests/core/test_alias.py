"""Bort-SGD, Bort-AdamW and with_bort: the paper's placements, written out."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from tests.core import reference
from tests.core.zero_loss import run_zero_loss


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 5)) * 0.3,
                                         jnp.float32)}}


def _grads(params, step):
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1.0)), params)


def _trajectory(tx, params, steps=4):
  state = tx.init(params)
  for step in range(steps):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("momentum, nesterov", [(None, False), (0.9, False),
                                                (0.9, True)])
def test_zero_gamma_sgd_is_optax_sgd_bit_for_bit(momentum, nesterov):
  params = _params()
  expected = _trajectory(optax.sgd(0.05, momentum, nesterov), params)
  _assert_bitwise_equal(
      _trajectory(bort_jax.bort_sgd(0.05, momentum, nesterov, gamma=0.0),
                  params), expected)
  # A traced zero (inject_hyperparams) computes Δ and adds 0 · Δ exactly;
  # injected hyperparameters are float32 arrays, so compare like with like.
  injected = optax.inject_hyperparams(bort_jax.bort_sgd)(
      learning_rate=0.05, momentum=momentum, nesterov=nesterov, gamma=0.0)
  _assert_bitwise_equal(
      _trajectory(injected, params),
      _trajectory(optax.inject_hyperparams(optax.sgd)(
          learning_rate=0.05, momentum=momentum, nesterov=nesterov), params))


def test_zero_gamma_adamw_is_optax_adamw_bit_for_bit():
  params = _params()
  expected = _trajectory(optax.adamw(1e-2, weight_decay=0.05), params)
  _assert_bitwise_equal(
      _trajectory(bort_jax.bort_adamw(1e-2, weight_decay=0.05, gamma=0.0),
                  params), expected)
  # Injected hyperparameters are float32 arrays: compare like with like.
  injected = optax.inject_hyperparams(bort_jax.bort_adamw)(
      learning_rate=1e-2, weight_decay=0.05, gamma=0.0)
  _assert_bitwise_equal(
      _trajectory(injected, params),
      _trajectory(optax.inject_hyperparams(optax.adamw)(
          learning_rate=1e-2, weight_decay=0.05), params))


def _kernel_delta(kernel, mode, c):
  """Δ of a Flax kernel through the PyTorch-layout reference."""
  return reference.from_torch_layout(
      reference.correction(reference.torch_layout(kernel), mode, c),
      kernel.shape)


def _numpy_params(params):
  return jax.tree.map(lambda p: np.asarray(p, np.float64), params)


def _is_kernel(path):
  return path[-1].key == "kernel"


def test_bort_sgd_two_steps_match_spec_formulas():
  lr, mu, wd, gamma, c = 0.1, 0.9, 0.01, 0.3, 0.8
  params = _params(1)
  tx = bort_jax.bort_sgd(lr, mu, weight_decay=wd, gamma=gamma, mode="l2-full",
                         amplitude=c, start_on_constraint=False)
  got = _trajectory(tx, params, steps=2)

  w = _numpy_params(params)
  buffer = None
  for step in range(2):
    grads = _numpy_params(_grads(jax.tree.map(jnp.asarray, w), step))
    g = jax.tree_util.tree_map_with_path(
        lambda path, grad, p: grad + wd * p + (
            gamma * _kernel_delta(p, "l2-full", c) if _is_kernel(path) else 0),
        grads, w)
    # b ← μ b + g (first step b = g), W ← W − lr · b.
    buffer = g if buffer is None else jax.tree.map(
        lambda b, x: mu * b + x, buffer, g)
    w = jax.tree.map(lambda p, b: p - lr * b, w, buffer)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bort_adamw_one_step_matches_spec_formula():
  lr, b1, b2, eps, wd, gamma = 0.01, 0.9, 0.999, 1e-8, 0.05, 0.2
  params = _params(2)
  tx = bort_jax.bort_adamw(lr, b1, b2, eps, weight_decay=wd, gamma=gamma,
                           mode="l1-fullrow", amplitude="ada",
                           start_on_constraint=False)
  got = _trajectory(tx, params, steps=1)

  def expected(path, p, g):
    m_hat = (1 - b1) * g / (1 - b1)
    v_hat = (1 - b2) * g * g / (1 - b2)
    direction = m_hat / (np.sqrt(v_hat) + eps) + wd * p
    if _is_kernel(path):
      rows = reference.torch_layout(p)
      c = np.mean(np.linalg.norm(rows, axis=1)) ** 2
      direction = direction + gamma * _kernel_delta(p, "l1-fullrow", c)
    return p - lr * direction

  w = _numpy_params(params)
  want = jax.tree_util.tree_map_with_path(
      expected, w, _numpy_params(_grads(params, 0)))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_with_bort_decoupled_adamw_equals_bort_adamw():
  params = _params(3)
  schedule = optax.cosine_decay_schedule(1e-2, 10)
  # Without the start: on the constraint, l1-fullrow takes the signs of
  # residuals at rounding level, which two summation orders set apart.
  ours = bort_jax.bort_adamw(schedule, weight_decay=0.01, gamma=0.5,
                             start_on_constraint=False)
  # with_bort's strength is per step: the paper's lr · γ, written out.
  composed = bort_jax.with_bort(
      optax.adamw(schedule, weight_decay=0.01),
      strength=lambda count: schedule(count) * 0.5, start_on_constraint=False)
  for a, b in zip(jax.tree.leaves(_trajectory(ours, params)),
                  jax.tree.leaves(_trajectory(composed, params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_with_bort_coupled_sgd_equals_bort_sgd():
  params = _params(4)
  for a, b in zip(
      jax.tree.leaves(_trajectory(
          bort_jax.bort_sgd(0.1, 0.9, gamma=0.2, mode="l2-row",
                            amplitude=1.0), params)),
      jax.tree.leaves(_trajectory(
          bort_jax.with_bort(optax.sgd(0.1, 0.9), strength=0.2,
                             mode="l2-row", amplitude=1.0,
                             placement="coupled",
                             start_on_constraint=False),  # bort_sgd's
          params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("placement", ["coupled", "decoupled"])
@pytest.mark.parametrize("make", [optax.lamb, optax.lion])
def test_with_bort_on_lamb_and_lion_orthogonalises(make, placement):
  """With zero data loss, Bort on any optimizer drives W Wᵀ towards I."""
  lr = 1e-2
  tx = bort_jax.with_bort(
      make(lr), strength=lr if placement == "decoupled" else 1.0,
      mode="l2-full", amplitude=1.0, placement=placement)
  params = {"kernel": jnp.asarray(
      np.random.default_rng(5).normal(size=(8, 3)), jnp.float32)}
  before = bort_jax.orthogonality_error(params, 1.0)["kernel"].constraint_error
  params, _ = run_zero_loss(tx, params, 200)
  after = bort_jax.orthogonality_error(params, 1.0)["kernel"].constraint_error
  assert after < 0.25 * before


def test_with_bort_rejects_bad_placement_and_strength():
  with pytest.raises(ValueError, match="placement must be"):
    bort_jax.with_bort(optax.sgd(0.1), strength=0.1, placement="after")
  with pytest.raises(ValueError, match="strength must be >= 0"):
    bort_jax.with_bort(optax.sgd(0.1), strength=-1.0)
  # The per-step strength needs no learning rate: the old argument is gone.
  with pytest.raises(TypeError, match="learning_rate"):
    bort_jax.with_bort(optax.sgd(0.1), learning_rate=0.1)


# ---- the Huber width reaches the kernels -----------------------------------

def _huber_step(kernel, tau):
  """``clip((W Wᵀ − I)/τ, −1, 1) W`` for the rows ``W = kernelᵀ``, in float64."""
  w = np.asarray(kernel, np.float64).T
  gram = w @ w.T - np.eye(w.shape[0])
  return (np.clip(gram / tau, -1, 1) @ w).T


@pytest.mark.parametrize("build", [
    lambda tau: bort_jax.add_bort_correction(1.0, "huber-fullrow", 1.0,
                                             tau=tau),
    lambda tau: bort_jax.bort_sgd(1.0, gamma=1.0, mode="huber-fullrow",
                                  amplitude=1.0, tau=tau,
                                  start_on_constraint=False),
    lambda tau: bort_jax.bort_adamw(1.0, gamma=1.0, weight_decay=0.0,
                                    mode="huber-fullrow", amplitude=1.0,
                                    tau=tau, start_on_constraint=False),
    lambda tau: bort_jax.with_bort(optax.sgd(1.0), strength=1.0,
                                   mode="huber-fullrow", amplitude=1.0,
                                   tau=tau, start_on_constraint=False),
], ids=["add_bort_correction", "bort_sgd", "bort_adamw", "with_bort"])
def test_tau_reaches_the_huber_kernels(build):
  """With zero data gradients the step is ∓Δ: tau 0.5 and 0.01 differ as the
  formula says (0.5 scales the residual, 0.01 clips most of it to signs).
  The aliases without their start, whose first step would land on the
  constraint whatever tau."""
  kernel = jnp.array([[1.0, 0.3], [0.0, 1.02]])
  params = {"kernel": kernel}
  zeros = {"kernel": jnp.zeros((2, 2))}
  steps = {}
  for tau in (0.5, 0.01):
    tx = build(tau)
    updates, _ = tx.update(zeros, tx.init(params), params)
    steps[tau] = np.abs(np.asarray(updates["kernel"], np.float64))
    np.testing.assert_allclose(steps[tau], np.abs(_huber_step(kernel, tau)),
                               rtol=1e-6, atol=1e-7)
  assert not np.allclose(steps[0.5], steps[0.01])
  np.testing.assert_allclose(
      np.asarray(bort_jax.tree_correction(params, "huber-fullrow", 1.0,
                                          tau=0.5)["kernel"]),
      _huber_step(kernel, 0.5), rtol=1e-6)


@pytest.mark.parametrize("build", [
    lambda: bort_jax.add_bort_correction(1.0, "huber-fullrow", tau=0.0),
    lambda: bort_jax.bort_sgd(0.1, tau=-1.0),
    lambda: bort_jax.bort_adamw(1e-3, tau=float("inf")),
    lambda: bort_jax.with_bort(optax.sgd(0.1), tau="wide"),
])
def test_tau_is_checked_at_construction(build):
  with pytest.raises(ValueError, match="tau must be"):
    build()

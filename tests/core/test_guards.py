"""skip_nonfinite_steps: a guard that checks the updates the optimizer makes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from tests.core.zero_loss import run_zero_loss


def _overflowing_case():
  """Bort-SGD l2-full, γ = 1, rows of norm ≈ 2.4, finite (zero) gradients.

  The l2 correction is cubic: each step multiplies the excess norm, so the
  params overflow to inf/NaN within a few steps.
  """
  rng = np.random.default_rng(0)
  w = rng.normal(size=(16, 8))
  w *= 2.4 / np.linalg.norm(w, axis=0, keepdims=True)  # units are columns
  params = {"dense": {"kernel": jnp.asarray(w, jnp.float32),
                      "bias": jnp.zeros(8)}}
  # Without the start, whose first step would land it on the constraint.
  tx = bort_jax.bort_sgd(1.0, gamma=1.0, mode="l2-full",
                         start_on_constraint=False)
  return params, tx


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def test_the_red_team_case_overflows_unguarded_and_past_apply_if_finite():
  params, tx = _overflowing_case()
  assert not _finite(run_zero_loss(tx, params, 6)[0])
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=10)
  params_after, state = run_zero_loss(guarded, params, 6)
  assert not _finite(params_after)  # gradients are finite: nothing skipped
  assert int(state.total_notfinite) == 0


def test_skip_nonfinite_steps_keeps_params_finite_and_counts():
  params, tx = _overflowing_case()
  guarded = bort_jax.skip_nonfinite_steps(tx, max_consecutive_errors=10)
  after, state = run_zero_loss(guarded, params, 6)
  assert _finite(after)
  assert int(state.notfinite_count) >= 1
  assert int(state.total_notfinite) == int(state.notfinite_count)
  assert not bool(state.last_finite)
  # The skipped steps changed nothing: running on keeps the params.
  again, later = run_zero_loss(guarded, after, 2)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  assert int(later.notfinite_count) == 2


def test_a_nan_weight_with_finite_gradients_is_skipped():
  params = {"kernel": jnp.array([[jnp.nan, 0.0], [0.0, 1.0]])}
  inner = bort_jax.bort_sgd(0.1, 0.9, gamma=0.1)
  guarded = bort_jax.skip_nonfinite_steps(inner, max_consecutive_errors=2)
  state = guarded.init(params)
  grads = {"kernel": jnp.ones((2, 2))}
  updates, new_state = guarded.update(grads, state, params)
  assert bool(jnp.all(updates["kernel"] == 0))
  assert int(new_state.notfinite_count) == 1
  # The inner state (the momentum buffer) did not move.
  for a, b in zip(jax.tree.leaves(new_state.inner_state),
                  jax.tree.leaves(state.inner_state)):
    np.testing.assert_array_equal(a, b)


def test_finite_steps_are_the_inner_steps_and_give_up_after_the_limit():
  rng = np.random.default_rng(1)
  params = {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  inner = bort_jax.bort_adamw(1e-2, gamma=0.3, mode="l1-fullrow")
  guarded = bort_jax.skip_nonfinite_steps(inner, max_consecutive_errors=1)
  grads = {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  want, _ = inner.update(grads, inner.init(params), params)
  got, state = guarded.update(grads, guarded.init(params), params)
  np.testing.assert_array_equal(got["kernel"], want["kernel"])
  assert int(state.notfinite_count) == 0 and bool(state.last_finite)
  bad = {"kernel": grads["kernel"].at[0, 0].set(jnp.inf)}
  skipped, state = guarded.update(bad, state, params)
  assert bool(jnp.all(skipped["kernel"] == 0))
  taken, state = guarded.update(bad, state, params)  # count 2 > 1: taken
  assert not bool(jnp.all(jnp.isfinite(taken["kernel"])))
  assert int(state.total_notfinite) == 2


def test_bad_arguments():
  with pytest.raises(TypeError, match=r"call the factory first, e.g. "
                     r"skip_nonfinite_steps\(optax.sgd\(\.\.\.\)"):
    bort_jax.skip_nonfinite_steps(optax.sgd, max_consecutive_errors=1)
  for wrap in (bort_jax.with_bort, lambda tx: bort_jax.skip_nonfinite_steps(
      tx, max_consecutive_errors=1)):
    with pytest.raises(TypeError,
                       match=r"pass its \.gradient_transformation\(\)"):
      wrap(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2))
  with pytest.raises(ValueError, match="max_consecutive_errors must be a "
                     "non-negative integer"):
    bort_jax.skip_nonfinite_steps(optax.sgd(0.1), max_consecutive_errors=-1)

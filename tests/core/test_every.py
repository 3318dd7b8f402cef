"""every=k: the amortised correction, k·γ·Δ on every k-th step only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax


def _params():
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 4)) * 0.5,
                                          jnp.float32),
                    "bias": jnp.zeros(4)},
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)) * 0.3,
                                         jnp.float32)}}


def _grads(params, step):
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1.0)), params)


def _add(updates, deltas, factor):
  return jax.tree.map(
      lambda u, d: u if d is None else (u + factor * d).astype(u.dtype),
      updates, deltas, is_leaf=lambda x: x is None)


@pytest.mark.parametrize("mode", ["l2-full", "l1-fullrow"])
def test_every_one_is_the_plain_correction_bit_for_bit(mode):
  params = _params()
  tx = bort_jax.bort_sgd(0.1, 0.9, gamma=0.3, mode=mode, amplitude=1.0,
                         every=1)
  sgd = optax.sgd(0.1, 0.9)
  p_tx, s_tx, p_ref, s_ref = params, tx.init(params), params, sgd.init(params)
  for step in range(4):
    updates, s_tx = tx.update(_grads(p_tx, step), s_tx, p_tx)
    p_tx = optax.apply_updates(p_tx, updates)
    corrected = _add(_grads(p_ref, step),
                     bort_jax.tree_correction(p_ref, mode), 0.3)
    updates, s_ref = sgd.update(corrected, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, updates)
  for a, b in zip(jax.tree.leaves(p_tx), jax.tree.leaves(p_ref)):
    np.testing.assert_array_equal(a, b)
  assert isinstance(tx.init(params)[0], optax.EmptyState)  # no count kept


@pytest.mark.parametrize("placement", ["coupled", "decoupled"])
def test_every_k_applies_k_gamma_delta_on_every_kth_step(placement):
  k, lr = 3, 0.05
  gamma = lambda count: 0.1 * (count + 1)  # read at the step count
  # Decoupled, the strength is per step: lr · γ(count).
  strength = ((lambda count: lr * gamma(count)) if placement == "decoupled"
              else gamma)
  tx = bort_jax.with_bort(
      optax.sgd(lr), strength=strength, mode="l2-full", amplitude=1.0,
      placement=placement, every=k)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zeros, state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  want = params
  for t in range(7):
    params, state = step(params, state)
    if t % k == 0:
      deltas = bort_jax.tree_correction(want, "l2-full")
      want = _add(want, deltas, -lr * k * gamma(t))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert len(traces) == 1  # one compilation for all steps


def test_the_skipped_steps_are_a_cond_branch():
  tx = bort_jax.add_bort_correction(0.1, every=4)
  params = _params()
  jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
  assert "cond" in str(jaxpr)


@pytest.mark.parametrize("every", [0, 1.5, True])
def test_every_must_be_a_positive_int(every):
  with pytest.raises(ValueError, match="every must be a positive integer"):
    bort_jax.add_bort_correction(0.1, every=every)
  with pytest.raises(ValueError, match="every must be a positive integer"):
    bort_jax.bort_adamw(1e-3, gamma=0.1, every=every)


def test_every_under_inject_hyperparams_is_static():
  params = _params()
  injected = optax.inject_hyperparams(bort_jax.bort_sgd, static_args="every")(
      learning_rate=0.1, gamma=0.1, every=2)
  plain = bort_jax.bort_sgd(jnp.float32(0.1), gamma=jnp.float32(0.1), every=2)
  a, b = params, params
  sa, sb = injected.init(params), plain.init(params)
  step_a, step_b = jax.jit(injected.update), jax.jit(plain.update)
  for t in range(3):
    ua, sa = step_a(_grads(a, t), sa, a)
    ub, sb = step_b(_grads(b, t), sb, b)
    a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  traced = optax.inject_hyperparams(bort_jax.bort_sgd)(
      learning_rate=0.1, gamma=0.1, every=2)
  with pytest.raises(TypeError, match="static_args=\\('every',\\)"):
    jax.jit(traced.update)(params, traced.init(params), params)

"""The Huber width as a schedule, and ``tau="step"``: the zone that follows
the aliases' per-step strength, against a float64 reference of each step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from tests.core import reference

KERNEL = np.random.default_rng(0).normal(size=(6, 4)) * 0.5  # (in, out)


def _params():
  return {"kernel": jnp.asarray(KERNEL, jnp.float32), "bias": jnp.zeros(4)}


def _run(tx, steps, grads=None):
  """The updates of ``steps`` jitted steps from _params (zero gradients)."""
  params = _params()
  grads = grads or jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for _ in range(steps):
    updates, state = step(grads, state, params)
    out.append(updates)
    params = optax.apply_updates(params, updates)
  return out


def _huber_reference(kernel, tau):
  """Δ of a Flax kernel under huber-fullrow "ada", float64, rows = units."""
  w = np.asarray(kernel, np.float64).T
  c = np.mean(np.linalg.norm(w, axis=1)) ** 2
  return reference.correction(w, "huber-fullrow", c, tau).T


def test_a_tau_schedule_is_read_at_the_step_count():
  widths = [0.5, 0.02, 0.001]
  tx = bort_jax.add_bort_correction(
      1.0, "huber-fullrow", "ada", tau=lambda n: jnp.asarray(widths)[n])
  params = _params()
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for width in widths:  # the params do not move: the widths alone change Δ
    updates, state = jax.jit(tx.update)(zeros, state, params)
    np.testing.assert_allclose(updates["kernel"],
                               _huber_reference(KERNEL, width), rtol=2e-5,
                               atol=1e-6)
    assert not np.any(updates["bias"])
  first = _huber_reference(KERNEL, widths[0])
  assert np.abs(first - _huber_reference(KERNEL, widths[-1])).max() > 0.1


@pytest.mark.parametrize("every", [1, 3])
def test_tau_step_is_2_5_every_lr_gamma_in_bort_adamw(every):
  """Bort-AdamW's update less AdamW's is −lr_t·k·γ·Δ with τ_t = 2.5·k·lr_t·γ
  on the scheduled steps (float64 reference), and 0 on the others."""
  lr = optax.linear_schedule(0.02, 0.002, 6)
  gamma, steps = 0.7, 6
  grads = {"kernel": jnp.full((6, 4), 0.3), "bias": jnp.ones(4)}
  bort = _run(bort_jax.bort_adamw(lr, gamma=gamma, mode="huber-fullrow",
                                  tau="step", every=every,
                                  start_on_constraint=False), steps, grads)
  # The same chain with γ = 0 is AdamW: replay its params to get each W_t.
  params = _params()
  adamw = bort_jax.bort_adamw(lr, gamma=0.0)
  state = adamw.init(params)
  for t, got in enumerate(bort):
    base, state = adamw.update(grads, state, params)
    kernel = np.asarray(params["kernel"], np.float64)
    if t % every == 0:
      rate = float(lr(t))
      want = -rate * every * gamma * _huber_reference(
          kernel, 2.5 * every * rate * gamma)
    else:
      want = np.zeros_like(kernel)
    np.testing.assert_allclose(got["kernel"] - base["kernel"], want,
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["bias"], base["bias"], rtol=1e-6)
    params = optax.apply_updates(params, got)  # follow the Bort run's W


def test_tau_step_in_bort_sgd_and_with_bort_is_their_per_step_strength():
  """τ_t = 2.5·k·lr_t·γ/(1 − μ) for Bort-SGD, 2.5·k·s_t for with_bort."""
  lr = optax.cosine_decay_schedule(0.05, 8)
  grads = {"kernel": jnp.full((6, 4), 0.1), "bias": jnp.ones(4)}

  def pair(make, schedule):
    got = _run(make("step"), 5, grads)
    want = _run(make(schedule), 5, grads)
    fixed = _run(make(10.0), 5, grads)  # all inside: not the l1 slope
    for g, w in zip(got, want):
      np.testing.assert_allclose(g["kernel"], w["kernel"], rtol=1e-6)
    assert max(float(jnp.abs(g["kernel"] - f["kernel"]).max())
               for g, f in zip(got, fixed)) > 1e-7

  pair(lambda tau: bort_jax.bort_sgd(
      lr, 0.9, gamma=0.003, mode="huber-fullrow", tau=tau, every=2),
      lambda n: 2.5 * 2 * lr(n) * 0.003 / (1 - 0.9))
  strength = optax.linear_schedule(2e-3, 1e-4, 5)
  pair(lambda tau: bort_jax.with_bort(
      optax.adam(1e-3), strength=strength, mode="huber-fullrow", tau=tau),
      lambda n: 2.5 * strength(n))


def test_a_zero_width_is_the_l1_limit():
  """A learning rate of 0 makes τ 0 under tau="step": the l1 correction,
  eagerly and jitted, never 0/0."""
  huber = bort_jax.add_bort_correction(1.0, "huber-fullrow", "ada",
                                       tau=lambda n: 0.0)
  l1 = bort_jax.add_bort_correction(1.0, "l1-fullrow", "ada")
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  want, _ = l1.update(zeros, l1.init(params), params)
  for update in (huber.update, jax.jit(huber.update)):
    got, _ = update(zeros, huber.init(params), params)
    np.testing.assert_allclose(got["kernel"], want["kernel"], rtol=1e-6)
  warm = bort_jax.bort_adamw(optax.linear_schedule(0.0, 1e-3, 10),
                             mode="huber-fullrow", tau="step")
  updates, _ = warm.update(zeros, warm.init(params), params)  # eager, lr 0
  assert np.all(np.isfinite(updates["kernel"]))


@pytest.mark.parametrize("width", [-0.1, float("nan")])
def test_a_negative_or_nan_width_from_a_schedule_is_nan_not_l1(width):
  """Unchecked like γ's, but never silently the l1 correction: NaN, which
  skip_nonfinite_steps catches."""
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = bort_jax.add_bort_correction(1.0, "huber-fullrow", "ada",
                                    tau=lambda n: width)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  assert np.all(np.isnan(updates["kernel"]))
  guarded = bort_jax.skip_nonfinite_steps(optax.chain(tx, optax.sgd(0.1)), 5)
  updates, _ = guarded.update(zeros, guarded.init(params), params)
  assert not np.any(updates["kernel"])  # the step is skipped


def test_a_tau_schedule_keeps_a_count_only_where_tau_is_read():
  params = _params()
  huber = bort_jax.bort_adamw(1e-3, mode="huber-fullrow", tau="step")
  l1 = bort_jax.bort_adamw(1e-3, tau="step")  # l1-fullrow ignores tau
  assert jax.tree.structure(l1.init(params)) == jax.tree.structure(
      bort_jax.bort_adamw(1e-3).init(params))
  assert len(jax.tree.leaves(huber.init(params))) == len(
      jax.tree.leaves(l1.init(params))) + 1  # the count


def test_tau_under_inject_hyperparams_is_a_hyperparameter():
  tx = optax.inject_hyperparams(bort_jax.bort_adamw)(
      learning_rate=1e-3, mode="huber-fullrow", tau=0.5)
  params = _params()
  state = tx.init(params)
  assert float(state.hyperparams["tau"]) == 0.5
  zeros = jax.tree.map(jnp.zeros_like, params)
  wide, _ = tx.update(zeros, state, params)
  state.hyperparams["tau"] = jnp.asarray(0.001)
  narrow, _ = tx.update(zeros, state, params)
  assert float(jnp.abs(wide["kernel"] - narrow["kernel"]).max()) > 1e-5


@pytest.mark.parametrize("build, error, match", [
    (lambda: bort_jax.add_bort_correction(0.1, "huber-fullrow", tau="step"),
     ValueError, "tau='step' follows the per-step strength"),
    (lambda: bort_jax.with_bort(optax.sgd(0.1), placement="coupled",
                                mode="huber-fullrow", tau="step"),
     ValueError, "tau='step' follows the per-step strength"),
    (lambda: bort_jax.bort_adamw(1e-3, tau="steps"), TypeError,
     "tau must be a number > 0, a schedule or 'step'"),
    (lambda: bort_jax.bort_sgd(0.1, tau=None), TypeError,
     "tau must be a number > 0, a schedule or 'step', got None"),
    (lambda: bort_jax.add_bort_correction(0.1, "huber-fullrow", tau="x"),
     TypeError, r"tau must be a number > 0 or a schedule, got 'x'\.$"),
    (lambda: bort_jax.bort_sgd(0.1, tau=0.0), ValueError, "tau must be"),
    (lambda: bort_jax.tree_correction(_params(), tau=0.0), ValueError,
     "tau must be"),
    (lambda: bort_jax.bort_correction(jnp.ones((2, 3)), "huber-fullrow",
                                      tau=-1.0), ValueError, "tau must be"),
])
def test_bad_widths_are_one_line(build, error, match):
  with pytest.raises(error, match=match):
    build()

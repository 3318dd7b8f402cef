"""The l1 sign's rounding zone, and the correction around the start's landing.

On the constraint ``G − cI`` is rounding: its sign depends on the summation
order (the CPU, jit or not, vmap), and a full-strength step in that direction
made the default optimizer's results depend on it. The l1 modes read a
residual within ``rounding_zone`` as 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from bort_jax._src import penalty
from bort_jax._src import products

L1_MODES = ["l1-fullrow", "l1-fullcol", "l1-row", "l1-col"]


def _landed(shape, seed=0):
  w = jax.random.normal(jax.random.key(seed), shape)
  return bort_jax.project_to_constraint({"kernel": w}, amplitude="ada")["kernel"]


@pytest.mark.parametrize("mode, shape", [
    ("l1-fullrow", (64, 16)),  # (in, out): fewer units than fan-in
    ("l1-fullrow", (16, 64)),  # more: the fan-in side, H = cI
    ("l1-row", (200, 64)),
    *[(mode, (48, 48)) for mode in L1_MODES],
])
def test_l1_corrections_vanish_on_a_landed_matrix(mode, shape):
  # A landed kernel meets each of these modes' constraints to float32
  # rounding.
  w = _landed(shape)
  delta = bort_jax.tree_correction({"kernel": w}, mode=mode, amplitude="ada")
  np.testing.assert_array_equal(delta["kernel"], 0.0)


def test_the_zone_reads_rounding_as_zero_and_keeps_every_other_sign():
  c = jnp.asarray([2.0])
  ctx = products.Context(None, None, None, zone=1e-3)
  residual = jnp.asarray([[0.0, 1e-3, -1e-3, 2.1e-3, -2.1e-3, 0.5, jnp.nan]])
  np.testing.assert_array_equal(
      products.l1_sign(residual, c[:, None], ctx),
      [[0, 0, 0, 1, -1, 1, np.nan]])
  # √n · eps · c for a sum of n products, four times over.
  assert products.rounding_zone(784, jnp.float32) == pytest.approx(
      4 * 28 * float(jnp.finfo(jnp.float32).eps))
  assert products.rounding_zone(784, jnp.float64) < 1e-13


def _steps(tx, params, grads, n):
  state, errors = tx.init(params), []
  for i in range(n):
    updates, state = tx.update(grads(i), state, params)
    params = optax.apply_updates(params, updates)
    errors.append(float(bort_jax.orthogonality_error(params)["kernel"]
                        .constraint_error))
  return params, errors


def _gradients(shape, scale=0.1):
  return lambda i: {"kernel": scale * jax.random.normal(jax.random.key(10 + i),
                                                        shape)}


def test_the_default_gives_the_same_steps_under_inject_hyperparams_and_vmap():
  # Before the zone, the step after the landing followed the rounding of
  # G − cI: inject_hyperparams and a vmapped member differed by 4–6 % of
  # the weights within three steps.
  shape = (24, 12)
  params = {"kernel": jax.random.normal(jax.random.key(0), shape)}
  grads = _gradients(shape)
  plain, _ = _steps(bort_jax.bort_adamw(1e-2), params, grads, 4)
  injected, _ = _steps(optax.inject_hyperparams(bort_jax.bort_adamw)(
      learning_rate=1e-2), params, grads, 4)
  np.testing.assert_allclose(injected["kernel"], plain["kernel"], atol=1e-5)

  def member(lr):
    tx = bort_jax.bort_adamw(lr)
    p, state = params, tx.init(params)
    for i in range(4):
      updates, state = tx.update(grads(i), state, p)
      p = optax.apply_updates(p, updates)
    return p["kernel"]

  np.testing.assert_allclose(jax.vmap(member)(jnp.asarray([1e-2, 2e-2]))[0],
                             plain["kernel"], atol=1e-5)


def _zero(shape):
  return lambda i: {"kernel": jnp.zeros(shape)}


def test_a_coupled_start_leaves_no_correction_in_the_momentum():
  # Step 0's correction of the initial weights went into the momentum and
  # pulled the landed weights to 0.1 for ~1/(1 − μ) steps.
  shape = (64, 32)
  params = {"kernel": jax.random.normal(jax.random.key(0), shape) / 8}
  tx = bort_jax.bort_sgd(0.05, 0.9, gamma=0.5, mode="l2-full", amplitude=1.0,
                         start_on_constraint=True)
  _, errors = _steps(tx, params, _zero(shape), 10)
  assert max(errors) < 1e-5, errors
  tx = bort_jax.with_bort(optax.sgd(0.05, momentum=0.9), placement="coupled",
                          strength=0.5, mode="l2-full", amplitude=1.0)
  _, errors = _steps(tx, params, _zero(shape), 10)
  assert max(errors) < 1e-5, errors


def test_a_lagged_correction_holds_no_delta_of_the_weights_the_start_replaced():
  # The Δ held from step 0 was of the initial weights, and pulled the
  # landed ones to 0.09 over the next 7 steps.
  shape = (64, 32)
  params = {"kernel": jax.random.normal(jax.random.key(0), shape) / 8}
  tx = bort_jax.bort_adamw(1e-3, mode="huber-fullrow", every=8, lagged=True)
  _, errors = _steps(tx, params, _zero(shape), 10)
  assert max(errors) < 1e-5, errors


def test_without_the_start_the_coupled_first_step_is_corrected():
  # The rule is the start's: with it off, step 0 is corrected as before.
  shape = (8, 4)
  params = {"kernel": jax.random.normal(jax.random.key(0), shape)}
  tx = bort_jax.bort_sgd(0.05, 0.9, gamma=0.5, mode="l2-full", amplitude=1.0)
  updates, _ = tx.update(_zero(shape)(0), tx.init(params), params)
  delta = bort_jax.tree_correction(params, mode="l2-full", amplitude=1.0)
  np.testing.assert_allclose(updates["kernel"], -0.05 * 0.5 * delta["kernel"],
                             rtol=1e-6)


def _off_by(shape, size, seed=1):
  """A landed kernel moved off the constraint by about ``size`` of c."""
  w = _landed(shape)
  noise = jax.random.normal(jax.random.key(seed), shape)
  return w + size * w.std() * noise


@pytest.mark.parametrize("make", [
    lambda lr: bort_jax.bort_adamw(lr, weight_decay=0.0,
                                   start_on_constraint=False),
    lambda lr: bort_jax.bort_sgd(lr, 0.9, start_on_constraint=False),
    lambda lr: bort_jax.with_bort(optax.adam(lr), strength=lr,
                                  start_on_constraint=False),
])
def test_the_aliases_zone_narrows_to_a_step_that_moves_less_than_rounding(
    make):
  # Residuals of a few eps, inside the rounding zone (4·√48·eps ≈ 3e-6):
  # a step of lr·γ = 1e-2 in their sign would move the weights far beyond
  # rounding, so none is taken; one of 1e-10 moves them less, so it is.
  shape = (48, 24)
  params = {"kernel": _off_by(shape, 1e-7)}
  residual = np.abs(np.asarray(params["kernel"]).T @ np.asarray(
      params["kernel"]) / np.mean(np.sum(np.asarray(params["kernel"])**2, 0))
                    - np.eye(24)).max()
  assert residual < products.rounding_zone(48, jnp.float32)
  zero = _zero(shape)(0)
  for lr, moves in [(1e-2, False), (1e-10, True)]:
    tx = make(lr)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert bool(jnp.any(updates["kernel"] != 0)) == moves, lr
  # The building block, which knows no step, keeps the full zone.
  tx = bort_jax.add_bort_correction(1e-10, mode="l1-fullrow",
                                    amplitude="ada")
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_array_equal(updates["kernel"], 0.0)


def _decayed_run(tx, steps=240, shape=(64, 32)):
  params = {"kernel": jax.random.normal(jax.random.key(0), shape)}
  grads = _gradients(shape, scale=1e-2)

  @jax.jit
  def step(params, state, i):
    updates, state = tx.update(grads(i), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for i in range(steps):
    params, state = step(params, state, i)
  return params


def test_a_decayed_learning_rate_dithers_the_residual_to_float_precision():
  # With the full zone the residual rests at its edge (~1e-5 here); as
  # the step decays below it, the sign takes the residual to rounding.
  schedule = optax.cosine_decay_schedule(1e-3, 240)
  params = _decayed_run(bort_jax.bort_adamw(schedule))
  error = bort_jax.orthogonality_error(params)["kernel"].constraint_error
  assert error < 2e-6, error
  # The same chain with the building block, which knows no step.
  full_zone = optax.chain(
      optax.scale_by_adam(),
      bort_jax.add_bort_correction(1.0, mode="l1-fullrow", amplitude="ada"),
      optax.scale_by_learning_rate(schedule), bort_jax.start_on_constraint())
  error = bort_jax.orthogonality_error(
      _decayed_run(full_zone))["kernel"].constraint_error
  assert error > 5e-6, error


@pytest.mark.slow
def test_the_decayed_default_gives_the_same_steps_jitted_eager_and_injected():
  # Steps below rounding follow the summation order, but move the weights
  # by no more than rounding: the runs agree to float precision.
  schedule = optax.cosine_decay_schedule(1e-2, 40)
  shape = (24, 12)
  params = {"kernel": jax.random.normal(jax.random.key(0), shape)}
  grads = _gradients(shape)
  jitted = _decayed_run(bort_jax.bort_adamw(schedule), steps=40, shape=shape)
  eager, _ = _steps(bort_jax.bort_adamw(schedule), params, grads, 40)
  injected, _ = _steps(optax.inject_hyperparams(bort_jax.bort_adamw)(
      learning_rate=schedule), params, grads, 40)
  np.testing.assert_allclose(eager["kernel"], jitted["kernel"], atol=1e-5)
  np.testing.assert_allclose(injected["kernel"], jitted["kernel"], atol=1e-5)


def test_a_huber_width_below_the_zone_takes_the_zone():
  # tau = 1e-7 made the slope a sign within rounding: 2e-3 a step on a
  # landed kernel, as the l1 modes before their zone. tau="step" keeps its
  # proportional slope (its width stays above the step's zone).
  shape = (96, 24)
  params = {"kernel": jax.random.normal(jax.random.key(0), shape)}
  for tau, still in [(1e-7, True), (0.01, False)]:
    tx = bort_jax.bort_adamw(1e-3, mode="huber-fullrow", tau=tau,
                             weight_decay=0.0)
    _, errors = _steps(tx, params, _zero(shape), 6)
    moved = max(errors[1:]) - errors[0]
    assert (abs(moved) < 1e-7) if still else (errors[-1] < errors[0]), (
        tau, errors)
  tx = bort_jax.bort_adamw(1e-6, mode="huber-fullrow", tau="step",
                           weight_decay=0.0)
  _, errors = _steps(tx, params, _zero(shape), 6)
  assert errors[-1] < errors[0], errors


def test_a_gram_of_coarser_inputs_widens_the_zone():
  # A Gram of bfloat16-rounded inputs is known to bfloat16's rounding:
  # with float32's zone the sign stepped 2e-3 a step on the landed kernel
  # and the error swung between 3e-3 and 1.5e-2.
  shape = (256, 64)
  params = {"kernel": jax.random.normal(jax.random.key(0), shape) / 16}
  options = bort_jax.KernelOptions(gram_dtype=jnp.bfloat16)
  tx = bort_jax.bort_adamw(1e-3, weight_decay=0.0, kernel_options=options)
  _, errors = _steps(tx, params, _zero(shape), 5)
  assert max(errors[1:]) <= errors[0] * 1.01, errors
  assert products.rounding_zone(256, jnp.float32, jnp.bfloat16) > 100 * (
      products.rounding_zone(256, jnp.float32))
  # Products that keep their inputs add no input rounding, whatever the
  # weights' stored dtype (bfloat16 weights are upcast exactly; the
  # hypothesis property test holds their correction to their penalty's
  # gradient).
  assert products.input_eps(bort_jax.KernelOptions(
      precision=jax.lax.Precision.HIGHEST)) == 0.0


def test_the_default_precision_rounds_only_float32_products(monkeypatch):
  # TF32 (a GPU's default precision) rounds float32 products' inputs; a
  # float64 Gram (x64) is exact there, but got TF32's zone, 1e10 times its
  # own, and read residuals up to 1.4e-4 · c as 0.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  default = bort_jax.KernelOptions()
  assert products.input_eps(default, jnp.float32) == 2.0 ** -10
  assert products.input_eps(default, jnp.float64) == 0.0
  assert products.input_eps(
      bort_jax.KernelOptions(gram_dtype=jnp.float32), jnp.float64) == 2.0 ** -10
  assert products.input_eps(bort_jax.KernelOptions(
      precision=jax.lax.Precision.HIGHEST), jnp.float32) == 0.0
  with jax.enable_x64(True):
    assert penalty._zone(64, jnp.float64, default, None) < 1e-12
    assert penalty._zone(64, jnp.float32, default, None) > 1e-4

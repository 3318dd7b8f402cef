"""start_on_constraint: the first step lands every Bort matrix on W Wᵀ = cI,
and every later step, and every other leaf, passes unchanged."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import bort_jax
from tests.core.test_projection import _normal
from tests.core.test_projection import _units


def _landed(kernel, c=None):
  """The float64 reference: √c · U Vᵀ of the (out, fan-in) matrix, c the
  "ada" amplitude over the feasible side when ``c`` is None."""
  w = _units(kernel)
  u, _, vh = np.linalg.svd(w, full_matrices=False)
  if c is None:
    axis = 1 if w.shape[0] <= w.shape[1] else 0
    c = np.mean(np.linalg.norm(w, axis=axis)) ** 2
  return np.sqrt(c) * u @ vh


def _params():
  return {"wide": {"kernel": _normal((16, 6), 1), "bias": _normal((6,), 2)},
          "square": {"kernel": _normal((3, 3, 4, 8), 3)},  # conv: 8 × 36
          "tall": {"kernel": _normal((5, 12), 4)},  # 12 units, fan-in 5
          "head": {"kernel": _normal((6, 3), 5)}}


def _step(tx, params, grads, state=None):
  state = tx.init(params) if state is None else state
  updates, state = jax.jit(tx.update)(grads, state, params)
  return optax.apply_updates(params, updates), updates, state


@pytest.mark.parametrize("amplitude", ["ada", 2.0])
def test_the_first_step_lands_on_the_projection_of_where_it_went(amplitude):
  params = _params()
  grads = jax.tree.map(lambda p: _normal(p.shape, 7, 1.0), params)
  tx = optax.chain(optax.adam(0.05),
                   bort_jax.start_on_constraint(amplitude))
  plain = optax.adam(0.05)
  new, updates, _ = _step(tx, params, grads)
  _, plain_updates, _ = _step(plain, params, grads)
  for name in params:
    went = _units(params[name]["kernel"] + plain_updates[name]["kernel"])
    c = None if amplitude == "ada" else amplitude
    want = _landed(params[name]["kernel"] + plain_updates[name]["kernel"], c)
    assert not np.allclose(went, want, atol=1e-3)  # the step changed it
    np.testing.assert_allclose(_units(new[name]["kernel"]), want, atol=2e-5)
  # The bias is no Bort leaf: its update is the optimizer's, bit for bit.
  np.testing.assert_array_equal(updates["wide"]["bias"],
                                plain_updates["wide"]["bias"])


def test_later_steps_are_the_optimizer_s_own():
  params = _params()
  grads = jax.tree.map(lambda p: _normal(p.shape, 8, 1.0), params)
  tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                   bort_jax.start_on_constraint())
  plain = optax.sgd(0.1, momentum=0.9)
  p1, _, state = _step(tx, params, grads)
  _, _, plain_state = _step(plain, params, grads)
  for _ in range(3):
    p2, updates, state = _step(tx, p1, grads, state)
    _, plain_updates, plain_state = _step(plain, p1, grads, plain_state)
    jax.tree.map(np.testing.assert_array_equal, updates, plain_updates)
    p1 = p2
  assert int(state[1].count) == 4


def test_the_aliases_start_on_the_constraint_and_hold_it():
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  error = lambda p: float(bort_jax.mean_orthogonality_error(
      bort_jax.orthogonality_error(p)).constraint_error)
  assert error(params) > 0.1
  # The sign correction (l1-fullrow) chatters around the constraint by a few
  # per-step strengths (1e-3 to 1.5e-3 here); the smooth one holds it.
  for tx, bound in [
      (bort_jax.bort_adamw(1e-3, start_on_constraint=True), 0.01),
      (bort_jax.bort_sgd(0.05, 0.9, start_on_constraint=True), 0.01),
      (bort_jax.with_bort(optax.lion(1e-4), start_on_constraint=True), 0.01),
      (bort_jax.with_bort(optax.adam(1e-3), placement="coupled",
                          start_on_constraint=True), 0.01),
      (bort_jax.bort_adamw(1e-3, mode="huber-fullrow", every=8,
                           start_on_constraint=True), 1e-5)]:
    p, _, state = _step(tx, params, zero)
    assert error(p) < 1e-5
    for _ in range(16):  # zero loss: the correction only holds it there
      p, _, state = _step(tx, p, zero, state)
    assert error(p) < bound
  # Without it, the same run is far from the constraint after one step.
  p, _, _ = _step(bort_jax.bort_adamw(1e-3, start_on_constraint=False),
                  params, zero)
  assert error(p) > 0.1


def test_bort_mask_and_dimension_numbers_select_as_the_correction_does():
  params = _params()
  grads = jax.tree.map(lambda p: _normal(p.shape, 9, 1.0), params)
  mask = {"wide": {"kernel": False, "bias": False},
          "square": {"kernel": True}, "tall": {"kernel": True},
          "head": {"kernel": False}}
  tx = optax.chain(optax.adam(0.05),
                   bort_jax.start_on_constraint(bort_mask=mask))
  _, updates, _ = _step(tx, params, grads)
  _, plain, _ = _step(optax.adam(0.05), params, grads)
  for name in ("wide", "head"):
    np.testing.assert_array_equal(updates[name]["kernel"],
                                  plain[name]["kernel"])
  assert not np.allclose(updates["tall"]["kernel"], plain["tall"]["kernel"])
  # (out, in) weights, the PyTorch and Equinox layout.
  weights = {"w": _normal((6, 16), 10)}
  tx = optax.chain(optax.adam(0.05), bort_jax.start_on_constraint(
      dimension_numbers=bort_jax.BortDimensionNumbers.out_in()))
  new, _, _ = _step(tx, weights, jax.tree.map(jnp.zeros_like, weights))
  gram = np.asarray(new["w"], np.float64) @ np.asarray(new["w"]).T
  np.testing.assert_allclose(gram, gram[0, 0] * np.eye(6), atol=1e-5)


def test_a_bf16_kernel_lands_in_its_dtype():
  params = {"kernel": _normal((16, 6), 11).astype(jnp.bfloat16)}
  tx = optax.chain(optax.sgd(0.0), bort_jax.start_on_constraint())
  new, updates, _ = _step(tx, params, jax.tree.map(jnp.zeros_like, params))
  assert updates["kernel"].dtype == jnp.bfloat16
  error = float(bort_jax.mean_orthogonality_error(
      bort_jax.orthogonality_error(new)).constraint_error)
  assert error < 0.03  # bf16 rounding of the landed weights


def test_inject_hyperparams_and_a_schedule_amplitude():
  params = {"kernel": _normal((16, 6), 12)}
  zero = jax.tree.map(jnp.zeros_like, params)
  injected = optax.inject_hyperparams(bort_jax.bort_adamw)
  tx = injected(learning_rate=1e-3, amplitude=2.0, start_on_constraint=True)
  went, _, _ = _step(injected(learning_rate=1e-3, amplitude=2.0), params,
                     zero)  # the correction and decay moved it
  new, _, _ = _step(tx, params, zero)
  np.testing.assert_allclose(_units(new["kernel"]),
                             _landed(went["kernel"], 2.0), atol=2e-5)
  tx = optax.chain(optax.sgd(0.0), bort_jax.start_on_constraint(
      optax.linear_schedule(3.0, 1.0, 10)))  # read at step 0: c = 3
  new, _, _ = _step(tx, params, zero)
  np.testing.assert_allclose(_units(new["kernel"]),
                             _landed(params["kernel"], 3.0), atol=2e-5)


def test_refusals_name_the_argument():
  with pytest.raises(TypeError, match="start_on_constraint must be True"):
    bort_jax.bort_adamw(1e-3, start_on_constraint="yes")
  with pytest.raises(ValueError, match="amplitude must be a positive"):
    bort_jax.start_on_constraint(-1.0)
  tx = bort_jax.start_on_constraint()
  params = {"kernel": jnp.ones((3, 2))}
  with pytest.raises(ValueError, match="call `update\\(updates, state, "
                     "params\\)`"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="has dtype int32"):
    tx.init({"kernel": jnp.ones((3, 2), jnp.int32)})
  # A params tree that is not the updates' was paired leaf by leaf with
  # zip, silently dropping the extra leaves (a broadcast error in XLA).
  with pytest.raises(ValueError, match="params must be the tree the "
                     "updates are for.*got 2 arrays for 1 updates"):
    tx.update(params, tx.init(params), {**params, "extra": jnp.ones(2)})
  # A schedule the correction accepts but the start cannot read at step 0
  # says so, and how to keep it (it said "no schedule" before).
  with pytest.raises(ValueError, match="reads a schedule at step 0.*got "
                     "0.0.*start_on_constraint=False") as e:
    bort_jax.bort_adamw(1e-3, amplitude=optax.linear_schedule(0.0, 1.0, 10))
  assert "\n" not in str(e.value)
  bort_jax.bort_adamw(1e-3, amplitude=optax.linear_schedule(0.0, 1.0, 10),
                      start_on_constraint=False)


def test_a_concrete_bool_array_is_a_bool_and_lr_0_still_lands():
  # jnp.asarray(False) was refused where np.False_ was accepted. A zero
  # learning rate moves nothing but the start: it is a projection, not a
  # step of the learning rate (documented).
  params = {"kernel": _normal((16, 6), 3)}
  for flag, moves in ((jnp.asarray(False), False), (jnp.asarray(True), True)):
    _, updates, _ = _step(bort_jax.bort_adamw(0.0, start_on_constraint=flag),
                          params, params)
    assert bool(jnp.any(updates["kernel"] != 0)) == moves


def test_an_empty_selection_warns_once_in_an_alias():
  params = {"w": jnp.ones((3, 2))}  # not a Flax kernel: nothing selected
  with pytest.warns(UserWarning, match="selects no parameter") as record:
    bort_jax.bort_adamw(1e-3, start_on_constraint=True).init(params)
  assert sum("selects no parameter" in str(w.message) for w in record) == 1


def test_under_shard_map_a_split_fan_in_is_gathered_once_and_lands_whole():
  """Each device holds 2 of a matrix's fan-in rows; the landing is the
  unsharded one's, each device keeping its part. A replicated matrix lands
  locally (it was gathered 8 times over, and failed)."""
  params = {"dense": {"kernel": _normal((16, 6), 13)},
            "conv": {"kernel": _normal((3, 3, 8, 4), 14)},
            "up": {"kernel": _normal((16, 48), 15)},  # overcomplete
            "head": {"kernel": _normal((16, 5), 19)}}  # replicated
  grads = jax.tree.map(lambda p: _normal(p.shape, 16, 1.0), params)
  want, _, _ = _step(optax.chain(optax.adam(0.05),
                                 bort_jax.start_on_constraint()),
                     params, grads)
  mesh = jax.make_mesh((8,), ("model",))
  specs = {"dense": {"kernel": P("model", None)},
           "conv": {"kernel": P(None, None, "model", None)},
           "up": {"kernel": P("model", None)}, "head": {"kernel": P()}}
  tx = optax.chain(optax.adam(0.05), bort_jax.start_on_constraint(
      kernel_options=bort_jax.KernelOptions(axis_name="model")))

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(specs, specs),
                     out_specs=specs)
  def first_step(local, local_grads):
    updates, _ = tx.update(local_grads, tx.init(local), local)
    return optax.apply_updates(local, updates)

  place = lambda tree: jax.device_put(tree, jax.tree.map(
      lambda s: NamedSharding(mesh, s), specs))
  got = first_step(place(params), place(grads))
  for name in params:
    np.testing.assert_allclose(got[name]["kernel"], want[name]["kernel"],
                               atol=2e-5)


def test_a_non_finite_first_update_is_not_spread_over_its_leaf():
  params = {"a": {"kernel": _normal((16, 6), 17)},
            "b": {"kernel": _normal((6, 4), 18)}}
  bad = {"a": {"kernel": jnp.zeros((16, 6)).at[0, 0].set(jnp.inf)},
         "b": {"kernel": jnp.zeros((6, 4))}}
  tx = optax.chain(optax.sgd(1.0), bort_jax.start_on_constraint())
  new, updates, _ = _step(tx, params, bad)
  finite = np.isfinite(np.asarray(updates["a"]["kernel"]))
  assert finite.sum() == finite.size - 1  # the one inf, as SGD made it
  error = bort_jax.orthogonality_error(new)["b/kernel"].constraint_error
  assert float(error) < 1e-5  # the finite leaf still lands

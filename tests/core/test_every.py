"""every=k: the amortised correction, k·γ·Δ on every k-th step only."""

import logging

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
                         every=1, start_on_constraint=False)
  sgd = optax.sgd(0.1, 0.9)
  p_tx, s_tx, p_ref, s_ref = params, tx.init(params), params, sgd.init(params)

  # Both compiled (an eager update runs through its own jit), so that the
  # two programs hold the same operations.
  @jax.jit
  def step_tx(p, s, step):
    updates, s = tx.update(_grads(p, step), s, p)
    return optax.apply_updates(p, updates), s

  @jax.jit
  def step_ref(p, s, step):
    corrected = _add(_grads(p, step), bort_jax.tree_correction(p, mode), 0.3)
    updates, s = sgd.update(corrected, s, p)
    return optax.apply_updates(p, updates), s

  for step in range(4):
    p_tx, s_tx = step_tx(p_tx, s_tx, step)
    p_ref, s_ref = step_ref(p_ref, s_ref, step)
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
      placement=placement, every=k, start_on_constraint=False)
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


def _subjaxprs(value):
  if hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
    yield value.jaxpr
  elif hasattr(value, "eqns"):
    yield value
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _subjaxprs(item)


def _dot_generals(jaxpr) -> int:
  """The products of a jaxpr, nested calls included, outside any ``cond``."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "dot_general"
    if eqn.primitive.name != "cond":
      for value in eqn.params.values():
        count += sum(_dot_generals(sub) for sub in _subjaxprs(value))
  return count


@pytest.mark.parametrize("placement", ["coupled", "decoupled"])
@pytest.mark.parametrize("mode", ["l2-full", "huber-fullrow"])
def test_lagged_holds_delta_and_applies_gamma_delta_on_every_step(
    placement, mode):
  k, lr = 3, 0.05
  gamma = lambda count: 0.1 * (count + 1)
  strength = ((lambda count: lr * gamma(count)) if placement == "decoupled"
              else gamma)
  tx = bort_jax.with_bort(
      optax.sgd(lr), strength=strength, mode=mode, amplitude=1.0,
      placement=placement, every=k, lagged=True, start_on_constraint=False)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zeros, state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  want, held = params, None
  for t in range(8):
    params, state = step(params, state)
    if t % k == 0:  # the reference: Δ of the scheduled step, held
      held = bort_jax.tree_correction(want, mode)
    want = _add(want, held, -lr * gamma(t))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert len(traces) == 1


def test_lagged_computes_the_products_only_on_scheduled_steps():
  params = _params()
  tx = bort_jax.add_bort_correction(0.1, "l1-fullrow", every=4, lagged=True)
  jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr
  conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
  assert _dot_generals(jaxpr) == 0 and len(conds) == 1
  # One branch computes Δ (Gram and product per matrix), the other none.
  counts = sorted(_dot_generals(b.jaxpr) for b in conds[0].params["branches"])
  assert counts[0] == 0 and counts[1] >= 4
  plain = bort_jax.add_bort_correction(0.1, "l1-fullrow")
  assert _dot_generals(jax.make_jaxpr(plain.update)(
      params, plain.init(params), params).jaxpr) == counts[1]


def test_lagged_state_holds_one_delta_per_bort_leaf():
  params = _params()
  state = bort_jax.bort_adamw(1e-3, every=4, lagged=True).init(params)
  held = [s for s in jax.tree.leaves(
      state, is_leaf=lambda x: hasattr(x, "deltas")) if hasattr(s, "deltas")]
  assert len(held) == 1
  deltas = held[0].deltas
  assert deltas["dense"]["bias"] is None
  for path in (("dense", "kernel"), ("conv", "kernel")):
    leaf = deltas[path[0]][path[1]]
    assert leaf.shape == params[path[0]][path[1]].shape
    assert not jnp.any(leaf)


def test_lagged_every_step_is_the_plain_correction_bit_for_bit():
  params = _params()
  lagged = bort_jax.bort_adamw(1e-3, lagged=True)
  plain = bort_jax.bort_adamw(1e-3)
  a, b, sa, sb = params, params, lagged.init(params), plain.init(params)
  for t in range(3):
    ua, sa = lagged.update(_grads(a, t), sa, a)
    ub, sb = plain.update(_grads(b, t), sb, b)
    a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_lagged_under_a_bort_mask_holds_only_the_selected_leaves():
  params = _params()
  mask = {"dense": {"kernel": True, "bias": False}, "conv": {"kernel": False}}
  tx = bort_jax.add_bort_correction(0.1, every=2, lagged=True, bort_mask=mask)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(
      jax.tree.map(jnp.zeros_like, params), state, params)
  assert not jnp.any(updates["conv"]["kernel"])
  assert jnp.any(updates["dense"]["kernel"])


@pytest.mark.parametrize("lagged", [1, "yes", None])
def test_lagged_must_be_a_bool(lagged):
  with pytest.raises(TypeError, match="lagged must be True or False"):
    bort_jax.add_bort_correction(0.1, every=2, lagged=lagged)
  with pytest.raises(TypeError, match="lagged must be True or False"):
    bort_jax.with_bort(optax.sgd(0.1), every=2, lagged=lagged)


def test_eager_steps_compile_once(caplog):
  """Called outside jit, an update holding lax.cond (the start, every k) and
  lax.map (a stacked leaf) compiled them again on every step (the start's
  SVD branch included); it now compiles once."""
  params = {"dense": {"kernel": _params()["dense"]["kernel"]},
            "stack": {"kernel": jnp.stack([jnp.eye(6, 4)] * 3) + 0.1}}
  dims = {"dense": {"kernel": bort_jax.BortDimensionNumbers()},
          "stack": {"kernel": bort_jax.BortDimensionNumbers(batch_axis=0)}}
  tx = bort_jax.bort_adamw(1e-2, every=2, dimension_numbers=dims)
  state = tx.init(params)

  def step(params, state, n):
    updates, state = tx.update(_grads(params, n), state, params)
    return optax.apply_updates(params, updates), state

  for n in range(2):  # the first calls compile
    params, state = step(params, state, n)
  caplog.set_level(logging.DEBUG)
  with jax.log_compiles(True):
    for n in range(2, 6):
      params, state = step(params, state, n)
  compiled = [r.getMessage() for r in caplog.records
              if "Compiling" in r.getMessage()]
  assert not compiled, compiled

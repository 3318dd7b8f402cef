"""The contract battery: every public transformation and alias, every check.

In the style of optax's ``contrib/_common_test.py``: one parametrised list of
transformations, each run through the same checks (extra args,
``inject_hyperparams``, dtype and state-type stability under ``lax.cond``,
``MultiSteps``, ``init`` on ``ShapeDtypeStruct``, no recompilation,
``nnx.Optimizer``, ``tree_map_params``, ``optax.masked`` and convergence on a
small quadratic with γ > 0 on a matrix parameter).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bort_jax

LR = 1e-2


def _guarded_sgd(learning_rate, gamma, mode="l2-full"):
  return bort_jax.skip_nonfinite_steps(
      bort_jax.bort_sgd(learning_rate, 0.9, gamma=gamma, mode=mode),
      max_consecutive_errors=3)


def _bort_then_sgd(learning_rate, gamma, mode="l2-full"):
  return optax.chain(bort_jax.add_bort_correction(gamma, mode),
                     optax.sgd(learning_rate))


def _with_bort(base, placement, learning_rate, gamma, mode="l2-full"):
  # Decoupled, with_bort's strength is per step: lr · γ, as in bort_adamw.
  strength = learning_rate * gamma if placement == "decoupled" else gamma
  return bort_jax.with_bort(
      base(learning_rate), strength=strength, mode=mode, amplitude=1.0,
      placement=placement)


# name -> (factory of (learning_rate, gamma, mode), learning rate that
# converges on the quadratic below in 300 steps).
TRANSFORMATIONS = {
    "add_bort_correction": (_bort_then_sgd, 0.1),
    "bort_sgd": (lambda learning_rate, gamma, mode="l2-full": bort_jax.bort_sgd(
        learning_rate, 0.9, gamma=gamma, mode=mode), 0.05),
    "bort_adamw": (lambda learning_rate, gamma, mode="l2-full":
                   bort_jax.bort_adamw(learning_rate, gamma=gamma, mode=mode,
                                       weight_decay=0.0), 0.05),
    "with_bort_lamb_coupled": (functools.partial(_with_bort, optax.lamb,
                                                 "coupled"), 0.02),
    "with_bort_lamb_decoupled": (functools.partial(_with_bort, optax.lamb,
                                                   "decoupled"), 0.02),
    "with_bort_lion_coupled": (functools.partial(_with_bort, optax.lion,
                                                 "coupled"), 0.005),
    "with_bort_lion_decoupled": (functools.partial(_with_bort, optax.lion,
                                                   "decoupled"), 0.005),
    "skip_nonfinite_steps": (_guarded_sgd, 0.05),
    "bort_adamw_every_3": (lambda learning_rate, gamma, mode="l2-full":
                           bort_jax.bort_adamw(learning_rate, gamma=gamma,
                                               mode=mode, weight_decay=0.0,
                                               every=3), 0.05),
}
NAMES = list(TRANSFORMATIONS)


def _make(name, learning_rate=LR, gamma=0.1, mode="l2-full"):
  return TRANSFORMATIONS[name][0](learning_rate, gamma, mode)


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), dtype),
                    "bias": jnp.asarray(rng.normal(size=3), dtype)},
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)) * 0.3,
                                         dtype)}}


def _grads(params, step=0):
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1)), params)


def _trajectory(tx, params, steps=3, **extra_args):
  state = tx.init(params)
  for step in range(steps):
    updates, state = tx.update(_grads(params, step), state, params,
                               **extra_args)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", NAMES)
def test_extra_args_are_accepted(name):
  tx = _make(name)
  plain, _ = _trajectory(tx, _params())
  extra, _ = _trajectory(tx, _params(), value=jnp.array(1.0), other="x")
  _assert_trees_equal(plain, extra)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_identical_results(name):
  factory = TRANSFORMATIONS[name][0]
  # Injected hyperparameters are float32 arrays: compare like with like.
  lr, gamma = jnp.float32(LR), jnp.float32(0.1)
  plain, _ = _trajectory(factory(lr, gamma), _params())
  injected_tx = optax.inject_hyperparams(factory)(learning_rate=LR, gamma=0.1)
  injected, state = _trajectory(injected_tx, _params())
  _assert_trees_equal(plain, injected)
  assert set(state.hyperparams) >= {"learning_rate", "gamma"}


def test_a_callable_mask_goes_through_inject_hyperparams_as_static():
  # inject_hyperparams calls every callable argument with the step count
  # (a schedule): a mask of the params needs static_args, as the aliases'
  # docstrings say (without, it came back as one False and every matrix
  # was left out silently); the conv kernel is masked out.
  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "dense" in jax.tree_util.keystr(path), params)

  factory = functools.partial(bort_jax.bort_adamw, gamma=0.1,
                              mode="l2-full", bort_mask=mask)
  plain, _ = _trajectory(factory(jnp.float32(LR)), _params())
  with pytest.raises(ValueError, match=(
      r"^bort_mask is one value \(False\) for every parameter; .* pass a "
      r"callable mask with static_args=\('bort_mask',\)\.$")):
    _trajectory(optax.inject_hyperparams(factory)(learning_rate=LR),
                _params())
  injected, _ = _trajectory(optax.inject_hyperparams(
      factory, static_args=("bort_mask",))(learning_rate=LR), _params())
  # Injected numbers are float32 arrays (AdamW's too): a few ulps apart.
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6),
               injected, plain)
  unmasked, _ = _trajectory(bort_jax.bort_adamw(
      jnp.float32(LR), gamma=0.1, mode="l2-full"), _params())
  assert not np.allclose(unmasked["conv"]["kernel"], plain["conv"]["kernel"])
  np.testing.assert_array_equal(unmasked["dense"]["kernel"],
                                plain["dense"]["kernel"])


@pytest.mark.parametrize("dtype", [
    pytest.param(jnp.float16, marks=pytest.mark.slow), jnp.bfloat16,
    jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_dtype_and_state_types_are_stable_under_cond(name, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    params = _params(dtype)
    tx = _make(name)
    state = tx.init(params)

    @jax.jit
    def step(take, params, state):
      # lax.cond needs both branches to agree on the state's types.
      return jax.lax.cond(
          take, lambda: tx.update(_grads(params), state, params),
          lambda: (jax.tree.map(jnp.zeros_like, params), state))

    updates, new_state = step(True, params, state)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype
    assert (jax.tree.structure(new_state) == jax.tree.structure(state))
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
      assert a.dtype == b.dtype and a.shape == b.shape
    # Bort adds no non-finite values where the optax optimizer alone (γ = 0)
    # has none (Adam's eps = 1e-8 underflows in float16, for example).
    base = _make(name, gamma=0.0)
    base_updates, _ = base.update(_grads(params), base.init(params), params)
    finite = lambda u: np.isfinite(np.asarray(u, np.float32))
    for u, b in zip(jax.tree.leaves(updates), jax.tree.leaves(base_updates)):
      assert np.all(finite(u) >= finite(b))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_multisteps_applies_the_mean_gradient_every_k_steps(name):
  params = _params()
  tx = _make(name)
  multi = optax.MultiSteps(tx, every_k_schedule=2)
  state = multi.init(params)
  g0, g1 = _grads(params, 0), _grads(params, 1)
  first, state = multi.update(g0, state, params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(first))
  second, state = multi.update(g1, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g0, g1)
  want, _ = tx.update(mean, tx.init(params), params)
  # A first step that starts on the constraint is P(W + u) − W, a difference
  # of two params-sized numbers: it is compared where it lands.
  started = any(isinstance(s, bort_jax.StartOnConstraintState)
                for s in jax.tree.leaves(
                    tx.init(params), is_leaf=lambda s: isinstance(
                        s, bort_jax.StartOnConstraintState)))
  for a, b, p in zip(jax.tree.leaves(second), jax.tree.leaves(want),
                     jax.tree.leaves(params)):
    if started:
      a, b = p + a, p + b
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_struct(name):
  params = _params()
  tx = _make(name)
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                        params)
  abstract = jax.eval_shape(tx.init, shapes)
  concrete = tx.init(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete)):
    assert a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.parametrize("name", NAMES)
def test_no_recompilation_on_the_second_update(name):
  tx = _make(name)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)
    updates, state = tx.update(_grads(params), state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1


@pytest.mark.parametrize("alias,kwargs", [
    (bort_jax.bort_adamw, {"learning_rate": 1e-3}),
    (bort_jax.bort_adamw, {"learning_rate": 1e-3, "every": 2}),
    (bort_jax.bort_sgd, {"learning_rate": 1e-2, "momentum": 0.9,
                         "start_on_constraint": True}),
])
def test_eager_updates_through_inject_hyperparams_compile_once(
    alias, kwargs, monkeypatch):
  # inject_hyperparams builds the transformation anew on every update; its
  # correction and its start must not be traced (and compiled) each time.
  from bort_jax._src import projection, transform
  traced = {"correction": 0, "start": 0}

  def counting(name, fn):
    def wrapped(*args, **kw):
      traced[name] += 1
      return fn(*args, **kw)
    return wrapped

  monkeypatch.setattr(transform, "_tree_correction",
                      counting("correction", transform._tree_correction))
  monkeypatch.setattr(projection, "_project_leaf",
                      counting("start", projection._project_leaf))
  transform._shared_program.cache_clear()  # nothing compiled before
  tx = optax.inject_hyperparams(alias)(**kwargs)
  params = {"dense": {"kernel": jnp.asarray(
      np.random.default_rng(3).normal(size=(7, 5)) / 3, jnp.float32)}}
  state = tx.init(params)
  for step in range(5):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
  # Each traced once, on the first update (the start runs on step 0 only).
  assert traced == {"correction": 1, "start": 1}, traced
  assert np.isfinite(np.asarray(params["dense"]["kernel"])).all()


def test_a_refused_dimension_number_does_not_take_the_good_one_s_program():
  # 0.0 == 0 (and True == 1): a refused BortDimensionNumbers(output_axis=0.0)
  # filled the shared cache entry of output_axis=0, whose updates were then
  # refused as "got 0.0" until the process ended.
  from bort_jax._src import transform
  transform._shared_program.cache_clear()
  params = {"w": jnp.asarray(np.random.default_rng(4).normal(size=(3, 6)) / 3,
                             jnp.float32)}
  bad = bort_jax.add_bort_correction(
      0.1, dimension_numbers=bort_jax.BortDimensionNumbers(output_axis=0.0))
  with pytest.raises(ValueError, match="output_axis must be an int"):
    bad.init(params)
  good = bort_jax.add_bort_correction(
      0.1, dimension_numbers=bort_jax.BortDimensionNumbers(output_axis=0))
  updates, _ = good.update(_grads(params, 0), good.init(params), params)
  assert np.isfinite(np.asarray(updates["w"])).all()


def test_the_start_skips_eagerly_under_a_trace_that_closes_over_its_state():
  # apply_if_finite traces the inner update with the state closed over: the
  # eager skip compared the count with JAX, a tracer there, and raised
  # TracerBoolConversionError on the first step.
  params = {"dense": {"kernel": jnp.asarray(
      np.random.default_rng(5).normal(size=(7, 5)) / 3, jnp.float32)}}
  tx = optax.apply_if_finite(bort_jax.bort_adamw(1e-2), 3)
  state = tx.init(params)
  for step in range(3):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
  assert bort_jax.orthogonality_error(params)["dense/kernel"].constraint_error \
      < 0.05


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices")
def test_a_gamma_committed_to_one_device_corrects_params_on_a_mesh():
  # The eager update takes gamma as a jit argument: one committed to a
  # device met params on a mesh as "incompatible devices".
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  params = {"dense": {"kernel": jax.device_put(
      jnp.asarray(np.random.default_rng(6).normal(size=(8, 16)) / 3,
                  jnp.float32),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))}}
  grads = _grads(params, 0)
  results = []
  for gamma in (jnp.float32(0.1), jax.device_put(jnp.float32(0.1),
                                                 jax.devices()[0])):
    tx = bort_jax.add_bort_correction(gamma, "l2-full")
    results.append(tx.update(grads, tx.init(params), params)[0])
  np.testing.assert_allclose(results[1]["dense"]["kernel"],
                             results[0]["dense"]["kernel"], rtol=1e-6)


class _MLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 6, rngs=rngs)
    self.out = nnx.Linear(6, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_nnx_optimizer_step_equals_the_optax_step(name):
  model = _MLP(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 4)), jnp.float32)
  loss = lambda model: jnp.mean(model(x) ** 2)
  optimizer = nnx.Optimizer(model, _make(name), wrt=nnx.Param)
  grads = nnx.grad(loss)(model)
  optimizer.update(model, grads)
  tx = _make(name)
  updates, _ = tx.update(grads.to_pure_dict(), tx.init(params), params)
  want = optax.apply_updates(params, updates)
  got = nnx.state(model, nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert not np.allclose(got["hidden"]["kernel"], params["hidden"]["kernel"])


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params_reaches_every_params_shaped_leaf(name):
  params = _params()
  tx = _make(name)
  state = tx.init(params)
  doubled = optax.tree_utils.tree_map_params(
      tx, lambda p: p + 1, state,
      transform_non_params=lambda x: x)
  assert jax.tree.structure(doubled) == jax.tree.structure(state)
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(doubled), jax.tree.leaves(state))]
  params_shaped = [a.shape in {p.shape for p in jax.tree.leaves(params)}
                   and a.ndim > 0 for a in jax.tree.leaves(state)]
  assert moved == params_shaped


@pytest.mark.parametrize("name", NAMES)
def test_optax_masked_leaves_the_masked_out_leaves_alone(name):
  params = _params()
  mask = {"dense": {"kernel": True, "bias": True}, "conv": {"kernel": False}}
  masked = optax.masked(_make(name), mask)
  updates, _ = masked.update(_grads(params), masked.init(params), params)
  np.testing.assert_array_equal(updates["conv"]["kernel"],
                                _grads(params)["conv"]["kernel"])
  inner = _make(name)
  sub = {"dense": params["dense"]}
  want, _ = inner.update(_grads(sub), inner.init(sub), sub)
  np.testing.assert_allclose(updates["dense"]["kernel"],
                             want["dense"]["kernel"], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_quadratic_with_bort_on(name):
  """½‖W − T‖² with T's rows orthonormal: the loss and Bort agree on T."""
  rng = np.random.default_rng(2)
  target = jnp.asarray(np.linalg.qr(rng.normal(size=(6, 4)))[0], jnp.float32)
  params = {"kernel": target + 0.3 * jnp.asarray(rng.normal(size=(6, 4)),
                                                 jnp.float32)}
  lr = TRANSFORMATIONS[name][1]
  tx = _make(name, learning_rate=lr, gamma=0.5)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(lambda w: w - target, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  start = float(jnp.linalg.norm(params["kernel"] - target))
  for _ in range(300):
    params, state = step(params, state)
  end = float(jnp.linalg.norm(params["kernel"] - target))
  assert end < 0.1 * start, (start, end)

"""Bort on parameters sharded over a mesh of 8 simulated CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import bort_jax

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 (simulated) devices")


def _params():
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(64, 32)) * 0.2,
                                          jnp.float32),
                    "bias": jnp.zeros(32)},
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)) * 0.2,
                                         jnp.float32)}}


# Fan-in split, units split, both split (FSDP x tensor parallel).
SPECS = {
    "fan_in": {"dense": P("model", None), "conv": P(None, None, "model", None)},
    "units": {"dense": P(None, "model"), "conv": P(None, None, None, "model")},
    "both": {"dense": P("data", "model"), "conv": P(None, None, "data", "model")},
}


def _shard(params, mesh, specs):
  shardings = {
      "dense": {"kernel": NamedSharding(mesh, specs["dense"]),
                "bias": NamedSharding(mesh, P())},
      "conv": {"kernel": NamedSharding(mesh, specs["conv"])},
  }
  return jax.device_put(params, shardings), shardings


def _steps(tx, params, n=2):
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)
    grads = jax.tree.map(lambda p: jnp.cos(p), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(n):
    params, state = step(params, state)
  return params, len(traces)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("layout", SPECS)
@pytest.mark.parametrize("mode", bort_jax.MODES)
@pytest.mark.slow
def test_sharded_step_equals_unsharded(axis_type, layout, mode):
  # Both product strategies: batched under Explicit, looped under Auto.
  batch_products = axis_type == AxisType.Explicit
  # Without the start: on the constraint the l1 modes take the signs of
  # residuals at rounding level, which a split reduction sets apart (the
  # next test checks the start's own landing under these layouts).
  make = functools.partial(
      bort_jax.bort_adamw, 1e-2, gamma=0.5, mode=mode, amplitude="ada",
      kernel_options=bort_jax.KernelOptions(batch_products=batch_products),
      start_on_constraint=False)
  expected, _ = _steps(make(), _params())
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
  with jax.set_mesh(mesh):
    params, shardings = _shard(_params(), mesh, SPECS[layout])
    got, traces = _steps(make(), params)
  assert traces == 1  # no recompilation on the second step
  for path, value in jax.tree_util.tree_leaves_with_path(got):
    name = path[0].key
    want = expected[name][path[1].key]
    np.testing.assert_allclose(value, want, atol=1e-5, rtol=1e-5)
    sharding = shardings[name][path[1].key]
    assert value.sharding.is_equivalent_to(sharding, value.ndim), (
        path, value.sharding, sharding)


@pytest.mark.parametrize("batch_products", [False, True])
@pytest.mark.parametrize("mode", bort_jax.MODES)
def test_shard_map_with_fan_in_split_over_an_axis(mode, batch_products):
  # "up" has more units than fan-in (48 on 16), split 2 a device: the full
  # row modes then take the fan-in's Gram and "ada" over all its columns.
  # "head" and "twin" are replicated, whole on every device: their products
  # are local (summed over the axis, a Gram counted them 8 times, silently);
  # "twin" has the shape of a device's part of "dense", and is not batched
  # with it.
  rng = np.random.default_rng(1)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape) * 0.2,
                                      jnp.float32)
  params = {**_params(), "up": {"kernel": normal(16, 48)},
            "head": {"kernel": normal(32, 10)},
            "twin": {"kernel": normal(8, 32)}}
  expected = bort_jax.tree_correction(params, mode, "ada")
  mesh = jax.make_mesh((8,), ("model",))
  specs = {"dense": {"kernel": P("model", None), "bias": P()},
           "conv": {"kernel": P(None, None, "model", None)},
           "up": {"kernel": P("model", None)}, "head": {"kernel": P()},
           "twin": {"kernel": P()}}
  options = bort_jax.KernelOptions(axis_name="model",
                                   batch_products=batch_products)

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(specs,),
                     out_specs=specs)
  def local_correction(local):
    deltas = bort_jax.tree_correction(local, mode, "ada",
                                      kernel_options=options)
    return jax.tree.map(lambda d, p: jnp.zeros_like(p) if d is None else d,
                        deltas, local, is_leaf=lambda x: x is None)

  got = local_correction(jax.device_put(params, jax.tree.map(
      lambda s: NamedSharding(mesh, s), specs)))
  for name in ("dense", "conv", "up", "head", "twin"):
    np.testing.assert_allclose(got[name]["kernel"], expected[name]["kernel"],
                               atol=1e-5, rtol=1e-5, err_msg=name)


def test_shard_map_over_two_axes_corrects_a_replicated_matrix_locally():
  params = {"dense": {"kernel": jnp.asarray(
      np.random.default_rng(2).normal(size=(64, 16)) * 0.2, jnp.float32)},
            "head": {"kernel": jnp.asarray(
      np.random.default_rng(3).normal(size=(16, 10)) * 0.2, jnp.float32)}}
  expected = bort_jax.tree_correction(params, "l2-full", "ada")
  mesh = jax.make_mesh((2, 4), ("x", "y"))
  specs = {"dense": {"kernel": P(("x", "y"), None)}, "head": {"kernel": P()}}
  options = bort_jax.KernelOptions(axis_name=("x", "y"))

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(specs,),
                     out_specs=specs)
  def local_correction(local):
    return bort_jax.tree_correction(local, "l2-full", "ada",
                                    kernel_options=options)

  got = local_correction(jax.device_put(params, jax.tree.map(
      lambda s: NamedSharding(mesh, s), specs)))
  for name in params:
    np.testing.assert_allclose(got[name]["kernel"], expected[name]["kernel"],
                               atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("layout", [  # "both" splits each side: the fast one
    pytest.param("fan_in", marks=pytest.mark.slow),
    pytest.param("units", marks=pytest.mark.slow), "both"])
def test_sharded_start_lands_as_unsharded(axis_type, layout):
  """The start's first step (an SVD per matrix) under each layout lands on
  the unsharded landing, and keeps the params' shardings."""
  make = functools.partial(bort_jax.bort_adamw, 1e-2, gamma=0.5)
  expected, _ = _steps(make(), _params(), n=1)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
  with jax.set_mesh(mesh):
    params, shardings = _shard(_params(), mesh, SPECS[layout])
    got, _ = _steps(make(), params, n=1)
    error = bort_jax.mean_orthogonality_error(
        bort_jax.orthogonality_error(got)).constraint_error
  assert float(error) < 1e-5
  for path, value in jax.tree_util.tree_leaves_with_path(got):
    name, leaf = path[0].key, path[1].key
    np.testing.assert_allclose(value, expected[name][leaf], atol=1e-5)
    assert value.sharding.is_equivalent_to(shardings[name][leaf], value.ndim)


def test_explicit_l2_full_all_reduces_only_the_small_gram():
  """Fan-in split: one all-reduce of the m×m Gram, no all-gather of W."""
  mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Explicit,))
  kernel = jnp.asarray(np.random.default_rng(1).normal(size=(256, 32)),
                       jnp.float32)
  with jax.set_mesh(mesh):
    kernel = jax.device_put(kernel, NamedSharding(mesh, P("model", None)))
    correct = jax.jit(lambda k: bort_jax.tree_correction(
        {"kernel": k}, "l2-full", 1.0)["kernel"])
    hlo = correct.lower(kernel).compile().as_text()
  reduces = [line for line in hlo.splitlines() if "all-reduce(" in line]
  assert len(reduces) == 1 and "f32[32,32]" in reduces[0], reduces
  assert "all-gather(" not in hlo


# ---- every path under Explicit sharding ------------------------------------

def _dyadic(shape, seed):
  """Weights in {−2, …, 2}/8: every Gram entry and product is exact in
  float32, so a split reduction gives bit-identical signs. (The l1 modes take
  the sign of Gram entries: with random reals, a different summation order
  flips the sign of entries within rounding of zero.)"""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(-2, 3, size=shape) / 8, jnp.float32)


def _one_update(tx, params):
  grads = jax.tree.map(lambda p: jnp.cos(p), params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return updates


def _check_explicit_equals_unsharded(make, params, specs):
  expected = _one_update(make(), params)
  mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
  with jax.set_mesh(mesh):
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    sharded = jax.device_put(params, shardings)
    got = _one_update(make(), sharded)
  for value, want, sharding in zip(jax.tree.leaves(got),
                                   jax.tree.leaves(expected),
                                   jax.tree.leaves(shardings)):
    np.testing.assert_allclose(value, want, atol=1e-5, rtol=1e-5)
    assert value.sharding.is_equivalent_to(sharding, value.ndim), (
        value.sharding, sharding)


@pytest.mark.parametrize("mode, shape, specs", [
    ("l1-fullrow", (64, 4096), [P(None, "x"), P("x", None)]),
    ("l1-fullcol", (3, 3, 256, 32), [P(None, None, None, "x"),
                                     P(None, None, "x", None)]),
], ids=["l1-fullrow-4096-units", "l1-fullcol-3x3x256-conv"])
@pytest.mark.parametrize("split", [0, 1], ids=["units", "fan_in"])
def test_explicit_blocked_l1_equals_unsharded(mode, shape, specs, split):
  """More vectors than block_size (2048): the blocked loop, split both ways."""
  params = {"kernel": _dyadic(shape, seed=3)}
  make = functools.partial(bort_jax.bort_adamw, 1e-2, gamma=0.5, mode=mode,
                           amplitude=1.0)
  _check_explicit_equals_unsharded(make, params, {"kernel": specs[split]})


@pytest.mark.parametrize("spec", [P(None, "x"), P("x", None)],
                         ids=["units", "fan_in"])
def test_explicit_blocked_huber_with_a_tau_schedule_equals_unsharded(spec):
  """A traced τ (tau="step" under a decaying learning rate) in the blocked
  loop: it raised a mesh mismatch, closed over inside auto_axes."""
  params = {"kernel": jnp.asarray(
      np.random.default_rng(5).normal(size=(16, 24)) * 0.3, jnp.float32)}
  make = functools.partial(
      bort_jax.bort_adamw, optax.linear_schedule(1e-2, 1e-3, 10),
      mode="huber-fullrow", tau="step",
      kernel_options=bort_jax.KernelOptions(block_size=8))
  _check_explicit_equals_unsharded(make, params, {"kernel": spec})


@pytest.mark.parametrize("spec", [P(None, "x"), P("x", None)],
                         ids=["units", "fan_in"])
def test_explicit_blocked_l1_with_a_decaying_step_equals_unsharded(spec):
  """The l1 zone that follows a scheduled step is traced, as τ above."""
  params = {"kernel": jnp.asarray(
      np.random.default_rng(5).normal(size=(16, 24)) * 0.3, jnp.float32)}
  make = functools.partial(
      bort_jax.bort_adamw, optax.linear_schedule(1e-2, 1e-3, 10),
      kernel_options=bort_jax.KernelOptions(block_size=8))
  _check_explicit_equals_unsharded(make, params, {"kernel": spec})


@pytest.mark.parametrize("batch_products", [False, True])
@pytest.mark.parametrize("mode", bort_jax.MODES)
def test_explicit_stacked_kernels_split_on_their_batch_axis(mode,
                                                            batch_products):
  """CPU default (a loop over matrices) and batched products alike."""
  params = {"kernel": jnp.asarray(
      np.random.default_rng(4).normal(size=(8, 12, 6)) * 0.3, jnp.float32)}
  make = functools.partial(
      bort_jax.bort_adamw, 1e-2, gamma=0.5, mode=mode, amplitude="ada",
      dimension_numbers=bort_jax.BortDimensionNumbers(batch_axis=0),
      kernel_options=bort_jax.KernelOptions(batch_products=batch_products))
  _check_explicit_equals_unsharded(make, params, {"kernel": P("x", None, None)})


def test_auto_conv_split_on_in_all_reduces_the_gram_and_gathers_nothing():
  """Several fan-in axes are contracted in place: no reshape forces a
  gather of the (3, 3, 64, 32) kernel split on its `in` axis."""
  mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
  kernel = jnp.asarray(
      np.random.default_rng(1).normal(size=(3, 3, 64, 32)) * 0.05,
      jnp.float32)
  with jax.set_mesh(mesh):
    kernel = jax.device_put(kernel,
                            NamedSharding(mesh, P(None, None, "model", None)))
    correct = jax.jit(lambda k: bort_jax.tree_correction(
        {"kernel": k}, "l2-full", 1.0)["kernel"])
    hlo = correct.lower(kernel).compile().as_text()
    got = correct(kernel)
  reduces = [line for line in hlo.splitlines() if "all-reduce(" in line]
  assert len(reduces) == 1 and "f32[32,32]" in reduces[0], reduces
  assert "all-gather(" not in hlo
  want = bort_jax.tree_correction({"kernel": np.asarray(kernel)}, "l2-full",
                                  1.0)["kernel"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [P("x", None), P(None, "x")])
def test_orthogonality_error_under_explicit_sharding(spec):
  # The diagnostic's Gram contracted a sharded axis without an output spec:
  # a ShardingTypeError deep in XLA, even on a 1-device mesh.
  w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
  expected = bort_jax.orthogonality_error({"dense": {"kernel": w}})
  for n in (1, 8):
    mesh = jax.make_mesh((n,), ("x",), axis_types=(AxisType.Explicit,),
                         devices=jax.devices()[:n])
    with jax.set_mesh(mesh):
      params = {"dense": {"kernel": jax.device_put(
          w, NamedSharding(mesh, spec))}}
      errors = bort_jax.orthogonality_error(params)
    np.testing.assert_allclose(errors["dense/kernel"].constraint_error,
                               expected["dense/kernel"].constraint_error,
                               rtol=1e-5)


def test_explicit_arrays_need_no_mesh_context():
  """Explicit shardings travel in the arrays' types: the step, the start,
  the projection and the diagnostic work without ``jax.set_mesh`` (a bare
  PartitionSpec raised "not under a mesh context" in each), and give what
  they give inside it. Both sides split ("both"): every reshard is met."""
  mesh = jax.make_mesh((4, 2), ("data", "model"),
                       axis_types=(AxisType.Explicit,) * 2)
  params, shardings = _shard(_params(), mesh, SPECS["both"])
  run = lambda: (  # one step: the correction, then the start
      _steps(bort_jax.bort_adamw(1e-2, gamma=0.5), params, n=1)[0],
      bort_jax.project_to_constraint(params),
      bort_jax.mean_orthogonality_error(
          bort_jax.orthogonality_error(params)).constraint_error)
  got = run()
  with jax.set_mesh(mesh):
    want = run()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7), got, want)
  for path, value in jax.tree_util.tree_leaves_with_path(got[:2]):
    name, leaf = path[1].key, path[2].key
    assert value.sharding.is_equivalent_to(shardings[name][leaf], value.ndim)

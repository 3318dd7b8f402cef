"""Tests of DBort's loss and the NNX output collector (bort_jax._src.dbort)."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bort_jax._src.dbort import dbort_loss
from bort_jax._src.dbort import dbort_outputs


# ----------------------------------------------------------------------------
# dbort_loss.


def test_loss_matches_float64_reference_on_a_pytree():
  rng = np.random.default_rng(0)
  outputs = {
      "conv": rng.normal(size=(2, 5, 5, 3)),
      "dense": (rng.normal(size=(4, 7)) * 3.0, rng.normal(size=(4, 7))),
      "skipped": None,
  }
  weight, power = 0.3, 0.25
  expected = -weight * sum(
      np.mean(np.square(y)) ** power
      for y in (outputs["conv"], *outputs["dense"])
  )
  got = dbort_loss(
      jax.tree.map(jnp.float32, outputs), weight=weight, power=power
  )
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_loss_gradient_is_the_analytic_one():
  y = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
  weight, power = 2.0, 1e-4
  energy = np.mean(np.square(np.float64(y)))
  expected = (
      -weight * power * energy ** (power - 1) * 2 * np.float64(y) / y.size
  )
  got = jax.grad(lambda y: dbort_loss(y, weight=weight, power=power))(y)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_small_power_with_weight_one_over_power_is_grad_log_energy():
  """λ p = 1 and p → 0: the DBort gradient is that of log mean(y²)."""
  y = jnp.asarray(
      np.random.default_rng(2).normal(size=(8, 3)) * 50, jnp.float32
  )
  power = 1e-4
  got = jax.grad(lambda y: dbort_loss(y, weight=1 / power, power=power))(y)
  expected = -jax.grad(lambda y: jnp.log(jnp.mean(y**2)))(y)
  # The factor E^p = 1 + O(p log E).
  np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_loss_under_jit_with_traced_hyperparameters_matches_eager():
  y = jnp.linspace(-2.0, 3.0, 12).reshape(3, 4)
  eager = dbort_loss(y, weight=1e-4, power=1e-4)
  jitted = jax.jit(lambda y, w, p: dbort_loss(y, weight=w, power=p))(
      y, 1e-4, 1e-4
  )
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_loss_computes_low_precision_outputs_in_float32():
  y = jnp.full((4, 4), 3.0, jnp.bfloat16)
  loss = dbort_loss(y, weight=1.0, power=1.0)
  assert loss.dtype == jnp.float32
  assert float(loss) == -9.0


def test_all_zero_outputs_give_finite_loss_and_zero_gradient():
  y = jnp.zeros((3, 2))
  value, grad = jax.value_and_grad(dbort_loss)(y)
  assert np.isfinite(value)
  np.testing.assert_array_equal(grad, 0.0)


def test_a_nan_or_empty_output_gives_a_nan_loss_not_a_number():
  # The floor for an all-zero output took NaN > tiny as false: a NaN output
  # (or an empty batch) gave a finite loss and an energy of 1.2e-38.
  for y in (jnp.array([[jnp.nan, 1.0]]), jnp.zeros((0, 3))):
    assert np.isnan(float(dbort_loss(y, weight=1.0, power=0.5)))


def test_loss_without_outputs_raises():
  with pytest.raises(ValueError, match="at least one"):
    dbort_loss({})


# ----------------------------------------------------------------------------
# dbort_outputs.


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.first = nnx.Linear(4, 3, rngs=rngs)
    self.second = nnx.Linear(3, 3, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(3, 2, rngs=rngs)])
    self.norm = nnx.LayerNorm(2, rngs=rngs)

  def __call__(self, x):
    h = self.second(nnx.relu(self.first(x)))
    h = self.second(h)  # called twice: two outputs
    return self.norm(self.blocks[0](h))

  def features(self, x):
    return self.first(x)


def _net():
  return _Net(nnx.Rngs(0))


def _x():
  return jnp.asarray(np.random.default_rng(3).normal(size=(5, 4)), jnp.float32)


def _manual_outputs(net, x):
  first = net.first(x)
  second_a = net.second(nnx.relu(first))
  second_b = net.second(second_a)
  block = net.blocks[0](second_b)
  return {
      "first": (first,),
      "second": (second_a, second_b),
      "blocks/0": (block,),
  }


def _assert_outputs_equal(got, expected):
  assert sorted(got) == sorted(expected)
  for name in expected:
    assert len(got[name]) == len(expected[name]), name
    for a, b in zip(got[name], expected[name]):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_outputs_default_to_every_layer_with_a_kernel():
  net, x = _net(), _x()
  result, outputs = dbort_outputs(net, x)
  np.testing.assert_allclose(result, net(x), rtol=1e-6)
  _assert_outputs_equal(outputs, _manual_outputs(net, x))  # no LayerNorm


@pytest.mark.parametrize(
    "layers",
    [
        ["second", "blocks/0"],
        [("second",), ("blocks", 0)],
        lambda path, module: path in (("second",), ("blocks", 0)),
    ],
    ids=["strings", "tuples", "predicate"],
)
def test_outputs_of_chosen_layers(layers):
  net, x = _net(), _x()
  _, outputs = dbort_outputs(net, x, layers=layers)
  expected = _manual_outputs(net, x)
  _assert_outputs_equal(
      outputs, {k: expected[k] for k in ("second", "blocks/0")}
  )


def test_outputs_by_module_instance_and_of_another_method():
  net, x = _net(), _x()
  _, outputs = dbort_outputs(net, x, layers=[net.blocks[0]])
  assert list(outputs) == ["blocks/0"]
  result, outputs = dbort_outputs(net, x, layers=[net.first], method="features")
  np.testing.assert_allclose(outputs["first"][0], net.first(x), rtol=1e-6)
  np.testing.assert_allclose(result, net.first(x), rtol=1e-6)


def test_outputs_of_a_bare_layer_are_keyed_by_the_empty_path():
  layer = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
  _, outputs = dbort_outputs(layer, _x())
  np.testing.assert_allclose(outputs[""][0], layer(_x()), rtol=1e-6)


def test_outputs_reject_unknown_and_uncalled_layers():
  net, x = _net(), _x()
  with pytest.raises(ValueError, match="not a submodule.*'blocks/0'"):
    dbort_outputs(net, x, layers=["third"])
  with pytest.raises(ValueError, match="'second' was not called"):
    dbort_outputs(net, x, layers=["second"], method="features")


def test_outputs_leave_the_model_unchanged():
  net, x = _net(), _x()
  before = jax.tree.map(np.asarray, nnx.state(net))
  dbort_outputs(net, x)
  after = jax.tree.map(np.asarray, nnx.state(net))
  assert jax.tree.structure(before) == jax.tree.structure(after)
  # Later plain calls are not captured (the classes were restored).
  np.testing.assert_allclose(net(x), dbort_outputs(net, x)[0], rtol=1e-6)


def _manual_loss(params, graphdef, x):
  outputs = _manual_outputs(nnx.merge(graphdef, params), x)
  return dbort_loss(outputs, weight=1.0, power=0.5)


def test_outputs_under_nnx_jit_and_nnx_grad_give_the_manual_gradient():
  net, x = _net(), _x()
  graphdef, params = nnx.split(net, nnx.Param)
  expected = jax.grad(_manual_loss)(params, graphdef, x)

  @nnx.jit
  def grad_fn(net, x):
    def loss_fn(net):
      return dbort_loss(dbort_outputs(net, x)[1], weight=1.0, power=0.5)

    return nnx.grad(loss_fn)(net)

  got = grad_fn(net, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_outputs_under_jax_jit_and_jax_grad_via_split_merge():
  net, x = _net(), _x()
  graphdef, params = nnx.split(net, nnx.Param)
  expected = jax.grad(_manual_loss)(params, graphdef, x)

  def loss_fn(params, x):
    model = nnx.merge(graphdef, params)
    _, outputs = dbort_outputs(model, x, layers=["first", "second", "blocks/0"])
    return dbort_loss(outputs, weight=1.0, power=0.5)

  got = jax.jit(jax.grad(loss_fn))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_weight_zero_is_the_task_loss_also_where_the_energy_overflows():
  # E^p overflows float32 (1e30² squared again): 0 · inf made the loss and
  # its gradient NaN, where DBORT.md promises the task loss bit for bit.
  from bort_jax import dbort  # pylint: disable=g-import-not-at-top
  y = jnp.full((2, 3), 1e30)

  def loss(y, weight):
    return dbort.dbort_loss(y, weight=weight, power=2.0)

  for weight in (0.0, jnp.float32(0.0)):
    value, grad = jax.jit(jax.value_and_grad(loss))(y, weight)
    assert str(float(value)) == "-0.0"
    assert not np.any(grad)
  assert np.isneginf(loss(y, 1.0))  # with a weight, the overflow shows


def test_complex_outputs_are_refused():
  # dbort_loss returned a complex "loss" (mean of y², not of |y|²).
  from bort_jax import dbort  # pylint: disable=g-import-not-at-top
  with pytest.raises(TypeError, match="real layer outputs, got one of dtype "
                     "complex64"):
    dbort.dbort_loss({"a": jnp.ones(3), "b": jnp.ones(3) * 1j})


def test_i19_the_whole_dbort_outputs_result_is_refused():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bort_jax import dbort  # pylint: disable=g-import-not-at-top
  y = jnp.ones((4, 3))
  with pytest.raises(TypeError, match="pass its second element"):
    dbort.dbort_loss((y, {"encoder": (y,)}))
  # Also when no layer was called (it regularised the model's output).
  with pytest.raises(TypeError, match="pass its second element"):
    dbort.dbort_loss((y, {}))
  # A tuple of two layer outputs is still two layers, also as a dict.
  assert float(dbort.dbort_loss((y, y), weight=1.0, power=1.0)) == -2.0
  assert float(dbort.dbort_loss((y, {"b": y}), weight=1.0, power=1.0)) == -2.0


def test_one_path_tuple_alone_names_one_layer():
  # layers=("blocks", 0, "mlp") was read as three layers and failed with
  # "'int' object is not iterable"; a list of it worked.
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.mlp = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
      return nnx.relu(self.mlp(x))

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.blocks = nnx.List([Block(rngs), Block(rngs)])
      self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      for block in self.blocks:
        x = block(x)
      return self.head(x)

  model, x = Net(nnx.Rngs(0)), jnp.ones((3, 4))
  alone = dbort_outputs(model, x, layers=("blocks", 0, "mlp"))[1]
  listed = dbort_outputs(model, x, layers=[("blocks", 0, "mlp")])[1]
  assert list(alone) == list(listed) == ["blocks/0/mlp"]
  np.testing.assert_array_equal(alone["blocks/0/mlp"][0],
                                listed["blocks/0/mlp"][0])
  with pytest.raises(TypeError, match="a single path tuple goes in a list"):
    dbort_outputs(model, x, layers=[("blocks", 0, "mlp"), 0])

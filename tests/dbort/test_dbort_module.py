"""Tests of the DBort wrapper module, its typed intermediate and dbort_term."""

from __future__ import annotations

import warnings

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from bort_jax import dbort
from bort_jax._src import dbort as dbort_src
from bort_jax.dbort import DBort
from bort_jax.dbort import dbort_energies
from bort_jax.dbort import dbort_loss
from bort_jax.dbort import dbort_outputs
from bort_jax.dbort import dbort_term
from bort_jax.dbort import DBortEnergy

# The authors' MNIST/CIFAR script: CE − λ (mean logits²)^β.
WEIGHT, POWER = 1e-3, 0.1


class _Classifier(nnx.Module):
  """Linear → ReLU → DBort(Linear): the head's outputs are the logits."""

  def __init__(self, rngs):
    self.hidden = nnx.Linear(5, 7, rngs=rngs)
    self.head = DBort(nnx.Linear(7, 3, rngs=rngs))

  def __call__(self, x):
    return self.head(nnx.relu(self.hidden(x)))


def _batch(n=6, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, 5)) * 2.0, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=n), jnp.int32)
  return x, labels


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_wrapper_is_the_layer_and_leaves_no_state_outside_a_capture():
  model = _Classifier(nnx.Rngs(0))
  x, _ = _batch()
  before = jax.tree.map(np.asarray, nnx.state(model))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no deprecated bare sow
    y = model(x)
    jax.jit(lambda x: model(x))(x)
  np.testing.assert_array_equal(
      y, model.head.layer(nnx.relu(model.hidden(x))))
  after = jax.tree.map(np.asarray, nnx.state(model))
  assert jax.tree.structure(before) == jax.tree.structure(after)
  assert not nnx.state(model, DBortEnergy)


class _Twice(nnx.Module):
  """Calls one DBort layer twice."""

  def __init__(self, layer):
    self.wrapped = DBort(layer)

  def __call__(self, x):
    m = self.wrapped
    return m(m(x[:, :3] @ jnp.ones((3, 4))) @ jnp.ones((3, 4)))


def test_energy_is_recorded_once_per_call_as_a_typed_intermediate():
  layer = nnx.Linear(4, 3, rngs=nnx.Rngs(1))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 4)), jnp.float32)
  _, captured = dbort_energies(_Twice(layer), x)
  energies = captured["wrapped"]
  values = energies["energy"].get_value()
  assert isinstance(energies["energy"], DBortEnergy)
  assert isinstance(energies["energy"], nnx.Intermediate)
  first = np.asarray(layer(x[:, :3] @ jnp.ones((3, 4))), np.float64)
  second = np.asarray(layer(first.astype(np.float32) @ np.ones((3, 4),
                                                             np.float32)),
                      np.float64)
  assert len(values) == 2
  np.testing.assert_allclose(values[0], np.mean(first**2), rtol=1e-6)
  np.testing.assert_allclose(values[1], np.mean(second**2), rtol=1e-6)


def test_low_precision_outputs_give_float32_energies():
  layer = DBort(lambda x: x)
  _, energies = dbort_energies(layer, jnp.full((2, 3), 3.0, jnp.bfloat16))
  (energy,) = energies["energy"].get_value()
  assert energy.dtype == jnp.float32 and float(energy) == 9.0


def test_weight_zero_is_bit_for_bit_the_plain_loss():
  model = _Classifier(nnx.Rngs(0))
  x, labels = _batch()

  def plain(model):
    return _cross_entropy(model(x), labels)

  def with_dbort(model, weight):
    term = dbort_term(model, x, weight=weight, power=POWER)
    return _cross_entropy(term.output, labels) + term.loss

  plain_value, plain_grads = nnx.jit(nnx.value_and_grad(plain))(model)
  for weight in (0.0, jnp.float32(0.0)):
    value, grads = nnx.jit(nnx.value_and_grad(with_dbort))(model, weight)
    np.testing.assert_array_equal(value, plain_value)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
      np.testing.assert_array_equal(a, b)
  # Eagerly as well.
  eager_value = with_dbort(model, 0.0)
  np.testing.assert_array_equal(eager_value, plain(model))


def test_gradient_equals_jax_grad_of_the_written_formula():
  model = _Classifier(nnx.Rngs(3))
  x, labels = _batch(seed=4)
  graphdef, params = nnx.split(model, nnx.Param)

  def formula(params):
    # Written out: CE − λ (mean over batch and classes of logits²)^β.
    hidden = params["hidden"]
    head = params["head"]["layer"]
    h = jax.nn.relu(x @ hidden["kernel"][...] + hidden["bias"][...])
    logits = h @ head["kernel"][...] + head["bias"][...]
    return _cross_entropy(logits, labels) - WEIGHT * jnp.mean(logits**2)**POWER

  expected_value, expected = jax.jit(jax.value_and_grad(formula))(params)

  @nnx.jit
  def step(model):
    def loss_fn(model):
      term = dbort_term(model, x, weight=WEIGHT, power=POWER)
      return _cross_entropy(term.output, labels) + term.loss
    return nnx.value_and_grad(loss_fn)(model)

  value, grads = step(model)
  np.testing.assert_allclose(value, expected_value, rtol=1e-6)
  got, want = nnx.to_flat_state(grads), nnx.to_flat_state(expected)
  assert [p for p, _ in got] == [p for p, _ in want]
  for (path, a), (_, b) in zip(got, want):
    np.testing.assert_allclose(a[...], b[...], rtol=1e-5, atol=1e-8,
                               err_msg=str(path))
  # The DBort part alone is not negligible here, so the test can fail.
  ce_only = jax.jit(jax.grad(
      lambda p: _cross_entropy(nnx.merge(graphdef, p)(x), labels)))(params)
  dbort_part = jax.tree.map(lambda a, b: a - b, expected, ce_only)
  assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(dbort_part)
             ) > 1e-5


def test_term_with_traced_hyperparameters_under_jax_jit_matches_eager():
  model = _Classifier(nnx.Rngs(0))
  x, _ = _batch()
  graphdef, state = nnx.split(model)

  @jax.jit
  def loss(state, weight, power):
    term = dbort_term(nnx.merge(graphdef, state), x, weight=weight,
                      power=power)
    return term.loss, term.energy

  for weight, power in ((WEIGHT, POWER), (2.0, 0.5)):
    got_loss, got_energy = loss(state, weight, power)
    logits = np.asarray(model(x), np.float64)
    energy = np.mean(logits**2)
    np.testing.assert_allclose(got_energy, energy, rtol=1e-6)
    np.testing.assert_allclose(got_loss, -weight * energy**power, rtol=1e-6)
  assert loss._cache_size() == 1  # changing λ, β does not recompile


class _TwoWrapped(nnx.Module):

  def __init__(self, rngs):
    self.conv = DBort(nnx.Conv(1, 4, (3, 3), rngs=rngs))
    self.blocks = nnx.List([DBort(nnx.Linear(4, 4, rngs=rngs))])

  def __call__(self, x):
    h = jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2))
    return self.blocks[0](self.blocks[0](h))  # called twice


def test_energies_of_several_layers_and_calls_sum_in_the_loss():
  model = _TwoWrapped(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 6, 1)),
                  jnp.float32)

  @nnx.jit
  def run(model, x):
    term = dbort_term(model, x, weight=0.5, power=0.5)
    conv_out = model.conv.layer(x)
    h = jnp.mean(nnx.relu(conv_out), axis=(1, 2))
    first = model.blocks[0].layer(h)
    second = model.blocks[0].layer(first)
    _, captured = dbort_energies(model, x)
    _, outputs = dbort_outputs(model, x,
                               layers=["conv/layer", "blocks/0/layer"])
    return (term, (conv_out, first, second),
            dbort_loss(captured, weight=0.5, power=0.5),
            dbort_loss(outputs, weight=0.5, power=0.5))

  term, layer_outputs, captured_loss, outputs_loss = run(model, x)
  energies = [np.mean(np.asarray(y, np.float64)**2) for y in layer_outputs]
  assert sorted(term.energies) == ["blocks/0", "conv"]
  np.testing.assert_allclose(term.energies["conv"], energies[:1], rtol=1e-6)
  np.testing.assert_allclose(term.energies["blocks/0"], energies[1:],
                             rtol=1e-6)
  np.testing.assert_allclose(term.energy, np.mean(energies), rtol=1e-6)
  np.testing.assert_allclose(
      term.loss, -0.5 * sum(e**0.5 for e in energies), rtol=1e-6)
  # dbort_loss on the captured state is the same number ...
  np.testing.assert_allclose(captured_loss, term.loss, rtol=1e-7)
  # ... and on the outputs collected by dbort_outputs (no wrapper needed).
  np.testing.assert_allclose(outputs_loss, term.loss, rtol=1e-6)


def test_other_captures_do_not_collect_the_energy():
  model = _Classifier(nnx.Rngs(0))
  x, _ = _batch()
  _, intermediates = nnx.capture(
      lambda m, x: m(x), nnx.Intermediate, method_outputs=nnx.Intermediate
  )(model, x)
  types = {type(v) for _, v in nnx.to_flat_state(intermediates)}
  assert DBortEnergy not in types


def test_bort_default_selection_still_finds_the_wrapped_kernel():
  model = _Classifier(nnx.Rngs(0))
  paths = sorted(jax.eval_shape(bort_jax.orthogonality_error,
                                nnx.state(model, nnx.Param)))
  assert paths == ["head/layer/kernel", "hidden/kernel"]


def test_term_without_a_dbort_layer_raises():
  plain = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"called no DBort layer.*dbort_outputs"):
    dbort_term(plain, jnp.ones((1, 3)))


def test_wrapper_rejects_a_layer_that_is_not_callable():
  with pytest.raises(TypeError, match="callable layer"):
    DBort(3)


def test_dbort_names_live_in_bort_jax_dbort_only():
  assert dbort.DBort is dbort_src.DBort
  assert bort_jax.dbort is dbort
  # The PCA recipe's old path through _src/dbort.py is gone (it hid a cycle).
  for name in ("fit_dbort_linear", "dbort_linear_optimizer",
               "principal_cosines", "DBortLinearFit"):
    assert not hasattr(dbort_src, name), name
    assert name in dbort.__all__
  # Exported once: in bort_jax.dbort, not again at the optax-only top level.
  assert not set(dbort.__all__) & set(bort_jax.__all__)


def test_old_top_level_dbort_names_warn_and_point_to_bort_jax_dbort():
  for name in ("DBort", "dbort_loss", "dbort_term", "fit_dbort_linear"):
    with pytest.warns(DeprecationWarning,
                      match=rf"bort_jax\.{name} moved to bort_jax\.dbort"):
      assert getattr(bort_jax, name) is getattr(dbort, name)


def test_dbort_energies_gets_back_exactly_one_typed_tuple_per_layer():
  # The exact structure Flax's public nnx.capture returns for what DBort
  # sows: if a Flax release changes it, this fails before dbort_loss and
  # dbort_term misread it.
  model = _Classifier(nnx.Rngs(0))
  x, _ = _batch()
  result, captured = dbort_energies(model, x)
  np.testing.assert_array_equal(result, model(x))
  assert isinstance(captured, nnx.State)
  flat = nnx.to_flat_state(captured)
  assert [path for path, _ in flat] == [("head", "energy")]
  (_, variable), = flat
  assert type(variable) is DBortEnergy  # pylint: disable=unidiomatic-typecheck
  value = variable.get_value()
  assert type(value) is tuple and len(value) == 1  # pylint: disable=unidiomatic-typecheck
  assert value[0].shape == () and value[0].dtype == jnp.float32
  logits = model(x)
  np.testing.assert_allclose(value[0], jnp.mean(logits**2), rtol=1e-6)


def test_a_plain_capture_or_call_records_nothing():
  # DBort records for dbort_energies alone; it never asks Flax's private
  # capture state, so a bare nnx.capture sees no energy and a plain call
  # does not fall back to the deprecated bare sow.
  model = _Classifier(nnx.Rngs(0))
  x, _ = _batch()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, captured = nnx.capture(lambda m, x: m(x), DBortEnergy)(model, x)
    model(x)
  assert not nnx.to_flat_state(captured)
  assert not nnx.state(model, DBortEnergy)


def test_the_library_never_touches_flax_private_capture_state():
  import pathlib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(bort_jax.__file__).parent
  users = [str(f.relative_to(root)) for f in root.rglob("*.py")
           if "__captures__" in f.read_text()]
  assert not users


def test_a_failing_forward_pass_leaves_no_capture_behind():
  class Failing(nnx.Module):
    def __init__(self, rngs):
      self.head = DBort(nnx.Linear(3, 2, rngs=rngs))

    def __call__(self, x, fail):
      y = self.head(x)
      if fail:
        raise RuntimeError("boom")
      return y

  model = Failing(nnx.Rngs(0))
  before = jax.tree.structure(nnx.state(model))
  # dbort_outputs (its own capture of every layer's output) left its record
  # behind; dbort_term did not.
  for run in (dbort_term, dbort_outputs):
    with pytest.raises(RuntimeError, match="boom"):
      run(model, jnp.ones((1, 3)), fail=True)
    # Flax keeps an open capture in the model's state until the call
    # returns; none is left there.
    assert jax.tree.structure(nnx.state(model)) == before
  # A later plain call records nothing; a later capture records one call.
  model(jnp.ones((1, 3)), fail=False)
  term = dbort_term(model, jnp.ones((1, 3)), fail=False)
  assert term.energies["head"].shape == (1,)


class _ScanNet(nnx.Module):
  """Three vmap-stacked DBort layers run by nnx.scan, then a DBort head."""

  def __init__(self, head: bool):
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
      return DBort(nnx.Linear(4, 4, rngs=nnx.Rngs(key)))

    self.blocks = make(jax.random.split(jax.random.key(0), 3))
    self.head = DBort(nnx.Linear(4, 2, rngs=nnx.Rngs(5))) if head else None

  def __call__(self, x):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def step(block, h):
      return jnp.tanh(block(h))
    h = step(self.blocks, x)
    return h if self.head is None else self.head(h)


def test_a_scanned_stack_records_one_energy_per_layer():
  # DBortTerm.energies said (calls,); a vmap-stacked layer run by nnx.scan
  # records (calls, layers). Checked against each layer's mean square.
  model = _ScanNet(head=False)
  x = jax.random.normal(jax.random.key(1), (6, 4))
  term = dbort_term(model, x, weight=1.0, power=1.0)
  kernel = model.blocks.layer.kernel[...]
  bias = model.blocks.layer.bias[...]
  h, want = x, []
  for i in range(3):
    y = h @ kernel[i] + bias[i]
    want.append(float(jnp.mean(y ** 2)))
    h = jnp.tanh(y)
  assert term.energies["blocks"].shape == (1, 3)
  np.testing.assert_allclose(term.energies["blocks"][0], want, rtol=1e-5)
  # The loss is a scalar, one term per layer (it was (3,): nnx.grad of it
  # failed, and `ce + term.loss` broadcast silently).
  assert term.loss.shape == ()
  np.testing.assert_allclose(term.loss, -sum(want), rtol=1e-5)
  np.testing.assert_allclose(term.energy, np.mean(want), rtol=1e-5)
  grads = nnx.grad(lambda m: dbort_term(m, x, weight=1.0, power=1.0).loss)(
      model)
  assert grads["blocks"]["layer"]["kernel"].shape == (3, 4, 4)


def test_dbort_outputs_of_a_scanned_stack_are_per_layer_as_a_list():
  # dbort_outputs returns the stack's outputs as one (layers, B, k) array,
  # one term for dbort_loss; list(output), as its docstring says, gives
  # the wrapper's one term per layer (0.42 against 1.26 before the split).
  model = _ScanNet(head=False)
  x = jax.random.normal(jax.random.key(1), (6, 4))
  term = dbort_term(model, x, weight=1.0, power=0.5)
  _, outputs = dbort_outputs(model, x, layers=["blocks/layer"])
  (stacked,) = outputs["blocks/layer"]
  assert stacked.shape == (3, 6, 4)
  np.testing.assert_allclose(
      dbort_loss(list(stacked), weight=1.0, power=0.5), term.loss, rtol=1e-5)
  assert abs(dbort_loss(stacked, weight=1.0, power=0.5) - term.loss) > 0.1


def test_a_scanned_stack_beside_a_plain_dbort_layer():
  # A (1, 3) stack's energies beside a plain layer's (1,): concatenating
  # them for the mean energy raised.
  term = dbort_term(_ScanNet(head=True), jax.random.normal(jax.random.key(1), (6, 4)),
                    weight=1.0, power=1.0)
  everything = np.concatenate([np.ravel(term.energies["blocks"]),
                               np.ravel(term.energies["head"])])
  assert term.loss.shape == ()
  np.testing.assert_allclose(term.loss, -everything.sum(), rtol=1e-5)
  np.testing.assert_allclose(term.energy, everything.mean(), rtol=1e-5)

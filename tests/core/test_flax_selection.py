"""flax_dimension_numbers(model): stacked and scanned layers, layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bort_jax

L = 3  # stacked layers


def _stacked_linears():
  @nnx.vmap(in_axes=0, out_axes=0)
  def create(key):
    return nnx.Linear(6, 4, rngs=nnx.Rngs(key))
  return create(jax.random.split(jax.random.key(0), L))


class Block(nnx.Module):

  def __init__(self, rngs):
    self.up = nnx.Linear(4, 8, rngs=rngs)
    self.down = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    return self.down(jnp.tanh(self.up(x)))


class ScannedBlocks(nnx.Module):

  def __init__(self, rngs):
    @nnx.split_rngs(splits=L)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return Block(rngs)
    self.blocks = create(rngs)
    self.head = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def step(x, block):
      return block(x)
    return self.head(step(x, self.blocks))


def _layer(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _update(tx, params, grads):
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


MODES = ["l2-full", pytest.param("l1-fullrow", marks=pytest.mark.slow),
         pytest.param("l1-fullcol", marks=pytest.mark.slow), "l2-col"]


@pytest.mark.parametrize("mode", MODES)
def test_vmap_stacked_linear_equals_the_layers_held_separately(mode):
  layers = _stacked_linears()
  params = nnx.state(layers, nnx.Param).to_pure_dict()
  assert params["kernel"].shape == (L, 6, 4)
  grads = jax.tree.map(jnp.cos, params)
  make = lambda dims=None: bort_jax.bort_adamw(
      1e-2, gamma=0.5, mode=mode, amplitude="ada", dimension_numbers=dims)
  stacked = _update(make(bort_jax.flax_dimension_numbers(layers)), params,
                    grads)
  separate = {f"layer{i}": _layer(params, i) for i in range(L)}
  want = _update(make(), separate,
                 {f"layer{i}": _layer(grads, i) for i in range(L)})
  for i in range(L):
    np.testing.assert_array_equal(stacked["kernel"][i],
                                  want[f"layer{i}"]["kernel"])
    np.testing.assert_array_equal(stacked["bias"][i], want[f"layer{i}"]["bias"])
  # The tree alone reads (L, 6, 4) as one matrix with fan-in L·6.
  default = _update(make(), params, grads)
  assert not np.allclose(default["kernel"], stacked["kernel"])


@pytest.mark.parametrize("mode", [
    "l2-full", pytest.param("l1-fullrow", marks=pytest.mark.slow)])
def test_scanned_blocks_under_nnx_optimizer_equal_separate_layers(mode):
  model = ScannedBlocks(nnx.Rngs(0))
  before = nnx.state(model, nnx.Param).to_pure_dict()
  tx = bort_jax.bort_sgd(0.1, 0.9, gamma=0.3, mode=mode,
                         dimension_numbers=bort_jax.flax_dimension_numbers(
                             model))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)

  def loss(model):
    return jnp.mean(model(x) ** 2)

  grads = nnx.grad(loss)(model)
  optimizer.update(model, grads)
  after = nnx.state(model, nnx.Param).to_pure_dict()
  grads = grads.to_pure_dict()

  # The same step on the same layers held separately, default selection.
  flat = lambda tree: {
      **{f"block{i}": _layer(tree["blocks"], i) for i in range(L)},
      "head": tree["head"]}
  separate_tx = bort_jax.bort_sgd(0.1, 0.9, gamma=0.3, mode=mode)
  updates = _update(separate_tx, flat(before), flat(grads))
  want = optax.apply_updates(flat(before), updates)
  for i in range(L):
    for name in ("up", "down"):
      for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(
            after["blocks"][name][leaf][i], want[f"block{i}"][name][leaf],
            rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(after["head"]["kernel"], want["head"]["kernel"],
                             rtol=1e-6, atol=1e-7)


def test_selection_reads_module_types_not_names():
  class Model(nnx.Module):

    def __init__(self, rngs):
      self.proj = nnx.LinearGeneral(8, (2, 4), rngs=rngs)  # (8, 2, 4)
      self.merge = nnx.LinearGeneral((2, 4), 8, axis=(-2, -1), rngs=rngs)
      self.conv = nnx.Conv(3, 5, (3,), rngs=rngs)  # (3, 3, 5): 1-D conv
      self.attention = nnx.MultiHeadAttention(
          num_heads=2, in_features=8, qkv_features=8, decode=False,
          rngs=rngs)
      self.embed = nnx.Embed(10, 8, rngs=rngs)

  model = Model(nnx.Rngs(0))
  dims = bort_jax.flax_dimension_numbers(model)(
      nnx.state(model, nnx.Param).to_pure_dict())
  D = bort_jax.BortDimensionNumbers
  assert dims["proj"]["kernel"] == D((0,), (1, 2), ())
  assert dims["merge"]["kernel"] == D((0, 1), (2,), ())
  assert dims["conv"]["kernel"] == D((0, 1), 2, ())  # not a stack
  assert dims["attention"]["query"]["kernel"] == D((0,), (1, 2), ())
  assert dims["attention"]["out"]["kernel"] == D((0, 1), (2,), ())
  assert dims["embed"]["embedding"] is None
  assert dims["proj"]["bias"] is None


@pytest.mark.parametrize("out_axes", [0, 1, -1, -2])
def test_the_stacked_axis_is_found_wherever_out_axes_put_it(out_axes):
  # out_axes=-1 puts the stack last in the kernel (4, 3, L) and the bias
  # (3, L): the same position counted from the back, not from the front.
  @nnx.vmap(in_axes=0, out_axes=out_axes)
  def make(key):
    return nnx.Linear(4, 3, rngs=nnx.Rngs(key))

  layers = make(jax.random.split(jax.random.key(0), 5))
  [(_, dims)] = bort_jax.flax_dimension_numbers(layers).table.values()
  stack = out_axes % 3
  assert dims.batch_axis == (stack,)
  kernel = layers.kernel[...]
  delta = bort_jax.tree_correction({"kernel": kernel},
                                   dimension_numbers={"kernel": dims})
  for i in range(5):
    one = jnp.take(kernel, i, axis=stack)
    np.testing.assert_allclose(
        jnp.take(delta["kernel"], i, axis=stack),
        bort_jax.tree_correction({"kernel": one})["kernel"], rtol=1e-5,
        atol=1e-6)


def test_a_transposed_kernel_s_units_are_its_out_axis():
  # ConvTranspose(transpose_kernel=True) stores (kh, kw, out, in): its units
  # are axis 2, not the last (the 4 input channels).
  flipped = nnx.ConvTranspose(4, 6, (3, 3), transpose_kernel=True,
                              rngs=nnx.Rngs(0))
  assert flipped.kernel.shape == (3, 3, 6, 4)
  [(_, dims)] = bort_jax.flax_dimension_numbers(flipped).table.values()
  assert dims == bort_jax.BortDimensionNumbers((0, 1, 3), 2, ())
  plain = nnx.ConvTranspose(4, 6, (3, 3), rngs=nnx.Rngs(0))  # (3, 3, 4, 6)
  [(_, dims)] = bort_jax.flax_dimension_numbers(plain).table.values()
  assert dims == bort_jax.BortDimensionNumbers((0, 1, 2), 3, ())


@pytest.mark.slow
def test_stacked_conv_gets_a_batch_axis():
  @nnx.vmap(in_axes=0, out_axes=0)
  def create(key):
    return nnx.Conv(2, 5, (3, 3), rngs=nnx.Rngs(key))
  convs = create(jax.random.split(jax.random.key(1), L))
  params = nnx.state(convs, nnx.Param).to_pure_dict()
  dims = bort_jax.flax_dimension_numbers(convs)(params)
  assert dims["kernel"] == bort_jax.BortDimensionNumbers((1, 2, 3), 4, (0,))
  errors = bort_jax.orthogonality_error(params, dimension_numbers=convs)
  per_layer = [bort_jax.orthogonality_error({"kernel": params["kernel"][i]})
               ["kernel"].constraint_error for i in range(L)]
  np.testing.assert_allclose(errors["kernel"].constraint_error,
                             np.mean(per_layer), rtol=1e-6)


def test_a_tree_with_other_shapes_is_refused():
  layers = _stacked_linears()
  dims = bort_jax.flax_dimension_numbers(layers)
  with pytest.raises(ValueError, match="build them from the same model"):
    dims({"kernel": jnp.ones((6, 4))})


def test_a_plain_dict_of_dimension_numbers_works_under_nnx_optimizer():
  """init sees nnx.State of Variables, update sees arrays: matched by path."""
  class Two(nnx.Module):

    def __init__(self, rngs):
      self.a = nnx.Linear(3, 4, rngs=rngs)
      self.b = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.b(self.a(x))

  model = Two(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  dims = {"a": {"kernel": bort_jax.BortDimensionNumbers(), "bias": None},
          "b": None}
  tx = bort_jax.bort_sgd(0.1, gamma=0.5, dimension_numbers=dims)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3)))))(model)
  optimizer.update(model, grads)
  updates, _ = tx.update(grads.to_pure_dict(), tx.init(params), params)
  want = optax.apply_updates(params, updates)
  got = nnx.state(model, nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # Only a's kernel is corrected: b moves by its gradient alone.
  np.testing.assert_allclose(
      got["b"]["kernel"],
      params["b"]["kernel"] - 0.1 * grads.to_pure_dict()["b"]["kernel"],
      rtol=1e-6)


def test_the_module_itself_is_accepted_as_dimension_numbers():
  layers = _stacked_linears()
  params = nnx.state(layers, nnx.Param).to_pure_dict()
  via_module = bort_jax.tree_correction(params, dimension_numbers=layers)
  via_callable = bort_jax.tree_correction(
      params, dimension_numbers=bort_jax.flax_dimension_numbers(layers))
  np.testing.assert_array_equal(via_module["kernel"], via_callable["kernel"])
  per_layer = [bort_jax.tree_correction({"kernel": params["kernel"][i]})
               ["kernel"] for i in range(L)]
  np.testing.assert_allclose(via_module["kernel"], jnp.stack(per_layer),
                             rtol=1e-6, atol=1e-7)


def test_an_einsum_kernel_is_read_from_its_equation():
  class Model(nnx.Module):

    def __init__(self, rngs):
      self.dense = nnx.Einsum("bi,io->bo", (8, 4), (4,), rngs=rngs)
      self.torch = nnx.Einsum("bi,oi->bo", (4, 8), rngs=rngs)  # (out, in)
      self.heads = nnx.Einsum("bhd,hdk->bhk", (2, 4, 3), rngs=rngs)

  model = Model(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param).to_pure_dict()
  dims = bort_jax.flax_dimension_numbers(model)(params)
  D = bort_jax.BortDimensionNumbers
  assert dims["dense"]["kernel"] == D((0,), (1,), ())
  assert dims["dense"]["bias"] is None
  assert dims["torch"]["kernel"] == D((1,), (0,), ())
  assert dims["heads"]["kernel"] == D((1,), (2,), (0,))
  # Each head's (d, k) kernel is its own matrix, as if held alone.
  delta = bort_jax.tree_correction(params, dimension_numbers=model)
  for h in range(2):
    alone = bort_jax.tree_correction({"kernel": params["heads"]["kernel"][h]})
    np.testing.assert_allclose(delta["heads"]["kernel"][h],
                               alone["kernel"], rtol=1e-6)
  np.testing.assert_allclose(
      delta["torch"]["kernel"],
      bort_jax.tree_correction({"kernel": params["torch"]["kernel"].T}
                               )["kernel"].T, rtol=1e-6)


def test_a_stacked_einsum_gets_a_batch_axis():
  @nnx.vmap(in_axes=0, out_axes=0)
  def create(key):
    return nnx.Einsum("bi,io->bo", (6, 4), (4,), rngs=nnx.Rngs(key))

  layers = create(jax.random.split(jax.random.key(0), L))
  [(_, dims)] = bort_jax.flax_dimension_numbers(layers).table.values()
  assert dims == bort_jax.BortDimensionNumbers((1,), (2,), (0,))


@pytest.mark.parametrize("equation, shape", [
    ("bi,ijo->bo", (3, 2, 4)),  # j is summed in the kernel alone
    ("...i,...io->...o", (3, 4)),  # an ellipsis in the kernel
])
def test_an_einsum_that_makes_no_matrices_is_left_out_with_a_warning(
    equation, shape):
  class Model(nnx.Module):

    def __init__(self, rngs):
      self.odd = nnx.Einsum(equation, shape, rngs=rngs)
      self.dense = nnx.Linear(3, 4, rngs=rngs)

  with pytest.warns(UserWarning, match=r"Einsum kernel 'odd/kernel' .*by path"):
    dims = bort_jax.flax_dimension_numbers(Model(nnx.Rngs(0)))
  assert [path for path in dims.table] == [("dense", "kernel")]

"""Every JAX layout: one BortDimensionNumbers for non-Flax weights, stacked
kernels that a parameter tree cannot tell apart, overcomplete matrices, and a
readable orthogonality error (issue 19, items 2 and 9)."""

import warnings

import equinox as eqx
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from bort_jax._src import dimension_numbers as dimension_numbers_lib
from bort_jax._src.dimension_numbers import resolve_views
from tests.core import reference

OUT_IN = bort_jax.BortDimensionNumbers(reduction_axis=1, output_axis=0)


@pytest.fixture(autouse=True)
def fresh_ambiguity_warnings():
  """The stacked-kernel warning is said once per kernel and process."""
  dimension_numbers_lib._AMBIGUOUS_WARNED.clear()
  yield
  dimension_numbers_lib._AMBIGUOUS_WARNED.clear()


def _selected(dims, params):
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return sorted(dimension_numbers_lib.path_string(p)
                for (p, _), v in zip(leaves, resolve_views(dims, params))
                if v is not None)


def _mlp():
  return eqx.nn.MLP(in_size=16, out_size=4, width_size=16, depth=1,
                    key=jax.random.key(0))


def test_i19_out_in_is_the_pytorch_layout():
  assert bort_jax.BortDimensionNumbers.out_in() == (
      bort_jax.BortDimensionNumbers(output_axis=0))
  view = dimension_numbers_lib.matrix_view(
      (16, 3, 3, 3), bort_jax.BortDimensionNumbers.out_in())  # torch conv
  assert view.matrix_shape == (1, 16, 27)


@pytest.mark.parametrize("spelling", ["explicit", "out_in"])
def test_i19_one_dimension_numbers_reach_equinox_weights(spelling):
  dims = (OUT_IN if spelling == "explicit"
          else bort_jax.BortDimensionNumbers.out_in())
  params = eqx.filter(_mlp(), eqx.is_array)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "selects nothing", no "unreached"
    tx = bort_jax.add_bort_correction(1.0, dimension_numbers=dims)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)
  for layer, update in zip(params.layers, updates.layers):
    w = np.asarray(layer.weight, np.float64)  # (out, in): rows are units
    c = 1.0
    np.testing.assert_allclose(  # l2-full: (W Wᵀ − cI) W, rows as units
        update.weight, (w @ w.T - c * np.eye(w.shape[0])) @ w, rtol=2e-4,
        atol=1e-6)
    np.testing.assert_array_equal(update.bias, 0.0)
  errors = bort_jax.orthogonality_error(params, dimension_numbers=dims)
  assert sorted(errors) == ["layers/0/weight", "layers/1/weight"]


def test_i19_one_dimension_numbers_reach_any_weight_name_but_not_biases():
  params = {"linear": {"weight": jnp.ones((3, 4)), "bias": jnp.ones(3)},
            "haiku": {"w": jnp.ones((4, 5)), "b": jnp.ones(4)},
            "dense": {"kernel": jnp.ones((5, 6))},
            "embed": {"embedding": jnp.ones((10, 4))},
            "norm": {"scale": jnp.ones((1, 4))},
            "cls_token": jnp.ones((1, 1, 4)),
            "steps": jnp.ones((3, 3), jnp.int32)}
  assert _selected(OUT_IN, params) == [
      "dense/kernel", "haiku/w", "linear/weight"]


def test_a_prefix_entry_reaches_its_subtree_s_matrices_not_its_biases():
  # {"a": numbers, "b": None}: "a"'s kernel, not "a"'s bias (which used to
  # raise "do not fit 'a/bias'"), as through nnx.Optimizer's State.
  params = {"a": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3),
                  "norm": {"scale": jnp.ones((1, 3))}},
            "b": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
  dims = {"a": bort_jax.BortDimensionNumbers(), "b": None}
  assert _selected(dims, params) == ["a/kernel"]
  # Embeddings too, as one top-level value skips them; named, one is taken.
  embedded = {**params, "a": {**params["a"],
                              "embed": {"embedding": jnp.ones((10, 4))}}}
  assert _selected(dims, embedded) == ["a/kernel"]
  assert _selected({"a": {"kernel": bort_jax.BortDimensionNumbers(),
                          "bias": None, "norm": None,
                          "embed": {"embedding": OUT_IN}}, "b": None},
                   embedded) == ["a/embed/embedding", "a/kernel"]
  at_leaf = {"a": {"kernel": OUT_IN, "bias": None, "norm": None}, "b": None}
  assert [None if v is None else v.matrix_shape for v in
          resolve_views(at_leaf, params)] == [None, (1, 4, 3), None, None,
                                              None]
  # An entry meant for a subtree whose matrix it does not fit still raises.
  with pytest.raises(ValueError, match="do not fit 'a/kernel'"):
    resolve_views({"a": bort_jax.BortDimensionNumbers(batch_axis=(0, 1)),
                   "b": None}, params)

  model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
                         nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
  tx = bort_jax.add_bort_correction(
      1.0, dimension_numbers={"layers": {0: bort_jax.BortDimensionNumbers(),
                                         1: None}})
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = nnx.state(model, nnx.Param).to_pure_dict()
  zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  optimizer.update(model, zeros)
  after = nnx.state(model, nnx.Param).to_pure_dict()
  moved = {f"{i}/{k}": not np.array_equal(after["layers"][i][k],
                                          before["layers"][i][k])
           for i in (0, 1) for k in ("kernel", "bias")}
  assert moved == {"0/kernel": True, "0/bias": False, "1/kernel": False,
                   "1/bias": False}


def test_haiku_weights_are_flax_s_layout_under_another_name():
  # hk.Linear(4) on 16 inputs stores w as (in, out) = (16, 4): the units are
  # its columns, so BortDimensionNumbers() (not out_in()) is its layout.
  w = jax.random.normal(jax.random.key(0), (16, 4)) / 4
  params = {"linear": {"w": w, "b": jnp.zeros(4)}}
  tx = bort_jax.add_bort_correction(
      1.0, mode="l2-full", amplitude=1.0,
      dimension_numbers=bort_jax.BortDimensionNumbers())
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  units = np.asarray(w, np.float64).T  # (4, 16): one row per unit
  np.testing.assert_allclose(
      updates["linear"]["w"], ((units @ units.T - np.eye(4)) @ units).T,
      rtol=2e-4, atol=1e-6)
  np.testing.assert_array_equal(updates["linear"]["b"], 0.0)


def test_i19_under_a_bort_mask_every_matrix_it_selects_is_reached():
  params = {"linear": {"weight": jnp.ones((3, 4)), "bias": jnp.ones(3)},
            "embed": {"embedding": 0.5 * jnp.eye(4)}}
  mask = lambda p: jax.tree.map(lambda x: x.ndim == 2, p)
  tx = bort_jax.add_bort_correction(1.0, dimension_numbers=OUT_IN,
                                    bort_mask=mask)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # The embedding was chosen by the mask: (0.25 − 1) · 0.5 on its diagonal.
  np.testing.assert_allclose(updates["embed"]["embedding"],
                             -0.375 * np.eye(4), rtol=1e-6)
  assert float(jnp.abs(updates["linear"]["weight"]).max()) > 0
  np.testing.assert_array_equal(updates["linear"]["bias"], 0.0)


def test_i19_one_dimension_numbers_that_fit_no_leaf_raise():
  params = {"weight": jnp.ones((3, 4))}
  with pytest.raises(ValueError, match="out of range"):
    resolve_views(bort_jax.BortDimensionNumbers(output_axis=2), params)


def _train(tx, steps=100):
  model = _mlp()
  x = jax.random.normal(jax.random.key(1), (128, 16))
  y = jnp.argmax(x[:, :4], axis=-1)
  state = tx.init(eqx.filter(model, eqx.is_array))

  @eqx.filter_jit
  def step(model, state):
    def loss_fn(model):
      logits = jax.vmap(model)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = eqx.filter_grad(loss_fn)(model)
    updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), state

  for _ in range(steps):
    model, state = step(model, state)
  errors = bort_jax.orthogonality_error(eqx.filter(model, eqx.is_array),
                                        dimension_numbers=OUT_IN)
  return {path: float(e.constraint_error) for path, e in errors.items()}


@pytest.mark.slow  # two 100-step trainings, about 6 s on a shared CPU
def test_i19_equinox_mlp_trains_under_bort_adamw_with_out_in_numbers():
  bort = _train(bort_jax.bort_adamw(1e-3, dimension_numbers=OUT_IN))
  adamw = _train(optax.adamw(1e-3))
  assert sorted(bort) == ["layers/0/weight", "layers/1/weight"]
  for path in bort:
    assert bort[path] < 0.8 * adamw[path], (bort, adamw)
  assert np.mean(list(bort.values())) < 0.7 * np.mean(list(adamw.values()))


def _stacked_linear_state():
  @nnx.vmap(in_axes=0, out_axes=0)
  def stack(key):
    return nnx.Linear(6, 4, rngs=nnx.Rngs(key))
  model = stack(jax.random.split(jax.random.key(0), 3))  # kernel (3, 6, 4)
  return model, nnx.state(model, nnx.Param)


def test_i19_a_stacked_kernel_as_a_raw_tree_warns_once_at_init():
  params = {"blocks": {"kernel": jnp.ones((3, 6, 4)), "bias": jnp.ones((3, 4))}}
  tx = bort_jax.bort_adamw(1e-3)
  with pytest.warns(UserWarning, match="blocks/kernel") as caught:
    state = tx.init(params)
  message = str(caught[0].message)
  assert "(3, 6, 4)" in message and "stacked layers" in message
  assert "dimension_numbers=model" in message and "batch_axis=0" in message
  # A linen DenseGeneral's (in, 4, 8) kernel looks the same: its fix too.
  assert "DenseGeneral" in message and "output_axis=(1, 2)" in message
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # not again at each update
    jax.jit(tx.update)(params, state, params)


def test_i19_nnx_state_of_a_stacked_model_warns_but_the_model_does_not():
  model, state = _stacked_linear_state()
  with pytest.warns(UserWarning, match="stacked layers"):
    bort_jax.add_bort_correction(0.1).init(state)
  dimension_numbers_lib._AMBIGUOUS_WARNED.clear()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    bort_jax.add_bort_correction(0.1, dimension_numbers=model).init(state)
    nnx.Optimizer(model, bort_jax.bort_adamw(1e-3, dimension_numbers=model),
                  wrt=nnx.Param)


def test_i19_a_bias_free_3_axis_kernel_warns():
  with pytest.warns(UserWarning, match="stacked layers"):
    bort_jax.flax_dimension_numbers({"kernel": jnp.ones((3, 6, 4))})


@pytest.mark.parametrize("make", [
    lambda: nnx.Conv(6, 4, (3,), rngs=nnx.Rngs(0)),  # (3, 6, 4), bias (4,)
    lambda: nnx.Conv(6, 4, (3, 3), rngs=nnx.Rngs(0)),
    lambda: nnx.Conv(6, 4, (3, 3), use_bias=False, rngs=nnx.Rngs(0)),
    lambda: nnx.Conv(2, 4, (3, 3, 3), use_bias=False, rngs=nnx.Rngs(0)),
])
def test_i19_conv_kernels_do_not_warn(make):
  state = nnx.state(make(), nnx.Param)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    bort_jax.add_bort_correction(0.1).init(state)
    bort_jax.orthogonality_error(state)


def test_i19_an_overcomplete_first_conv_is_reported():
  conv = nnx.Conv(1, 16, (3, 3), rngs=nnx.Rngs(0))  # 16 units, fan-in 9
  dense = nnx.Linear(16, 8, rngs=nnx.Rngs(1))
  params = {"conv": nnx.state(conv, nnx.Param),
            "dense": nnx.state(dense, nnx.Param)}
  errors = bort_jax.orthogonality_error(params)
  assert errors["conv/kernel"].overcomplete is True
  assert errors["dense/kernel"].overcomplete is False
  assert bort_jax.mean_orthogonality_error(errors).overcomplete is True
  assert "overcomplete=True" in repr(errors["conv/kernel"])
  # Measured on the feasible side, Wᵀ W = cI (9 × 9), as l2-full reaches it.
  w = np.asarray(conv.kernel[...], np.float64).reshape(9, 16).T  # (16, 9)
  h = w.T @ w
  c = np.mean(np.diag(h))
  expected = np.linalg.norm(h - c * np.eye(9)) / (c * 3.0)
  np.testing.assert_allclose(errors["conv/kernel"].constraint_error, expected,
                             rtol=1e-4)
  # It survives jit and eval_shape: the flag is static pytree data.
  jitted = jax.jit(bort_jax.orthogonality_error)(params)
  assert jitted["conv/kernel"].overcomplete is True
  shapes = jax.eval_shape(bort_jax.orthogonality_error, params)
  assert shapes["conv/kernel"].overcomplete is True


def test_i19_orthogonality_error_prints_as_numbers():
  params = {"a": {"kernel": jnp.eye(3)}, "b": {"kernel": jnp.ones((3, 3))}}
  errors = bort_jax.orthogonality_error(params)
  assert str(errors) == (
      "{'a/kernel': OrthogonalityError(constraint_error=0, max_cosine=0, "
      "norm_spread=0), 'b/kernel': OrthogonalityError(constraint_error=1.414, "
      "max_cosine=1, norm_spread=0)}")
  assert str(bort_jax.mean_orthogonality_error(errors)) == (
      "OrthogonalityError(constraint_error=0.7071, max_cosine=1, "
      "norm_spread=0)")
  # Still a tuple of three arrays for code that unpacks or logs it.
  constraint, max_cosine, spread = errors["b/kernel"]
  assert float(constraint) == pytest.approx(np.sqrt(2), rel=1e-6)
  assert list(errors["b/kernel"]._asdict()) == [
      "constraint_error", "max_cosine", "norm_spread"]


def test_i19_an_equinox_module_as_a_mask_tree_is_refused_in_one_line():
  import equinox as eqx
  model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
  mask = jax.tree.map(lambda x: x.ndim == 2, eqx.filter(model, eqx.is_array))
  with pytest.raises(TypeError, match="callable pytree.*pass a function"):
    bort_jax.bort_adamw(1e-3, bort_mask=mask)


@pytest.mark.slow
def test_out_in_leaves_out_equinox_embeddings_and_biases_under_any_outer_mask():
  class Net(eqx.Module):
    embedding: eqx.nn.Embedding
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
      a, b, c = jax.random.split(key, 3)
      self.embedding = eqx.nn.Embedding(100, 8, key=a)  # a leaf named weight
      self.conv = eqx.nn.Conv2d(4, 8, 3, key=b)  # bias (8, 1, 1)
      self.head = eqx.nn.Linear(8, 8, key=c)

  params = eqx.filter(Net(jax.random.key(0)), eqx.is_array)
  assert sorted(bort_jax.orthogonality_error(
      params, dimension_numbers=OUT_IN)) == ["conv/weight", "head/weight"]
  zeros = jax.tree.map(jnp.zeros_like, params)

  def update(tx):
    return tx.update(zeros, tx.init(params), params)[0]

  # An optax.masked around the whole optimizer (freezing the head) is not a
  # bort_mask: it used to select the embedding and the conv bias.
  freeze = eqx.tree_at(lambda n: (n.head.weight, n.head.bias),
                       jax.tree.map(lambda _: True, params), (False, False))
  frozen = update(optax.masked(
      bort_jax.bort_adamw(1e-2, weight_decay=0.0, dimension_numbers=OUT_IN),
      freeze))
  np.testing.assert_array_equal(frozen.embedding.weight, 0.0)
  np.testing.assert_array_equal(frozen.conv.bias, 0.0)
  assert float(jnp.abs(frozen.conv.weight).max()) > 0
  # The transform's own bort_mask may still choose the embedding.
  chosen = update(bort_jax.bort_adamw(
      1e-2, weight_decay=0.0, dimension_numbers=OUT_IN,
      bort_mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  assert float(jnp.abs(chosen.embedding.weight).max()) > 0
  np.testing.assert_array_equal(chosen.conv.bias, 0.0)


def test_an_equinox_embedding_of_any_name_is_left_out_without_a_warning():
  # Left out by its module type, it was still reported as a weight the
  # selection "does not reach", with advice to pass the out_in() given.
  class Net(eqx.Module):
    tok: eqx.nn.Embedding
    lin: eqx.nn.Linear

    def __init__(self, key):
      a, b = jax.random.split(key)
      self.tok = eqx.nn.Embedding(100, 8, key=a)
      self.lin = eqx.nn.Linear(8, 4, key=b)

  params = eqx.filter(Net(jax.random.key(0)), eqx.is_array)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    bort_jax.bort_adamw(1e-3, dimension_numbers=OUT_IN).init(params)
  assert list(bort_jax.orthogonality_error(
      params, dimension_numbers=OUT_IN)) == ["lin/weight"]


GROUPED = bort_jax.BortDimensionNumbers(feature_group_count=4)


def _groups(kernel, groups):
  """Each group's matrix, rows its units: (in/G·kh·kw) fan-in, out/G units."""
  kernel = np.asarray(kernel, np.float64)
  units = kernel.shape[-1] // groups
  return [kernel[..., g * units:(g + 1) * units].reshape(-1, units).T
          for g in range(groups)]


@pytest.mark.parametrize("mode", ["l2-full", "l1-fullrow", "huber-fullrow"])
@pytest.mark.parametrize("amplitude", [0.7, "ada"])
def test_a_grouped_conv_is_one_matrix_per_group(mode, amplitude):
  # nnx.Conv(8, 8, (3, 3), feature_group_count=4): kernel (3, 3, 2, 8), group
  # g's two units read only its two input channels, the kernel's fan-in axis.
  with jax.enable_x64(True):
    kernel = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 8)))
    delta = bort_jax.tree_correction({"kernel": kernel}, mode, amplitude,
                                     dimension_numbers=GROUPED)["kernel"]
  for g, w in enumerate(_groups(kernel, 4)):
    c = reference.ada(w, mode) if amplitude == "ada" else amplitude
    np.testing.assert_allclose(_groups(delta, 4)[g],
                               reference.correction(w, mode, c),
                               rtol=1e-10, atol=1e-12)
  view = dimension_numbers_lib.matrix_view(kernel.shape, GROUPED)
  assert view.matrix_shape == (4, 2, 18)
  np.testing.assert_array_equal(view.from_matrices(view.to_matrices(kernel)),
                                kernel)


def test_a_grouped_nnx_conv_is_read_from_the_model_and_measured_per_group():
  conv = nnx.Conv(8, 8, (3, 3), feature_group_count=4, rngs=nnx.Rngs(0))
  dims = bort_jax.flax_dimension_numbers(conv)
  assert dims.table[("kernel",)][1] == bort_jax.BortDimensionNumbers(
      reduction_axis=(0, 1, 2), output_axis=3, feature_group_count=4)
  # Each group projected on its own constraint: every group's rows are
  # orthonormal, so the error is 0 per group, and not as one 8 × 18 matrix.
  params = bort_jax.project_to_constraint(nnx.state(conv, nnx.Param), 1.0,
                                          dimension_numbers=conv)
  for w in _groups(params["kernel"][...], 4):
    np.testing.assert_allclose(w @ w.T, np.eye(2), atol=1e-5)
  per_group = bort_jax.orthogonality_error(params, 1.0, dimension_numbers=conv)
  assert float(per_group["kernel"].constraint_error) < 1e-5
  whole = bort_jax.orthogonality_error(params, 1.0)
  assert float(whole["kernel"].constraint_error) > 0.1
  # Under nnx.Optimizer, the model's numbers reach the step: the transform
  # alone adds 0.1·Δ to the zero gradient, and the optimizer adds that
  # update to the weights.
  tx = bort_jax.add_bort_correction(0.1, "l2-full", 0.5,
                                    dimension_numbers=conv)
  optimizer = nnx.Optimizer(conv, tx, wrt=nnx.Param)
  before = np.asarray(conv.kernel[...], np.float64)
  optimizer.update(conv, jax.tree.map(jnp.zeros_like,
                                      nnx.state(conv, nnx.Param)))
  for g, w in enumerate(_groups(before, 4)):
    np.testing.assert_allclose(
        _groups(conv.kernel[...], 4)[g],
        w + 0.1 * reference.correction(w, "l2-full", 0.5), atol=1e-5)


@pytest.mark.parametrize("count", [3, 0, True, 2.5])
def test_a_group_count_that_does_not_divide_the_units_is_refused(count):
  with pytest.raises(ValueError, match="feature_group_count must be a "
                     "positive int that divides the 8 output units"):
    resolve_views(bort_jax.BortDimensionNumbers(feature_group_count=count),
                  {"kernel": jnp.ones((3, 3, 2, 8))})


def test_groups_split_one_output_axis_and_no_units_make_no_groups():
  # Over (heads, head_dim) the groups would depend on the axes' order.
  with pytest.raises(ValueError, match="feature_group_count=2 splits one "
                     r"output axis, got output_axis=\(1, 2\)"):
    resolve_views({"q": bort_jax.BortDimensionNumbers(
        reduction_axis=0, output_axis=(1, 2), feature_group_count=2)},
                  {"q": jnp.ones((8, 2, 3))})
  # A kernel with no units has no groups, whatever the count (a count of
  # 10⁹ used to build 10⁹ empty matrices).
  [view] = resolve_views(
      bort_jax.BortDimensionNumbers(feature_group_count=10**9),
      {"kernel": jnp.zeros((3, 3, 2, 0))})
  assert view.matrix_shape == (1, 0, 18)


def test_a_grouped_kernel_under_explicit_sharding_is_refused_in_one_line():
  with pytest.raises(ValueError, match="feature_group_count=4.*Explicit "
                     "sharding is not supported"):
    dimension_numbers_lib.matrix_view((3, 3, 2, 8), GROUPED, "'kernel'",
                                      spec=(None, None, None, "x"))

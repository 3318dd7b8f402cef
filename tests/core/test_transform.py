"""add_bort_correction: the matrix view on Flax layouts and the optax contract."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from tests.core import reference


def _apply(tx, params, grads=None):
  grads = grads if grads is not None else jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize("mode", bort_jax.MODES)
def test_flax_linear_and_conv_match_torch_layout(mode):
  """The update equals the paper's math on the PyTorch-layout matrix."""
  rngs = nnx.Rngs(0)
  linear = nnx.Linear(7, 5, rngs=rngs)
  conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
  params = nnx.state(nnx.List([linear, conv]), nnx.Param)
  # Full float32 products (GPUs default to TF32): this test is about layout.
  tx = bort_jax.add_bort_correction(
      1.0, mode, 0.8, kernel_options=bort_jax.KernelOptions(
          precision="highest"))
  updates = _apply(tx, params)
  for module, update in [(linear, updates[0]), (conv, updates[1])]:
    kernel = np.asarray(module.kernel[...])
    expected = reference.from_torch_layout(
        reference.correction(reference.torch_layout(kernel), mode, 0.8),
        kernel.shape)
    np.testing.assert_allclose(update["kernel"], expected, rtol=2e-5,
                               atol=2e-6)
    # Biases are not Bort parameters: their zero gradient passes unchanged.
    np.testing.assert_array_equal(update["bias"], 0.0)


def test_stacked_layers_are_corrected_one_by_one():
  kernels = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 4)))
  tx = bort_jax.add_bort_correction(
      1.0, "l1-fullrow", "ada",
      dimension_numbers=bort_jax.BortDimensionNumbers(batch_axis=0))
  update = _apply(tx, {"kernel": kernels})["kernel"]
  for layer in range(3):
    w = np.asarray(kernels[layer]).T
    c = np.mean(np.linalg.norm(w, axis=1)) ** 2
    np.testing.assert_allclose(
        update[layer], reference.correction(w, "l1-fullrow", c).T, rtol=1e-4,
        atol=1e-5)


@pytest.mark.slow
def test_attention_kernels_use_heads_as_units():
  attention = nnx.MultiHeadAttention(
      num_heads=2, in_features=6, qkv_features=8, out_features=6,
      decode=False, rngs=nnx.Rngs(0))
  params = nnx.state(attention, nnx.Param)
  updates = _apply(bort_jax.add_bort_correction(1.0), params)
  query = np.asarray(params["query"]["kernel"][...])  # (in, heads, head_dim)
  w = query.reshape(6, 8).T  # rows: the 8 (head, dim) output units
  np.testing.assert_allclose(
      updates["query"]["kernel"],
      reference.correction(w, "l2-full").T.reshape(query.shape), rtol=1e-4,
      atol=1e-6)
  out = np.asarray(params["out"]["kernel"][...])  # (heads, head_dim, out)
  w = out.reshape(8, 6).T
  np.testing.assert_allclose(
      updates["out"]["kernel"],
      reference.correction(w, "l2-full").T.reshape(out.shape), rtol=1e-4,
      atol=1e-6)
  assert set(bort_jax.orthogonality_error(params)) == {
      "key/kernel", "out/kernel", "query/kernel", "value/kernel"}


@pytest.mark.parametrize("mode", ["l2-full", "l1-fullrow", "l1-fullcol"])
def test_batched_and_looped_products_agree(mode):
  rng = np.random.default_rng(1)
  params = {f"layer{i}": {"kernel": jnp.asarray(rng.normal(size=(5, 3)))}
            for i in range(4)}
  params["odd"] = {"kernel": jnp.asarray(rng.normal(size=(3, 5)))}
  params["stack"] = {"kernel": jnp.asarray(rng.normal(size=(2, 5, 3)))}
  dims = lambda p: jax.tree.map(
      lambda x: bort_jax.BortDimensionNumbers(batch_axis=() if x.ndim == 2
                                              else 0), p)
  correct = functools.partial(bort_jax.tree_correction, mode=mode,
                              amplitude="ada", dimension_numbers=dims)
  batched_options = bort_jax.KernelOptions(batch_products=True)
  batched = correct(params, kernel_options=batched_options)
  looped = correct(params,
                   kernel_options=bort_jax.KernelOptions(batch_products=False))
  for name, layer in params.items():
    kernel = np.asarray(layer["kernel"], np.float64)
    for i, matrix in enumerate(kernel.reshape(-1, *kernel.shape[-2:])):
      c = reference.ada(matrix.T, mode)  # units: the kernel's columns
      expected = reference.correction(matrix.T, mode, c).T
      for result in (batched, looped):
        got = np.asarray(result[name]["kernel"]).reshape(-1, *kernel.shape[-2:])
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
  # Batched: one product per shape, the 4 (5, 3) layers and the stack together.
  jaxpr = jax.make_jaxpr(
      lambda p: correct(p, kernel_options=batched_options))(params)
  assert str(jaxpr).count("dot_general") == 4


def test_mask_and_dimension_numbers_select_leaves():
  params = {"a": {"kernel": jnp.ones((4, 3))}, "b": {"kernel": jnp.ones((4, 3))},
            "emb": {"embedding": jnp.ones((5, 3))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  masked = _apply(bort_jax.add_bort_correction(
      1.0, bort_mask={"a": {"kernel": False}, "b": {"kernel": True},
                 "emb": {"embedding": False}}), params, grads)
  assert float(jnp.abs(masked["a"]["kernel"]).sum()) == 0
  assert float(jnp.abs(masked["b"]["kernel"]).sum()) > 0
  # A callable may select the embedding too, with its own matrix view.
  select = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: None if path[0].key == "a" else
      bort_jax.BortDimensionNumbers(), p)
  chosen = _apply(bort_jax.add_bort_correction(
      1.0, dimension_numbers=select), params, grads)
  assert float(jnp.abs(chosen["a"]["kernel"]).sum()) == 0
  assert float(jnp.abs(chosen["emb"]["embedding"]).sum()) > 0


# ---- the optax contract ------------------------------------------------------

def _params():
  rng = np.random.default_rng(2)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
                    "bias": jnp.zeros(4)},
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 5)),
                                         jnp.float32)}}


def _run(tx, params, steps=3, **extra_args):
  state = tx.init(params)
  for step in range(steps):
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (step + 1)), params)
    updates, state = tx.update(grads, state, params, **extra_args)
    params = optax.apply_updates(params, updates)
  return params


def test_extra_args_are_accepted():
  tx = bort_jax.add_bort_correction(0.1)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  chained = optax.chain(bort_jax.add_bort_correction(0.1), optax.sgd(0.1))
  params = _params()
  for a, b in zip(jax.tree.leaves(_run(tx, params, loss=1.0)),
                  jax.tree.leaves(_run(tx, params))):
    np.testing.assert_array_equal(a, b)
  _run(chained, params, loss=jnp.float32(2.0))
  masked = bort_jax.add_bort_correction(0.1, bort_mask=lambda p: jax.tree.map(
      lambda x: x.ndim > 1, p))
  _run(masked, params, value=jnp.float32(2.0))


def test_inject_hyperparams_gives_identical_results():
  params = _params()
  direct = bort_jax.bort_sgd(0.1, momentum=0.9, gamma=0.05, mode="l1-fullrow",
                             amplitude="ada")
  injected = optax.inject_hyperparams(bort_jax.bort_sgd,
                                      static_args=("mode", "amplitude"))(
      learning_rate=0.1, momentum=0.9, gamma=0.05, mode="l1-fullrow",
      amplitude="ada")
  for a, b in zip(jax.tree.leaves(_run(direct, params)),
                  jax.tree.leaves(_run(injected, params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_gamma_and_amplitude_schedules():
  params = {"kernel": jnp.asarray(np.random.default_rng(3).normal(size=(5, 3)),
                                  jnp.float32)}
  gamma = optax.linear_schedule(0.0, 1.0, 4)
  amplitude = lambda count: 1.0 + count
  tx = bort_jax.add_bort_correction(gamma, amplitude=amplitude)
  state = tx.init(params)
  grads = jax.tree.map(jnp.zeros_like, params)
  for step in range(3):
    updates, state = tx.update(grads, state, params)
    w = np.asarray(params["kernel"], np.float64).T
    expected = gamma(step) * reference.correction(w, "l2-full", 1.0 + step).T
    np.testing.assert_allclose(updates["kernel"], expected, rtol=1e-5,
                               atol=1e-6)
  assert int(state.count) == 3


def test_bfloat16_params_keep_their_dtype():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
  for tx in [bort_jax.bort_sgd(0.1, momentum=0.9, gamma=0.1),
             bort_jax.bort_adamw(1e-3, gamma=0.1, mode="l1-fullrow",
                                 amplitude="ada")]:
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  # The correction is computed in float32 and rounded once.
  delta = bort_jax.tree_correction(params)["dense"]["kernel"]
  assert delta.dtype == jnp.float32


def test_works_inside_multisteps():
  params = _params()
  tx = optax.MultiSteps(bort_jax.bort_adamw(1e-2, gamma=0.1), every_k_schedule=2)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = tx.update(grads, state, params)
  assert all(float(jnp.abs(u).sum()) == 0 for u in jax.tree.leaves(updates))
  updates, state = tx.update(grads, state, params)
  assert float(jnp.abs(updates["conv"]["kernel"]).sum()) > 0


def test_init_on_shape_dtype_struct():
  params = _params()
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                        params)
  tx = bort_jax.bort_adamw(1e-3, gamma=0.1, amplitude="ada")
  abstract = jax.eval_shape(tx.init, shapes)
  concrete = tx.init(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  scheduled = bort_jax.add_bort_correction(optax.linear_schedule(0.0, 1.0, 5))
  assert int(scheduled.init(shapes).count) == 0


def test_no_recompilation_on_second_update():
  traces = []
  tx = bort_jax.bort_adamw(optax.cosine_decay_schedule(1e-2, 10),
                           gamma=optax.linear_schedule(0.0, 0.1, 5),
                           mode="l1-fullrow", amplitude="ada")

  @jax.jit
  def step(params, state):
    traces.append(None)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1
  assert step._cache_size() == 1


# ---- bad input -------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=0.1, mode="l2-ful"), "valid modes are: l2-full"),
    (dict(gamma=-0.1), "gamma must be >= 0"),
    (dict(gamma=float("nan")), "gamma must be >= 0"),
    (dict(gamma="big"), "gamma must be a number or a schedule"),
    (dict(gamma=0.1, amplitude=0.0), "amplitude must be a positive number"),
    (dict(gamma=0.1, amplitude=-2), "amplitude must be a positive number"),
    (dict(gamma=0.1, amplitude="adaptive"), "amplitude must be a positive"),
    (dict(gamma=0.1, amplitude=None), "amplitude must be a positive"),
    (dict(gamma=0.1, kernel_options=bort_jax.KernelOptions(block_size=0)),
     "block_size must be a positive int"),
    (dict(gamma=0.1, kernel_options=bort_jax.KernelOptions(gram_dtype=jnp.int8)),
     "gram_dtype must be a floating dtype"),
])
def test_bad_arguments_fail_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    bort_jax.add_bort_correction(**kwargs)
  with pytest.raises(ValueError, match=message):
    bort_jax.bort_adamw(1e-3, **kwargs)


@pytest.mark.parametrize("dims, message", [
    (bort_jax.BortDimensionNumbers(output_axis=3), "out of range"),
    (bort_jax.BortDimensionNumbers(reduction_axis=1, output_axis=1),
     "named twice"),
    (bort_jax.BortDimensionNumbers(reduction_axis=(), output_axis=0),
     "at least one output and one reduction"),
    (lambda p: {"dense": {"kernel": "rows"}}, "must be a BortDimensionNumbers"),
    ({"dense": {"kernel": None}, "other": None}, "does not match the params"),
])
def test_dimension_numbers_that_do_not_fit_fail_at_init(dims, message):
  params = {"dense": {"kernel": jnp.ones((4, 3))}}
  tx = bort_jax.add_bort_correction(0.1, dimension_numbers=dims)
  with pytest.raises(ValueError, match=message) as error:
    tx.init(params)
  if "named" in message or "range" in message:
    assert "dense/kernel" in str(error.value)


def test_missing_params_raise():
  tx = bort_jax.add_bort_correction(0.1)
  params = _params()
  with pytest.raises(ValueError, match="call `update\\(updates, state, params\\)"):
    tx.update(params, tx.init(params))


def test_non_finite_params_do_not_crash():
  params = _params()
  params["dense"]["kernel"] = params["dense"]["kernel"].at[0, 0].set(jnp.nan)
  params["conv"]["kernel"] = params["conv"]["kernel"].at[0, 0, 0, 0].set(
      jnp.inf)
  tx = bort_jax.bort_sgd(0.1, gamma=0.1)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params),
                         tx.init(params), params)
  # Documented: the bad leaf's correction is non-finite, the others are not.
  assert not bool(jnp.isfinite(updates["dense"]["kernel"]).all())
  assert bool(jnp.isfinite(updates["dense"]["bias"]).all())
  # When the weight's gradient is non-finite too (here: the gradient of
  # ½‖p‖²), even optax.apply_if_finite skips the step; with finite gradients
  # only bort_jax.skip_nonfinite_steps does (tests/core/test_guards.py).
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=3)
  updates, state = guarded.update(params, guarded.init(params), params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  assert int(state.notfinite_count) == 1

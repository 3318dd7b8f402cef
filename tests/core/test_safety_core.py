"""Red-team findings on the core library: each one refused, warned or right."""

import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bort_jax

D = bort_jax.BortDimensionNumbers
L = 6  # stacked layers


def _stack(out_axes, n_in=3, n_out=5, layers=L, use_bias=True):
  make = lambda key: nnx.Linear(n_in, n_out, use_bias=use_bias,
                                rngs=nnx.Rngs(key))
  keys = jax.random.split(jax.random.key(0), layers)
  return nnx.vmap(make, in_axes=0, out_axes=out_axes)(keys)


def _params(model):
  return nnx.state(model, nnx.Param).to_pure_dict()


# N4 -------------------------------------------------------------------------


def test_n4_vmap_out_axes_1_stack_is_corrected_layer_by_layer():
  layers = _stack(out_axes=1)
  params = _params(layers)
  assert params["kernel"].shape == (3, L, 5)  # the layers on axis 1
  dims = bort_jax.flax_dimension_numbers(layers)
  assert dims(params)["kernel"] == D((0,), 2, (1,))
  stacked = bort_jax.tree_correction(params, "l2-full", 1.0,
                                     dimension_numbers=dims)["kernel"]
  for i in range(L):
    one = bort_jax.tree_correction({"kernel": params["kernel"][:, i]},
                                   "l2-full", 1.0)["kernel"]
    np.testing.assert_allclose(stacked[:, i], one, rtol=1e-6, atol=1e-7)


def test_n4_vmap_out_axes_0_keeps_the_leading_stack():
  layers = _stack(out_axes=0)
  dims = bort_jax.flax_dimension_numbers(layers)
  assert dims(_params(layers))["kernel"] == D((1,), 2, (0,))


@pytest.mark.parametrize("n_in, layers, use_bias", [
    (4, 4, True),  # (4, 4, 4) kernel, (4, 4) bias: out_axes 0 or 1
    (3, 3, False),  # (3, 3, 5) kernel, no bias to tell
])
def test_n4_a_stack_axis_the_shapes_cannot_tell_is_refused(n_in, layers,
                                                           use_bias):
  model = _stack(0, n_in=n_in, n_out=4 if n_in == 4 else 5, layers=layers,
                 use_bias=use_bias)
  with pytest.raises(ValueError, match=r"could be on axes \(0,\) or \(1,\)"
                     r".*pass dimension_numbers=.*BortDimensionNumbers"):
    bort_jax.flax_dimension_numbers(model)


# N9 -------------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda every: bort_jax.add_bort_correction(0.1, every=every),
    lambda every: bort_jax.bort_sgd(0.1, every=every),
    lambda every: bort_jax.bort_adamw(1e-3, every=every),
    lambda every: bort_jax.with_bort(optax.sgd(0.1), every=every,
                                     placement="coupled"),
    lambda every: bort_jax.with_bort(optax.adam(1e-3), every=every),
], ids=["add_bort_correction", "bort_sgd", "bort_adamw", "coupled",
        "decoupled"])
def test_n9_every_beyond_the_int32_step_counter_is_refused_at_construction(
    build):
  with pytest.raises(ValueError, match=r"every must be at most 2\*\*31 - 1"):
    build(2**40)
  with pytest.raises(ValueError, match=r"every must be at most"):
    build(2**31)
  build(2**31 - 1)  # the largest period the counter holds


# N10 ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.int32, jnp.bool_])
def test_n10_orthogonality_error_refuses_non_real_floating_leaves(dtype):
  params = {"dense": {"kernel": jnp.ones((3, 2), dtype),
                      "bias": jnp.ones(2)}}
  with pytest.raises(TypeError, match=r"'dense/kernel' has dtype .*skip it "
                     r"with dimension_numbers"):
    bort_jax.orthogonality_error(params)
  with pytest.raises(TypeError, match=r"w has dtype .*real floating"):
    bort_jax.matrix_orthogonality_error(jnp.ones((3, 2), dtype))


def test_n10_mean_orthogonality_error_refuses_complex_errors():
  complex_error = bort_jax.OrthogonalityError(
      jnp.array(1 + 1j), jnp.array(0.0), jnp.array(0.0))
  with pytest.raises(TypeError, match=r"'k'.constraint_error has dtype "
                     "complex"):
    bort_jax.mean_orthogonality_error({"k": complex_error})
  with pytest.raises(TypeError, match="not an OrthogonalityError"):
    bort_jax.mean_orthogonality_error({"k": 1.0})


# N11 ------------------------------------------------------------------------


def test_n11_recommended_is_read_only_and_agrees_with_everything_reading_it():
  assert isinstance(bort_jax.RECOMMENDED, types.MappingProxyType)
  with pytest.raises(TypeError):
    bort_jax.RECOMMENDED["decoupled"] = bort_jax.Recommended(
        "l2-full", 1.0, 0.5, 1e-2)
  with pytest.raises(TypeError):
    del bort_jax.RECOMMENDED["coupled"]
  with pytest.raises(TypeError):
    bort_jax.DEFAULT_GAMMA["coupled"] = 1.0
  assert set(bort_jax.RECOMMENDED) == {"coupled", "decoupled"}
  for placement, r in bort_jax.RECOMMENDED.items():
    assert isinstance(r, bort_jax.Recommended)
    assert bort_jax.DEFAULT_GAMMA[placement] == r.gamma

  params = {"kernel": jnp.asarray(
      np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)}
  grads = jax.tree.map(jnp.cos, params)

  def step(tx):
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates["kernel"]

  explicit = lambda r: dict(gamma=r.gamma, mode=r.mode, amplitude=r.amplitude)
  c, d = bort_jax.RECOMMENDED["coupled"], bort_jax.RECOMMENDED["decoupled"]
  pairs = [
      (bort_jax.bort_sgd(0.05, 0.9), bort_jax.bort_sgd(0.05, 0.9,
                                                       **explicit(c))),
      (bort_jax.bort_adamw(1e-3), bort_jax.bort_adamw(1e-3, **explicit(d))),
      # with_bort's default strength is the decoupled setting's lr · γ.
      (bort_jax.with_bort(optax.adam(1e-3)),
       bort_jax.with_bort(optax.adam(1e-3), strength=d.learning_rate * d.gamma,
                          mode=d.mode, amplitude=d.amplitude,
                          placement="decoupled")),
  ]
  for default, chosen in pairs:
    np.testing.assert_array_equal(step(default), step(chosen))
  # The recommended γ is not zero, so the defaults above did apply Bort.
  np.testing.assert_raises(
      AssertionError, np.testing.assert_array_equal,
      step(bort_jax.bort_adamw(1e-3)), step(bort_jax.bort_adamw(1e-3,
                                                                gamma=0.0)))


# N12 ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(weight=float("nan")), ValueError, "weight must be >= 0 and finite"),
    (dict(weight=jnp.ones(3)), ValueError, r"weight must be a scalar.*\(3,\)"),
    (dict(weight=np.ones(3)), ValueError, r"weight must be a scalar.*\(3,\)"),
    (dict(weight="1e-3"), TypeError, "weight must be a number >= 0, got the "
     "string"),
    (dict(weight=-1e-3), ValueError, "weight must be >= 0"),
    (dict(weight=1e300), ValueError, "weight = 1e.* overflows float32"),
    (dict(power=0.0), ValueError, "power must be > 0"),
    (dict(power=-0.5), ValueError, "power must be > 0"),
    (dict(power=float("inf")), ValueError, "power must be > 0 and finite"),
    (dict(power=jnp.ones((2, 1))), ValueError, "power must be a scalar"),
    (dict(power=True), TypeError, "power must be a real number"),
])
def test_n12_dbort_loss_refuses_bad_weight_and_power(kwargs, error, message):
  y = jnp.ones((4, 3))
  with pytest.raises(error, match=message):
    bort_jax.dbort.dbort_loss(y, **kwargs)


def test_n12_traced_weight_and_power_are_still_allowed():
  y = jnp.array([[1.0, -1.0], [3.0, 3.0]])  # mean(y²) = 5
  loss = jax.jit(lambda w, p: bort_jax.dbort.dbort_loss(y, weight=w, power=p))
  np.testing.assert_allclose(loss(2.0, 0.5), -2.0 * np.sqrt(5.0), rtol=1e-6)
  np.testing.assert_allclose(
      bort_jax.dbort.dbort_loss(y, weight=np.float32(2.0), power=jnp.array(0.5)),
      -2.0 * np.sqrt(5.0), rtol=1e-6)
  assert float(bort_jax.dbort.dbort_loss(y, weight=0, power=1)) == 0.0


# M9 -------------------------------------------------------------------------


@pytest.mark.parametrize("build, name", [
    (lambda: bort_jax.add_bort_correction(0.1, bort_mask="x"), "bort_mask"),
    (lambda: bort_jax.bort_sgd(0.1, bort_mask="x"), "bort_mask"),
    (lambda: bort_jax.bort_adamw(1e-3, bort_mask=5), "bort_mask"),
    (lambda: bort_jax.with_bort(optax.sgd(0.1), bort_mask=[1, 0]),
     "bort_mask"),
    (lambda: bort_jax.bort_adamw(1e-3, mask=5), "mask"),
    (lambda: bort_jax.bort_sgd(0.1, weight_decay=1e-4, weight_decay_mask=5),
     "weight_decay_mask"),
    (lambda: bort_jax.bort_adamw(1e-3, bort_mask={}), "bort_mask"),
])
def test_m9_a_mask_that_is_not_a_bool_tree_or_callable_is_refused(build,
                                                                   name):
  with pytest.raises(TypeError, match=rf"^{name} must be a pytree of "
                     "True/False matching the params or a callable"):
    build()


def test_m9_a_mask_callable_returning_non_bools_is_refused_at_init():
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
  tx = bort_jax.bort_adamw(
      1e-3, bort_mask=lambda p: {"kernel": 1, "bias": 0})
  with pytest.raises(TypeError, match="bort_mask .* but it returned int"):
    tx.init(params)
  good = bort_jax.bort_adamw(
      1e-3, bort_mask=lambda p: {"kernel": True, "bias": np.bool_(False)},
      mask={"kernel": jnp.array(True), "bias": False})
  updates, _ = good.update(params, good.init(params), params)
  assert updates["kernel"].shape == (3, 2)


@pytest.mark.parametrize("bad", [5, "x", None, {"dense": {"kernel": "w"}}])
def test_m9_flax_dimension_numbers_refuses_what_is_not_a_model_or_params(bad):
  with pytest.raises(TypeError, match="flax_dimension_numbers takes an "
                     "nnx.Module or a pytree of parameters"):
    bort_jax.flax_dimension_numbers(bad)


# M10 ------------------------------------------------------------------------


def _init_warnings(tx, params):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = tx.init(params)
  return [str(w.message) for w in caught], state


def test_m10_a_weight_no_selection_reaches_warns_once_at_init():
  params = {
      "dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
      "proj": {"w": jnp.ones((4, 3))},  # a matrix, but not named kernel
      "embed": {"embedding": jnp.ones((10, 4))},
      "cls_token": jnp.ones((1, 1, 4)),  # a vector with unit axes
      "stacked": {"bias": jnp.ones((3, 4)), "scale": jnp.ones((3, 4))},
      "step": jnp.ones((4, 3), jnp.int32),
  }
  tx = bort_jax.bort_adamw(1e-3)
  messages, state = _init_warnings(tx, params)
  assert len(messages) == 1
  assert "does not reach 'proj/w'" in messages[0]
  for quiet in ("dense", "embed", "cls_token", "stacked", "step"):
    assert quiet not in messages[0]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.update(params, state, params)  # no warning per step


def test_m10_a_weight_left_out_on_purpose_does_not_warn():
  params = {"dense": {"kernel": jnp.ones((4, 3))}, "w": jnp.ones((4, 3))}
  masked = bort_jax.bort_adamw(1e-3, bort_mask={"dense": {"kernel": True},
                                                "w": False})
  chosen = bort_jax.bort_adamw(
      1e-3, dimension_numbers={"dense": {"kernel": D()}, "w": None})
  for tx in (masked, chosen):
    assert _init_warnings(tx, params)[0] == []


def test_m10_the_warning_names_a_few_paths_then_counts_the_rest():
  params = {"kernel": jnp.ones((3, 2)),
            **{f"w{i}": jnp.ones((3, 2)) for i in range(8)}}
  messages, _ = _init_warnings(bort_jax.add_bort_correction(0.1), params)
  assert len(messages) == 1
  assert "'w0', 'w1', 'w2', 'w3', 'w4' and 3 more" in messages[0]


def test_m10_nothing_selected_still_gives_its_own_single_warning():
  messages, _ = _init_warnings(bort_jax.bort_adamw(1e-3),
                               {"w": jnp.ones((3, 2))})
  assert len(messages) == 1 and "selects no parameter" in messages[0]

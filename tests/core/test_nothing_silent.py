"""Inputs that used to give silent wrong answers now raise, warn or are right."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bort_jax
from bort_jax.validation import weights_of_their_own
from tests.core.zero_loss import run_zero_loss


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.int32, jnp.bool_])
def test_non_real_float_kernels_are_refused_at_init(dtype):
  params = {"dense": {"kernel": jnp.ones((3, 2), dtype)}}
  tx = bort_jax.bort_sgd(0.1, gamma=0.1)
  with pytest.raises(ValueError, match="'dense/kernel' has dtype"):
    tx.init(params)


def test_float8_kernels_are_refused_at_init_and_measured_in_float32():
  # They passed init, then failed deep in type promotion at the first
  # update, naming no parameter.
  params = {"dense": {"kernel": jnp.eye(4, dtype=jnp.float8_e4m3fn)}}
  with pytest.raises(ValueError, match="'dense/kernel' has dtype float8"):
    bort_jax.bort_adamw(1e-3).init(params)
  error = bort_jax.orthogonality_error(params)["dense/kernel"]
  assert error.constraint_error == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("make, kind", [
    (lambda: optax.contrib.schedule_free_adamw(1e-3), "schedule-free"),
    (lambda: optax.lookahead(optax.adam(1e-3), 2, 0.5), "lookahead"),
    (lambda: optax.contrib.cocob(), "COCOB"),
    (lambda: optax.contrib.sam(optax.sgd(0.1), optax.sgd(0.05)), "SAM"),
])
@pytest.mark.parametrize("placement", ["decoupled", "coupled"])
def test_with_bort_refuses_optimizers_with_weights_of_their_own(
    make, kind, placement):
  # Schedule-free rebuilt the params from its z, which the landing and the
  # correction never reached: the constraint error stayed at 0.4-0.6. COCOB
  # (its starting point plus its bets) and SAM (the params it cached before
  # its adversarial steps) undid the start the same way.
  tx = bort_jax.with_bort(make(), placement=placement)
  params = {"dense": {"kernel": jnp.ones((4, 3))}}
  if kind == "lookahead":
    params = optax.LookaheadParams.init_synced(params)
  with pytest.raises(ValueError, match=f"with_bort: .*{kind}"):
    tx.init(params)


def test_sam_in_opaque_mode_and_cocob_evaluated_are_not_weights_of_their_own():
  params = {"dense": {"kernel": jnp.ones((4, 3))}}
  opaque = optax.contrib.sam(optax.sgd(0.1), optax.sgd(0.05), opaque_mode=True)
  assert weights_of_their_own(opaque.init(params)) is None
  # ... but what it wraps is looked at (a SAM state was a leaf of the scan).
  wrapping = optax.contrib.sam(optax.contrib.schedule_free_sgd(0.1),
                               optax.sgd(0.05), opaque_mode=True)
  assert weights_of_their_own(wrapping.init(params)) == "schedule-free's z"
  cocob = optax.contrib.cocob().init(params)
  assert weights_of_their_own(cocob, evaluated=True) is None
  sam = optax.contrib.sam(optax.sgd(0.1), optax.sgd(0.05)).init(params)
  assert weights_of_their_own(sam, evaluated=True) == (
      "SAM's cached params")


def test_an_empty_selection_warns_once_at_init():
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  tx = bort_jax.bort_adamw(1e-3, gamma=0.1)
  with pytest.warns(UserWarning, match="selects no parameter.*'kernel'"):
    state = tx.init(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.update(params, state, params)  # no warning per step
  with pytest.warns(UserWarning, match="no Bort parameter"):
    assert bort_jax.orthogonality_error(params) == {}


def test_a_vector_valued_gamma_schedule_is_refused():
  params = {"kernel": jnp.ones((3, 2))}
  tx = bort_jax.add_bort_correction(lambda count: jnp.ones(2))
  with pytest.raises(ValueError, match="gamma must be a scalar"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("dims, message", [
    (bort_jax.BortDimensionNumbers(reduction_axis=(0,), output_axis=(2,),
                                   batch_axis=(0,)), "axis 0 is named twice"),
    (bort_jax.BortDimensionNumbers(output_axis=(1, 1)), "axis 1 is named twice"),
    (bort_jax.BortDimensionNumbers(output_axis=1.0),
     "output_axis must be an int or a sequence of ints"),
    (bort_jax.BortDimensionNumbers(output_axis=None),
     "output_axis must be an int or a sequence of ints"),
    (bort_jax.BortDimensionNumbers(reduction_axis=(0.0,)),
     "reduction_axis must be an int or a sequence of ints"),
    (bort_jax.BortDimensionNumbers(batch_axis="0"),
     "batch_axis must be an int or a sequence of ints"),
    (bort_jax.BortDimensionNumbers(output_axis=-4), "output_axis -4 is out of"),
])
def test_bad_dimension_numbers_name_the_field(dims, message):
  params = {"kernel": jnp.ones((2, 3, 4))}
  with pytest.raises(ValueError, match=message):
    bort_jax.add_bort_correction(0.1, dimension_numbers=dims).init(params)


def test_numpy_integer_axes_and_none_batch_are_accepted():
  params = {"kernel": jnp.asarray(
      np.random.default_rng(0).normal(size=(2, 3, 4)), jnp.float32)}
  plain = bort_jax.BortDimensionNumbers(reduction_axis=1, output_axis=2,
                                        batch_axis=0)
  numpy = bort_jax.BortDimensionNumbers(reduction_axis=np.int64(1),
                                        output_axis=[np.int32(2)],
                                        batch_axis=None)
  want = bort_jax.tree_correction(params, dimension_numbers=plain)
  got = bort_jax.tree_correction(params, dimension_numbers=numpy)
  np.testing.assert_array_equal(got["kernel"], want["kernel"])


@pytest.mark.parametrize("mode", bort_jax.MODES)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (3, 3, 0), (0, 3, 4)])
def test_empty_matrices_have_zero_correction(mode, shape):
  params = {"kernel": jnp.ones(shape)}
  deltas = bort_jax.tree_correction(params, mode, "ada")
  assert deltas["kernel"].shape == shape
  assert bool(jnp.all(deltas["kernel"] == 0))
  tx = bort_jax.bort_sgd(0.1, gamma=0.1, mode=mode,
                         kernel_options=bort_jax.KernelOptions(block_size=1))
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["kernel"].shape == shape


# ---- the diagnostics -------------------------------------------------------

@pytest.mark.parametrize("amplitude, error", [
    (-1.0, ValueError), (0.0, ValueError), (float("nan"), ValueError),
    ("adaptive", ValueError), (lambda count: 1.0, TypeError)])
def test_orthogonality_error_checks_the_amplitude(amplitude, error):
  params = {"kernel": jnp.eye(3)}
  with pytest.raises(error, match="amplitude must be a positive number"):
    bort_jax.orthogonality_error(params, amplitude)


def test_orthogonality_error_accepts_ada():
  w = jnp.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # rows: units
  c = float(bort_jax.ada_amplitude(w))  # (mean of 3 and 1)² = 4
  assert c == 4.0
  ada = bort_jax.matrix_orthogonality_error(w, "ada")
  fixed = bort_jax.matrix_orthogonality_error(w, 4.0)
  np.testing.assert_allclose(ada.constraint_error, fixed.constraint_error)
  # ‖diag(9, 1) − 4I‖ / ‖4I‖ = √(25 + 9) / (4√2)
  np.testing.assert_allclose(ada.constraint_error, np.sqrt(34) / (4 * np.sqrt(2)),
                             rtol=1e-6)


@pytest.mark.parametrize("amplitude", [None, "ada", 2.0])
def test_zero_and_empty_matrices_have_finite_documented_errors(amplitude):
  zero = bort_jax.matrix_orthogonality_error(jnp.zeros((3, 4)), amplitude)
  assert [float(v) for v in zero] == [1.0, 0.0, 0.0]
  empty = bort_jax.matrix_orthogonality_error(jnp.zeros((0, 4)), amplitude)
  assert [float(v) for v in empty] == [0.0, 0.0, 0.0]


def test_max_cosine_is_the_maximum_over_batch_axes():
  # Batch of three 2x2 matrices with off-diagonal cosines 0, 0.6 and 0.8.
  def pair(cos):
    return jnp.array([[1.0, 0.0], [cos, np.sqrt(1 - cos**2)]])
  w = jnp.stack([pair(0.0), pair(0.6), pair(0.8)])
  err = bort_jax.matrix_orthogonality_error(w)
  np.testing.assert_allclose(err.max_cosine, 0.8, rtol=1e-6)
  per = [bort_jax.matrix_orthogonality_error(m) for m in w]
  np.testing.assert_allclose(err.constraint_error,
                             np.mean([p.constraint_error for p in per]),
                             rtol=1e-6)
  # Through the parameter view: a stacked kernel (3, in, out) = wᵀ per layer.
  params = {"kernel": jnp.swapaxes(w, -1, -2)}
  errors = bort_jax.orthogonality_error(
      params, dimension_numbers=bort_jax.BortDimensionNumbers(batch_axis=0))
  np.testing.assert_allclose(errors["kernel"].max_cosine, 0.8, rtol=1e-6)


@pytest.mark.parametrize("amplitude, error", [
    ("adaa", ValueError), (-1.0, ValueError), (0.0, ValueError),
    (float("nan"), ValueError), (np.array([1.0, -1.0]), ValueError),
    (lambda step: 1.0, TypeError), (object(), TypeError)])
def test_the_public_correction_and_penalty_check_the_amplitude(
    amplitude, error):
  # A negative c used to be taken as the target, and a misspelt 'ada' failed
  # inside NumPy ("could not convert string to float").
  for function in (bort_jax.bort_correction, bort_jax.bort_penalty):
    with pytest.raises(error, match="amplitude must be 'ada', a positive"):
      function(jnp.ones((2, 2, 2)), amplitude=amplitude)


def test_a_traced_amplitude_is_not_checked_by_value_and_works():
  got = jax.jit(lambda c: bort_jax.bort_correction(
      jnp.eye(2), "l2-full", amplitude=c))(2.0)
  np.testing.assert_allclose(got, -np.eye(2))  # (1 − 2) · I


@pytest.mark.parametrize("function", [bort_jax.matrix_orthogonality_error,
                                      bort_jax.ada_amplitude,
                                      bort_jax.bort_correction])
def test_a_vector_is_refused_in_one_line(function):
  with pytest.raises(ValueError, match=r"matrices of shape \(\.\.\., m, n\)"):
    function(jnp.ones(3))


def test_ada_of_no_vectors_is_zero_not_nan():
  # m > n with no fan-in: "ada" is over the columns, of which there are none.
  assert float(bort_jax.ada_amplitude(jnp.zeros((5, 0)))) == 0.0
  for mode in ("l2-col", "l1-col", "l1-fullcol", "huber-fullcol"):
    assert float(bort_jax.bort_penalty(jnp.zeros((0, 5)), mode, "ada")) == 0.0


@pytest.mark.parametrize("shape", [(1, 6), (6, 1)])
def test_one_vector_under_ada_is_met_exactly_not_jittered(shape):
  # One unit (1, 6), or one fan-in column on the feasible side (6, 1): "ada"
  # is that vector's own squared norm, so there is nothing to correct. The
  # l1 modes used to take the sign of a rounding difference: ±w at random.
  for seed in range(8):
    w = jax.random.normal(jax.random.key(seed), shape)
    for mode in ("l2-full", "l1-fullrow", "huber-fullrow", "l1-row"):
      if mode == "l1-row" and shape[0] > 1:
        continue  # six units: six vectors, "ada" their mean
      np.testing.assert_array_equal(
          bort_jax.bort_correction(w, mode, "ada"), 0.0)
      assert float(bort_jax.bort_penalty(w, mode, "ada")) == 0.0


def test_a_depthwise_conv_under_ada_is_left_as_it_is():
  from flax import nnx
  conv = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=nnx.Rngs(0))
  before = np.asarray(conv.kernel[...])
  optimizer = nnx.Optimizer(
      conv, bort_jax.bort_adamw(1e-2, weight_decay=0.0,
                                dimension_numbers=conv), wrt=nnx.Param)
  for _ in range(3):
    optimizer.update(conv, jax.tree.map(jnp.zeros_like,
                                        nnx.state(conv, nnx.Param)))
  np.testing.assert_array_equal(conv.kernel[...], before)


def _norm_after_zero_gradient_steps(tx, params, steps=3000):
  params, _ = run_zero_loss(tx, params, steps)
  return float(jnp.linalg.norm(params["up"]["kernel"]))


def test_ada_on_more_units_than_fan_in_holds_the_feasible_side_s_scale():
  # 16 units on a fan-in of 9 (a first 3×3 convolution with 16 channels, or
  # an up-projection): W Wᵀ = cI has no solution. The full modes constrain
  # Wᵀ W = cI there, with ada over the columns, so the default keeps the
  # kernel's scale (it used to fall below 10 % of it in these steps) and
  # reaches the constraint that orthogonality_error measures, silently.
  kernel = jax.random.normal(jax.random.key(0), (9, 16)) / 3  # (in, out)
  params = {"up": {"kernel": kernel}}
  start = float(jnp.linalg.norm(kernel))
  for mode in ("l1-fullrow", "l2-full", "huber-fullrow", "l1-row"):
    tx = bort_jax.bort_adamw(1e-3, mode=mode)
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      tx.init(params)
    after, _ = run_zero_loss(tx, params, 3000)
    assert float(jnp.linalg.norm(after["up"]["kernel"])) > 0.7 * start, mode
    if mode != "l1-row":
      error = bort_jax.orthogonality_error(after)["up/kernel"]
      assert error.overcomplete and float(error.constraint_error) < 0.02, (
          mode, error)
  # The column modes keep the published "ada" (over the units): on more
  # units than fan-in they collapse, and say so once at init.
  with pytest.warns(UserWarning, match=r"mode 'l1-fullcol' with "
                    r"amplitude='ada' pulls 'up/kernel' \(16 units, fan-in "
                    r"9\) toward zero"):
    tx = bort_jax.bort_adamw(1e-3, mode="l1-fullcol")
    tx.init(params)
  assert _norm_after_zero_gradient_steps(tx, params) < 0.1 * start
  # A fixed amplitude holds the scale, silently.
  fixed = bort_jax.bort_adamw(1e-3, mode="l1-fullcol", amplitude=1.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    fixed.init(params)
  assert _norm_after_zero_gradient_steps(fixed, params) > 0.7 * start
  # The column-norm modes on fewer units than fan-in grow instead.
  with pytest.warns(UserWarning, match=r"mode 'l2-col' with amplitude='ada' "
                    r"grows 'up/kernel' "
                    r"\(9 units, fan-in 16\) without bound"):
    bort_jax.bort_adamw(1e-3, mode="l2-col").init({"up": {"kernel": kernel.T}})


def test_a_full_column_mode_on_fewer_units_than_fan_in_warns_as_it_leaves(
):
  # Wᵀ W = cI has no solution with fewer units than fan-in: from the start's
  # W Wᵀ = cI the full column modes move a 64 → 16 kernel off it, under
  # any amplitude; they did so without a word.
  kernel = jax.random.normal(jax.random.key(1), (64, 16)) / 8  # (in, out)
  params = {"head": {"kernel": kernel}}
  for mode in ("l1-fullcol", "huber-fullcol"):
    for amplitude in ("ada", 1.0):
      with pytest.warns(UserWarning, match=rf"mode '{mode}' asks Wᵀ W = cI "
                        r"of 'head/kernel' \(16 units, fan-in 64\), which "
                        "no matrix with fewer units than fan-in satisfies"):
        tx = bort_jax.bort_adamw(1e-3, mode=mode, amplitude=amplitude)
        tx.init(params)
      after, _ = run_zero_loss(tx, params, 300)
      error = bort_jax.orthogonality_error(after)["head/kernel"]
      assert float(error.constraint_error) > 0.1, (mode, amplitude, error)
  # The full modes on the units hold it, silently.
  tx = bort_jax.bort_adamw(1e-3, mode="huber-fullrow")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx.init(params)
  after, _ = run_zero_loss(tx, params, 300)
  assert float(bort_jax.orthogonality_error(after)["head/kernel"]
               .constraint_error) < 1e-5


def test_a_mask_tree_fits_nnx_optimizer_by_path_and_names_a_gap():
  from flax import nnx
  model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)),
                         nnx.Linear(4, 3, rngs=nnx.Rngs(1)))
  square = lambda x: x.shape == (4, 4)

  def stepped(bort_mask):
    clone = nnx.clone(model)
    optimizer = nnx.Optimizer(
        clone, bort_jax.bort_adamw(1e-2, gamma=1.0, bort_mask=bort_mask),
        wrt=nnx.Param)
    optimizer.update(clone, jax.tree.map(jnp.zeros_like,
                                         nnx.state(clone, nnx.Param)))
    return nnx.state(clone, nnx.Param).to_pure_dict()

  # A callable mask always worked; the same mask as a tree (mapped over
  # nnx.state, as a pure dict, or as a prefix) failed with a raw pytree
  # error, since init sees Variables and update arrays.
  expected = stepped(lambda params: jax.tree.map(square, params))
  tree = jax.tree.map(square, nnx.state(model, nnx.Param))
  for mask in (tree, tree.to_pure_dict(), {"layers": {0: True, 1: False}}):
    jax.tree.map(np.testing.assert_array_equal, stepped(mask), expected)
  with pytest.raises(ValueError, match="bort_mask has no True/False for the "
                     "parameter 'bias'"):
    bort_jax.bort_adamw(1e-3, bort_mask={"kernel": True}).init(
        {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)})

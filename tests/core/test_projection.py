"""project_to_constraint: Bort leaves put exactly on W Wᵀ = cI."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.test_util import check_grads
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import bort_jax
from bort_jax._src.projection import polar_factor

TOL = 1e-5  # float32 constraint error after an SVD


def _normal(shape, seed=0, scale=0.3):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


def _uneven_kernel(shape, seed=0):
  """A Flax kernel (…, out) whose output units have very different norms, so
  that the mean norm over output units differs from that over fan-in."""
  scales = np.linspace(0.2, 3.0, shape[-1])
  return _normal(shape, seed) * jnp.asarray(scales, jnp.float32)


def _units(kernel):
  """A Flax kernel (…, in, out) as the matrix (out, fan-in), in float64."""
  k = np.asarray(kernel, np.float64)
  return k.reshape(-1, k.shape[-1]).T


def _ada(w):
  return np.mean(np.linalg.norm(w, axis=1)) ** 2


def _polar(w):
  """The float64 polar factor U Vᵀ of w = U S Vᵀ."""
  u, _, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
  return u @ vt


def _error(params, amplitude, **kwargs):
  errors = bort_jax.orthogonality_error(params, amplitude, **kwargs)
  return float(bort_jax.mean_orthogonality_error(errors).constraint_error)


def test_fixed_amplitude_linear_kernel_has_orthogonal_rows_of_norm_c():
  params = {"dense": {"kernel": _normal((8, 4)), "bias": jnp.ones(4)}}
  out = bort_jax.project_to_constraint(params, 0.5)
  w = _units(out["dense"]["kernel"])  # (out=4, in=8)
  np.testing.assert_allclose(w @ w.T, 0.5 * np.eye(4), atol=TOL)
  assert _error(out, 0.5) < TOL
  assert _error(params, 0.5) > 0.1  # the start was off the constraint


def test_ada_amplitude_is_the_mean_output_unit_norm_squared_before():
  kernel = _uneven_kernel((8, 4))
  c = _ada(_units(kernel))
  # Over fan-in vectors the mean norm is another number: the units matter.
  assert abs(np.mean(np.linalg.norm(_units(kernel), axis=0)) ** 2 - c) > 0.1
  out = bort_jax.project_to_constraint({"kernel": kernel})
  w = _units(out["kernel"])
  np.testing.assert_allclose(w @ w.T, c * np.eye(4), atol=TOL * c)
  assert _error(out, "ada") < TOL


def test_default_amplitude_is_ada():
  kernel = _uneven_kernel((8, 4))
  np.testing.assert_array_equal(
      bort_jax.project_to_constraint({"kernel": kernel})["kernel"],
      bort_jax.project_to_constraint({"kernel": kernel}, "ada")["kernel"])


def test_conv_kernel_rows_are_output_channels():
  kernel = _uneven_kernel((3, 3, 2, 4))  # (kh, kw, in, out): 4 rows of 18
  c = _ada(_units(kernel))
  out = bort_jax.project_to_constraint({"conv": {"kernel": kernel}})
  w = _units(out["conv"]["kernel"])
  np.testing.assert_allclose(w @ w.T, c * np.eye(4), atol=TOL * c)
  np.testing.assert_allclose(
      bort_jax.project_to_constraint({"kernel": kernel}, 0.5)["kernel"],
      np.asarray(_polar(_units(kernel)) * np.sqrt(0.5)).T.reshape(3, 3, 2, 4),
      atol=TOL)


def test_overcomplete_kernel_gets_orthogonal_columns():
  kernel = _normal((3, 8))  # (in=3, out=8): 8 units in R^3, m > n
  out = bort_jax.project_to_constraint({"kernel": kernel}, 0.5)
  w = _units(out["kernel"])  # (8, 3)
  np.testing.assert_allclose(w.T @ w, 0.5 * np.eye(3), atol=TOL)
  assert _error(out, 0.5) < TOL


def test_overcomplete_kernel_under_ada_keeps_its_columns_scale():
  # "ada" on m > n is the columns' squared mean norm: projecting keeps it,
  # so a second projection changes nothing (over the rows it shrank by n/m).
  kernel = _normal((3, 8))
  columns = np.linalg.norm(np.asarray(_units(kernel)), axis=0)
  once = bort_jax.project_to_constraint({"kernel": kernel})
  w = np.asarray(_units(once["kernel"]))
  np.testing.assert_allclose(w.T @ w, np.mean(columns) ** 2 * np.eye(3),
                             atol=TOL * 10)
  twice = bort_jax.project_to_constraint(once)
  np.testing.assert_allclose(twice["kernel"], once["kernel"], atol=TOL * 10)
  assert _error(once, "ada") < TOL


def test_stacked_layers_are_projected_each_on_its_own():
  # Layer l is scaled by l + 1: one amplitude per layer, not per leaf.
  kernel = _normal((3, 6, 4)) * jnp.arange(1.0, 4.0)[:, None, None]
  dims = {"kernel": bort_jax.BortDimensionNumbers(batch_axis=0)}
  out = bort_jax.project_to_constraint({"kernel": kernel},
                                       dimension_numbers=dims)
  for layer in range(3):
    before = _units(kernel[layer])
    w = _units(out["kernel"][layer])
    c = _ada(before)
    np.testing.assert_allclose(w @ w.T, c * np.eye(4), atol=TOL * c)
    np.testing.assert_allclose(w, np.sqrt(c) * _polar(before), atol=TOL * c)
  assert _error(out, "ada", dimension_numbers=dims) < TOL


_NON_FINITE = """
import sys
import jax, jax.numpy as jnp, numpy as np, bort_jax
bad = float(sys.argv[1])
kernel = jnp.stack([jnp.eye(6, 4) * 2.0 + 0.1,
                    jnp.ones((6, 4)).at[0, 0].set(bad)])
dims = {"kernel": bort_jax.BortDimensionNumbers(batch_axis=0)}
project = lambda p: bort_jax.project_to_constraint(p, dimension_numbers=dims)
for out in (project({"kernel": kernel}), jax.jit(project)({"kernel": kernel})):
  good, stalled = np.asarray(out["kernel"][0]), np.asarray(out["kernel"][1])
  print(bool(np.isnan(stalled).all()),
        float(np.abs(good.T @ good - good[:, 0] @ good[:, 0] * np.eye(4)).max()))
"""


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
def test_a_non_finite_matrix_comes_back_nan_its_neighbours_projected(bad):
  # An infinity stalled LAPACK's SVD (the call never returned): run apart,
  # so that a stall fails here instead of hanging the suite.
  run = subprocess.run([sys.executable, "-c", _NON_FINITE, bad],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert len(lines) == 2, run.stdout  # eagerly, then under jit
  for line in lines:
    all_nan, error = line.split()
    assert all_nan == "True"
    assert float(error) < 1e-5  # the finite matrix beside it is projected


def test_stacked_nnx_layers_read_from_the_module():
  @nnx.vmap(in_axes=0, out_axes=0)
  def stack(key):
    return nnx.Linear(6, 4, rngs=nnx.Rngs(key))

  layers = stack(jax.random.split(jax.random.key(0), 3))
  params = nnx.state(layers, nnx.Param)
  out = bort_jax.project_to_constraint(params, 0.5, dimension_numbers=layers)
  nnx.update(layers, out)
  kernel = np.asarray(layers.kernel[...], np.float64)
  for layer in range(3):
    np.testing.assert_allclose(kernel[layer].T @ kernel[layer],
                               0.5 * np.eye(4), atol=TOL)


def test_explicit_dimension_numbers_for_an_out_in_weight():
  weight = _uneven_kernel((6, 4)).T  # PyTorch layout (out=4, in=6)
  w0 = np.asarray(weight, np.float64)
  dims = {"weight": bort_jax.BortDimensionNumbers(output_axis=0)}
  out = bort_jax.project_to_constraint({"weight": weight},
                                       dimension_numbers=dims)
  w = np.asarray(out["weight"], np.float64)
  c = _ada(w0)
  np.testing.assert_allclose(w @ w.T, c * np.eye(4), atol=TOL * c)
  np.testing.assert_allclose(w, np.sqrt(c) * _polar(w0), atol=TOL * c)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
def test_projection_is_the_nearest_point_on_the_constraint(shape):
  kernel = _normal(shape, seed=1)
  out = bort_jax.project_to_constraint({"kernel": kernel}, 2.0)["kernel"]
  want = np.sqrt(2.0) * _polar(_units(kernel))
  np.testing.assert_allclose(_units(out), want, atol=TOL)
  # Any other feasible point (a rotation of it) is further from the start.
  rotation = _polar(_normal((shape[-1], shape[-1]), seed=2))
  other = rotation @ want if shape[-1] <= shape[0] else want @ _polar(
      _normal((shape[0], shape[0]), seed=2))
  start = _units(kernel)
  assert (np.linalg.norm(start - _units(out))
          < np.linalg.norm(start - other))


def test_non_bort_leaves_are_untouched():
  params = {
      "dense": {"kernel": _normal((8, 4)), "bias": _normal((4,), 1)},
      "norm": {"scale": _normal((4,), 2)},
      "embed": {"embedding": _normal((10, 4), 3)},
  }
  out = bort_jax.project_to_constraint(params, 0.5)
  for path in (("dense", "bias"), ("norm", "scale"), ("embed", "embedding")):
    assert out[path[0]][path[1]] is params[path[0]][path[1]]
  assert not np.allclose(out["dense"]["kernel"], params["dense"]["kernel"])


@pytest.mark.parametrize("callable_mask", [False, True])
def test_bort_mask_excludes_leaves(callable_mask):
  params = {"a": {"kernel": _normal((8, 4))},
            "b": {"kernel": _normal((8, 4), 1)}}
  mask = {"a": True, "b": {"kernel": False}}  # a prefix, as optax.masked
  out = bort_jax.project_to_constraint(
      params, 0.5, bort_mask=(lambda p: mask) if callable_mask else mask)
  assert out["b"]["kernel"] is params["b"]["kernel"]
  w = _units(out["a"]["kernel"])
  np.testing.assert_allclose(w @ w.T, 0.5 * np.eye(4), atol=TOL)


def test_nnx_state_under_a_mask_keeps_its_structure():
  model = nnx.Sequential(nnx.Linear(8, 4, rngs=nnx.Rngs(0)),
                         nnx.Linear(4, 4, rngs=nnx.Rngs(1)))
  params = nnx.state(model, nnx.Param)
  before = np.asarray(model.layers[1].kernel[...])
  # A callable over the tree that arrives (an nnx.State of Variables).
  mask = lambda p: jax.tree_util.tree_map_with_path(  # noqa: E731
      lambda path, _: path[1].key == 0, p)
  nnx.update(model, bort_jax.project_to_constraint(params, 0.5,
                                                   bort_mask=mask))
  first = np.asarray(model.layers[0].kernel[...], np.float64)
  np.testing.assert_allclose(first.T @ first, 0.5 * np.eye(4), atol=TOL)
  np.testing.assert_array_equal(model.layers[1].kernel[...], before)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_leaves_keep_their_dtype(dtype):
  params = {"kernel": _normal((8, 4)).astype(dtype), "bias": jnp.ones(4, dtype)}
  out = bort_jax.project_to_constraint(params, 0.5)
  assert out["kernel"].dtype == dtype
  assert out["bias"].dtype == dtype
  # Within the dtype's rounding of a float32 projection.
  want = bort_jax.project_to_constraint(
      {"kernel": params["kernel"].astype(jnp.float32)}, 0.5)["kernel"]
  np.testing.assert_allclose(np.asarray(out["kernel"], np.float32), want,
                             atol=float(jnp.finfo(dtype).eps))


@pytest.mark.slow
def test_training_from_the_projected_start_stays_on_the_constraint():
  x = _normal((64, 16), seed=4, scale=1.0)
  target = x @ _normal((16, 8), seed=5)
  init = {"dense": {"kernel": _normal((16, 8), seed=6, scale=1.0),
                    "bias": jnp.zeros(8)}}
  # l1-fullrow, amplitude "ada"; without the optimizer's own start, which
  # tests/core/test_start_on_constraint.py covers.
  tx = bort_jax.bort_adamw(1e-3, start_on_constraint=False)

  def loss(params):
    pred = x @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean(jnp.square(pred - target))

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def train(params):
    state = tx.init(params)
    for _ in range(50):
      params, state = step(params, state)
    return _error(params, "ada")

  default = train(init)
  projected = train(bort_jax.project_to_constraint(init))
  # Measured: 0.0033 against 0.56, a ratio of 0.006.
  assert projected < 0.05 * default, (projected, default)


def test_jit_gives_the_same_result():
  params = {"dense": {"kernel": _uneven_kernel((8, 4)), "bias": jnp.ones(4)},
            "conv": {"kernel": _normal((3, 3, 2, 4), 1)}}
  jitted = jax.jit(bort_jax.project_to_constraint,
                   static_argnames=("amplitude",))
  traced_c = jax.jit(lambda p, c: bort_jax.project_to_constraint(p, c))
  for amplitude in ("ada", 0.5):
    want = bort_jax.project_to_constraint(params, amplitude)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 jitted(params, amplitude=amplitude), want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               traced_c(params, 0.5),
               bort_jax.project_to_constraint(params, 0.5))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 simulated devices")
@pytest.mark.slow
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_params_are_projected_under_jit(axis_type):
  params = {"dense": {"kernel": _normal((64, 32))},
            "conv": {"kernel": _normal((3, 3, 8, 16), 1)}}
  want = bort_jax.project_to_constraint(params, 0.5)
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
  specs = {"dense": {"kernel": P("data", "model")},
           "conv": {"kernel": P(None, None, "data", "model")}}
  with jax.set_mesh(mesh):
    sharded = jax.device_put(
        params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    got = jax.jit(bort_jax.project_to_constraint,
                  static_argnames=("amplitude",))(sharded, amplitude=0.5)
    eager = bort_jax.project_to_constraint(sharded, 0.5)
  for result in (got, eager):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-6),
        result, want)
  # Eagerly, and under Explicit sharding, every leaf keeps its placement.
  keeps = [eager] + ([got] if axis_type == AxisType.Explicit else [])
  for result in keeps:
    assert result["dense"]["kernel"].sharding.spec == specs["dense"]["kernel"]
    assert result["conv"]["kernel"].sharding.spec == specs["conv"]["kernel"]


@pytest.mark.parametrize("amplitude", [0, -1.0, float("nan"), float("inf"),
                                       1e300, "max", True, [1.0, 2.0]])
def test_bad_amplitude_is_refused_in_one_line(amplitude):
  with pytest.raises(ValueError, match="amplitude must be a positive") as e:
    bort_jax.project_to_constraint({"kernel": jnp.eye(2)}, amplitude)
  assert "\n" not in str(e.value)
  # The fix it offers is one this function takes (no schedule).
  assert "schedule" not in str(e.value)


def test_schedule_amplitude_is_refused():
  with pytest.raises(TypeError, match="amplitude must be a positive number"):
    bort_jax.project_to_constraint({"kernel": jnp.eye(2)},
                                   optax.constant_schedule(1.0))


def test_non_floating_bort_leaf_is_refused_naming_it():
  params = {"dense": {"kernel": jnp.ones((4, 3), jnp.int32)}}
  with pytest.raises(ValueError, match="'dense/kernel' has dtype int32"):
    bort_jax.project_to_constraint(params)


def test_dimension_numbers_that_do_not_fit_are_refused():
  dims = {"kernel": bort_jax.BortDimensionNumbers(output_axis=5)}
  with pytest.raises(ValueError, match="out of range"):
    bort_jax.project_to_constraint({"kernel": jnp.eye(2)},
                                   dimension_numbers=dims)


def test_nothing_selected_warns_and_returns_the_tree():
  params = {"bias": jnp.ones(3)}
  with pytest.warns(UserWarning, match="selects no parameter"):
    out = bort_jax.project_to_constraint(params)
  assert out["bias"] is params["bias"]


def test_an_uncommitted_leaf_stays_uncommitted_and_a_committed_one_placed():
  # A committed projection beside uncommitted leaves made a jitted step
  # compile again for each mix of the two.
  params = {"kernel": jnp.ones((4, 3)) + jnp.eye(4, 3)}
  assert not bort_jax.project_to_constraint(params)["kernel"].committed
  placed = {"kernel": jax.device_put(params["kernel"], jax.devices()[0])}
  assert bort_jax.project_to_constraint(placed)["kernel"].committed


def _svd_polar(w):
  """``U Vᵀ`` through the SVD's own derivative (JAX's)."""
  u, _, vh = jnp.linalg.svd(w, full_matrices=False)
  return u @ vh


@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (5, 5), (2, 3, 6)])
def test_the_polar_factor_s_derivative_is_the_svd_s_where_both_are_defined(
    shape):
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    w = jnp.asarray(rng.normal(size=shape))  # distinct singular values
    dw = jnp.asarray(rng.normal(size=shape))
    ours = jax.jvp(polar_factor, (w,), (dw,))
    jax_s = jax.jvp(_svd_polar, (w,), (dw,))
    np.testing.assert_allclose(ours[0], jax_s[0], atol=1e-12)
    np.testing.assert_allclose(ours[1], jax_s[1], atol=1e-10)
    check_grads(polar_factor, (w,), order=1,
                              modes=("fwd", "rev"))


@pytest.mark.parametrize("transpose", [False, True])
def test_the_polar_factor_s_derivative_holds_at_repeated_singular_values(
    transpose):
  # An orthogonal matrix: every singular value is 1, where the SVD's own
  # derivative of U Vᵀ was NaN or wrong (on jax 0.10, CPU); the closed form
  # is the finite difference's.
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    q = jnp.asarray(np.linalg.qr(rng.normal(size=(6, 6)))[0][:4])
    q = q.T if transpose else q
    dq = jnp.asarray(rng.normal(size=q.shape))
    eps = 1e-6
    fd = (polar_factor(q + eps * dq) - polar_factor(q - eps * dq)) / (2 * eps)
    np.testing.assert_allclose(jax.jvp(polar_factor, (q,), (dq,))[1], fd,
                               atol=1e-8)
    check_grads(polar_factor, (q,), order=1,
                              modes=("fwd", "rev"))


def test_a_gradient_through_the_start_from_an_orthogonal_kernel_is_defined():
  # Meta-learning differentiates a loss after the optimizer's step. An
  # orthogonal kernel and a zero first update (a warm-up from learning rate
  # 0) put the start's SVD at repeated singular values: the gradient was
  # NaN there; it is now the finite difference's, as it is off them.
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    orthogonal = jnp.asarray(np.linalg.qr(rng.normal(size=(8, 8)))[0][:, :5])
    x = jnp.asarray(rng.normal(size=(16, 8)))
    direction = jnp.asarray(rng.normal(size=(8, 5)))
    tx = bort_jax.bort_adamw(optax.constant_schedule(0.0), amplitude=1.0)

    def after_the_first_step(kernel):
      params = {"kernel": kernel}
      updates, _ = tx.update({"kernel": jnp.zeros_like(kernel)},
                             tx.init(params), params)
      new = optax.apply_updates(params, updates)["kernel"]
      return jnp.sum(jnp.sin(x @ new))

    for kernel in (orthogonal, orthogonal + 0.3 * direction[::-1]):
      grad = jax.grad(after_the_first_step)(kernel)
      eps = 1e-6
      fd = (after_the_first_step(kernel + eps * direction)
            - after_the_first_step(kernel - eps * direction)) / (2 * eps)
      np.testing.assert_allclose(jnp.sum(grad * direction), fd, rtol=1e-6)

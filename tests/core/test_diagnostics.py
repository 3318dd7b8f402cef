"""orthogonality_error and the parameter view against NumPy."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax
from bort_jax._src.dimension_numbers import matrix_view


def _numpy_error(w, c=None):
  w = np.asarray(w, np.float64)
  if w.shape[0] > w.shape[1]:
    w = w.T
  gram = w @ w.T
  k = gram.shape[0]
  c = np.mean(np.diag(gram)) if c is None else c
  constraint = np.linalg.norm(gram - c * np.eye(k)) / (c * np.sqrt(k))
  norms = np.sqrt(np.diag(gram))
  cosine = gram / np.outer(norms, norms)
  max_cosine = np.max(np.abs(cosine - np.diag(np.diag(cosine))))
  return constraint, max_cosine, np.std(norms) / np.mean(norms)


@pytest.mark.parametrize("shape", [(3, 8), (8, 3), (5, 5)])
@pytest.mark.parametrize("c", [None, 0.5])
def test_matrix_error_matches_numpy(shape, c):
  w = np.random.default_rng(0).normal(size=shape)
  got = bort_jax.matrix_orthogonality_error(jnp.asarray(w, jnp.float32), c)
  np.testing.assert_allclose(got, _numpy_error(w, c), rtol=1e-4)


def test_exact_bounded_orthogonal_matrix_has_zero_error():
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(9, 4)))
  w = 1.5 * q.T  # 4 orthogonal rows of norm² 2.25
  got = bort_jax.matrix_orthogonality_error(jnp.asarray(w, jnp.float32), 2.25)
  np.testing.assert_allclose(got, 0.0, atol=1e-6)
  assert float(bort_jax.matrix_orthogonality_error(
      jnp.asarray(w, jnp.float32), 1.0).constraint_error) > 0.5


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, 1e30])
@pytest.mark.parametrize("amplitude", [None, "ada", 1.0])
def test_weights_that_are_not_finite_read_as_not_finite(bad, amplitude):
  # A diverged layer must not look like an error of 1 with no spread (what
  # the zero matrix gives): NaN and overflow propagate.
  w = jnp.eye(3).at[0, 1].set(bad)
  error = bort_jax.matrix_orthogonality_error(w, amplitude)
  assert not np.isfinite(float(error.constraint_error))
  assert not np.isfinite(float(error.norm_spread))
  errors = bort_jax.orthogonality_error(
      {"good": {"kernel": jnp.eye(3)}, "bad": {"kernel": w}}, amplitude)
  assert not np.isfinite(float(
      bort_jax.mean_orthogonality_error(errors).constraint_error))
  zero = bort_jax.matrix_orthogonality_error(jnp.zeros((3, 3)), amplitude)
  assert float(zero.constraint_error) == 1.0
  assert float(zero.norm_spread) == 0.0


def test_orthogonality_error_of_a_flax_model_is_jittable():
  model = nnx.Sequential(nnx.Linear(4, 6, rngs=nnx.Rngs(0)),
                         nnx.Conv(6, 3, (3,), rngs=nnx.Rngs(1)))
  params = nnx.state(model, nnx.Param)
  errors = jax.jit(bort_jax.orthogonality_error)(params)
  assert sorted(errors) == ["layers/0/kernel", "layers/1/kernel"]
  kernel = np.asarray(model.layers[1].kernel[...])  # (3, 6, 3)
  np.testing.assert_allclose(
      errors["layers/1/kernel"], _numpy_error(kernel.reshape(-1, 3).T),
      rtol=1e-4)
  summary = bort_jax.mean_orthogonality_error(errors)
  np.testing.assert_allclose(
      summary.constraint_error,
      np.mean([e.constraint_error for e in errors.values()]), rtol=1e-6)


def test_matrix_view_round_trips_and_orders_axes():
  x = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
  dims = bort_jax.BortDimensionNumbers(reduction_axis=(1, 3), output_axis=2)
  view = matrix_view(x.shape, dims)
  assert view.matrix_shape == (2, 4, 15)
  w = view.to_matrices(x)
  np.testing.assert_array_equal(w[1, 2], np.asarray(x)[1, :, 2, :].ravel())
  np.testing.assert_array_equal(view.from_matrices(w), x)


def test_a_module_is_measured_by_its_module_types():
  # Given the model itself, its types were ignored: a grouped conv whose two
  # groups each hold two identical units (cosine 1) measured as perfectly
  # orthogonal, one 4-unit matrix on 2 inputs (its WᵀW is diagonal).
  class Model(nnx.Module):
    def __init__(self):
      self.conv = nnx.Conv(4, 4, (1, 1), feature_group_count=2,
                           use_bias=False, rngs=nnx.Rngs(0))

  model = Model()
  kernel = np.zeros((1, 1, 2, 4), np.float32)  # (kh, kw, in/groups, out)
  kernel[0, 0, 0, :2] = kernel[0, 0, 1, 2:] = 1.0
  model.conv.kernel[...] = jnp.asarray(kernel)
  state = nnx.state(model, nnx.Param)
  tree = bort_jax.orthogonality_error(state)["conv/kernel"]
  assert float(tree.constraint_error) == 0.0  # what the tree alone can see
  got = bort_jax.orthogonality_error(model)["conv/kernel"]
  assert float(got.constraint_error) == 1.0 and float(got.max_cosine) == 1.0
  # Explicit dimension numbers still win.
  same = bort_jax.orthogonality_error(
      model, dimension_numbers=bort_jax.BortDimensionNumbers())["conv/kernel"]
  assert float(same.constraint_error) == 0.0

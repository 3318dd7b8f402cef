"""The closed-form corrections against jax.grad of their penalties."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax
from bort_jax._src.penalty import KernelOptions
from tests.core import reference

SHAPES = {
    "wide": (3, 7),
    "square": (5, 5),
    "tall": (8, 3),
    "conv": (16, 3 * 3 * 4),  # a (3, 3, 4, 16) conv kernel seen as a matrix
    "stacked": (2, 3, 4, 6),  # two batch axes
}


def _random(shape, seed=0, dtype=np.float64):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype) * 0.6


def _reference(w, mode, c, tau=0.01):
  """reference.correction, plus the Huber modes from their formula."""
  if not mode.startswith("huber-"):
    return reference.correction(w, mode, c)
  w = np.asarray(w, np.float64)
  if mode == "huber-fullrow" and w.shape[0] <= w.shape[1]:
    residual = w @ w.T - c * np.eye(w.shape[0])
    return np.clip(residual / (tau * c), -1, 1) @ w
  residual = w.T @ w - c * np.eye(w.shape[1])
  return w @ np.clip(residual / (tau * c), -1, 1)


@pytest.mark.parametrize("mode", bort_jax.MODES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("amplitude", [1.0, 0.3, "ada"])
def test_correction_is_gradient_of_penalty(mode, shape, amplitude):
  with jax.enable_x64(True):
    w = jnp.asarray(_random(shape))
    delta = bort_jax.bort_correction(w, mode, amplitude)
    grad = jax.grad(bort_jax.bort_penalty)(w, mode, amplitude)
    assert delta.dtype == jnp.float64 and delta.shape == w.shape
    np.testing.assert_allclose(delta, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", bort_jax.MODES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_correction_matches_numpy_reference(mode, shape):
  w = _random(shape, seed=1)
  matrices = w.reshape(-1, *shape[-2:])
  expected = np.stack([_reference(x, mode, 0.7) for x in matrices])
  with jax.enable_x64(True):
    delta = bort_jax.bort_correction(jnp.asarray(w), mode, 0.7)
  np.testing.assert_allclose(delta, expected.reshape(shape), rtol=1e-10,
                             atol=1e-12)


def test_ada_amplitude_is_squared_mean_row_norm():
  w = _random((2, 4, 5), seed=2)
  expected = np.mean(np.linalg.norm(w, axis=-1), axis=-1) ** 2
  with jax.enable_x64(True):
    np.testing.assert_allclose(bort_jax.ada_amplitude(jnp.asarray(w)),
                               expected, rtol=1e-12)
    # "ada" is a per-matrix constant: each batch element uses its own c.
    delta = bort_jax.bort_correction(jnp.asarray(w), "l2-full", "ada")
  for i in range(2):
    np.testing.assert_allclose(
        delta[i], reference.correction(w[i], "l2-full", expected[i]),
        rtol=1e-10)


@pytest.mark.parametrize("mode", ["l1-fullrow", "l1-fullcol"])
@pytest.mark.parametrize("block_size", [1, 2, 3, 64])
def test_blockwise_l1_equals_direct(mode, block_size):
  with jax.enable_x64(True):
    w = jnp.asarray(_random((2, 7, 5), seed=3))
    direct = bort_jax.bort_correction(
        w, mode, "ada", kernel_options=KernelOptions(block_size=None))
    blocked = bort_jax.bort_correction(
        w, mode, "ada", kernel_options=KernelOptions(block_size=block_size))
    np.testing.assert_allclose(blocked, direct, rtol=1e-12, atol=1e-12)


def test_reduced_precision_gram_is_close():
  w = jnp.asarray(_random((64, 256), seed=4, dtype=np.float32)) / 8
  exact = bort_jax.bort_correction(w, "l2-full",
                                   kernel_options=KernelOptions(precision="highest"))
  low = bort_jax.bort_correction(
      w, "l2-full", kernel_options=KernelOptions(gram_dtype=jnp.bfloat16))
  assert low.dtype == jnp.float32
  error = jnp.linalg.norm(low - exact) / jnp.linalg.norm(exact)
  assert 0 < error < 2e-2  # bf16 inputs: visibly different, still close


@pytest.mark.slow
@hypothesis.settings(deadline=None, max_examples=25, derandomize=True)
@hypothesis.given(
    m=st.integers(1, 7),
    n=st.integers(1, 7),
    batch=st.lists(st.integers(1, 3), max_size=2),
    mode=st.sampled_from(bort_jax.MODES),
    dtype=st.sampled_from(["float32", "bfloat16", "float64"]),
    amplitude=st.sampled_from([1.0, 2.5, "ada"]),
    seed=st.integers(0, 2**16),
)
def test_property_correction_round_trips_and_is_gradient(
    m, n, batch, mode, dtype, amplitude, seed):
  shape = (*batch, m, n)
  with jax.enable_x64(True):
    w = jnp.asarray(_random(shape, seed), dtype=dtype)
    delta = bort_jax.bort_correction(w, mode, amplitude)
    assert delta.shape == w.shape and delta.dtype == w.dtype
    grad = jax.grad(bort_jax.bort_penalty)(w, mode, amplitude)
    assert grad.dtype == w.dtype
    # Compare in float64 against the gradient of the same (upcast) weights.
    w64 = w.astype(jnp.float64)
    expected = jax.grad(bort_jax.bort_penalty)(w64, mode, amplitude)
    tol = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 2e-2}[dtype]
    scale = 1.0 + float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(delta.astype(jnp.float64), expected,
                               atol=tol * scale, rtol=tol)
    np.testing.assert_allclose(grad.astype(jnp.float64), expected,
                               atol=tol * scale, rtol=tol)


def test_unknown_mode_lists_valid_modes():
  with pytest.raises(ValueError, match="l2-full, l2-row.*l1-col"):
    bort_jax.bort_correction(jnp.ones((2, 2)), "l3-full")


def test_vector_is_not_a_matrix():
  with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
    bort_jax.bort_correction(jnp.ones(3))


@pytest.mark.parametrize("mode", bort_jax.MODES)
@pytest.mark.parametrize("amplitude", [0.7, "ada"])
@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (2, 7, 20)],
                         ids=["conv-2d", "conv-1d"])
def test_fan_in_contracted_in_place_equals_the_matrix_view(mode, amplitude,
                                                           shape):
  from bort_jax._src import penalty
  with jax.enable_x64(True):
    x = jnp.asarray(_random(shape, seed=7))
    reduction = tuple(range(len(shape) - 1))
    matrix = x.reshape(-1, shape[-1])  # Flax layout (fan_in, out)
    want = penalty.correction(matrix[None], mode, amplitude,
                              KernelOptions(), units=penalty.COLS)[0]
    options = KernelOptions()
    if penalty.corrects_in_place(mode, shape, reduction, (len(shape) - 1,),
                                 options):
      got = penalty.correction_over_axes(x, mode, amplitude, options,
                                         reduction, len(shape) - 1)
      np.testing.assert_allclose(got.reshape(matrix.shape), want,
                                 rtol=1e-12, atol=1e-12)
    else:
      # The fan-in's Gram: the col modes', and the full modes' on more
      # units than fan-in.
      assert mode in ("l1-fullcol", "huber-fullcol") or (
          mode in ("l2-full", "l1-fullrow", "huber-fullrow")
          and shape[-1] > np.prod(shape[:-1]))
    # Through the transform, whichever path it takes.
    np.testing.assert_allclose(
        bort_jax.tree_correction({"kernel": x}, mode, amplitude)[
            "kernel"].reshape(matrix.shape), want, rtol=1e-12, atol=1e-12)


# ---- N10: only real floating weights ---------------------------------------

_NOT_REAL_FLOATING = {
    "int32": jnp.array([[2, 0], [0, 1]], jnp.int32),
    "bool": jnp.array([[True, False], [False, True]]),
    "complex64": jnp.array([[2.0, 1j], [0.0, 1.0]], jnp.complex64),
}


def _cast_fix(dtype):
  return rf"got dtype {dtype}; cast .* w\.astype\(jnp\.float32\)"


@pytest.mark.parametrize("mode", ["l2-full", "l1-fullrow", "huber-fullrow"])
@pytest.mark.parametrize("dtype", _NOT_REAL_FLOATING)
def test_n10_bort_correction_refuses_int_bool_complex(dtype, mode):
  with pytest.raises(TypeError, match=_cast_fix(dtype)):
    bort_jax.bort_correction(_NOT_REAL_FLOATING[dtype], mode)


@pytest.mark.parametrize("dtype", _NOT_REAL_FLOATING)
def test_n10_bort_penalty_refuses_int_bool_complex(dtype):
  with pytest.raises(TypeError, match=_cast_fix(dtype)):
    bort_jax.bort_penalty(_NOT_REAL_FLOATING[dtype])


def test_n10_low_precision_floats_are_still_accepted():
  w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  for dtype in (jnp.bfloat16, jnp.float16):
    delta = bort_jax.bort_correction(w.astype(dtype))
    assert delta.dtype == dtype
    np.testing.assert_array_equal(delta.astype(jnp.float32),
                                  [[6.0, 0.0], [0.0, 0.0]])

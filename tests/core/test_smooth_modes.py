"""The Huber (smooth l1) modes: gradient of their penalty, their two limits,
their fixed point, and a correction-only descent onto the constraint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bort_jax
from bort_jax._src import penalty
from bort_jax._src.penalty import KernelOptions

HUBER = ("huber-fullrow", "huber-fullcol")
L1 = {"huber-fullrow": "l1-fullrow", "huber-fullcol": "l1-fullcol"}
SHAPES = {
    "wide": (3, 7),  # m < n
    "square": (5, 5),
    "tall": (8, 3),  # m > n
    "batched": (2, 3, 4, 6),
}


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape) * 0.6


def _residual(w, mode, c):
  """G − cI for the mode's side (rows: w wᵀ, columns: wᵀ w), batched."""
  if mode == "huber-fullrow":
    gram = w @ np.swapaxes(w, -1, -2)
  else:
    gram = np.swapaxes(w, -1, -2) @ w
  return gram - c * np.eye(gram.shape[-1])


def _near_orthogonal(mode, shape, offset, seed=0):
  """A matrix whose Gram of the mode's side is I + E with ‖E‖_max ≈ offset.

  Orthonormal vectors on the smaller side, then each vector rescaled by
  a factor within ±offset/2 of 1 and mixed by a small random rotation.
  """
  rng = np.random.default_rng(seed)
  m, n = shape
  q, _ = np.linalg.qr(rng.normal(size=(max(m, n), min(m, n))))
  w = q.T if m <= n else q  # orthonormal rows (m ≤ n) or columns (m > n)
  k = min(m, n)
  mix = np.eye(k) + offset / 2 * rng.uniform(-1, 1, size=(k, k))
  return mix @ w if m <= n else w @ mix.T


@pytest.mark.parametrize("mode", HUBER)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("amplitude", [0.3, "ada"])
@pytest.mark.parametrize("tau", [0.01, 2.0])
def test_huber_correction_is_gradient_of_its_penalty(mode, shape, amplitude,
                                                    tau):
  with jax.enable_x64(True):
    w = jnp.asarray(_random(shape))
    delta = bort_jax.bort_correction(w, mode, amplitude, tau=tau)
    grad = jax.grad(bort_jax.bort_penalty)(w, mode, amplitude, tau=tau)
    assert delta.dtype == jnp.float64 and delta.shape == w.shape
    np.testing.assert_allclose(delta, grad, rtol=1e-10, atol=1e-12)
    # Both branches of the Huber function are exercised at tau = 2.
    if tau == 2.0 and amplitude == 0.3:
      size = np.abs(_residual(np.asarray(w), mode, 0.3))
      assert np.any(size < 0.6) and np.any(size > 0.6)


@pytest.mark.parametrize("mode", HUBER)
def test_huber_penalty_is_half_the_sum_of_huber_of_the_residual(mode):
  with jax.enable_x64(True):
    w = _random((4, 6), seed=1)
    tau, c = 0.3, 0.8
    r = np.abs(_residual(w, mode, c))
    width = tau * c
    huber = np.where(r <= width, r**2 / (2 * width), r - width / 2)
    got = bort_jax.bort_penalty(jnp.asarray(w), mode, c, tau=tau)
    np.testing.assert_allclose(got, 0.5 * huber.sum(), rtol=1e-12)


@pytest.mark.parametrize("mode", HUBER)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_huber_tends_to_l1_full_as_tau_tends_to_zero(mode, shape):
  tau = 1e-9
  with jax.enable_x64(True):
    w = _random(shape, seed=2)
    # Every residual entry is farther than τ from 0: the slope is the sign.
    assert np.min(np.abs(_residual(w, mode, 0.7))) > 1e3 * tau * 0.7
    huber = bort_jax.bort_correction(jnp.asarray(w), mode, 0.7, tau=tau)
    l1 = bort_jax.bort_correction(jnp.asarray(w), L1[mode], 0.7)
    np.testing.assert_allclose(huber, l1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode, shape", [("huber-fullrow", (4, 9)),
                                         ("huber-fullcol", (9, 4))])
@pytest.mark.parametrize("amplitude", [1.0, 2.5])
def test_huber_near_the_constraint_is_l2_full_over_tau(mode, shape,
                                                       amplitude):
  tau = 0.05
  with jax.enable_x64(True):
    w = np.sqrt(amplitude) * _near_orthogonal(mode, shape, offset=0.01)
    residual = _residual(w, mode, amplitude)
    assert 0 < np.max(np.abs(residual)) < tau * amplitude  # inside the band
    huber = bort_jax.bort_correction(jnp.asarray(w), mode, amplitude,
                                     tau=tau)
    l2 = bort_jax.bort_correction(jnp.asarray(w), "l2-full", amplitude)
    np.testing.assert_allclose(huber, l2 / (tau * amplitude), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("mode", HUBER)
@pytest.mark.parametrize("amplitude", [1.0, 3.0, "ada"])
def test_huber_correction_vanishes_at_an_orthogonal_matrix(mode, amplitude):
  with jax.enable_x64(True):
    c = 3.0 if amplitude == "ada" else amplitude
    # ada's c is the units' mean squared norm: square, so that rows and
    # columns alike have norm² c.
    side = {"huber-fullrow": (4, 6), "huber-fullcol": (6, 4)}[mode]
    side = (5, 5) if amplitude == "ada" else side
    w = np.sqrt(c) * _near_orthogonal(mode, side, offset=0.0)
    delta = bort_jax.bort_correction(jnp.asarray(w), mode, amplitude)
    np.testing.assert_allclose(delta, 0.0, atol=1e-12)
    # So is l1-full: the rounding of G − cI leaves entries of either sign,
    # which its rounding zone reads as 0 (a sign of them is noise).
    l1 = bort_jax.bort_correction(jnp.asarray(w), L1[mode], amplitude)
    np.testing.assert_array_equal(l1, 0.0)


@pytest.mark.parametrize("mode", HUBER)
def test_huber_ada_uses_the_squared_mean_row_norm(mode):
  with jax.enable_x64(True):
    w = _random((2, 4, 5), seed=3)
    c = np.mean(np.linalg.norm(w, axis=-1), axis=-1) ** 2
    ada = bort_jax.bort_correction(jnp.asarray(w), mode, "ada", tau=0.2)
    for i in range(2):
      fixed = bort_jax.bort_correction(jnp.asarray(w[i]), mode, c[i],
                                       tau=0.2)
      np.testing.assert_allclose(ada[i], fixed, rtol=1e-12, atol=1e-12)
    # And ada's c (hence τ) is a constant of the penalty's gradient.
    grad = jax.grad(bort_jax.bort_penalty)(jnp.asarray(w), mode, "ada",
                                           tau=0.2)
    np.testing.assert_allclose(ada, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", HUBER)
@pytest.mark.parametrize("block_size", [1, 2, 3, 64])
def test_huber_blocked_large_gram_equals_direct(mode, block_size):
  with jax.enable_x64(True):
    w = jnp.asarray(_random((2, 7, 5), seed=4))
    direct = bort_jax.bort_correction(
        w, mode, "ada", tau=0.3, kernel_options=KernelOptions(block_size=None))
    blocked = bort_jax.bort_correction(
        w, mode, "ada", tau=0.3,
        kernel_options=KernelOptions(block_size=block_size))
    np.testing.assert_allclose(blocked, direct, rtol=1e-12, atol=1e-12)
    # Not trivially equal to the l1 result: the band is in use.
    l1 = bort_jax.bort_correction(w, L1[mode], "ada")
    assert float(jnp.max(jnp.abs(direct - l1))) > 1e-2


@pytest.mark.parametrize("amplitude", [0.7, "ada"])
def test_huber_fullrow_over_several_fan_in_axes_equals_the_matrix_view(
    amplitude):
  with jax.enable_x64(True):
    x = jnp.asarray(_random((3, 3, 4, 5), seed=5))  # a conv (kh, kw, in, out)
    reduction = (0, 1, 2)
    options = KernelOptions()
    assert penalty.corrects_in_place("huber-fullrow", x.shape, reduction,
                                     (3,), options)
    got = penalty.correction_over_axes(x, "huber-fullrow", amplitude,
                                       options, reduction, 3, tau=0.2)
    want = penalty.correction(x.reshape(1, -1, 5), "huber-fullrow",
                              amplitude, options, units=penalty.COLS,
                              tau=0.2)[0]
    np.testing.assert_allclose(got.reshape(-1, 5), want, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("mode, shape", [("huber-fullrow", (16, 48)),
                                         ("huber-fullcol", (48, 16))])
@pytest.mark.parametrize("amplitude", [1.0, 2.0])
def test_huber_descent_from_ten_percent_off_reaches_the_constraint(
    mode, shape, amplitude):
  """200 correction-only steps, float32: W ← W − lr Δ(W) lands on W Wᵀ = cI.

  With fixed c the limit must be the constraint at that c, not a drifted one;
  the same steps with l1-fullrow's sign keep jittering around it.
  """
  c = amplitude
  w0 = np.sqrt(c) * _near_orthogonal(mode, shape, offset=0.2, seed=6)
  start = np.max(np.abs(_residual(w0, mode, c))) / c
  assert start > 0.05  # about 10 % off
  lr = 0.005 / c  # below the stable step τ/c² of the linear band

  def descend(mode):
    def step(w, _):
      return w - lr * bort_jax.bort_correction(w, mode, c), None
    w, _ = jax.lax.scan(step, jnp.asarray(w0, jnp.float32), None, length=200)
    return np.asarray(w, np.float64)

  w = descend(mode)
  error = np.linalg.norm(_residual(w, mode, c)) / np.linalg.norm(
      c * np.eye(min(shape)))
  assert error < 1e-4
  # No drift in c: the mean squared vector norm is c itself.
  norms_sq = np.sum(w * w, axis=1 if mode == "huber-fullrow" else 0)
  np.testing.assert_allclose(np.mean(norms_sq), c, rtol=1e-4)
  l1 = descend(L1[mode])
  l1_error = np.linalg.norm(_residual(l1, mode, c)) / np.linalg.norm(
      c * np.eye(min(shape)))
  assert l1_error > 1e-3


@pytest.mark.parametrize("tau", [0.0, -0.01, float("nan"), float("inf"),
                                 1e300])
def test_huber_tau_must_be_finite_and_positive(tau):
  with pytest.raises(ValueError, match="tau"):
    bort_jax.bort_correction(jnp.eye(2), "huber-fullrow", tau=tau)
  with pytest.raises(ValueError, match="tau"):
    bort_jax.bort_penalty(jnp.eye(2), "huber-fullrow", tau=tau)


@pytest.mark.parametrize("tau", ["0.01", True, None, [0.01]])
def test_huber_tau_must_be_a_real_number(tau):
  with pytest.raises((TypeError, ValueError), match="tau must be a"):
    bort_jax.bort_correction(jnp.eye(2), "huber-fullrow", tau=tau)


def test_huber_of_a_zero_matrix_under_ada_is_zero_not_nan():
  # ada gives c = 0, hence τ = 0: the slope is then sign(G) = 0.
  for mode in HUBER:
    delta = bort_jax.bort_correction(jnp.zeros((3, 4)), mode, "ada")
    np.testing.assert_array_equal(delta, 0.0)
    grad = jax.grad(bort_jax.bort_penalty)(jnp.zeros((3, 4)), mode, "ada")
    np.testing.assert_array_equal(grad, 0.0)

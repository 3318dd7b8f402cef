"""Tests of DBort's linear case: the PCA claim (bort_jax._src.dbort_pca)."""

from __future__ import annotations

import functools

from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bort_jax._src import dbort_pca
from bort_jax._src.dbort import dbort_loss
from bort_jax._src.dbort import dbort_outputs
from bort_jax._src.dbort_pca import dbort_linear_optimizer
from bort_jax._src.dbort_pca import fit_dbort_linear
from bort_jax._src.dbort_pca import principal_cosines


# ----------------------------------------------------------------------------
# Data and references (float64 NumPy).


@functools.cache
def digits_standardised() -> np.ndarray:
  """sklearn's digits (1797, 64), centred and scaled to unit variance.

  The two constant pixels are left at zero (their std is 0).
  """
  from sklearn.datasets import load_digits

  x = load_digits().data.astype(np.float64)
  x = x - x.mean(axis=0)
  std = x.std(axis=0)
  return (x / np.where(std > 0, std, 1.0)).astype(np.float32)


@functools.cache
def gaussian_with_gap(n=3000, d=30, k=4, seed=0) -> np.ndarray:
  """Centred Gaussian data whose covariance has eigenvalues 8…5 | 1…0.2."""
  rng = np.random.default_rng(seed)
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  spectrum = np.concatenate([np.linspace(8, 5, k), np.linspace(1, 0.2, d - k)])
  x = rng.normal(size=(n, d)) * np.sqrt(spectrum) @ basis.T
  return (x - x.mean(axis=0)).astype(np.float32)


def pca_basis(x: np.ndarray, k: int) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return np.linalg.svd(x - x.mean(axis=0), full_matrices=False)[2][:k].T


def reconstruction_error(x: np.ndarray, kernel: np.ndarray, c: float) -> float:
  """Mean over samples of ‖x − Wᵀ W x / c‖² (Flax layout: x K Kᵀ / c)."""
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.float64)
  return float(np.mean(np.sum((x - x @ kernel @ kernel.T / c) ** 2, axis=1)))


# ----------------------------------------------------------------------------
# principal_cosines.


def test_principal_cosines_of_rotated_and_tilted_subspaces():
  rng = np.random.default_rng(4)
  basis, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  a = basis[:, :3]
  rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  np.testing.assert_allclose(principal_cosines(a @ rotation * 5, a), 1.0,
                             atol=1e-5)
  theta = 0.3  # tilt one direction out of the subspace
  b = a.copy()
  b[:, 2] = np.cos(theta) * a[:, 2] + np.sin(theta) * basis[:, 5]
  np.testing.assert_allclose(
      principal_cosines(a, b), [1.0, 1.0, np.cos(theta)], atol=1e-5
  )
  np.testing.assert_allclose(principal_cosines(a, basis[:, 3:]), 0.0,
                             atol=1e-5)
  with pytest.raises(ValueError, match="expects matrices"):
    principal_cosines(a, basis[:4])


def test_a_rank_deficient_matrix_spans_only_its_rank():
  # QR of a collapsed kernel invents directions (the zero matrix scored
  # [1, 1] against span(e1, e2)); its missing directions are cosines of 0.
  e12 = np.eye(6)[:, :2]
  np.testing.assert_array_equal(principal_cosines(np.zeros((6, 2)), e12),
                                [0.0, 0.0])
  np.testing.assert_array_equal(principal_cosines(e12, np.zeros((6, 2))),
                                [0.0, 0.0])
  # Two equal columns span one direction, at 1/sqrt(3) to span(e1, e2).
  np.testing.assert_allclose(principal_cosines(np.ones((6, 2)), e12),
                             [np.sqrt(1 / 3), 0.0], atol=1e-6)


# ----------------------------------------------------------------------------
# The PCA claim.


def _check_pca_claim(x, k, fit):
  basis = pca_basis(x, k)
  cosines = np.asarray(principal_cosines(fit.kernel, basis))
  assert cosines.min() >= 0.99, cosines
  centred = x - x.mean(axis=0)
  dbort_error = reconstruction_error(centred, fit.kernel, fit.amplitude)
  pca_error = reconstruction_error(centred, basis, 1.0)
  assert dbort_error <= 1.02 * pca_error, (dbort_error, pca_error)
  kernel = np.asarray(fit.kernel, np.float64)
  np.testing.assert_allclose(
      kernel.T @ kernel, fit.amplitude * np.eye(k), atol=1e-2
  )


def test_digits_standardised_converges_to_the_pca_subspace():
  x = digits_standardised()
  _check_pca_claim(x, 8, fit_dbort_linear(x, 8))


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_gaussian_with_eigengap_converges_at_any_scale(scale):
  x = gaussian_with_gap() * np.float32(scale)
  _check_pca_claim(x, 4, fit_dbort_linear(x, 4))


def test_uncentred_digits_with_center_true():
  from sklearn.datasets import load_digits

  x = load_digits().data.astype(np.float32)  # raw pixels 0…16, not centred
  fit = fit_dbort_linear(x, 8)
  np.testing.assert_allclose(fit.mean, x.mean(axis=0), rtol=1e-5)
  _check_pca_claim(x, 8, fit)


def test_fit_history_and_determinism():
  x = gaussian_with_gap()
  fit = fit_dbort_linear(x, 4, steps=200, seed=1)
  assert fit.steps == 200
  assert fit.history["energy"].shape == (200,)
  assert fit.history["orthogonality_error"].shape == (200,)
  np.testing.assert_allclose(fit.history["amplitude"][-1], fit.amplitude,
                             rtol=1e-3)
  # Orthogonal init: on the constraint at step 0; energy rises to the top-4.
  assert float(fit.history["orthogonality_error"][0]) < 1e-5
  assert float(fit.history["orthogonality_error"][-1]) < 1e-2
  top = np.linalg.eigvalsh(np.cov(x.T.astype(np.float64)))[::-1][:4].mean()
  np.testing.assert_allclose(fit.history["energy"][-1], top, rtol=1e-2)
  again = fit_dbort_linear(x, 4, steps=200, seed=1)
  np.testing.assert_array_equal(fit.kernel, again.kernel)


def test_compress_gives_the_same_training():
  """The second-moment root gives the same loss and gradients as the data."""
  x = gaussian_with_gap()[:500]
  full = fit_dbort_linear(x, 3, steps=50, compress=False)
  root = fit_dbort_linear(x, 3, steps=50, compress=True)
  np.testing.assert_allclose(root.kernel, full.kernel, atol=1e-4)
  np.testing.assert_allclose(
      root.history["energy"], full.history["energy"], rtol=1e-4
  )


def test_optimizer_compensates_weight_and_amplitude():
  """Only λ p · lr and γ · lr matter: the learned subspace is unchanged."""
  x = gaussian_with_gap()
  base = fit_dbort_linear(x, 4, steps=100)
  published = fit_dbort_linear(x, 4, steps=100, weight=1e-4)
  np.testing.assert_allclose(published.kernel, base.kernel, atol=1e-4)
  scaled = fit_dbort_linear(x, 4, steps=100, amplitude=4.0)
  np.testing.assert_allclose(scaled.kernel, 2.0 * base.kernel, atol=2e-4)


def test_nnx_optimizer_recipe_matches_fit():
  """The documented recipe: nnx.Optimizer + nnx.jit + dbort_outputs."""
  x = gaussian_with_gap()[:400]
  centred = x - x.mean(axis=0)
  steps = 30
  model = nnx.Linear(
      30, 4, use_bias=False,
      kernel_init=nnx.initializers.orthogonal(), rngs=nnx.Rngs(0),
  )
  optimizer = nnx.Optimizer(
      model, dbort_linear_optimizer(steps), wrt=nnx.Param
  )

  @nnx.jit
  def train_step(model, optimizer, batch):
    def loss_fn(model):
      _, outputs = dbort_outputs(model, batch)
      return dbort_loss(outputs, weight=1e4, power=1e-4)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(steps):
    train_step(model, optimizer, jnp.asarray(centred))
  fit = fit_dbort_linear(x, 4, steps=steps, compress=False)
  np.testing.assert_allclose(model.kernel[...], fit.kernel, atol=1e-5)


def test_optimizer_composes_with_optax_tools():
  tx = dbort_linear_optimizer(10)
  params = {"kernel": jnp.eye(5, 2)}
  grads = {"kernel": jnp.ones((5, 2))}
  direct, _ = tx.update(grads, tx.init(params), params)
  multi = optax.MultiSteps(dbort_linear_optimizer(10), every_k_schedule=1)
  via, _ = multi.update(grads, multi.init(params), params)
  np.testing.assert_allclose(via["kernel"], direct["kernel"], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be"),
        (dict(k=31), "k must be"),
        (dict(k=2.0), "k must be"),
        (dict(k=2, steps=0), "steps"),
        (dict(k=2, momentum=1.0), "momentum"),
        (dict(k=2, learning_rate=-1.0), "learning_rate"),
        (dict(k=2, constraint_step=0.0), "constraint_step"),
        (dict(k=2, constraint_step=3.0), "constraint_step"),  # NaN kernel
        (dict(k=2, final_fraction=2.0), "final_fraction"),
        (dict(k=2, amplitude=float("nan")), "amplitude"),
        (dict(k=2, power=0.0), "power"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fit_dbort_linear(gaussian_with_gap()[:50], **kwargs)


def test_fit_rejects_bad_data():
  with pytest.raises(ValueError, match=r"\(N, d\)"):
    fit_dbort_linear(np.ones(5), 1)
  bad = np.ones((4, 3))
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    fit_dbort_linear(bad, 1)


def test_fit_refuses_what_it_returned_silently():
  # One sample, constant rows: the loss is floored and its gradient zero,
  # so the random start came back as "the PCA"; complex data lost their
  # imaginary part; a learning rate of 100 returned a NaN kernel.
  for data in (np.ones((1, 3)), np.full((20, 3), 2.0)):
    with pytest.raises(ValueError, match="constant"):
      fit_dbort_linear(data, 1, steps=5)
  with pytest.raises(ValueError, match="real numeric data"):
    fit_dbort_linear(gaussian_with_gap()[:50] * 1j, 2, steps=5)
  with pytest.raises(FloatingPointError, match="diverged"):
    fit_dbort_linear(gaussian_with_gap()[:50], 2, steps=50,
                     learning_rate=100.0)
  for kwargs, match in ((dict(center="no"), "center"),
                        (dict(compress=1), "compress"),
                        (dict(seed=1.5), "seed"),
                        (dict(optimizer="adam"), "GradientTransformation")):
    with pytest.raises(TypeError, match=match):
      fit_dbort_linear(gaussian_with_gap()[:50], 2, steps=5, **kwargs)


def test_second_moment_root():
  x = np.random.default_rng(5).normal(size=(100, 7))
  root = dbort_pca._second_moment_root(x, chunk=16)
  np.testing.assert_allclose(root.T @ root / 7, x.T @ x / 100, atol=1e-10)


def test_fit_with_another_optimizer():
  """The published Bort-AdamW setting can be run through the same helper."""
  import bort_jax

  x = gaussian_with_gap()
  tx = bort_jax.bort_adamw(
      0.02, weight_decay=0.0, gamma=0.1, mode="l1-fullrow", amplitude="ada"
  )
  fit = fit_dbort_linear(x, 4, steps=20, optimizer=tx, weight=1e-4)
  assert fit.kernel.shape == (30, 4)
  assert fit.history["energy"].shape == (20,)
  kernel = np.asarray(fit.kernel, np.float64)
  np.testing.assert_allclose(
      fit.amplitude, np.mean(np.sum(kernel**2, axis=0)), rtol=1e-5
  )


@pytest.mark.parametrize("compress", [True, False])
def test_integer_data_are_centred_in_floating_point(compress):
  # Raw 8-bit pixels: centred in uint8, x − mean wrapped around 0..255 and
  # the fit found another subspace, silently (its returned mean was right).
  rng = np.random.default_rng(0)
  f = rng.normal(size=(600, 6)) * [30, 20, 4, 3, 2, 1]
  f = f @ np.linalg.qr(rng.normal(size=(6, 6)))[0] + 128
  x8 = np.clip(np.round(f), 0, 255).astype(np.uint8)
  centred = x8.astype(np.float64) - x8.mean(0)
  pca = np.linalg.svd(centred, full_matrices=False)[2][:2].T
  fit = dbort_pca.fit_dbort_linear(x8, 2, steps=300, compress=compress)
  assert float(np.min(dbort_pca.principal_cosines(fit.kernel, pca))) > 0.999


def test_bfloat16_data_fit_as_their_float32_values():
  # bfloat16 data were refused as "not numeric" (NumPy's issubdtype).
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(300, 5)) * [3.0, 2.0, 1.0, 0.5, 0.2],
                  jnp.bfloat16)
  low = dbort_pca.fit_dbort_linear(x, 2, steps=100)
  full = dbort_pca.fit_dbort_linear(np.asarray(x, np.float32), 2, steps=100)
  np.testing.assert_array_equal(low.kernel, full.kernel)

"""explain on well-kept parts: singledispatch inverses, Flax's own conv, trapezoid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bort_jax import explain
from bort_jax.dbort import DBort
from bort_jax.explain import inverses
from bort_jax.models import invertible


def _rngs():
  # RBG keys: initialisers compile several times faster on CPU than threefry.
  return nnx.Rngs(jax.random.key(0, impl="rbg"))


@nnx.jit
def invert_jitted(layer, y, x):
  return explain.invert_layer(layer, y, x)


def orthogonal_kernel(rng, window, cin, cout, scale=1.0):
  """A Flax conv kernel whose Bort matrix (cout × k²·cin) is orthogonal."""
  n = window[0] * window[1] * cin
  q, _ = np.linalg.qr(rng.normal(size=(max(n, cout), min(n, cout))))
  w = q.T if cout <= n else q  # rows (or columns) orthonormal
  return jnp.asarray(np.sqrt(scale) * w.T.reshape(*window, cin, cout),
                     jnp.float32)


# The registry is functools.singledispatch.


def test_layer_inverse_is_a_singledispatch_function():
  assert explain.layer_inverse.dispatch(nnx.Conv) is inverses._conv_inverse
  assert explain.layer_inverse.dispatch(nnx.Linear) is inverses._linear_inverse


def test_subclasses_inherit_and_registration_replaces_and_decorates():
  class Scale(nnx.Module):
    def __init__(self, factor):
      self.factor = factor

    def __call__(self, x):
      return self.factor * x

  class DoubleScale(Scale):  # inherits Scale's inverse
    pass

  explain.register_inverse(Scale, lambda layer, y, x, relu: y + 100.0)
  x = jnp.arange(3.0)[None]
  np.testing.assert_array_equal(
      explain.invert_layer(DoubleScale(2.0), x, x), x + 100.0)

  @explain.register_inverse(Scale)  # replaces the first registration
  def _scale_inverse(layer, y, x, relu):
    del x, relu
    return y / layer.factor

  model = invertible.InvertibleSequential(
      [Scale(2.0), DoubleScale(4.0)], input_shape=(3,))
  np.testing.assert_array_equal(explain.reconstruct(model, x, 1), x)
  assert explain.layer_inverse.dispatch(DoubleScale) is _scale_inverse


def test_register_inverse_rejects_bad_arguments():
  with pytest.raises(TypeError, match="needs a class"):
    explain.register_inverse("Conv", lambda *a: None)
  with pytest.raises(TypeError, match="callable inverse"):
    explain.register_inverse(nnx.Module, 3)


def test_an_unregistered_layer_names_itself():
  class Mystery(nnx.Module):
    def __call__(self, x):
      return x

  with pytest.raises(ValueError, match=r"Cannot invert layer Mystery\. "
                     r"Invertible models"):
    explain.invert_layer(Mystery(), jnp.ones((1, 2)), jnp.ones((1, 2)))


# The transposed convolution is the layer's own.


@pytest.mark.parametrize(
    "padding,kwargs",
    [("CIRCULAR", {}), ("REFLECT", {}), ("SAME", {"kernel_dilation": 2}),
     (2, {}), ("SAME", {"feature_group_count": 2})],
    ids=["circular", "reflect", "dilated", "int-padding", "grouped"],
)
def test_square_orthogonal_conv_layers_are_inverted_exactly(padding, kwargs):
  """Every nnx.Conv padding rule, taken from the layer, not re-derived."""
  rng = np.random.default_rng(0)
  groups = kwargs.get("feature_group_count", 1)
  cin = 2 * groups
  cout = 9 * cin  # per group: 9·cin/groups outputs, as many as its fan-in
  layer = nnx.Conv(cin, cout, (3, 3), padding=padding, rngs=_rngs(),
                   **kwargs)
  kernels = [orthogonal_kernel(rng, (3, 3), cin // groups, cout // groups)
             for _ in range(groups)]
  layer.kernel[...] = jnp.concatenate(kernels, axis=-1)
  layer.bias[...] = jnp.asarray(rng.normal(size=cout), jnp.float32)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, cin)), jnp.float32)
  np.testing.assert_allclose(invert_jitted(layer, layer(x), x), x, atol=1e-5)


def test_masked_conv_is_inverted_through_its_masked_kernel():
  rng = np.random.default_rng(1)
  mask = jnp.asarray(np.diag([1.0, 1.0, 0.0, 1.0]).reshape(1, 1, 4, 4),
                     jnp.float32)
  layer = nnx.Conv(4, 4, (1, 1), mask=mask, use_bias=False, rngs=_rngs())
  layer.kernel[...] = jnp.eye(4).reshape(1, 1, 4, 4)
  x = jnp.asarray(rng.normal(size=(1, 3, 3, 4)), jnp.float32)
  expected = x.at[..., 2].set(0.0)  # the masked unit is zero: projected out
  np.testing.assert_allclose(invert_jitted(layer, layer(x), x), expected,
                             atol=1e-6)


def test_conv_with_a_bad_padding_names_it():
  with pytest.raises(ValueError, match="Unknown convolution padding 'MIRROR'"):
    explain.invert_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)),
                        input_shape=(4, 4, 1), padding="MIRROR")


def test_the_conv_inverse_runs_under_jit_with_traced_kernels():
  rng = np.random.default_rng(2)
  kernel = orthogonal_kernel(rng, (2, 2), 1, 4, scale=2.0)
  x = jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32)
  y = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  @jax.jit
  def inverse(y, kernel):
    return explain.invert_conv(y, kernel, input_shape=(4, 4, 1), strides=2,
                               padding="VALID")

  np.testing.assert_allclose(inverse(y, kernel), x, atol=1e-5)


# DBort wrappers and the max pool.


def test_a_dbort_wrapper_is_backtracked_like_its_layer():
  rng = np.random.default_rng(3)
  conv = nnx.Conv(1, 4, (2, 2), strides=2, padding="VALID", rngs=_rngs())
  conv.kernel[...] = orthogonal_kernel(rng, (2, 2), 1, 4, scale=0.5)
  model = invertible.InvertibleSequential(
      [DBort(conv), invertible.LeakyReLU(0.3)], input_shape=(4, 4, 1))
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
  np.testing.assert_allclose(explain.reconstruct(model, x, 1), x, atol=1e-5)


def test_the_global_max_pool_is_refused_by_name():
  model = invertible.InvertibleSequential(
      [nnx.Conv(1, 2, (3, 3), rngs=_rngs()), invertible.GlobalMaxPool()],
      input_shape=(4, 4, 1))
  cache = model.forward(jnp.ones((1, 4, 4, 1)))
  with pytest.raises(ValueError,
                     match=r"layers\[1\] \(GlobalMaxPool\).*below it"):
    explain.backtrack(model, cache[-1], 1, cache)


# The AUC is jnp.trapezoid.


def test_auc_is_the_trapezoid_rule_on_uneven_fractions():
  scores = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 3)),
                       jnp.float32)
  fractions = jnp.array([0.0, 4 / 6, 1.0], jnp.float32)  # a short last step
  curve = explain.PerturbationCurve(fractions, scores)
  s = np.asarray(scores, np.float64)
  expected = (4 / 6) * (s[:, 0] + s[:, 1]) / 2 + (2 / 6) * (s[:, 1] + s[:, 2]) / 2
  np.testing.assert_allclose(curve.auc, expected, rtol=1e-6)
  # Through deletion_curve: 6 pixels, 4 per step.
  logits_fn = lambda x: jnp.stack([x.sum((1, 2, 3)), jnp.zeros(len(x))], 1)
  images = jnp.ones((1, 2, 3, 1))
  deletion = explain.deletion_curve(logits_fn, images, jnp.zeros((1, 2, 3)), 4)
  np.testing.assert_allclose(deletion.fractions, [0.0, 4 / 6, 1.0], rtol=1e-6)
  d = np.asarray(deletion.scores, np.float64)[0]
  np.testing.assert_allclose(
      explain.deletion_auc(logits_fn, images, jnp.zeros((1, 2, 3)), 4)[0],
      (4 / 6) * (d[0] + d[1]) / 2 + (2 / 6) * (d[1] + d[2]) / 2, rtol=1e-6)


def test_backtrack_saliency_refuses_a_border_that_leaves_no_interior():
  from bort_jax.models.simple_cnn import SimpleCNN
  model = SimpleCNN("mnist", width_multiplier=1 / 8, input_shape=(8, 8, 1),
                    rngs=nnx.Rngs(0))
  x = jnp.linspace(0, 1, 128).reshape(2, 8, 8, 1)
  with pytest.raises(ValueError, match="no interior for border=1"):
    explain.backtrack_saliency(model, x, model.feature_index)
  maps = explain.backtrack_saliency(model, x, model.feature_index, border=0)
  assert float(jnp.max(maps)) > 0


def test_a_lora_linear_is_inverted_with_its_low_rank_path():
  # nnx.LoRALinear subclasses nnx.Linear: the inherited inverse dropped A B.
  layer = nnx.LoRALinear(4, 4, lora_rank=2, rngs=nnx.Rngs(0))
  layer.lora.lora_b[...] = jax.random.normal(jax.random.key(1), (2, 4))
  q = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (4, 4)))[0]
  layer.kernel[...] = q - layer.lora.lora_a[...] @ layer.lora.lora_b[...]
  x = jax.random.normal(jax.random.key(3), (3, 4))  # merged kernel q: exact
  np.testing.assert_allclose(explain.invert_layer(layer, layer(x), x), x,
                             atol=1e-5)


def test_contribution_map_of_a_lora_linear_uses_its_low_rank_path():
  # contribution_map read the base kernel alone: x · A(x) missed the logits
  # by 3.7 after lora_b was trained.
  lora = nnx.LoRALinear(8, 4, lora_rank=2, use_bias=False, rngs=nnx.Rngs(0))
  lora.lora.lora_b[...] = jax.random.normal(jax.random.key(3), (2, 4))
  model = invertible.InvertibleSequential(
      [nnx.Linear(8, 8, use_bias=False, rngs=nnx.Rngs(1)), invertible.ReLU(),
       lora], (8,))
  x = jax.random.normal(jax.random.key(1), (3, 8))
  a = explain.contribution_map(model, x)
  np.testing.assert_allclose(jnp.einsum("ni,nic->nc", x, a), model(x),
                             atol=1e-5)


def test_contribution_map_reads_through_dbort_wrappers():
  # Backtracking inverts a DBort as the layer it wraps; contribution_map
  # refused it as "another kind" of layer.
  model = invertible.InvertibleSequential(
      [DBort(nnx.Linear(8, 8, use_bias=False, rngs=nnx.Rngs(1))),
       invertible.ReLU(), nnx.Linear(8, 4, use_bias=False, rngs=nnx.Rngs(2))],
      (8,))
  x = jax.random.normal(jax.random.key(1), (3, 8))
  a = explain.contribution_map(model, x)
  np.testing.assert_allclose(jnp.einsum("ni,nic->nc", x, a), model(x),
                             atol=1e-5)

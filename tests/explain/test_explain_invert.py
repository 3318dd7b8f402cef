"""Layer inversion and network backtracking (bort_jax.explain).

The procedures of Zhang et al., "Bort", ICLR 2023: a bounded-orthogonal layer
is inverted by its scaled transpose; a network is backtracked layer by layer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bort_jax import explain
from bort_jax.models import invertible


def orthogonal(rng, m, n, scale=1.0):
  """An m×n matrix with orthogonal rows (m ≤ n) or columns (m > n), norm² scale."""
  q, _ = np.linalg.qr(rng.normal(size=(max(m, n), min(m, n))))
  w = q.T if m <= n else q
  return np.sqrt(scale) * w


def conv_kernel(w, window, cin):
  """The Flax kernel (*window, cin, cout) whose Bort matrix is w (cout × n)."""
  return w.T.reshape(*window, cin, w.shape[0])


def conv(x, kernel, strides, padding):
  """The forward convolution: Flax's own nnx.Conv holding ``kernel``."""
  *window, cin, cout = kernel.shape
  layer = nnx.Conv(cin, cout, tuple(window), strides=strides, padding=padding,
                   use_bias=False, rngs=nnx.Rngs(0))
  layer.kernel[...] = kernel
  return layer(x)


def conv_inverse_reference(x, w, window, stride, pads):
  """float64 NumPy: per-patch orthogonal projection, col2im, / coverage."""
  h, wd, cin = x.shape
  (pt, pb), (pl, pr) = pads
  padded = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))
  projector = w.T @ np.linalg.inv(w @ w.T) @ w
  total = np.zeros_like(padded)
  count = np.zeros(padded.shape[:2])
  kh, kw = window
  for i in range(0, padded.shape[0] - kh + 1, stride):
    for j in range(0, padded.shape[1] - kw + 1, stride):
      patch = padded[i:i + kh, j:j + kw].reshape(-1)
      total[i:i + kh, j:j + kw] += (projector @ patch).reshape(kh, kw, cin)
      count[i:i + kh, j:j + kw] += 1
  total, count = total[pt:pt + h, pl:pl + wd], count[pt:pt + h, pl:pl + wd]
  return total / count[..., None]


# Dense layers.


@pytest.mark.parametrize("n_in,n_out", [(6, 6), (4, 10)], ids=["square", "wide"])
def test_dense_bounded_orthogonal_is_inverted_exactly(n_in, n_out):
  rng = np.random.default_rng(0)
  w = orthogonal(rng, n_out, n_in, scale=2.5)  # rows are output units
  kernel, bias = jnp.asarray(w.T, jnp.float32), jnp.asarray(rng.normal(size=n_out), jnp.float32)
  x = jnp.asarray(rng.normal(size=(5, n_in)), jnp.float32)
  x_hat = explain.invert_dense(x @ kernel + bias, kernel, bias)
  np.testing.assert_allclose(x_hat, x, atol=1e-5)


def test_dense_narrow_gives_the_orthogonal_projection():
  rng = np.random.default_rng(1)
  # Orthogonal rows of unequal norms: per-unit division still projects.
  w = orthogonal(rng, 3, 8) * np.array([[1.0], [2.0], [0.5]])
  x = rng.normal(size=(4, 8))
  projection = x @ (w.T @ np.linalg.inv(w @ w.T) @ w).T
  kernel = jnp.asarray(w.T, jnp.float32)
  x_hat = explain.invert_dense(jnp.asarray(x, jnp.float32) @ kernel, kernel)
  np.testing.assert_allclose(x_hat, projection, atol=1e-5)


def test_unit_scales_rows_and_wide_frobenius():
  w = jnp.array([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(explain.unit_scales(w), [9.0, 1.0])  # zero row → 1
  wide = jnp.ones((4, 2))
  np.testing.assert_allclose(explain.unit_scales(wide), [4.0] * 4)


# Convolutions.


@pytest.mark.parametrize(
    "cin,cout,window,stride,size",
    [(1, 9, (3, 3), 1, 6),    # square 9×9, SAME, stride 1
     (1, 16, (3, 3), 1, 6),   # wide 16×9: columns orthogonal
     (2, 8, (2, 2), 2, 6)],   # square 8×8, the 2×2 stride-2 downsampling
    ids=["square-3x3", "wide-3x3", "square-2x2-stride2"],
)
@pytest.mark.slow
def test_conv_bounded_orthogonal_is_inverted_exactly(cin, cout, window, stride, size):
  rng = np.random.default_rng(2)
  w = orthogonal(rng, cout, window[0] * window[1] * cin, scale=0.7)
  kernel = jnp.asarray(conv_kernel(w, window, cin), jnp.float32)
  bias = jnp.asarray(rng.normal(size=cout), jnp.float32)
  x = jnp.asarray(rng.normal(size=(2, size, size, cin)), jnp.float32)
  y = conv(x, kernel, stride, "SAME") + bias
  x_hat = explain.invert_conv(y, kernel, bias, input_shape=x.shape[1:],
                              strides=stride, padding="SAME")
  np.testing.assert_allclose(x_hat, x, atol=1e-5)


@pytest.mark.parametrize(
    "stride,size,pads,padding",
    [(1, 5, ((1, 1), (1, 1)), "SAME"),
     (2, 7, ((1, 1), (1, 1)), "SAME"),
     (2, 7, ((0, 0), (0, 0)), "VALID"),
     (1, 5, ((2, 0), (0, 1)), ((2, 0), (0, 1)))],
    ids=["same-s1", "same-s2-odd", "valid-s2", "explicit-asymmetric"],
)
def test_conv_narrow_averages_patch_projections(stride, size, pads, padding):
  rng = np.random.default_rng(3)
  cin, cout, window = 2, 5, (3, 3)
  w = orthogonal(rng, cout, 9 * cin) * rng.uniform(0.5, 2.0, size=(cout, 1))
  kernel = jnp.asarray(conv_kernel(w, window, cin), jnp.float32)
  bias = jnp.asarray(rng.normal(size=cout), jnp.float32)
  x = rng.normal(size=(size, size, cin))
  y = conv(jnp.asarray(x[None], jnp.float32), kernel, stride, padding) + bias
  x_hat = explain.invert_conv(y, kernel, bias, input_shape=x.shape,
                              strides=stride, padding=padding)
  expected = conv_inverse_reference(x, w, window, stride, pads)
  np.testing.assert_allclose(x_hat[0], expected, atol=1e-5)


def test_conv_layer_dispatch_matches_the_function():
  rng = np.random.default_rng(4)
  layer = nnx.Conv(2, 3, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(0))
  layer.bias[...] = jnp.asarray(rng.normal(size=3), jnp.float32)
  x = jnp.asarray(rng.normal(size=(1, 7, 7, 2)), jnp.float32)
  y = layer(x)
  got = explain.invert_layer(layer, y, x)
  want = explain.invert_conv(y, layer.kernel[...], layer.bias[...],
                             input_shape=(7, 7, 2), strides=2, padding="SAME")
  np.testing.assert_array_equal(got, want)


def test_avg_pool_inverse_repeats_and_is_a_right_inverse():
  layer = invertible.AvgPool((2, 2))
  y = jnp.arange(8.0).reshape(1, 2, 2, 2)
  x_hat = explain.invert_layer(layer, y, jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32))
  np.testing.assert_allclose(x_hat[0, :2, :2, 1], jnp.full((2, 2), 1.0))
  np.testing.assert_allclose(layer(x_hat), y, atol=1e-6)


@pytest.mark.parametrize("size", [5, 7])
def test_avg_pool_inverse_is_a_right_inverse_at_a_padded_border(size):
  # SAME on a size the window does not divide: a border window holds padded
  # zeros, and repeating its value there pooled back to a fraction of it.
  layer = invertible.AvgPool((2, 2), padding="SAME")
  x = jax.random.normal(jax.random.key(4), (2, size, size, 3))
  x_hat = explain.invert_layer(layer, layer(x), x)
  np.testing.assert_allclose(layer(x_hat), layer(x), atol=1e-6)
  # Least squares with minimum norm: constant on each window's inside.
  corner = x_hat[0, size - 1, size - 1]  # the last window holds one pixel
  np.testing.assert_allclose(corner, 4 * layer(x)[0, -1, -1], rtol=1e-6)


# Activations.


def test_leaky_relu_inversion_is_exact():
  x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 50)), jnp.float32)
  for slope in (0.5, 0.1, 0.01):
    layer = invertible.LeakyReLU(slope)
    x_hat = explain.invert_layer(layer, layer(x), x)
    np.testing.assert_allclose(x_hat, x, rtol=1e-6, atol=0)
  np.testing.assert_array_equal(
      explain.invert_leaky_relu(invertible.LeakyReLU(0.5)(x), 0.5), x)


def test_relu_pass_and_guided():
  pre = jnp.array([[-1.0, 2.0, -3.0, 4.0]])
  edited = jnp.array([[5.0, -6.0, 7.0, 8.0]])
  relu = invertible.ReLU()
  np.testing.assert_array_equal(explain.invert_layer(relu, edited, pre), edited)
  np.testing.assert_array_equal(
      explain.invert_layer(relu, edited, pre, relu="guided"), [[0.0, -6.0, 0.0, 8.0]])


def test_leaky_relu_rejects_a_non_invertible_slope():
  with pytest.raises(ValueError, match="negative_slope > 0"):
    invertible.LeakyReLU(0.0)


# Backtracking.


def two_layer_orthogonal_net(seed=6):
  """Conv 2×2/2 (1→4, square) → LeakyReLU → Flatten → Linear 16×16 → LeakyReLU."""
  rng = np.random.default_rng(seed)
  rngs = nnx.Rngs(seed)
  down = nnx.Conv(1, 4, (2, 2), strides=2, padding="VALID", rngs=rngs)
  down.kernel[...] = jnp.asarray(conv_kernel(orthogonal(rng, 4, 4, 2.0), (2, 2), 1), jnp.float32)
  down.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
  dense = nnx.Linear(16, 16, rngs=rngs)
  dense.kernel[...] = jnp.asarray(orthogonal(rng, 16, 16, 0.5).T, jnp.float32)
  dense.bias[...] = jnp.asarray(rng.normal(size=16), jnp.float32)
  layers = [down, invertible.LeakyReLU(0.2), invertible.Flatten(), dense,
            invertible.LeakyReLU(0.2)]
  return invertible.InvertibleSequential(layers, input_shape=(4, 4, 1))


@pytest.mark.slow
def test_backtracking_a_two_layer_orthogonal_network_recovers_the_input():
  model = two_layer_orthogonal_net()
  x = jnp.asarray(np.random.default_rng(7).uniform(size=(3, 4, 4, 1)), jnp.float32)
  cache = model.forward(x)
  for layer in range(len(model.layers)):
    with_cache = explain.backtrack(model, cache[layer + 1], layer, cache)
    without = explain.backtrack(model, cache[layer + 1], layer)  # shapes by eval_shape
    np.testing.assert_allclose(with_cache, x, atol=1e-5)
    np.testing.assert_allclose(without, x, atol=1e-5)
  np.testing.assert_allclose(explain.reconstruct(model, x, -1), x, atol=1e-5)
  jitted = nnx.jit(lambda m, x: explain.reconstruct(m, x, -1))
  np.testing.assert_allclose(jitted(model, x), x, atol=1e-5)


def test_backtracking_an_orthogonal_mlp_recovers_the_input():
  rng = np.random.default_rng(8)
  mlp = invertible.InvertibleMLP((3, 3, 1), (9,), 9, rngs=nnx.Rngs(0))
  for layer in (mlp.layers[1], mlp.layers[3]):
    layer.kernel[...] = jnp.asarray(orthogonal(rng, 9, 9, 3.0).T, jnp.float32)
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 1)), jnp.float32)
  np.testing.assert_allclose(explain.reconstruct(mlp, x, -1), x, atol=1e-5)


def test_forward_cache_layout():
  cnn = invertible.InvertibleCNN((8, 8, 1), (2,), (), 10, rngs=nnx.Rngs(0))
  x = jnp.zeros((2, 8, 8, 1))
  cache = cnn.forward(x)
  assert len(cache) == len(cnn.layers) + 1
  assert cache[cnn.stage_ends[0] + 1].shape == (2, 4, 4, 8)
  np.testing.assert_array_equal(cache[-1], cnn(x))
  assert len(cnn.forward(x, upto=1)) == 3
  assert explain.forward_cache(list(cnn.layers), x)[-1].shape == (2, 10)


# Errors.


class MaxPool(nnx.Module):
  def __call__(self, x):
    return nnx.max_pool(x, (2, 2), (2, 2))


@pytest.mark.parametrize(
    "make_layer,name",
    [(lambda: nnx.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(0)),
      "Dropout"),  # in training mode it is refused before (test_explain_tools)
     (lambda: nnx.BatchNorm(4, use_running_average=True, rngs=nnx.Rngs(0)), "BatchNorm"),
     (MaxPool, "MaxPool")],
)
def test_backtracking_through_a_non_invertible_layer_names_it(make_layer, name):
  rngs = nnx.Rngs(0)
  model = invertible.InvertibleSequential(
      [nnx.Conv(1, 4, (3, 3), rngs=rngs), make_layer(), invertible.LeakyReLU()],
      input_shape=(4, 4, 1))
  cache = model.forward(jnp.ones((1, 4, 4, 1)))
  with pytest.raises(ValueError, match=rf"layers\[1\] \({name}\)"):
    explain.backtrack(model, cache[-1], 2, cache)


def test_a_function_activation_is_named_with_the_module_to_use():
  # The README's nnx.Sequential(Linear, nnx.relu, ...) style: the error named
  # "custom_jvp" and advised about dropout and pooling.
  model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
  x = jnp.ones((1, 4))
  cache = explain.forward_cache(model, x)
  with pytest.raises(ValueError, match=r"layers\[1\].*the function 'relu', "
                     r"not a layer.*invertible.ReLU\(\)"):
    explain.backtrack(model, cache[-1], 2, cache)


def test_backtrack_rejects_bad_arguments():
  model = two_layer_orthogonal_net()
  x = jnp.ones((2, 4, 4, 1))
  cache = model.forward(x)
  with pytest.raises(ValueError, match=r"do not match the output of layers\[3\]"):
    explain.backtrack(model, jnp.ones((2, 15)), 3)
  with pytest.raises(ValueError, match="batch size"):
    explain.backtrack(model, cache[4][:1], 3, cache)
  with pytest.raises(ValueError, match="out of range"):
    explain.backtrack(model, cache[-1], 5)
  with pytest.raises(ValueError, match="relu must be one of"):
    explain.backtrack(model, cache[-1], 4, relu="deconv")
  with pytest.raises(ValueError, match="forward_cache has 2 entries"):
    explain.backtrack(model, cache[-1], 4, cache[:2])
  with pytest.raises(ValueError, match="input shape"):
    explain.backtrack(list(model.layers), cache[-1], 4)
  relu_model = invertible.InvertibleMLP((4,), (3,), 2, activation="relu", rngs=nnx.Rngs(0))
  relu_cache = relu_model.forward(jnp.ones((1, 4)))
  with pytest.raises(ValueError, match="guided.*forward_cache"):
    explain.backtrack(relu_model, relu_cache[2], 1, relu="guided")
  guided = explain.backtrack(relu_model, relu_cache[2], 1, relu_cache, relu="guided")
  assert guided.shape == (1, 4)


def test_invert_functions_reject_mismatched_shapes():
  with pytest.raises(ValueError, match="do not match a kernel"):
    explain.invert_dense(jnp.ones((2, 3)), jnp.ones((4, 5)))
  kernel = jnp.ones((3, 3, 1, 2))
  with pytest.raises(ValueError, match="do not match the convolution's output"):
    explain.invert_conv(jnp.ones((1, 5, 5, 2)), kernel, input_shape=(4, 4, 1))
  with pytest.raises(ValueError, match="input_shape"):
    explain.invert_conv(jnp.ones((1, 4, 4, 2)), kernel, input_shape=(4, 4))
  with pytest.raises(ValueError, match="Unknown convolution padding"):
    explain.invert_conv(jnp.ones((1, 4, 4, 2)), kernel, input_shape=(4, 4, 1),
                        padding="MIRROR")


def test_register_inverse_extends_backtracking():
  class Double(nnx.Module):
    def __call__(self, x):
      return 2 * x

  explain.register_inverse(Double, lambda layer, y, x, relu: y / 2)
  model = invertible.InvertibleSequential([Double(), Double()], input_shape=(3,))
  x = jnp.arange(3.0)[None]
  np.testing.assert_array_equal(explain.reconstruct(model, x, 1), x)


def test_the_small_functions_refuse_what_they_cannot_do():
  # Each returned a number before: -inf (slope 0), the unblurred images
  # (sigma -1), every peak kept (border -1); a traced sigma failed in JAX.
  with pytest.raises(ValueError, match=r"w must be a matrix \(m, n\).*"
                     r"got shape \(3,\)"):
    explain.unit_scales(jnp.ones(3))
  with pytest.raises(ValueError, match="negative_slope must be > 0"):
    explain.invert_leaky_relu(jnp.array([-1.0]), 0.0)
  with pytest.raises(ValueError, match="sigma must be >= 0"):
    explain.gaussian_blur(jnp.ones((1, 4, 4, 1)), -1.0)
  with pytest.raises(ValueError, match="sigma sets the kernel's size"):
    jax.jit(explain.gaussian_blur)(jnp.ones((1, 4, 4, 1)), 1.0)
  model = two_layer_orthogonal_net()
  with pytest.raises(ValueError, match="border must be a non-negative"):
    explain.backtrack_saliency(model, jnp.ones((1, 4, 4, 1)), 0, border=-1)


@pytest.mark.parametrize("groups", [1, 2])
def test_a_masked_convolution_inverts_as_its_unmasked_equivalent(groups):
  # A 3-tap convolution whose mask drops its last tap is a 2-tap one: the
  # patch count and the unit scales counted the masked tap (x̂/x was
  # 1.5, 1, …, 0.75 at the edges and right in the middle by cancellation).
  rng = np.random.default_rng(0)
  group_in, out = 2, 8
  k = np.zeros((3, group_in, out), np.float32)
  for g in range(groups):  # each group's used taps orthonormal
    q = np.linalg.qr(rng.normal(size=(out // groups, 2 * group_in)))[0]
    k[:2, :, g * out // groups:(g + 1) * out // groups] = (
        q.T.reshape(2, group_in, out // groups))
  mask = jnp.ones((3, group_in, out)).at[2].set(0.0)
  conv = nnx.Conv(group_in * groups, out, (3,), padding="VALID", mask=mask,
                  feature_group_count=groups, use_bias=False,
                  kernel_init=lambda *_: jnp.asarray(k), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 9, group_in * groups))
  x_hat = explain.layer_inverse(conv, conv(x), x, "pass")
  # The last position is read by no used tap: nothing to recover there.
  np.testing.assert_allclose(x_hat[:, :8], x[:, :8], atol=1e-5)
  np.testing.assert_array_equal(x_hat[:, 8], 0.0)


def test_unit_scales_of_a_wide_matrix_count_the_columns_it_reads():
  w = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0],
                 [0.0, 1.0, 0.0]]) / jnp.sqrt(2.0)
  # Wᵀ W = diag(1, 1, 0): c = 1 over the two columns read, not 2/3.
  np.testing.assert_allclose(explain.unit_scales(w), 1.0, rtol=1e-6)


def test_invert_avg_pool_checks_its_shapes_in_one_line():
  # A (1, 1, 1, 3) pooled map for (4, 4, 3) inputs was broadcast and
  # "inverted"; a channel-less input_shape or a 1-D window on 2-D images
  # failed deep in broadcasting.
  y = jnp.ones((1, 2, 2, 3))
  explain.invert_avg_pool(y, input_shape=(4, 4, 3), window_shape=(2, 2))
  for kwargs, message in (
      (dict(y=jnp.ones((1, 1, 1, 3)), input_shape=(4, 4, 3),
            window_shape=(2, 2)), "do not match the pooling's output"),
      (dict(y=y, input_shape=(4, 4), window_shape=(2, 2)),
       "input_shape .* of as many spatial axes"),
      (dict(y=y, input_shape=(4, 4, 3), window_shape=(2,)),
       "a 1-D window needs")):
    with pytest.raises(ValueError, match=message):
      explain.invert_avg_pool(**kwargs)


def test_a_bias_of_another_shape_is_refused_not_broadcast():
  # A (1,) or per-example (N, out) bias was broadcast and "inverted".
  kernel = jnp.eye(4, 8)
  y = jnp.ones((2, 8))
  for bias in (jnp.ones(1), jnp.ones(4), jnp.ones((2, 8))):
    with pytest.raises(ValueError, match=r"bias must be .* shape \(8,\)"):
      explain.invert_dense(y, kernel, bias)
  conv_kernel = jnp.ones((3, 3, 2, 8))
  with pytest.raises(ValueError, match=r"invert_conv: bias must be"):
    explain.invert_conv(jnp.ones((1, 4, 4, 8)), conv_kernel, jnp.ones(1),
                        input_shape=(4, 4, 2))

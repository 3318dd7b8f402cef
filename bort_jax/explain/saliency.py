"""Saliency maps: Bort's backtracking top-k saliency and gradient baselines.

Backtracking saliency (Bort, §6 of the spec): at a target layer, each
channel's strongest response is a spike at one position. Backtracking that
spike alone to the input (minus the backtrack of the all-zero map, which
removes the biases) shows which input pixels the unit looks at; the mask of
pixels above ``threshold ×`` the mean, weighted by the channel's maximum and
summed over the top-k channels, is the map. Nothing is differentiated: the
map is read off the network's inverse.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bort_jax import validation
from bort_jax.explain import backtracking
from bort_jax.explain import inverses
from bort_jax.explain import metrics
from bort_jax.explain.eval_mode import check_eval_mode
from bort_jax.explain.model_jit import jit_per_model

LogitsFn = Callable[[jax.Array], jax.Array]


def normalize_map(saliency: jax.Array) -> jax.Array:
  """Scales each non-negative map ``(N, …)`` to [0, 1] by its maximum.

  All-zero maps stay zero.

  Examples:
    >>> import jax.numpy as jnp
    >>> normalize_map(jnp.array([[0.0, 2.0, 4.0]]))
    Array([[0. , 0.5, 1. ]], dtype=float32)
  """
  axes = tuple(range(1, saliency.ndim))
  peak = jnp.max(saliency, axis=axes, keepdims=True)
  return saliency / jnp.where(peak > 0, peak, 1.0)


def attribution_map(attributions: jax.Array) -> jax.Array:
  """``|attributions|`` summed over the channel axis, normalised to [0, 1].

  Args:
    attributions: ``(N, H, W, C)`` per-pixel, per-channel attributions.

  Returns:
    ``(N, H, W)`` saliency maps.

  Examples:
    >>> import jax.numpy as jnp
    >>> attribution_map(jnp.array([[[[1.0, -1.0], [0.5, 0.5]]]])).shape
    (1, 1, 2)
  """
  return normalize_map(jnp.sum(jnp.abs(attributions), axis=-1))


def _check_images(images: jax.Array) -> None:
  """A map sums the channel axis: images need one axis besides it."""
  if jnp.ndim(images) < 3:
    raise ValueError(
        f"images must be (N, *spatial, C), e.g. (N, H, W, C), got shape "
        f"{jnp.shape(images)}: a map sums the channel axis, so flat inputs "
        f"(N, features) have no map; reshape them to (N, features, 1) to map "
        f"each feature.")


def _channel_peaks(features: jax.Array, border: int):
  """Per-channel maximum, its flat position, and whether it is inside."""
  spatial = features.shape[:-1]
  flat = features.reshape(-1, features.shape[-1])
  peaks = jnp.max(flat, axis=0)
  positions = jnp.argmax(flat, axis=0)
  inside = jnp.ones(positions.shape, bool)
  for axis, coordinate in enumerate(jnp.unravel_index(positions, spatial)):
    inside &= (coordinate >= border) & (coordinate < spatial[axis] - border)
  return peaks, positions, inside


@functools.partial(jit_per_model,
                   static_argnames=("stop", "k", "border", "relu"))
def _backtrack_maps(model, cache, threshold, spike, *, stop, k, border, relu):
  """The maps of :func:`backtrack_saliency` from its forward cache, one image
  after the other (compiled once per model, :func:`jit_per_model`)."""
  channels = cache[-1].shape[-1]

  def one_image(single_cache):
    single_cache = tuple(a[None] for a in single_cache)
    features = single_cache[-1][0]
    peaks, positions, inside = _channel_peaks(features, border)
    scores, chosen = jax.lax.top_k(jnp.where(inside, peaks, -jnp.inf), k)
    weights = jnp.where(jnp.isfinite(scores), jnp.maximum(scores, 0.0), 0.0)
    flat_shape = (k, features.size // channels, channels)
    onehots = jnp.zeros(flat_shape, features.dtype).at[
        jnp.arange(k), positions[chosen], chosen].set(spike)
    onehots = onehots.reshape((k, 1) + features.shape)

    def back(z):
      return backtracking.backtrack(model, z, stop, single_cache, relu)[0]

    base = back(jnp.zeros((1,) + features.shape, features.dtype))
    responses = jnp.sum(jnp.abs(jax.vmap(back)(onehots) - base), axis=-1)
    axes = tuple(range(1, responses.ndim))
    masks = responses > threshold * jnp.mean(responses, axis=axes,
                                              keepdims=True)
    saliency = jnp.tensordot(weights, masks.astype(weights.dtype), axes=1)
    # A non-finite activation (a NaN pixel) has no peak to trust: the map is
    # NaN, as the logits are, not the zeros its dropped channels would give.
    saliency = jnp.where(jnp.all(jnp.isfinite(features)), saliency, jnp.nan)
    return normalize_map(saliency[None])[0]

  return jax.lax.map(one_image, cache)


def backtrack_saliency(
    model: Any,
    images: jax.Array,
    layer: int,
    *,
    top_k: int = 256,
    threshold: float = 3.0,
    border: int = 1,
    spike: float = 1000.0,
    relu: str = "pass",
) -> jax.Array:
  """Bort's backtracking saliency: masks of top-k channel peaks, backtracked.

  For each image, at the output ``a`` of ``layers[layer]`` (shape
  ``(*spatial, C)``):

  1. ``m_c = max a[..., c]`` at position ``p_c``; channels whose maximum lies
     within ``border`` of the edge are skipped.
  2. The ``top_k`` channels by ``m_c`` are kept.
  3. For each, a one-hot map (``spike`` at ``p_c`` in channel ``c``) is
     backtracked; ``r_c = Σ_channels |backtrack(onehot) − backtrack(0)|``.
  4. ``mask_c = 1[r_c > threshold · mean(r_c)]``;
     ``S = Σ_c max(m_c, 0) · mask_c``, normalised to [0, 1].

  The channels are processed in one vmapped backtrack, the images one after
  the other (``lax.map``), which bounds memory at ``top_k`` backtracks.

  Args:
    model: a sequential invertible model (e.g. ``InvertibleCNN``).
    images: ``(N, *input_shape)``; the map has the input's spatial shape.
    layer: the target layer (its output is read).
    top_k: channels kept (at most the layer's width).
    threshold: a pixel is in a channel's mask above ``threshold ×`` the mean.
    border: maxima this close to the edge are skipped (0 keeps all).
    spike: the one-hot value (backtracking is not homogeneous: biases and
      LeakyReLU make the response depend on the magnitude).
    relu: ``"pass"`` or ``"guided"``.

  Returns:
    ``(N, *input_spatial)`` maps in [0, 1] (input channels summed).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleCNN
    >>> cnn = InvertibleCNN((8, 8, 1), (4,), (), 10, rngs=nnx.Rngs(0))
    >>> images = jnp.linspace(0, 1, 128).reshape(2, 8, 8, 1)
    >>> maps = backtrack_saliency(cnn, images, layer=1, top_k=4)
    >>> maps.shape, bool(maps.min() >= 0), bool(maps.max() <= 1)
    ((2, 8, 8), True, True)
  """
  inverses.check_relu_mode(relu)
  _check_images(images)
  images = backtracking.check_inputs(model, images, "images")
  layers = backtracking.model_layers(model)
  stop = backtracking.layer_index(layer, len(layers))
  cache = backtracking.forward_cache(model, images)[: stop + 2]
  channels = cache[stop + 1].shape[-1]
  border = validation.check_nonnegative_int("border", border)
  # A NaN or negative threshold, or a spike of 0 or inf, made every map
  # zero or every pixel masked, silently; a fractional top_k was truncated.
  threshold = validation.check_real("threshold", threshold, low=0)
  spike = validation.check_real("spike", spike, low=0, low_inclusive=False)
  k = min(validation.check_positive_int("top_k", top_k), channels)
  spatial = tuple(cache[stop + 1].shape[1:-1])
  if any(size <= 2 * border for size in spatial):
    raise ValueError(
        f"backtrack_saliency: layer {stop}'s map is {spatial} pixels, which "
        f"has no interior for border={border} (every peak would be skipped "
        "and every map zero); pass a smaller border, e.g. border=0.")
  return _backtrack_maps(model, cache, threshold, spike, stop=stop, k=k,
                         border=border, relu=relu)


def _target_logit_sum(logits_fn, targets):
  def objective(x):
    logits = logits_fn(x)
    return jnp.sum(jnp.take_along_axis(logits, targets[:, None], axis=1))
  return objective


def gradient_saliency(
    logits_fn: LogitsFn, images: jax.Array, targets: jax.Array | None = None
) -> jax.Array:
  """Vanilla gradient saliency: ``|∂ logit_t / ∂x|`` summed over channels.

  Args:
    logits_fn: maps a batch of images to logits (e.g. an NNX model).
    images: ``(N, H, W, C)``.
    targets: the class of each image (default: the predicted class).

  Returns:
    ``(N, H, W)`` maps in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.arange(8.0).reshape(4, 2)
    >>> logits_fn = lambda x: x.reshape(len(x), -1) @ w
    >>> jnp.round(7 * gradient_saliency(logits_fn, jnp.ones((1, 2, 2, 1)))[0], 4)
    Array([[1., 3.],
           [5., 7.]], dtype=float32)

  References:
    Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks", 2014.
  """
  check_eval_mode(logits_fn, "logits_fn")
  _check_images(images)
  images = metrics.floating_images(images)
  targets = metrics.target_classes(logits_fn, images, targets, "targets")
  grads = jax.grad(_target_logit_sum(logits_fn, targets))(images)
  return attribution_map(grads)


def integrated_gradients(
    logits_fn: LogitsFn,
    images: jax.Array,
    targets: jax.Array | None = None,
    baseline: jax.Array | None = None,
    steps: int = 32,
) -> jax.Array:
  """Integrated gradients: ``(x − x₀) ∘ ∫₀¹ ∇ logit_t(x₀ + α(x − x₀)) dα``.

  The integral is the midpoint rule with ``steps`` points, evaluated as one
  ``lax.map`` over the path. The attributions sum to
  ``logit_t(x) − logit_t(x₀)`` (completeness), exactly for a linear model.

  Args:
    logits_fn: maps a batch of images to logits.
    images: ``(N, …)``.
    targets: the class of each image (default: the predicted class).
    baseline: ``x₀`` (default: zeros), broadcastable to ``images``.
    steps: points on the path (a positive integer).

  Returns:
    Attributions of ``images``' shape; :func:`attribution_map` turns them
    into saliency maps.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.arange(8.0).reshape(4, 2)
    >>> logits_fn = lambda x: x.reshape(len(x), -1) @ w
    >>> attributions = integrated_gradients(logits_fn, jnp.ones((1, 2, 2, 1)))
    >>> float(attributions.sum()), float(logits_fn(jnp.ones((1, 2, 2, 1)))[0, 1])
    (16.0, 16.0)

  References:
    Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", 2017.
  """
  steps = validation.check_positive_int("steps", steps)
  check_eval_mode(logits_fn, "logits_fn")
  images = metrics.floating_images(images)
  targets = metrics.target_classes(logits_fn, images, targets, "targets")
  # In the images' floating dtype: an integer x − x₀ wraps around (uint8).
  baseline = jnp.zeros_like(images) if baseline is None else jnp.broadcast_to(
      jnp.asarray(baseline, images.dtype), images.shape)
  return _integrated_gradients(logits_fn, images, targets, baseline,
                               steps=steps)


@functools.partial(jit_per_model, static_argnames=("steps",))
def _integrated_gradients(logits_fn, images, targets, baseline, *, steps):
  """:func:`integrated_gradients` of checked inputs (one compile per model)."""
  grad_fn = jax.grad(_target_logit_sum(logits_fn, targets))
  alphas = (jnp.arange(steps, dtype=images.dtype) + 0.5) / steps
  grads = jax.lax.map(
      lambda a: grad_fn(baseline + a * (images - baseline)), alphas)
  return (images - baseline) * jnp.mean(grads, axis=0)


def integrated_gradients_saliency(
    logits_fn: LogitsFn,
    images: jax.Array,
    targets: jax.Array | None = None,
    baseline: jax.Array | None = None,
    steps: int = 32,
) -> jax.Array:
  """:func:`integrated_gradients` as ``(N, H, W)`` maps in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: x.reshape(len(x), -1) @ jnp.ones((4, 2))
    >>> integrated_gradients_saliency(logits_fn, jnp.ones((1, 2, 2, 1))).shape
    (1, 2, 2)
  """
  _check_images(images)
  return attribution_map(
      integrated_gradients(logits_fn, images, targets, baseline, steps))

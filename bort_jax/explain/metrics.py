"""Numbers for explanations: reconstruction error, Deletion/Insertion AUC, Gram.

Deletion and Insertion (Petsiuk et al., RISE, 2018) score a saliency map by
perturbing the image in the map's order: pixels are *deleted* (set to 0) or
*inserted* (copied into a blurred copy of the image) a fixed number per step,
most salient first, and the softmax score of the class predicted on the clean
image is recorded after each step. The area under the score curve, over the
fraction of pixels changed, is low for a good map under deletion (the score
falls fast) and high under insertion (it rises fast). With equal steps it is
the mean of the recorded scores, which are softmax probabilities, so it lies
in [0, 1].

References:
  Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of
  Black-box Models", BMVC 2018.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax import validation
from bort_jax.explain.eval_mode import check_eval_mode
from bort_jax.explain.model_jit import jit_per_model

LogitsFn = Callable[[jax.Array], jax.Array]


def reconstruction_mse(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """The mean squared error of each example, ``mean((x − x̂)²)``.

  Raises:
    ValueError: ``x`` and ``x_hat`` differ in shape (they were broadcast:
      one image against a batch gave a PSNR per image of the batch).

  Examples:
    >>> import jax.numpy as jnp
    >>> reconstruction_mse(jnp.zeros((2, 2)), jnp.array([[1.0, 1.0], [0.0, 2.0]]))
    Array([1., 2.], dtype=float32)
  """
  if np.shape(x) != np.shape(x_hat):
    raise ValueError(
        f"x and x_hat must have the same shape (a batch of examples and their "
        f"reconstructions), got {np.shape(x)} and {np.shape(x_hat)}.")
  axes = tuple(range(1, np.ndim(x)))
  return jnp.mean(jnp.square(x - x_hat), axis=axes)


def psnr(x: jax.Array, x_hat: jax.Array, data_range: float = 1.0) -> jax.Array:
  """The peak signal-to-noise ratio of each example, in dB.

  .. math::
    \\text{PSNR} = 10 \\log_{10}(\\text{range}^2 / \\text{MSE})

  The MSE is floored at 1e-20, so an exact reconstruction counts as
  ``10 log10(range² / 1e-20)`` (200 dB at range 1), finite in a mean.

  Examples:
    >>> import jax.numpy as jnp
    >>> psnr(jnp.zeros((1, 4)), jnp.full((1, 4), 0.1))
    Array([20.], dtype=float32)
  """
  mse = reconstruction_mse(x, x_hat)
  return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-20))


def cosine_gram(kernel: jax.Array) -> jax.Array:
  """The normalised Gram ``W Wᵀ`` of a Flax kernel: cosines between its units.

  ``W = kernel.reshape(-1, out).T`` has one row per output unit. A
  bounded-orthogonal layer with no more units than fan-in gives the
  identity (with more, Bort constrains ``Wᵀ W`` and the units' cosines are
  not 0).

  Args:
    kernel: a Flax kernel, output units on the last axis.

  Returns:
    An ``(out, out)`` matrix of cosines.

  Examples:
    >>> import jax.numpy as jnp
    >>> jnp.round(cosine_gram(jnp.array([[1.0, 1.0], [0.0, 1.0]])), 4)
    Array([[1.    , 0.7071],
           [0.7071, 1.    ]], dtype=float32)
  """
  w = kernel.reshape(-1, kernel.shape[-1]).T
  norms = jnp.linalg.norm(w, axis=1, keepdims=True)
  w = w / jnp.where(norms > 0, norms, 1.0)
  return w @ w.T


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Blurs ``(N, H, W, C)`` images with a Gaussian (edge padding).

  ``sigma = 0`` leaves them as they are; ``sigma`` sets the kernel's size,
  so it must be a concrete number ``>= 0``, not traced.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(jnp.round(gaussian_blur(jnp.ones((1, 5, 5, 1)), 1.0).mean(), 5))
    1.0
  """
  if isinstance(sigma, jax.core.Tracer):
    raise ValueError(
        "sigma sets the kernel's size, so it must be known when tracing; "
        "pass it as a static argument (jax.jit(..., static_argnums=...)).")
  sigma = validation.check_real("sigma", sigma, low=0)
  images = floating_images(images)
  if sigma == 0:
    return images
  radius = max(1, math.ceil(3 * sigma))
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(images.dtype)
  channels = images.shape[-1]
  x = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)),
              mode="edge")
  numbers = ("NHWC", "HWIO", "NHWC")
  for kernel in (taps.reshape(-1, 1, 1, 1), taps.reshape(1, -1, 1, 1)):
    x = jax.lax.conv_general_dilated(
        x, jnp.tile(kernel, (1, 1, 1, channels)), (1, 1), "VALID",
        dimension_numbers=numbers, feature_group_count=channels)
  return x


class PerturbationCurve(NamedTuple):
  """A Deletion or Insertion curve.

  Attributes:
    fractions: ``(T + 1,)`` fraction of pixels changed after each step
      (from 0 to 1).
    scores: ``(N, T + 1)`` softmax score of each image's class.
  """

  fractions: jax.Array
  scores: jax.Array

  @property
  def auc(self) -> jax.Array:
    """``(N,)`` areas under the curves (trapezoid rule over the fractions)."""
    return jnp.trapezoid(self.scores, self.fractions, axis=-1)


def _pixel_ranks(saliency: jax.Array) -> jax.Array:
  """Rank of each pixel, 0 = most salient; ties broken by position."""
  flat = saliency.reshape(saliency.shape[0], math.prod(saliency.shape[1:]))
  order = jnp.argsort(-flat, axis=1, stable=True)
  return jnp.argsort(order, axis=1).reshape(saliency.shape)


@functools.partial(jit_per_model, static_argnames=("pixels_per_step",))
def _perturbation_curve(
    logits_fn: LogitsFn,
    start: jax.Array,
    finish: jax.Array,
    saliency: jax.Array,
    classes: jax.Array,
    *,
    pixels_per_step: int,
) -> PerturbationCurve:
  """The score curve from ``start`` to ``finish`` (one compile per model)."""
  n, height, width = saliency.shape
  pixels = height * width
  steps = -(-pixels // pixels_per_step)
  ranks = _pixel_ranks(saliency)[..., None]
  rows = jnp.arange(n)

  def score(t):
    changed = ranks < t * pixels_per_step
    probs = jax.nn.softmax(logits_fn(jnp.where(changed, finish, start)))
    return probs[rows, classes]

  scores = jax.lax.map(score, jnp.arange(steps + 1)).T
  fractions = jnp.minimum(jnp.arange(steps + 1) * pixels_per_step,
                          pixels) / pixels
  return PerturbationCurve(fractions.astype(scores.dtype), scores)


def _check_curve_inputs(images, saliency, pixels_per_step):
  if images.ndim != 4 or saliency.shape != images.shape[:3]:
    raise ValueError(
        f"images must be (N, H, W, C) and saliency (N, H, W); got "
        f"{images.shape} and {saliency.shape}."
    )
  return validation.check_positive_int("pixels_per_step", pixels_per_step)


def floating_images(images: Any, name: str = "images") -> jax.Array:
  """``images`` as an array, refused unless floating point: the tools take
  differences and blurs in the images' own dtype, where integers wrap
  around (uint8) or truncate, and gradients need floating inputs.

  Raises:
    TypeError: integer or boolean images, naming the conversion.
  """
  images = jnp.asarray(images)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
        f"{name} must be floating point, got {images.dtype}: convert them "
        f"as the model reads them, e.g. {name}.astype(jnp.float32) / 255 "
        "for 8-bit pixels.")
  return images


def target_classes(logits_fn: LogitsFn, images: jax.Array,
                   classes: jax.Array | None, name: str = "classes"
                   ) -> jax.Array:
  """The class of each image: the predicted one, or ``classes`` checked
  (one integer per image, within the logits' range; traced values are not
  known, so not checked)."""
  if classes is None:
    return jnp.argmax(logits_fn(images), axis=-1)
  classes = jnp.asarray(classes)
  if (classes.shape != images.shape[:1]
      or not jnp.issubdtype(classes.dtype, jnp.integer)):
    raise ValueError(
        f"{name} must be one integer class per image, shape "
        f"({images.shape[0]},), got shape {classes.shape} of "
        f"{classes.dtype}; pass e.g. jnp.array(labels, jnp.int32).")
  try:
    values = np.asarray(classes)
  except jax.errors.TracerArrayConversionError:
    return classes  # traced: the values are not known here
  count = jax.eval_shape(logits_fn, images[:1]).shape[-1]
  if values.size and not 0 <= values.min() <= values.max() < count:
    raise ValueError(
        f"{name} must be in [0, {count}), the logits' range, got "
        f"{values.min()}..{values.max()}; an out-of-range class has no "
        "logit (indexing would clamp it to another class).")
  return classes


def deletion_curve(
    logits_fn: LogitsFn,
    images: jax.Array,
    saliency: jax.Array,
    pixels_per_step: int = 1,
    classes: jax.Array | None = None,
) -> PerturbationCurve:
  """Deletes pixels (sets them to 0) most salient first; records the score.

  Args:
    logits_fn: maps a batch of images to logits (e.g. an NNX model).
    images: ``(N, H, W, C)``.
    saliency: ``(N, H, W)``; larger is more salient.
    pixels_per_step: pixels deleted per step (all channels of a pixel).
    classes: the class whose score is recorded (default: the class predicted
      on the clean image).

  Returns:
    A :class:`PerturbationCurve`; ``.auc`` is the Deletion AUC (lower is
    better).

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: jnp.stack([x.sum((1, 2, 3)), jnp.zeros(len(x))], 1)
    >>> images = jnp.ones((1, 2, 2, 1))
    >>> curve = deletion_curve(logits_fn, images, jnp.zeros((1, 2, 2)), 2)
    >>> curve.fractions, curve.scores.shape
    (Array([0. , 0.5, 1. ], dtype=float32), (1, 3))
  """
  pixels_per_step = _check_curve_inputs(images, saliency, pixels_per_step)
  check_eval_mode(logits_fn, "logits_fn")
  classes = target_classes(logits_fn, images, classes)
  return _perturbation_curve(logits_fn, images, jnp.zeros_like(images),
                             saliency, classes,
                             pixels_per_step=pixels_per_step)


def insertion_curve(
    logits_fn: LogitsFn,
    images: jax.Array,
    saliency: jax.Array,
    pixels_per_step: int = 1,
    classes: jax.Array | None = None,
    blur_sigma: float = 2.0,
) -> PerturbationCurve:
  """Inserts pixels, most salient first, into a blurred copy; records the score.

  Args:
    logits_fn: maps a batch of images to logits.
    images: ``(N, H, W, C)``.
    saliency: ``(N, H, W)``.
    pixels_per_step: pixels inserted per step.
    classes: the class whose score is recorded (default: predicted on the
      clean image).
    blur_sigma: the Gaussian blur of the starting image, in pixels.

  Returns:
    A :class:`PerturbationCurve`; ``.auc`` is the Insertion AUC (higher is
    better).

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: jnp.stack([x.sum((1, 2, 3)), jnp.zeros(len(x))], 1)
    >>> images = jnp.ones((1, 2, 2, 1))
    >>> insertion_curve(logits_fn, images, jnp.zeros((1, 2, 2))).scores.shape
    (1, 5)
  """
  pixels_per_step = _check_curve_inputs(images, saliency, pixels_per_step)
  check_eval_mode(logits_fn, "logits_fn")
  classes = target_classes(logits_fn, images, classes)
  return _perturbation_curve(logits_fn, gaussian_blur(images, blur_sigma),
                             images, saliency, classes,
                             pixels_per_step=pixels_per_step)


def deletion_auc(
    logits_fn: LogitsFn,
    images: jax.Array,
    saliency: jax.Array,
    pixels_per_step: int = 1,
    classes: jax.Array | None = None,
) -> jax.Array:
  """The Deletion AUC of each image (lower is better), in [0, 1].

  ``deletion_curve(...).auc``: the mean (trapezoid rule over the fraction of
  pixels deleted) of the softmax score of the clean image's class.

  Args:
    logits_fn: maps a batch of images to logits.
    images: ``(N, H, W, C)``.
    saliency: ``(N, H, W)``.
    pixels_per_step: pixels deleted per step.
    classes: the scored class (default: predicted on the clean image).

  Returns:
    ``(N,)`` areas.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: jnp.stack([x.sum((1, 2, 3)), jnp.zeros(len(x))], 1)
    >>> deletion_auc(logits_fn, jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 2, 2))).shape
    (1,)
  """
  return deletion_curve(logits_fn, images, saliency, pixels_per_step,
                        classes).auc


def insertion_auc(
    logits_fn: LogitsFn,
    images: jax.Array,
    saliency: jax.Array,
    pixels_per_step: int = 1,
    classes: jax.Array | None = None,
    blur_sigma: float = 2.0,
) -> jax.Array:
  """The Insertion AUC of each image (higher is better), in [0, 1].

  ``insertion_curve(...).auc``: the mean score while the image's pixels are
  inserted, most salient first, into its blurred copy.

  Args:
    logits_fn: maps a batch of images to logits.
    images: ``(N, H, W, C)``.
    saliency: ``(N, H, W)``.
    pixels_per_step: pixels inserted per step.
    classes: the scored class (default: predicted on the clean image).
    blur_sigma: the Gaussian blur of the starting image, in pixels.

  Returns:
    ``(N,)`` areas.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: jnp.stack([x.sum((1, 2, 3)), jnp.zeros(len(x))], 1)
    >>> insertion_auc(logits_fn, jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 2, 2))).shape
    (1,)
  """
  return insertion_curve(logits_fn, images, saliency, pixels_per_step,
                         classes, blur_sigma).auc

"""Explainable adversarial examples by latent editing, and gradient baselines.

The latent-edit attack needs no training and no input gradient: it edits a
hidden representation ``h`` (the output of ``layers[layer]``) towards a
target class ``t`` — raising the units class ``t`` reads and lowering those
the true class ``y`` reads — and backtracks the edit to the input:

.. math::
  h' = h + α d, \\quad δ = \\text{backtrack}(h') − \\text{backtrack}(h), \\quad
  x_{adv} = \\text{clip}(x + ε\\, δ / ‖δ‖₂)

``d`` is how the head reads ``h``: for the layer feeding the last ``Linear``,
``d = K[:, t] − K[:, y]`` (the head's weights); for earlier layers, the same
read-out through the rest of the network (a vector-Jacobian product of the
head with ``e_t − e_y``). The paper reports that on a Bort network the
perturbation is a visible pattern (strokes of the target class), because
backtracking is nearly an orthogonal projection. FGSM and PGD in the L2 norm
are the usual baselines at the same ``ε``; every ``ε`` here is the norm
measured after clipping to the valid pixel range.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bort_jax import validation
from bort_jax.explain import backtracking
from bort_jax.explain import metrics
from bort_jax.explain.eval_mode import check_eval_mode
from bort_jax.explain.model_jit import jit_per_model

LogitsFn = Callable[[jax.Array], jax.Array]


def _per_example_norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))))


def _expand(v: jax.Array, like: jax.Array) -> jax.Array:
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _scale_to_norm(delta: jax.Array, epsilon: Any) -> jax.Array:
  norms = _per_example_norm(delta)
  scale = jnp.asarray(epsilon, delta.dtype) / jnp.where(norms > 0, norms, 1.0)
  return delta * _expand(jnp.broadcast_to(scale, norms.shape), delta)


def _clip(x, clip, images):
  """``x`` clipped to the valid range, widened per pixel to hold ``images``:
  a clean pixel outside the range (traced images, which
  :func:`_check_clip` cannot read) is never moved by the clip itself, so
  the perturbation's norm stays the attack's own."""
  if clip is None:
    return x
  return jnp.clip(x, jnp.minimum(clip[0], images),
                  jnp.maximum(clip[1], images))


def _check_clip(images: jax.Array, clip: Any) -> tuple[float, float] | None:
  """``clip`` is ``None`` or ``(low, high)``, and the images lie within it
  where their values are known (not traced). Returns it as two Python
  floats (a setting of the compiled code: NumPy float32 bounds made
  bfloat16 images float32), or ``None``."""
  if clip is None:
    return None
  try:
    low, high = (float(v) for v in clip)
  except (TypeError, ValueError):
    raise ValueError(
        f"clip must be (low, high), the valid input range, or None; got "
        f"{clip!r}.") from None
  if not low < high:
    raise ValueError(f"clip must be (low, high) with low < high, got {clip!r}.")
  if isinstance(images, jax.core.Tracer) or not images.size:
    return low, high  # traced: _clip widens the range instead
  # Two scalars leave the device, not the batch (evaluated now, also when
  # concrete images are closed over by a jitted function).
  with jax.ensure_compile_time_eval():
    least, most = float(jnp.min(images)), float(jnp.max(images))
  if least < low or most > high:
    raise ValueError(
        f"images lie in [{least:.4g}, {most:.4g}], outside "
        f"clip={clip!r}: clipping would move the clean images too, beyond "
        f"epsilon; pass the range your inputs live in (e.g. clip=(float("
        f"images.min()), float(images.max())) for normalised images), or "
        f"clip=None.")
  return low, high


def _check_epsilon(epsilon: Any, images: Any, name: str = "epsilon",
                   zero: bool = True) -> None:
  """ε (or a step, ``name``) is a norm per image: a scalar or ``(N,)``,
  finite and ``>= 0`` (``> 0`` unless ``zero``) where it is known (not
  traced)."""
  shape, batch = np.shape(epsilon), np.shape(images)[:1]
  if shape not in ((), batch):
    raise ValueError(
        f"{name} must be a scalar or one {'norm' if zero else 'value'} per "
        f"image, shape {batch}, got shape {shape}.")
  try:
    values = np.asarray(epsilon, dtype=np.float64)
  except jax.errors.TracerArrayConversionError:
    return
  if not (np.all(np.isfinite(values))
          and np.all(values >= 0 if zero else values > 0)):
    raise ValueError(
        f"{name} must be a finite "
        f"{'L2 norm >= 0' if zero else 'number > 0'} (a scalar or one per "
        f"image), got {epsilon!r}; a negative one would step down the loss"
        + ("." if zero else ", and 0 moves nothing."))


def _labels(logits_fn: LogitsFn, images: jax.Array, labels: Any
            ) -> jax.Array:
  """One integer class per image within the logits' range (a ``(N, 1)``
  array failed inside the loss's VJP; an out-of-range one has no logit)."""
  if labels is None:
    raise ValueError("labels must be one integer class per image, got None.")
  return metrics.target_classes(logits_fn, images, labels, "labels")


def _perturb(images, direction, epsilon, clip, iterations=30):
  """``clip(x + s·d)`` with s chosen so that ‖clip(x + s·d) − x‖₂ = ε.

  Clipping shortens a step; the step length ``s`` is found by bisection (the
  clipped norm grows monotonically with ``s``) so that attacks are compared
  at the norm they actually use. A step that cannot reach ε even when 64×
  longer saturates.
  """
  unit = _scale_to_norm(direction, 1.0)
  if clip is None:
    return images + unit * _expand(
        jnp.broadcast_to(jnp.asarray(epsilon, images.dtype), images.shape[:1]),
        images)
  epsilon = jnp.broadcast_to(jnp.asarray(epsilon, images.dtype),
                             images.shape[:1])

  def norm_at(length):
    return _per_example_norm(
        _clip(images + unit * _expand(length, images), clip, images)
        - images)

  def bisect(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    short = norm_at(middle) < epsilon
    return jnp.where(short, middle, low), jnp.where(short, high, middle)

  _, high = jax.lax.fori_loop(
      0, iterations, bisect, (jnp.zeros_like(epsilon), 64.0 * epsilon))
  return _clip(images + unit * _expand(high, images), clip, images)


def perturbation_norms(images: jax.Array, adversarial: jax.Array) -> jax.Array:
  """The L2 norm of each perturbation, ``‖x_adv − x‖₂``.

  Examples:
    >>> import jax.numpy as jnp
    >>> perturbation_norms(jnp.zeros((1, 2, 2)), jnp.full((1, 2, 2), 0.5))
    Array([1.], dtype=float32)
  """
  return _per_example_norm(adversarial - images)


def attack_success_rate(
    logits_fn: LogitsFn, adversarial: jax.Array, labels: jax.Array
) -> jax.Array:
  """The fraction of adversarial examples not classified as their label.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: jnp.stack([x[:, 0], -x[:, 0]], 1)
    >>> attack_success_rate(logits_fn, jnp.array([[1.0], [-1.0]]),
    ...                     jnp.array([0, 0]))
    Array(0.5, dtype=float32)
  """
  check_eval_mode(logits_fn, "logits_fn")
  labels = _labels(logits_fn, adversarial, labels)
  predictions = jnp.argmax(logits_fn(adversarial), axis=-1)
  return jnp.mean((predictions != labels).astype(jnp.float32))


def runner_up_classes(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The highest-scoring class other than the label, per example.

  Examples:
    >>> import jax.numpy as jnp
    >>> runner_up_classes(jnp.array([[3.0, 1.0, 2.0]]), jnp.array([0]))
    Array([2], dtype=int32)
  """
  masked = jnp.where(
      jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jnp.argmax(masked, axis=-1)


def latent_edit_attack(
    model: Any,
    images: jax.Array,
    labels: jax.Array,
    *,
    layer: int,
    epsilon: Any,
    targets: jax.Array | None = None,
    strength: float = 1.0,
    relu: str = "pass",
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> jax.Array:
  """Adversarial examples by editing ``layers[layer]``'s output and backtracking.

  Args:
    model: a sequential invertible model (e.g. ``InvertibleCNN``).
    images: ``(N, *input_shape)``.
    labels: ``(N,)`` true classes.
    layer: the hidden layer to edit; the layers above it read the edit.
    epsilon: the L2 norm of each perturbation (scalar or ``(N,)``), after
      clipping: the step is lengthened (bisection) to make up for clipped
      pixels.
    targets: ``(N,)`` target classes (default: the runner-up class).
    strength: ``α = strength · ‖h‖ / ‖d‖``: the edit relative to the
      representation (backtracking is not linear, so the size matters).
    relu: ``"pass"`` or ``"guided"`` for ReLU layers.
    clip: the valid input range ``(low, high)``, or ``None``; images
      outside it are refused (where traced, the range is widened per pixel
      to hold them, so that clipping never moves a clean pixel).

  Returns:
    The adversarial images, ``images``' shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from bort_jax.models.invertible import InvertibleMLP
    >>> mlp = InvertibleMLP((4,), (8,), 3, rngs=nnx.Rngs(0))
    >>> x = jnp.full((2, 4), 0.5)
    >>> x_adv = latent_edit_attack(mlp, x, jnp.array([0, 1]), layer=1,
    ...                            epsilon=0.1)
    >>> [round(float(n), 4) for n in perturbation_norms(x, x_adv)]
    [0.1, 0.1]
  """
  _check_epsilon(epsilon, images)
  _check_epsilon(strength, images, "strength", zero=False)
  images = metrics.floating_images(images)
  clip = _check_clip(images, clip)
  layers = backtracking.model_layers(model)
  if not callable(model):
    raise TypeError(
        f"latent_edit_attack needs the model itself (it reads its logits), "
        f"got a {type(model).__name__} of layers; pass the model, e.g. "
        f"InvertibleSequential(layers, input_shape).")
  stop = backtracking.layer_index(layer, len(layers))
  if stop == len(layers) - 1:
    raise ValueError(
        "latent_edit_attack edits a hidden layer; the last layer has no "
        "read-out above it."
    )
  labels = _labels(model, images, labels)
  if targets is not None:
    targets = metrics.target_classes(model, images, targets, "targets")
    _check_targets(targets, labels)
  return _latent_edit(model, images, labels, targets, epsilon, strength,
                      stop=stop, relu=relu, clip=clip)


@functools.partial(jit_per_model, static_argnames=("stop", "relu", "clip"))
def _latent_edit(model, images, labels, targets, epsilon, strength, *, stop,
                 relu, clip):
  """:func:`latent_edit_attack` of checked inputs (one compile per model)."""
  layers = backtracking.model_layers(model)
  cache = backtracking.forward_cache(model, images)
  hidden, logits = cache[stop + 1], cache[-1]
  if targets is None:
    targets = runner_up_classes(logits, labels)
  classes = logits.shape[-1]
  readout = (jax.nn.one_hot(targets, classes, dtype=logits.dtype)
             - jax.nn.one_hot(labels, classes, dtype=logits.dtype))

  def head(h):
    for later in layers[stop + 1:]:
      h = later(h)
    return h

  _, vjp = jax.vjp(head, hidden)
  (direction,) = vjp(readout)
  scale = strength * _per_example_norm(hidden) / jnp.maximum(
      _per_example_norm(direction), 1e-12)
  edited = hidden + _expand(scale, direction) * direction
  delta = (backtracking.backtrack(model, edited, stop, cache, relu)
           - backtracking.backtrack(model, hidden, stop, cache, relu))
  # The backtracked edit is in the model's dtype: the images keep theirs,
  # as FGSM's and PGD's do.
  return _perturb(images, delta, epsilon, clip).astype(images.dtype)


def _check_targets(targets: jax.Array, labels: jax.Array) -> None:
  """A targeted edit needs a class other than the true one (where known)."""
  try:
    same = np.flatnonzero(np.asarray(targets) == np.asarray(labels))
  except jax.errors.TracerArrayConversionError:
    return
  if same.size:
    raise ValueError(
        f"targets equal labels for image(s) {same.tolist()}: a targeted "
        "edit needs another class (leave targets=None for the runner-up).")


def _loss_fn(logits_fn, labels):
  def loss(x):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(x), labels))
  return loss


def fgsm_l2(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    epsilon: Any,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> jax.Array:
  """The fast gradient method in L2: one step ``ε ∇ℓ / ‖∇ℓ‖₂``.

  Args:
    logits_fn: maps a batch to logits.
    images: ``(N, …)``.
    labels: ``(N,)`` true classes (the cross-entropy is increased).
    epsilon: the L2 norm of each perturbation (scalar or ``(N,)``), after
      clipping (as in :func:`latent_edit_attack`).
    clip: the valid input range ``(low, high)``, or ``None``; images
      outside it are refused (where traced, the range is widened per pixel
      to hold them, so that clipping never moves a clean pixel).

  Returns:
    The adversarial images.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: jnp.stack([x[:, 0], x[:, 1]], 1)
    >>> x_adv = fgsm_l2(logits_fn, jnp.full((1, 2), 0.5), jnp.array([0]), 0.1)
    >>> jnp.round(x_adv - 0.5, 4)  # 0.1 along ∇ℓ ∝ (−1, 1)
    Array([[-0.0707,  0.0707]], dtype=float32)

  References:
    Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial
    Examples", 2015.
  """
  check_eval_mode(logits_fn, "logits_fn")
  _check_epsilon(epsilon, images)
  images = metrics.floating_images(images)
  clip = _check_clip(images, clip)
  labels = _labels(logits_fn, images, labels)
  return _fgsm(logits_fn, images, labels, epsilon, clip=clip)


@functools.partial(jit_per_model, static_argnames=("clip",))
def _fgsm(logits_fn, images, labels, epsilon, *, clip):
  """:func:`fgsm_l2` of checked inputs (one compile per model)."""
  grads = jax.grad(_loss_fn(logits_fn, labels))(images)
  return _perturb(images, grads, epsilon, clip)


def pgd_l2(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    epsilon: Any,
    steps: int = 20,
    step_size: Any = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> jax.Array:
  """Projected gradient descent in the L2 ball of radius ε (no random start).

  Each step moves ``step_size · ∇ℓ / ‖∇ℓ‖₂``, projects the perturbation onto
  ``‖δ‖₂ ≤ ε`` and clips to the valid range; a ``lax.fori_loop``.

  Args:
    logits_fn: maps a batch to logits.
    images: ``(N, …)``.
    labels: ``(N,)`` true classes.
    epsilon: the radius (scalar or ``(N,)``).
    steps: the number of steps.
    step_size: default ``2.5 ε / steps``.
    clip: the valid input range ``(low, high)``, or ``None``; images
      outside it are refused (where traced, the range is widened per pixel
      to hold them, so that clipping never moves a clean pixel).

  Returns:
    The adversarial images.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits_fn = lambda x: jnp.stack([x[:, 0], x[:, 1]], 1)
    >>> x_adv = pgd_l2(logits_fn, jnp.full((1, 2), 0.5), jnp.array([0]), 0.1)
    >>> bool(perturbation_norms(jnp.full((1, 2), 0.5), x_adv)[0] <= 0.1 + 1e-6)
    True

  References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", 2018.
  """
  check_eval_mode(logits_fn, "logits_fn")
  _check_epsilon(epsilon, images)
  if step_size is not None:
    _check_epsilon(step_size, images, "step_size", zero=False)
  steps = validation.check_positive_int("steps", steps)
  images = metrics.floating_images(images)
  clip = _check_clip(images, clip)
  labels = _labels(logits_fn, images, labels)
  return _pgd(logits_fn, images, labels, epsilon, step_size, steps=steps,
              clip=clip)


@functools.partial(jit_per_model, static_argnames=("steps", "clip"))
def _pgd(logits_fn, images, labels, epsilon, step_size, *, steps, clip):
  """:func:`pgd_l2` of checked inputs (one compile per model)."""
  epsilon = jnp.broadcast_to(jnp.asarray(epsilon, images.dtype),
                             images.shape[:1])
  if step_size is None:
    step_size = 2.5 * epsilon / steps
  grad_fn = jax.grad(_loss_fn(logits_fn, labels))

  def step(_, x):
    x = x + _scale_to_norm(grad_fn(x), step_size)
    delta = x - images
    norms = _per_example_norm(delta)
    factor = jnp.minimum(1.0, epsilon / jnp.where(norms > 0, norms, 1.0))
    return _clip(images + delta * _expand(factor, delta), clip, images)

  return jax.lax.fori_loop(0, steps, step, images)

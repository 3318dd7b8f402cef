"""Bort-SGD, Bort-AdamW and Bort on any optax optimizer: chains of parts."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from bort_jax._src import penalty
from bort_jax._src import validation
from bort_jax._src.dimension_numbers import DimensionNumbersLike
from bort_jax._src.transform import _correction_transform
from bort_jax._src.transform import hyperparameter_value
from bort_jax._src.transform import add_bort_correction


def bort_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    *,
    gamma: optax.ScalarOrSchedule,
    mode: str = "l2-full",
    amplitude: optax.ScalarOrSchedule | str = 1.0,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: Any = None,
    weight_decay_mask: Any = None,
    accumulator_dtype: Any | None = None,
    kernel_options: penalty.KernelOptions | None = None,
) -> optax.GradientTransformation:
  """SGD with the coupled Bort correction (the paper's Bort-SGD).

  The correction joins the gradient before weight decay and momentum, so it
  flows through the momentum buffer like L2 decay:

  .. math::
    g ← ∇L + γ Δ(W) + wd · W,  \\quad b ← μ b + g,  \\quad W ← W − lr · b

  (``b = g`` on the first step; Nesterov uses ``g + μ b``). With ``gamma=0``
  this is exactly :func:`optax.sgd` (plus ``optax.add_decayed_weights``).

  Args:
    learning_rate: a scalar or schedule.
    momentum: the momentum ``μ``, or ``None`` for none (as in ``optax.sgd``).
    nesterov: Nesterov momentum.
    weight_decay: the coupled (L2) decay ``wd``.
    gamma: the Bort strength ``γ ≥ 0``, a scalar or schedule.
    mode: the Bort mode (see :func:`add_bort_correction`).
    amplitude: ``c > 0``, a schedule, or ``"ada"``.
    dimension_numbers: which leaves are Bort matrices (default: Flax kernels).
    bort_mask: optional mask for the Bort correction (``optax.masked``).
    weight_decay_mask: optional mask for weight decay.
    accumulator_dtype: the momentum buffer's dtype.
    kernel_options: how the full modes' products are computed.

  Returns:
    An :class:`optax.GradientTransformation`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, bort_jax
    >>> params = {"kernel": jnp.array([[1.0, 1.0], [0.0, 1.0]])}
    >>> tx = bort_jax.bort_sgd(0.1, momentum=0.9, gamma=0.5)
    >>> @jax.jit
    ... def step(params, state):  # zero data loss: only Bort acts
    ...   grads = jax.tree.map(jnp.zeros_like, params)
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   params, state = step(params, state)
    >>> jnp.round(params["kernel"] @ params["kernel"].T, 3) + 0.0  # no -0.
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
  """
  parts = [
      add_bort_correction(
          gamma,
          mode,
          amplitude,
          dimension_numbers=dimension_numbers,
          mask=bort_mask,
          kernel_options=kernel_options,
      ),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
  ]
  if momentum is not None:
    parts.append(
        optax.trace(
            decay=momentum,
            nesterov=nesterov,
            accumulator_dtype=accumulator_dtype,
        )
    )
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def bort_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    gamma: optax.ScalarOrSchedule,
    mode: str = "l2-full",
    amplitude: optax.ScalarOrSchedule | str = 1.0,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: Any = None,
    kernel_options: penalty.KernelOptions | None = None,
) -> optax.GradientTransformation:
  """AdamW with the decoupled Bort correction (the paper's Bort-AdamW).

  Adam's moments see only the data gradient; the correction is applied like
  AdamW's decoupled weight decay:

  .. math::
    W ← W − lr · (\\hat m / (\\sqrt{\\hat v} + ε) + wd · W + γ Δ(W))

  It is ``chain(scale_by_adam, add_decayed_weights, add_bort_correction,
  scale_by_learning_rate)``; with ``gamma=0`` it is exactly
  :func:`optax.adamw`. Arguments up to ``mask`` (the weight-decay mask) and
  ``nesterov`` are :func:`optax.adamw`'s.

  Args:
    learning_rate: a scalar or schedule.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to the denominator.
    eps_root: added inside the square root.
    mu_dtype: the first moment's dtype.
    weight_decay: the decoupled weight decay ``wd``.
    mask: the weight-decay mask, as in :func:`optax.adamw`.
    nesterov: Nesterov momentum in Adam.
    gamma: the Bort strength ``γ ≥ 0``, a scalar or schedule.
    mode: the Bort mode (see :func:`add_bort_correction`).
    amplitude: ``c > 0``, a schedule, or ``"ada"``.
    dimension_numbers: which leaves are Bort matrices (default: Flax kernels).
    bort_mask: optional mask for the Bort correction (``optax.masked``).
    kernel_options: how the full modes' products are computed.

  Returns:
    An :class:`optax.GradientTransformation`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, bort_jax
    >>> params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
    >>> tx = bort_jax.bort_adamw(1e-3, gamma=0.1, mode="l1-fullrow",
    ...                          amplitude="ada")
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["kernel"].shape
    (4, 3)
  """
  return optax.chain(
      optax.scale_by_adam(
          b1=b1,
          b2=b2,
          eps=eps,
          eps_root=eps_root,
          mu_dtype=mu_dtype,
          nesterov=nesterov,
      ),
      optax.add_decayed_weights(weight_decay, mask),
      add_bort_correction(
          gamma,
          mode,
          amplitude,
          dimension_numbers=dimension_numbers,
          mask=bort_mask,
          kernel_options=kernel_options,
      ),
      optax.scale_by_learning_rate(learning_rate),
  )


def with_bort(
    optimizer: optax.GradientTransformation,
    *,
    gamma: optax.ScalarOrSchedule,
    mode: str = "l2-full",
    amplitude: optax.ScalarOrSchedule | str = 1.0,
    placement: str = "coupled",
    learning_rate: optax.ScalarOrSchedule | None = None,
    dimension_numbers: DimensionNumbersLike = None,
    mask: Any = None,
    kernel_options: penalty.KernelOptions | None = None,
) -> optax.GradientTransformation:
  """Adds Bort to any optax optimizer, coupled or decoupled.

  - ``placement="coupled"``: ``chain(add_bort_correction, optimizer)``: the
    optimizer sees ``∇L + γ Δ(W)`` as its gradient (momentum, adaptive scaling
    and trust ratios all act on the correction).
  - ``placement="decoupled"``: the optimizer sees only ``∇L`` and its update
    is followed by ``W ← W − lr · γ Δ(W)``, AdamW's decoupled decay rule. The
    optimizer's ``learning_rate`` (scalar or the same schedule) must be given.

  Args:
    optimizer: any :class:`optax.GradientTransformation`.
    gamma: the Bort strength ``γ ≥ 0``, a scalar or schedule.
    mode: the Bort mode (see :func:`add_bort_correction`).
    amplitude: ``c > 0``, a schedule, or ``"ada"``.
    placement: ``"coupled"`` or ``"decoupled"``.
    learning_rate: the optimizer's learning rate; required when decoupled.
    dimension_numbers: which leaves are Bort matrices (default: Flax kernels).
    mask: optional mask for the Bort correction (``optax.masked``).
    kernel_options: how the full modes' products are computed.

  Returns:
    An :class:`optax.GradientTransformation`.

  Examples:
    >>> import jax.numpy as jnp, optax, bort_jax
    >>> lion = bort_jax.with_bort(optax.lion(1e-4), gamma=0.1)  # coupled
    >>> lamb = bort_jax.with_bort(optax.lamb(1e-3), gamma=0.1,
    ...                           placement="decoupled", learning_rate=1e-3)
    >>> params = {"kernel": jnp.ones((3, 2))}
    >>> updates, _ = lamb.update(params, lamb.init(params), params)
    >>> updates["kernel"].shape
    (3, 2)
  """
  validation.check_placement(placement)
  kernel_options = validation.check_bort_arguments(
      gamma, mode, amplitude, kernel_options
  )
  if placement == "coupled":
    strength = gamma
  elif learning_rate is None:
    raise ValueError(
        "with_bort(placement='decoupled') needs the optimizer's learning_rate:"
        " the correction is applied as W ← W − lr · γ Δ(W)."
    )
  else:
    validation.check_strength(learning_rate, "learning_rate")

    # The optimizer's output is already a step (−lr · direction).
    def strength(count):
      lr = hyperparameter_value(learning_rate, count)
      return -jnp.asarray(lr) * hyperparameter_value(gamma, count)

  bort = _correction_transform(
      strength, mode, amplitude, dimension_numbers, kernel_options, mask
  )
  if placement == "coupled":
    return optax.chain(bort, optimizer)
  return optax.chain(optimizer, bort)

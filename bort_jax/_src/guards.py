"""A non-finite guard that checks what the optimizer produces, not only its input."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bort_jax._src import validation


class SkipNonfiniteState(NamedTuple):
  """State of :func:`skip_nonfinite_steps` (the fields of optax's
  ``ApplyIfFiniteState``).

  Attributes:
    notfinite_count: consecutive skipped steps (reset by a finite step).
    last_finite: whether the last step was finite.
    total_notfinite: every non-finite step since ``init`` (never reset).
    inner_state: the inner transformation's state.
  """

  notfinite_count: jax.Array  # shape=(), dtype=jnp.int32
  last_finite: jax.Array  # shape=(), dtype=jnp.bool_
  total_notfinite: jax.Array  # shape=(), dtype=jnp.int32
  inner_state: Any


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def skip_nonfinite_steps(
    inner: optax.GradientTransformation,
    max_consecutive_errors: int,
) -> optax.GradientTransformationExtraArgs:
  """Skips a step whose gradients or whose resulting updates are not finite.

  Runs ``inner`` on every step, then keeps its updates and new state only if
  both the incoming gradients and the updates it produced are finite.
  Otherwise the step returns zero updates and keeps the previous inner state
  (momentum and step counts do not move), and the skip is counted. After
  more than ``max_consecutive_errors`` consecutive skips the step is taken
  anyway, as in :func:`optax.apply_if_finite`.

  :func:`optax.apply_if_finite` checks only the incoming gradients. A Bort
  optimizer can produce non-finite updates from finite gradients: the l2
  corrections are cubic in the weights, so Bort-SGD ``l2-full`` with γ = 1 on
  rows of norm ≈ 2.4 overflows within a few steps, and a NaN weight gives a
  NaN correction whatever its gradient. This wrapper catches both.

  Args:
    inner: the transformation to guard.
    max_consecutive_errors: how many consecutive non-finite steps to skip
      (a non-negative int) before giving up and applying them.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is a
    :class:`SkipNonfiniteState`.

  Raises:
    ValueError: if ``inner`` is not a transformation or
      ``max_consecutive_errors`` is not a non-negative int.

  Examples:
    >>> import jax.numpy as jnp, optax, bort_jax
    >>> params = {"kernel": jnp.array([[jnp.nan, 0.0], [0.0, 1.0]])}
    >>> tx = bort_jax.skip_nonfinite_steps(
    ...     bort_jax.bort_sgd(0.1, gamma=0.1), max_consecutive_errors=3)
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.zeros((2, 2))}  # finite gradients
    >>> updates, state = tx.update(grads, state, params)
    >>> int(state.notfinite_count), float(jnp.abs(updates["kernel"]).sum())
    (1, 0.0)
  """
  validation.check_transformation(inner, "skip_nonfinite_steps")
  max_errors = validation.check_nonnegative_int("max_consecutive_errors",
                                                max_consecutive_errors)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SkipNonfiniteState(
        notfinite_count=jnp.zeros([], jnp.int32),
        last_finite=jnp.array(True, jnp.bool_),
        total_notfinite=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, new_inner = inner.update(updates, state.inner_state, params,
                                          **extra_args)
    finite = jnp.logical_and(_all_finite(updates), _all_finite(new_updates))
    count = jnp.where(finite, jnp.zeros([], jnp.int32),
                      optax.safe_increment(state.notfinite_count))
    take = jnp.logical_or(finite, count > max_errors)
    pick = lambda new, old: jnp.where(take, new, old)
    new_updates = jax.tree.map(lambda u: pick(u, jnp.zeros_like(u)),
                               new_updates)
    new_inner = jax.tree.map(pick, new_inner, state.inner_state)
    total = jnp.where(finite, state.total_notfinite,
                      optax.safe_increment(state.total_notfinite))
    return new_updates, SkipNonfiniteState(count, finite, total, new_inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

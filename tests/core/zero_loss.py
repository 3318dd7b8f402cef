"""Running a transformation with zero data gradients: only Bort acts."""

import jax
import jax.numpy as jnp
import optax


def run_zero_loss(tx, params, steps):
  """``steps`` jitted updates of ``tx`` with zero gradients.

  Returns:
    ``(params, state)`` after the steps.
  """
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(zeros, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state

"""An optax ``update`` called outside ``jit``, compiled once."""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import jax
import numpy as np


def concrete(leaf: Any) -> bool:
  """Whether ``leaf`` is a value, not a tracer of some transformation."""
  return (isinstance(leaf, (jax.Array, np.ndarray, numbers.Number))
          and not isinstance(leaf, jax.core.Tracer))


def jit_when_eager(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn``, run through one ``jax.jit`` of it when called eagerly.

  An update built of ``lax.cond``, ``lax.map`` or ``lax.fori_loop`` over
  closures traces and compiles them again on every eager call (the closures
  are new each time: an SVD branch, or a scan, compiled on every step).
  Called with concrete arrays only, ``fn`` goes through its own jit, compiled
  once per shapes; under any trace (``jit``, ``vmap``, ``grad``,
  ``shard_map``) it runs as it is, inside the caller's program. The cache is
  this jit's, so it lasts as long as ``fn``: under
  ``optax.inject_hyperparams``, which builds the transformation anew on
  every update, the correction takes its numbers as arguments of one
  shared ``fn`` (``transform._correction_program``) and the start does
  nothing eagerly after its first step, so neither compiles again.

  Args:
    fn: a function of pytrees of arrays.

  Returns:
    A function with ``fn``'s signature and results.

  Examples:
    >>> import jax.numpy as jnp
    >>> double = jit_when_eager(lambda x: 2 * x)
    >>> int(double(jnp.ones(())))
    2
  """
  jitted = jax.jit(fn)

  @functools.wraps(fn)
  def call(*args):
    leaves = jax.tree.leaves(args)
    if leaves and all(concrete(leaf) for leaf in leaves):
      return jitted(*args)
    return fn(*args)

  return call

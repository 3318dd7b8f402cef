"""The explain tools compile once per model, also when called eagerly."""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx


def _cacheable(graphdef: Any, state: Any) -> bool:
  """Whether a split module can go through the cache: its graph can key it
  (a dict or a list held as a plain attribute cannot) and its state is
  arrays (a Python number or string in a Variable, possibly used as a
  shape, would become a tracer)."""
  try:
    hash(graphdef)
  except TypeError:
    return False
  return all(isinstance(leaf, (jax.Array, np.ndarray))
             for leaf in jax.tree.leaves(state))


def jit_per_model(fn: Callable[..., Any],
                  static_argnames: Sequence[str] = ()) -> Callable[..., Any]:
  """``fn(model, *args)``, compiled once per model when it is an ``nnx.Module``.

  Called eagerly, a ``lax.map`` or ``lax.fori_loop`` compiles its body on
  every call: the body is a new closure each time, so JAX's cache never
  hits (about a second a call for a small CNN's backtracking saliency,
  against milliseconds once compiled). With the module passed to
  ``jax.jit`` as its graph and state, the whole computation is cached by the
  module's graph, the static arguments and the arrays' shapes, and each call
  reads the module's current state (``nnx.split``: its Variables are
  arguments, never constants of the compiled code). The tools only read the
  model: nothing is written back to it, so this also works where the model
  is closed over by the user's ``jax.jit`` (``nnx.jit`` would update it from
  another trace level, which Flax refuses).

  The cache is keyed as ``nnx.jit`` keys it: by the graph, whose plain
  (non-Variable) attributes are compared by equality. What the model reads
  from outside its Variables is traced once, as under ``nnx.jit``: a bound
  method of another module, or a mutable plain object held as an attribute,
  keeps the values of the first call. Such a model is best given as a
  ``logits_fn`` closure.

  Any other callable (a ``logits_fn`` closure) is called as it is: a cache
  keyed on a closure would keep the weights it closed over at its first
  call. Pass the model itself, or jit the calling code. So is a module that
  cannot go through the cache (a dict or a list held as a plain attribute,
  a Python number or string in a Variable): it runs as before, compiling on
  every eager call.

  Args:
    fn: ``fn(model, *args, **kwargs)``; the names in ``static_argnames`` are
      hashable settings (Python ints, strings, tuples).
    static_argnames: the keyword arguments that select the compiled code.

  Returns:
    A function of ``fn``'s signature.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> def scaled(model, x, *, factor):
    ...   return factor * model(x)
    >>> f = jit_per_model(scaled, static_argnames=("factor",))
    >>> layer = nnx.Linear(2, 1, use_bias=False,
    ...                    kernel_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
    >>> f(layer, jnp.ones((1, 2)), factor=3).tolist()
    [[6.0]]
    >>> f(lambda x: x.sum(1, keepdims=True), jnp.ones((1, 2)), factor=3).tolist()
    [[6.0]]
  """
  static_argnames = tuple(static_argnames)

  @functools.partial(jax.jit, static_argnames=("graphdef", *static_argnames))
  def jitted(graphdef, state, *args, **kwargs):
    return fn(nnx.merge(graphdef, state), *args, **kwargs)

  @functools.wraps(fn)
  def call(model: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(model, nnx.Module):
      graphdef, state = nnx.split(model)
      if _cacheable(graphdef, state):
        return jitted(graphdef, state, *args, **kwargs)
    return fn(model, *args, **kwargs)

  return call

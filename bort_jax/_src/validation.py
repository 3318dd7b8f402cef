"""The one place that checks user input, so bad values fail at construction."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bort_jax._src import penalty


def _concrete_scalar(name: str, value: Any) -> float | None:
  """The value as a float, or None when it is traced (inject_hyperparams)."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, bool) or not isinstance(
      value, (numbers.Real, np.ndarray, np.generic, jax.Array)
  ):
    raise ValueError(f"{name} must be a number or a schedule, got {value!r}.")
  array = np.asarray(value)
  if array.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {array.shape}.")
  return float(array)


def check_strength(value: Any, name: str = "gamma") -> None:
  """A non-negative scalar or a schedule (callable of the step count)."""
  if callable(value):
    return
  number = _concrete_scalar(name, value)
  if number is not None and not number >= 0:  # also rejects NaN
    raise ValueError(f"{name} must be >= 0, got {value!r}.")


def check_amplitude(value: Any) -> None:
  """A positive number, a schedule, or "ada"."""
  if isinstance(value, str):
    if value != penalty.ADA:
      raise ValueError(
          f"amplitude must be a positive number, a schedule or 'ada', got "
          f"{value!r}."
      )
    return
  if callable(value):
    return
  try:
    number = _concrete_scalar("amplitude", value)
  except ValueError as e:
    raise ValueError(
        "amplitude must be a positive number, a schedule or 'ada', got "
        f"{value!r}."
    ) from e
  if number is not None and not (number > 0 and np.isfinite(number)):
    raise ValueError(
        f"amplitude must be a positive number, a schedule or 'ada', got "
        f"{value!r}."
    )


def check_kernel_options(options: penalty.KernelOptions) -> None:
  """Checks the block size and the reduced-precision Gram dtype."""
  block = options.block_size
  if block is not None and (
      isinstance(block, bool) or not isinstance(block, int) or block <= 0
  ):
    raise ValueError(f"block_size must be a positive int or None, got {block!r}.")
  if options.batch_products not in (None, True, False):
    raise ValueError(
        f"batch_products must be True, False or None, got "
        f"{options.batch_products!r}."
    )
  if options.gram_dtype is not None and not jnp.issubdtype(
      options.gram_dtype, jnp.floating
  ):
    raise ValueError(
        f"gram_dtype must be a floating dtype (e.g. jnp.bfloat16) or None, "
        f"got {options.gram_dtype!r}."
    )


def check_placement(placement: str) -> None:
  if placement not in ("coupled", "decoupled"):
    raise ValueError(
        f"placement must be 'coupled' or 'decoupled', got {placement!r}."
    )


def check_bort_arguments(
    gamma: Any, mode: str, amplitude: Any, kernel_options
) -> penalty.KernelOptions:
  """Checks every Bort argument; returns the kernel options (defaults filled)."""
  penalty.check_mode(mode)
  check_strength(gamma, "gamma")
  check_amplitude(amplitude)
  kernel_options = kernel_options or penalty.KernelOptions()
  check_kernel_options(kernel_options)
  return kernel_options

"""Wall-clock timing of jitted functions and the machine's matmul rate."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp


def seconds(fn: Callable, *args, repeats: int = 5, warmup: int = 2) -> float:
  """The median wall time of ``fn(*args)`` after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_flops_per_second(size: int, dtype=jnp.float32,
                            repeats: int = 5) -> float:
  """The measured rate of one large square matmul at JAX's default precision."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (size, size), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  return 2.0 * size**3 / seconds(matmul, a, b, repeats=repeats)


def device_name() -> str:
  device = jax.devices()[0]
  return f"{device.platform}:{device.device_kind} x{jax.device_count()}"

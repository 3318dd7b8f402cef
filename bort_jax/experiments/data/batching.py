"""One epoch of shuffled minibatches over NumPy arrays."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int | np.random.Generator | None = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields one epoch of ``(x, y)`` minibatches.

  Args:
    x: inputs, batched along axis 0.
    y: targets, with ``len(y) == len(x)``.
    batch_size: examples per batch (positive).
    seed: the shuffle's seed, or a ``np.random.Generator`` (which advances,
      so reusing it gives a new order each epoch); ``None`` is unseeded.
    shuffle: visit the examples in a random order instead of in order.
    drop_remainder: skip the last batch if it is smaller than
      ``batch_size``; under ``jax.jit`` this keeps every batch one shape.

  Returns:
    An iterator of ``(x_batch, y_batch)`` NumPy arrays. Each example appears
    exactly once per epoch (at most once with ``drop_remainder``).

  Examples:
    >>> import numpy as np
    >>> x, y = np.arange(10), np.arange(10) % 2
    >>> [xb.tolist() for xb, _ in batches(x, y, 4, shuffle=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> len(list(batches(x, y, 4, seed=1, drop_remainder=True)))
    2
    >>> for epoch in range(2):  # a new order each epoch, reproducibly
    ...   for xb, yb in batches(x, y, 5, seed=epoch):
    ...     pass
  """
  if len(x) != len(y):
    raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
  is_int = isinstance(batch_size, (int, np.integer))
  if not is_int or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  # Checked above, not in the generator, so bad arguments fail at the call.
  order = np.random.default_rng(seed).permutation(len(x)) if shuffle else None
  return _batches(x, y, int(batch_size), order, drop_remainder)


def _batches(x, y, batch_size, order, drop_remainder):
  n = len(x)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    if order is None:
      yield x[start : start + batch_size], y[start : start + batch_size]
    else:
      idx = order[start : start + batch_size]
      yield x[idx], y[idx]

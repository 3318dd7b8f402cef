"""Float64 NumPy references written straight from the paper's formulas (no JAX)."""

import numpy as np


def correction(w: np.ndarray, mode: str, c: float = 1.0,
               tau: float = 0.01) -> np.ndarray:
  """Δ(W) for one matrix ``w`` (m, n) whose rows are output units.

  ``tau`` is the Huber modes' width relative to ``c``.
  """
  w = np.asarray(w, np.float64)
  gram, hgram = w @ w.T, w.T @ w
  row_sq, col_sq = np.sum(w * w, axis=1), np.sum(w * w, axis=0)
  m, n = w.shape
  return {
      "l2-full": (gram - c * np.eye(m)) @ w,
      "l2-row": (row_sq - c)[:, None] * w,
      "l2-col": w * (col_sq - c)[None, :],
      "l1-fullrow": np.sign(gram - c * np.eye(m)) @ w,
      "l1-fullcol": w @ np.sign(hgram - c * np.eye(n)),
      "l1-row": np.sign(row_sq - c)[:, None] * w,
      "l1-col": w * np.sign(col_sq - c)[None, :],
      "huber-fullrow": np.clip((gram - c * np.eye(m)) / (tau * c), -1, 1) @ w,
      "huber-fullcol": w @ np.clip((hgram - c * np.eye(n)) / (tau * c), -1, 1),
  }[mode]


def torch_layout(kernel: np.ndarray) -> np.ndarray:
  """A Flax kernel (..., in, out) as PyTorch's (out, fan_in) matrix."""
  kernel = np.asarray(kernel, np.float64)
  return kernel.reshape(-1, kernel.shape[-1]).T


def from_torch_layout(w: np.ndarray, shape) -> np.ndarray:
  return w.T.reshape(shape)

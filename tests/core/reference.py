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
  if m > n and mode in ("l1-fullrow", "huber-fullrow"):
    # More units than fan-in: w wᵀ = cI has no solution, so the full modes
    # constrain the feasible side wᵀ w = cI (l2-full is the same there).
    return correction(w, mode.replace("row", "col"), c, tau)
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


def ada(w: np.ndarray, mode: str = "l2-full") -> float:
  """"ada" for one matrix ``w`` (m, n), rows the units: the rows' squared
  mean norm, as in the published code, but for a full mode on the units
  when ``m > n``, the columns' (the feasible side)."""
  w = np.asarray(w, np.float64)
  feasible = mode in ("l2-full", "l1-fullrow", "huber-fullrow")
  axis = 0 if feasible and w.shape[0] > w.shape[1] else 1
  return float(np.mean(np.linalg.norm(w, axis=axis)) ** 2)

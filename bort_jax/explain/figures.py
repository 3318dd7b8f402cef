"""Figures for explanations (matplotlib, no pyplot state, PNG-ready).

Each function returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (so it works headless and in threads); :func:`save_figure` writes
it with the Agg backend. matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Mapping, Sequence

import numpy as np

from bort_jax.explain import metrics

#: What to install when matplotlib is missing, as ``bort-jax`` says it.
MATPLOTLIB_HINT = ('bort_jax.explain figures need matplotlib, which is not '
                   'installed: pip install "bort_jax[app]" (or pip install '
                   'matplotlib).')


def _matplotlib(module: str):
  """Imports a matplotlib module, or raises an ImportError saying what to
  install (a bare ModuleNotFoundError names no fix)."""
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] != "matplotlib":
      raise  # matplotlib is there but broken: its own error says why
    raise ImportError(MATPLOTLIB_HINT, name=e.name) from None


def _figure(rows: int, cols: int, cell: float = 1.3):
  Figure = _matplotlib("matplotlib.figure").Figure  # an optional dependency

  fig = Figure(figsize=(cell * cols + 1.2, cell * rows + 0.3),
               layout="constrained")
  axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  return fig, axes


def _image(x: Any) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  return x


def _show(ax, x, cmap="gray", vmin=0.0, vmax=1.0):
  x = _image(x)
  ax.imshow(np.clip(x, vmin, vmax) if x.ndim == 3 else x,
            cmap=None if x.ndim == 3 else cmap, vmin=vmin, vmax=vmax,
            interpolation="nearest")


def _row_label(ax, text):
  ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8)


def plot_reconstructions(
    images: Any, reconstructions: Mapping[str, Any], max_images: int = 8
):
  """Inputs (first row) above each method's reconstruction (one row each).

  Args:
    images: ``(N, H, W, C)`` in [0, 1].
    reconstructions: row label → ``(N, H, W, C)`` (clipped to [0, 1] for
      display).
    max_images: columns shown.

  Returns:
    A matplotlib ``Figure``.

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((2, 4, 4, 1))
    >>> fig = plot_reconstructions(x, {"Bort": x, "AdamW": x})
    >>> len(fig.axes)
    6
  """
  images = np.asarray(images)[:max_images]
  rows = [("input", images)] + [
      (k, np.asarray(v)[:max_images]) for k, v in reconstructions.items()]
  fig, axes = _figure(len(rows), len(images))
  for r, (label, batch) in enumerate(rows):
    for c in range(len(images)):
      _show(axes[r, c], batch[c])
    _row_label(axes[r, 0], label)
  return fig


def plot_saliency(images: Any, maps: Mapping[str, Any], max_images: int = 8):
  """Inputs above each method's saliency map (``(N, H, W)`` in [0, 1]).

  Raises:
    ValueError: a method's maps are fewer than the images shown, or not
      ``(H, W)`` each (they were drawn over the images all the same).

  Examples:
    >>> import numpy as np
    >>> fig = plot_saliency(np.zeros((3, 4, 4, 1)), {"grad": np.zeros((3, 4, 4))})
    >>> len(fig.axes)
    6
  """
  images = np.asarray(images)[:max_images]
  fig, axes = _figure(1 + len(maps), len(images))
  for c in range(len(images)):
    _show(axes[0, c], images[c])
  _row_label(axes[0, 0], "input")
  for r, (label, batch) in enumerate(maps.items(), start=1):
    batch = np.asarray(batch)[:max_images]
    if batch.shape != (len(images),) + images.shape[1:3]:
      raise ValueError(
          f"maps[{label!r}] must be one (H, W) map per image, shape "
          f"{(len(images),) + images.shape[1:3]} (of the first {max_images}),"
          f" got {batch.shape}.")
    for c in range(len(images)):
      _show(axes[r, c], images[c])
      axes[r, c].imshow(batch[c], cmap="jet", alpha=0.55, vmin=0, vmax=1,
                        interpolation="nearest")
    _row_label(axes[r, 0], label)
  return fig


def plot_gram(kernels: Mapping[str, Any]):
  """Heatmaps of the normalised Gram ``W Wᵀ`` (unit cosines) of kernels.

  Bounded-orthogonal layers with no more units than fan-in show the
  identity; off-diagonal colour is correlation between units. A layer with
  more units than fan-in cannot have orthogonal units: Bort constrains its
  ``Wᵀ W`` there, and its unit cosines are not 0.

  Args:
    kernels: panel title → a Flax kernel (output units on the last axis).

  Returns:
    A matplotlib ``Figure``, one panel per kernel.

  Examples:
    >>> import numpy as np
    >>> fig = plot_gram({"dense": np.eye(3)})
    >>> len(fig.axes)  # the panel and its colour bar
    2
  """
  fig, axes = _figure(1, len(kernels), cell=2.6)
  image = None
  for ax, (title, kernel) in zip(axes[0], kernels.items()):
    gram = np.asarray(metrics.cosine_gram(np.asarray(kernel, np.float32)))
    image = ax.imshow(gram, cmap="RdBu_r", vmin=-1, vmax=1,
                      interpolation="nearest")
    ax.set_title(title, fontsize=8)
  fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
  return fig


def plot_adversarial(
    images: Any,
    adversarial: Mapping[str, Any],
    labels: Sequence[int],
    predictions: Mapping[str, Sequence[int]],
    max_images: int = 8,
):
  """Clean images, then for each attack its examples and perturbations.

  Perturbations use a diverging colour map (red adds, blue removes
  intensity), scaled to their largest value.

  Args:
    images: ``(N, H, W, C)`` clean images in [0, 1].
    adversarial: attack name → ``(N, H, W, C)`` adversarial images.
    labels: ``(N,)`` true classes (titles of the first row).
    predictions: attack name → ``(N,)`` predicted classes on its examples.
    max_images: columns shown.

  Returns:
    A matplotlib ``Figure``.

  Examples:
    >>> import numpy as np
    >>> x = np.zeros((2, 4, 4, 1))
    >>> fig = plot_adversarial(x, {"edit": x}, [1, 2], {"edit": [3, 4]})
    >>> len(fig.axes)
    6
  """
  images = np.asarray(images)[:max_images]
  n = len(images)
  fig, axes = _figure(1 + 2 * len(adversarial), n)
  for c in range(n):
    _show(axes[0, c], images[c])
    axes[0, c].set_title(f"y={int(labels[c])}", fontsize=7)
  _row_label(axes[0, 0], "clean")
  for k, (name, batch) in enumerate(adversarial.items()):
    batch = np.asarray(batch)[:n]
    delta = batch - images
    peak = float(np.abs(delta).max()) or 1.0
    for c in range(n):
      _show(axes[1 + 2 * k, c], batch[c])
      axes[1 + 2 * k, c].set_title(
          f"pred {int(predictions[name][c])}", fontsize=7)
      _show(axes[2 + 2 * k, c], 0.5 + 0.5 * delta[c] / peak, cmap="seismic")
    _row_label(axes[1 + 2 * k, 0], name)
    _row_label(axes[2 + 2 * k, 0], "δ")
  return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
  """Writes a figure (PNG by the extension) with the Agg backend.

  Examples:
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "gram.png")
    >>> save_figure(plot_gram({"w": np.eye(2)}), path)
    >>> os.path.getsize(path) > 0
    True
  """
  FigureCanvasAgg = _matplotlib(
      "matplotlib.backends.backend_agg").FigureCanvasAgg

  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=dpi)

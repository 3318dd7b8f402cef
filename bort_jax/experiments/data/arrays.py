"""The datasets' table, and the check every set of arrays passes before use.

A dataset travels between sources, the cache and the loader as a dict of four
uint8 arrays, ``x_train, y_train, x_test, y_test`` (Keras' layout): images
``(N, H, W, C)`` and labels ``(N,)``.
"""

from __future__ import annotations

import numpy as np

from bort_jax.experiments.data.errors import DataFileError
from bort_jax.experiments.data.errors import EmptyDatasetError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "digits")
NUM_CLASSES = 10
SPLITS = ("train", "test")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")

IMAGE_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}

Arrays = dict[str, np.ndarray]  # uint8 x_train, y_train, x_test, y_test


def check_arrays(name: str, arrays: Arrays, where: str) -> Arrays:
  """Gives the images a channel axis and checks shapes, dtypes and labels.

  Args:
    name: a dataset of :data:`IMAGE_SHAPES`.
    arrays: uint8 ``x_train, y_train, x_test, y_test``; grayscale images may
      lack the channel axis, labels may be ``(N, 1)``.
    where: the file or source the arrays came from, for the messages.

  Returns:
    A new dict of the same arrays, images ``(N, H, W, C)`` and labels ``(N,)``.

  Raises:
    DataFileError: a wrong dtype or shape, or a label outside ``[0, 10)``.
    EmptyDatasetError: a split has no examples.

  Examples:
    >>> import numpy as np
    >>> x, y = np.zeros((2, 28, 28), np.uint8), np.array([3, 1], np.uint8)
    >>> out = check_arrays("mnist", dict(x_train=x, y_train=y, x_test=x,
    ...                                  y_test=y), "here")
    >>> out["x_test"].shape
    (2, 28, 28, 1)
    >>> check_arrays("mnist", dict(x_train=x[:0], y_train=y[:0], x_test=x,
    ...                            y_test=y), "/data/mnist.npz")
    Traceback (most recent call last):
    ...
    bort_jax.experiments.data.errors.EmptyDatasetError: /data/mnist.npz: the mnist train split has no examples; replace it with a complete copy of the dataset
  """
  out = dict(arrays)
  for split in SPLITS:
    x, y = np.asarray(out[f"x_{split}"]), np.asarray(out[f"y_{split}"])
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1:] == (1,) else y
    if x.ndim == 3:
      x = x[..., None]
    problem = None
    if x.dtype != np.uint8:
      problem = f"images are {x.dtype}, expected uint8"
    elif y.dtype.kind not in "iu":
      problem = f"labels are {y.dtype}, expected integers"
    elif x.shape[1:] != IMAGE_SHAPES[name] or y.ndim != 1 or len(x) != len(y):
      problem = f"images {x.shape} and labels {y.shape} do not match"
    elif len(y) and not 0 <= y.min() <= y.max() < NUM_CLASSES:
      problem = f"labels outside [0, {NUM_CLASSES})"
    if problem:
      raise DataFileError(
          f"{where}: {name} {split} split: {problem}; replace it with the"
          " original files of the dataset"
      )
    if not len(y):
      raise EmptyDatasetError(
          f"{where}: the {name} {split} split has no examples; replace it with"
          " a complete copy of the dataset"
      )
    out[f"x_{split}"], out[f"y_{split}"] = x, y
  return out

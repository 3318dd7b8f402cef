"""The datasets' table, and the checks every set of arrays passes before use.

A dataset travels between sources, the cache and the loader as a dict of four
uint8 arrays, ``x_train, y_train, x_test, y_test`` (Keras' layout): images
``(N, H, W, C)`` and labels ``(N,)``. :data:`SIZES` says how many examples of
which shape the original files of each dataset hold; arrays with other counts
are not that dataset, and a file declaring more is refused before it is read.
"""

from __future__ import annotations

import math
from types import MappingProxyType
import typing
from typing import Literal, NamedTuple

import numpy as np

from bort_jax.experiments.data.errors import DataFileError
from bort_jax.experiments.data.errors import EmptyDatasetError

#: A dataset's name.
Dataset = Literal["mnist", "fashion_mnist", "cifar10", "digits"]
DATASETS: tuple[str, ...] = typing.get_args(Dataset)
NUM_CLASSES = 10
SPLITS = ("train", "test")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DatasetSize(NamedTuple):
  """What the original files of a dataset hold.

  Attributes:
    train: the number of training examples.
    test: the number of test examples.
    image_shape: ``(H, W, C)`` of one image.
  """

  train: int
  test: int
  image_shape: tuple[int, int, int]


# From the datasets' own documentation; digits is scikit-learn's 1797 images
# split 3:1 by the loader (it is never cached, and bypasses these checks).
SIZES = MappingProxyType({
    "mnist": DatasetSize(60_000, 10_000, (28, 28, 1)),
    "fashion_mnist": DatasetSize(60_000, 10_000, (28, 28, 1)),
    "cifar10": DatasetSize(50_000, 10_000, (32, 32, 3)),
    "digits": DatasetSize(1_347, 450, (8, 8, 1)),
})

Arrays = dict[str, np.ndarray]  # uint8 x_train, y_train, x_test, y_test

_FIX = "replace it with the original files of the dataset"
_FIX_EMPTY = "replace it with a complete copy of the dataset"


class ArraysProblem(Exception):
  """Internal: why arrays are not the dataset, without the file or the fix."""

  def __init__(self, text: str, empty: bool = False):
    super().__init__(text)
    self.empty = empty

  def error(self, where: str) -> DataFileError | EmptyDatasetError:
    """The user-facing error for the file ``where``, with its fix."""
    if self.empty:
      return EmptyDatasetError(f"{where}: {self}; {_FIX_EMPTY}")
    return DataFileError(f"{where}: {self}; {_FIX}")


def size_of(name: str) -> DatasetSize:
  """The :data:`SIZES` entry of ``name`` (looked up at call time)."""
  return SIZES[name]


def _dtype_problem(key: str, dtype: np.dtype) -> str | None:
  if key.startswith("x_") and dtype != np.uint8:
    return f"images are {dtype}, expected uint8"
  if key.startswith("y_") and (dtype.kind not in "iu" or dtype.itemsize > 8):
    return f"labels are {dtype}, expected integers"
  return None


def declared_problem(
    name: str, key: str, shape: tuple[int, ...], dtype: np.dtype
) -> str | None:
  """Why an array declared in a file header cannot be ``name``'s ``key``.

  Checked on the header alone, before any data is read, so that a file
  declaring gigabytes is refused without allocating them.

  Args:
    name: a dataset of :data:`SIZES`.
    key: one of :data:`ARRAY_KEYS`.
    shape: the declared shape.
    dtype: the declared dtype.

  Returns:
    None if the array may be read, else the reason.

  Examples:
    >>> import numpy as np
    >>> print(declared_problem("mnist", "x_test", (10_000, 28, 28),
    ...                        np.dtype("u1")))
    None
    >>> declared_problem("mnist", "x_test", (2**32, 28, 28), np.dtype("u1"))
    'x_test declares 3367254360064 bytes (shape (4294967296, 28, 28) of uint8), more than the 7840000 of the 10000 mnist test images'
  """
  split = key[2:]
  size = size_of(name)
  per_example = math.prod(size.image_shape) if key.startswith("x_") else 1
  problem = _dtype_problem(key, dtype)
  if problem:
    split_name = f"{name} {split} split"
    return f"{split_name}: {problem}"
  count = getattr(size, split)
  limit = count * per_example * dtype.itemsize
  declared = math.prod(shape) * dtype.itemsize
  if declared > limit:
    what = "images" if key.startswith("x_") else "labels"
    return (
        f"{key} declares {declared} bytes (shape {tuple(shape)} of"
        f" {dtype}), more than the {limit} of the {count} {name} {split}"
        f" {what}"
    )
  return None


def normalized(name: str, arrays: Arrays) -> Arrays:
  """:func:`check_arrays` without a file: raises :class:`ArraysProblem`."""
  out = dict(arrays)
  size = size_of(name)
  for split in SPLITS:
    x, y = np.asarray(out[f"x_{split}"]), np.asarray(out[f"y_{split}"])
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1:] == (1,) else y
    if x.ndim == 3:
      x = x[..., None]
    problem = _dtype_problem("x_", x.dtype) or _dtype_problem("y_", y.dtype)
    if problem is None:
      if x.shape[1:] != size.image_shape or y.ndim != 1 or len(x) != len(y):
        problem = f"images {x.shape} and labels {y.shape} do not match"
      elif len(y) and not 0 <= y.min() <= y.max() < NUM_CLASSES:
        problem = f"labels outside [0, {NUM_CLASSES})"
    if problem:
      raise ArraysProblem(f"{name} {split} split: {problem}")
    if not len(y):
      raise ArraysProblem(
          f"the {name} {split} split has no examples", empty=True
      )
    out[f"x_{split}"], out[f"y_{split}"] = x, y
  for split in SPLITS:  # after the checks above, whose messages say more
    count, expected = len(out[f"y_{split}"]), getattr(size, split)
    if count != expected:
      # A subset, or another dataset of the same shape: not these originals.
      raise ArraysProblem(
          f"the {name} {split} split has {count} examples, but the original"
          f" has {expected}"
      )
  return out


def check_arrays(name: str, arrays: Arrays, where: str) -> Arrays:
  """Gives the images a channel axis and checks shapes, dtypes and labels.

  The example counts must be those of :data:`SIZES`.

  Args:
    name: a dataset of :data:`SIZES`.
    arrays: uint8 ``x_train, y_train, x_test, y_test``; grayscale images may
      lack the channel axis, labels may be ``(N, 1)``.
    where: the file or source the arrays came from, for the messages.

  Returns:
    A new dict of the same arrays, images ``(N, H, W, C)`` and labels ``(N,)``.

  Raises:
    DataFileError: a wrong dtype, shape or example count, or a label
      outside ``[0, 10)``.
    EmptyDatasetError: a split has no examples.

  Examples:
    >>> import numpy as np
    >>> x = {s: np.zeros((n, 28, 28), np.uint8)
    ...      for s, n in (("x_train", 60_000), ("x_test", 10_000))}
    >>> y = {s: np.zeros(n, np.uint8)
    ...      for s, n in (("y_train", 60_000), ("y_test", 10_000))}
    >>> check_arrays("mnist", x | y, "here")["x_test"].shape
    (10000, 28, 28, 1)
    >>> check_arrays("mnist", dict(x, x_test=x["x_test"][:9]) | dict(
    ...     y, y_test=y["y_test"][:9]), "/data/mnist.npz")
    Traceback (most recent call last):
    ...
    bort_jax.experiments.data.errors.DataFileError: /data/mnist.npz: the mnist test split has 9 examples, but the original has 10000; replace it with the original files of the dataset
  """
  try:
    return normalized(name, arrays)
  except ArraysProblem as problem:
    raise problem.error(where) from None

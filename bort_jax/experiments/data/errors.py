"""The data errors a user can fix; each message names the file and the fix.

All subclass :class:`bort_jax.experiments.errors.ExperimentError`, so
``bort-jax`` shows them as a message without a traceback.
"""

from __future__ import annotations

from bort_jax.experiments.errors import ExperimentError


class DataError(ExperimentError):
  """Base class of the data errors: a dataset cannot be used as it is."""


class DatasetUnavailableError(DataError, RuntimeError):
  """No source could provide the dataset; the message says what to do.

  Its first line is a one-line summary; the lines after it list what was
  tried and which files to put where.
  """


class DataFileError(DataError, ValueError):
  """A data file is corrupt, truncated, unreadable or not what it claims."""


class ChecksumError(DataFileError):
  """A data file's SHA-256 differs from the expected one."""


class UnsafePickleError(DataFileError):
  """A pickle asks for something the official CIFAR-10 batches never hold."""


class EmptyDatasetError(DataError, ValueError):
  """A split of the dataset has no examples."""


class CacheDamagedError(DataFileError):
  """The cached npz is unreadable, or its arrays differ from its hash record."""


class SourceUnavailable(Exception):
  """Internal: a source does not have the dataset (the next one is tried)."""

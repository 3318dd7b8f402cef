"""The run's data on the device: size checks and a fingerprint for resume.

The fingerprint is the shape, dtype and sha256 of the bytes of each array a
run trains and tests on; a checkpoint keeps it, and resuming refuses other
data of the same size (and a config that differs from the checkpoint's),
listing the differences.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from bort_jax.experiments import config as config_lib
from bort_jax.experiments import data as data_lib
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.data.errors import DataError

if TYPE_CHECKING:  # the parser imports this module, and no JAX
  import jax


@dataclasses.dataclass
class RunData:
  """The arrays on the device and the shape of an epoch."""
  train_images: jax.Array
  train_labels: jax.Array
  test_images: jax.Array
  test_labels: jax.Array
  batch_size: int
  steps_per_epoch: int
  fingerprint: dict[str, Any]
  holdout_images: jax.Array | None = None
  holdout_labels: jax.Array | None = None


def data_fingerprint(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """The shape, dtype and sha256 of the bytes of each array."""
  out = {}
  for name, array in arrays.items():
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(array.view(np.uint8).reshape(-1)).hexdigest()
    out[name] = {"shape": list(array.shape), "dtype": str(array.dtype),
                 "sha256": digest}
  return out


def prepare(config: TrainConfig, dataset: data_lib.Dataset,
            put: Callable[[Any], Any] | None = None,
            holdout: data_lib.Split | None = None) -> RunData:
  """The arrays on the device; refuses data smaller than one batch.

  Args:
    config: the run's configuration.
    dataset: its data.
    put: places the dict of host arrays on the devices (default
      ``jax.device_put``: the default device; a data-parallel run replicates
      them on its mesh).
    holdout: a further split measured after every epoch; it is not part of
      the fingerprint (it changes no step of the run).

  Returns:
    The :class:`RunData`.

  Raises:
    ConfigError: ``config.train_limit`` is above the training examples of
      ``dataset`` (e.g. of the frontier's 90 % split).
    DataError: fewer training examples than one batch, or no test example.
  """
  train, test = dataset.train, dataset.test
  n_train = len(train.labels)
  if config.train_limit is not None:
    if config.train_limit > n_train:
      # Clipped, the run would look like one on train_limit examples.
      raise config_lib.ConfigError(
          f"train_limit {config.train_limit} is above the {n_train} training "
          f"examples of the data given; use at most {n_train}, or drop it to "
          "train on all of them.")
    n_train = config.train_limit
  if n_train < config.batch_size:
    raise DataError(
        f"The training set of {config.data!r} has {n_train} examples, fewer "
        f"than one batch of {config.batch_size}; lower --batch-size (or "
        "raise --train-limit).")
  if len(test.labels) == 0:
    raise DataError(f"The test set of {config.data!r} is empty.")
  arrays = {"train_images": np.asarray(train.images[:n_train], np.float32),
            "train_labels": np.asarray(train.labels[:n_train], np.int32),
            "test_images": np.asarray(test.images, np.float32),
            "test_labels": np.asarray(test.labels, np.int32)}
  fingerprint = data_fingerprint(arrays)
  if holdout is not None:
    if len(holdout.labels) == 0:
      raise DataError(f"The holdout split given for {config.data!r} is "
                      "empty.")
    arrays["holdout_images"] = np.asarray(holdout.images, np.float32)
    arrays["holdout_labels"] = np.asarray(holdout.labels, np.int32)
  if put is None:
    # Imported here: frontier.py, which the command line's parser imports,
    # takes validation_split from this module, and the parser loads no JAX.
    import jax
    on_device = {k: jax.device_put(v) for k, v in arrays.items()}
  else:
    on_device = put(arrays)
  return RunData(**on_device, batch_size=config.batch_size,
               steps_per_epoch=n_train // config.batch_size,
               fingerprint=fingerprint)


def check_saved_run(config: TrainConfig, data: RunData, meta: dict) -> None:
  """Refuses a checkpoint of another config or other data, listing why."""
  if "config" in meta:
    diff = config_lib.differences(config_lib.TrainConfig.from_dict(
        meta["config"]), config)
    if diff:
      raise config_lib.ConfigError(
          "config.json differs from the checkpointed run (edited?); "
          f"differences (checkpoint vs config.json): "
          f"{config_lib.describe_differences(diff)}. Restore config.json, "
          "or start over with --overwrite.")
  saved = meta.get("data", {})
  diff = [f"{name}: {s['shape']} {s['dtype']} sha256 {s['sha256'][:12]} "
          f"then, {data.fingerprint[name]['shape']} "
          f"{data.fingerprint[name]['dtype']} sha256 "
          f"{data.fingerprint[name]['sha256'][:12]} now"
          for name, s in saved.items()
          if data.fingerprint.get(name) != s]
  if diff or int(meta["steps_per_epoch"]) != data.steps_per_epoch:
    raise DataError(
        "The data differ from the checkpointed run's: " + ("; ".join(diff) or
        f"{meta['steps_per_epoch']} steps per epoch then, "
        f"{data.steps_per_epoch} now") + ". Resume with the same data, or "
        "start over with --overwrite.")


def validation_split(dataset: Any, fraction: float = 0.1) -> Any:
  """The training set's last ``fraction`` as the test split of a new dataset.

  Args:
    dataset: a :class:`bort_jax.experiments.data.Dataset`.
    fraction: the share of the training set held out, in (0, 1).

  Returns:
    ``Dataset(train=first part, test=held-out part)``.

  Examples:
    >>> import numpy as np
    >>> from bort_jax.experiments import data
    >>> from bort_jax.experiments.train_data import validation_split
    >>> split = data.Split(np.zeros((10, 2, 2, 1), np.float32),
    ...                    np.arange(10, dtype=np.int32))
    >>> held = validation_split(data.Dataset(split, split), 0.2)
    >>> held.train.labels.tolist(), held.test.labels.tolist()
    ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
  """
  n = len(dataset.train.labels)
  held = int(round(n * fraction))
  if not 0 < held < n:
    raise ValueError(
        f"validation fraction {fraction} of {n} training examples leaves no "
        "validation or no training data; choose a fraction in (0, 1).")
  images, labels = dataset.train.images, dataset.train.labels
  return data_lib.Dataset(
      data_lib.Split(images[:n - held], labels[:n - held]),
      data_lib.Split(images[n - held:], labels[n - held:]))

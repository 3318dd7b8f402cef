r"""Checkpoints of a run with orbax's ``CheckpointManager``.

A checkpoint holds two items: ``state``, a pytree of arrays (the model, the
optimizer state and the epoch's running metrics), and ``meta``, JSON (the
step, the history, the config and data fingerprints). The manager keeps the
two newest; :meth:`Checkpoints.restore` falls back to the older one when the
newest cannot be read, and says so. In a multi-process run every process
saves and restores together (orbax's multi-process protocol: process 0
writes the shared files, the arrays are global ``jax.Array``\ s restored with
the shardings the caller asks for).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from bort_jax.experiments import errors

#: How many checkpoints a run keeps (the newest and one to fall back to).
MAX_TO_KEEP = 2


class CheckpointError(errors.ExperimentError):
  """No checkpoint of the run can be saved or restored."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


class Checkpoints:
  """The checkpoints of one run folder (``<run>/checkpoints/<step>``).

  Args:
    directory: the checkpoints folder (absolute; created on the first save).
    create: create the folder now.
    this_process_only: only this process uses the manager (to read which
      steps are saved while the other processes of a multi-process run do
      something else); otherwise every process of a multi-process run
      constructs it, saves and restores together, and process 0 writes the
      shared files (orbax's multi-process protocol).

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from bort_jax.experiments.checkpoints import Checkpoints
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoints")
    >>> with Checkpoints(path) as ckpt:
    ...   ckpt.save(3, {"w": np.ones(2)}, {"step": 3})
    ...   step, state, meta = ckpt.restore({"w": np.zeros(2)})
    >>> step, state["w"].tolist(), meta
    (3, [1.0, 1.0], {'step': 3})
  """

  def __init__(self, directory: str | os.PathLike[str], *,
               create: bool = True, this_process_only: bool = False):
    extra = {}
    if this_process_only and jax.process_count() > 1:
      me = jax.process_index()
      extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me})
    options = ocp.CheckpointManagerOptions(
        max_to_keep=MAX_TO_KEEP, create=create,
        enable_async_checkpointing=False, **extra)
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Finishes pending work and releases the manager."""
    self._manager.close()

  def steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest saved step, or ``None``."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves ``state`` (arrays) and ``meta`` (JSON) as ``step``.

    Raises:
      CheckpointError: the checkpoint cannot be written (e.g. a full disk).
    """
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # orbax wraps OSError in its own errors
      raise CheckpointError(
          f"Cannot save checkpoint {step} in {self.directory!r}: "
          f"{_first_line(e)}") from e

  def restore(self, abstract_state: Any,
              log: Callable[[str], None] | None = None
              ) -> tuple[int, Any, dict[str, Any]]:
    """The newest checkpoint that can be read: ``(step, state, meta)``.

    Args:
      abstract_state: the state's structure, shapes and dtypes.
      log: told about each damaged checkpoint that is skipped.

    Returns:
      The step, the restored state and the meta.

    Raises:
      CheckpointError: no kept checkpoint can be read.
    """
    failures = []
    for step in reversed(self.steps()):
      try:
        restored = _quietly(lambda: self._manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore())))
        meta = restored.meta
        if not isinstance(meta, dict) or meta.get("step") != step:
          raise ValueError(f"its meta is not the meta of step {step}")
      except Exception as e:  # tensorstore, orbax and JSON errors alike
        failures.append(f"step {step} ({_first_line(e)})")
        if log is not None:
          log(f"Checkpoint {step} in {self.directory!r} is damaged "
              f"({_first_line(e)}); trying the previous one.")
        continue
      if failures and log is not None:
        log(f"Resuming from checkpoint {step} instead.")
      return step, restored.state, meta
    raise CheckpointError(
        f"No checkpoint in {self.directory!r} can be read: "
        + ("; ".join(failures) or "there is none")
        + ". Start over with --overwrite.")


def _quietly(fn):
  """Runs ``fn`` with orbax's error logging silenced (we report it)."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    return fn()
  finally:
    logger.setLevel(level)


def latest_step(directory: str | os.PathLike[str]) -> int | None:
  """The newest step saved in ``directory`` (``None`` if it holds none)."""
  if not os.path.isdir(directory):
    return None
  with Checkpoints(directory, create=False, this_process_only=True) as ckpt:
    return ckpt.latest_step()

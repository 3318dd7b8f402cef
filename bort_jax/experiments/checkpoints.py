r"""Checkpoints of a run with orbax's ``CheckpointManager``.

A checkpoint holds two items: ``state``, a pytree of arrays (the model, the
optimizer state and the epoch's running metrics), and ``meta``, JSON (the
step, the history, the config and data fingerprints). The manager keeps the
two newest; :meth:`Checkpoints.restore` falls back to the older one when the
newest cannot be read, moves the damaged one aside (``<step>.damaged-<n>``,
so that the run can save that step again) and says so.
:func:`remove_all` removes a run's checkpoints and nothing else of the
folder. In a multi-process run every process
saves and restores together (orbax's multi-process protocol: process 0
writes the shared files, the arrays are global ``jax.Array``\ s restored with
the shardings the caller asks for).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from bort_jax.experiments import errors

#: How many checkpoints a run keeps (the newest and one to fall back to).
MAX_TO_KEEP = 2


#: What a checkpoints folder holds of ours: a step orbax wrote or was writing
#: (``7``, ``7.orbax-checkpoint-tmp…``) and a damaged one moved aside; a
#: step's folder is empty or holds one of :data:`_STEP_ENTRIES` (a user's
#: ``2024/`` with files of theirs is kept).
_OURS = re.compile(r"\d+(\.orbax-checkpoint-tmp.*|\.damaged-\d+)?")
_STEP_ENTRIES = ("state", "meta", "_CHECKPOINT_METADATA")


def _ours(path: str, name: str) -> bool:
  """Whether ``name`` in the checkpoints folder ``path`` is ours."""
  if not _OURS.fullmatch(name):
    return False
  entry = os.path.join(path, name)
  if not name.isdigit():
    return True
  if not os.path.isdir(entry) or os.path.islink(entry):
    return False
  inside = os.listdir(entry)
  return not inside or bool(set(inside) & set(_STEP_ENTRIES))


class CheckpointError(errors.ExperimentError):
  """No checkpoint of the run can be saved or restored."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  # tensorstore appends a dump of its spec to the first line.
  line = (text[0] if text else "").split(" See full TensorStore details")[0]
  return f"{type(e).__name__}: {line}"


class Checkpoints:
  """The checkpoints of one run folder (``<run>/checkpoints/<step>``).

  Args:
    directory: the checkpoints folder (absolute; created on the first save).
    this_process_only: only this process uses the manager, and only to read
      which steps are saved (the folder is not created) while the other
      processes of a multi-process run do something else; otherwise every
      process of a multi-process run constructs it, saves and restores
      together, and process 0 writes the shared files (orbax's protocol).

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
               this_process_only: bool = False):
    extra = {}
    if this_process_only and jax.process_count() > 1:
      me = jax.process_index()
      extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me})
    options = ocp.CheckpointManagerOptions(
        max_to_keep=MAX_TO_KEEP, create=not this_process_only,
        enable_async_checkpointing=False, **extra)
    self.directory = os.path.abspath(os.fspath(directory))
    # Who renames a damaged step (orbax's primary host), and whether the
    # other processes must wait for it.
    self._primary = this_process_only or jax.process_index() == 0
    self._together = not this_process_only and jax.process_count() > 1
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
    def write():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          force=True)
      self._manager.wait_until_finished()

    def no_space(detail: str = "") -> CheckpointError:
      before = [s for s in self.steps() if s < step]
      kept = (f"checkpoint {before[-1]} is intact, so continue with "
              "--resume" if before else "nothing was saved yet")
      return CheckpointError(
          f"Cannot save checkpoint {step} in {self.directory!r}: no space "
          f"left on the device{detail}; free some space ({kept}) or choose "
          "another --out.")

    # A write that fills the disk fails inside orbax's writer threads, whose
    # late callbacks then print tracebacks nothing can catch: refuse first.
    needed = _SPACE_MARGIN + sum(
        int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree.leaves(state))
    free = _free_bytes(self.directory)
    if free is not None and free < needed:
      raise no_space(f" (it needs about {needed / 2**20:.1f} MiB, "
                     f"{free / 2**20:.1f} MiB are free)")
    try:
      # orbax's writer threads log each failure with a traceback before it
      # reaches us; the one line below says it all.
      _quietly(write)
    except Exception as e:  # orbax wraps OSError in its own errors
      reason = _first_line(e)
      if "No space left on device" in reason or "os_error_code='28'" in reason:
        raise no_space() from e
      raise CheckpointError(
          f"Cannot save checkpoint {step} in {self.directory!r}: "
          f"{reason}.") from e

  def restore(self, abstract_state: Any,
              log: Callable[[str], None] | None = None,
              check: Callable[[dict[str, Any]], None] | None = None
              ) -> tuple[int, Any, dict[str, Any]]:
    """The newest checkpoint that can be read: ``(step, state, meta)``.

    A damaged checkpoint newer than the one restored is renamed
    ``<step>.damaged-<n>`` (orbax no longer sees it, so the run can save that
    step again), and ``log`` is told in one line. When none can be read,
    nothing is moved.

    Args:
      abstract_state: the state's structure, shapes and dtypes.
      log: told about each damaged checkpoint that is moved aside.
      check: called with a checkpoint's meta before its arrays are read;
        what it raises (another run's settings, whose arrays have other
        shapes) ends the restore, nothing moved.

    Returns:
      The step, the restored state and the meta.

    Raises:
      CheckpointError: no kept checkpoint can be read, or a damaged one
        cannot be moved aside.
    """
    damaged = []
    for step in reversed(self.steps()):
      try:
        meta = _quietly(lambda: self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))).meta
        if not isinstance(meta, dict) or meta.get("step") != step:
          raise ValueError(f"its meta is not the meta of step {step}")
      except Exception as e:  # tensorstore, orbax and JSON errors alike
        damaged.append((step, _first_line(e)))
        continue
      if check is not None:
        check(meta)
      try:
        state = _quietly(lambda: self._manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))).state
      except Exception as e:
        damaged.append((step, _first_line(e)))
        continue
      self._move_aside(damaged, step, log)
      return step, state, meta
    raise CheckpointError(
        f"No checkpoint in {self.directory!r} can be read: "
        + ("; ".join(f"step {s} ({why})" for s, why in damaged)
           or "there is none")
        + ". Start over with --overwrite.")

  def _move_aside(self, damaged: list[tuple[int, str]], restored: int,
                  log: Callable[[str], None] | None) -> None:
    """Renames the damaged steps, so that saving them again succeeds."""
    if not damaged:
      return
    moved = {}
    if self._primary:
      for step, why in damaged:
        source = os.path.join(self.directory, str(step))
        n = 1
        while os.path.lexists(f"{source}.damaged-{n}"):
          n += 1
        try:
          os.rename(source, f"{source}.damaged-{n}")
        except OSError as e:
          raise CheckpointError(
              f"Checkpoint {step} in {self.directory!r} is damaged ({why}) "
              f"and cannot be moved aside ({e.strerror or e}); move "
              f"{source!r} out of the folder, or start over with "
              "--overwrite.") from None
        moved[step] = f"{source}.damaged-{n}"
    if self._together:  # the others list the steps once process 0 renamed
      ocp.multihost.sync_global_processes("bort_jax_damaged_moved_aside")
    self._manager.reload()
    if log is not None:
      for step, why in damaged:
        last = step == damaged[-1][0]
        log(f"Checkpoint {step} in {self.directory!r} is damaged ({why}); "
            f"moved it aside to {moved.get(step, str(step) + '.damaged-*')!r}."
            + (f" Resuming from checkpoint {restored} instead." if last
               else ""))


#: Room a checkpoint needs beyond its arrays' bytes (metadata, OCDBT index).
_SPACE_MARGIN = 1 << 20


def _free_bytes(directory: str) -> int | None:
  """Bytes free to us where ``directory`` (or its nearest parent) lives."""
  path = directory
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    space = os.statvfs(path or ".")
  except OSError:
    return None
  return space.f_bavail * space.f_frsize


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
  with Checkpoints(directory, this_process_only=True) as ckpt:
    return ckpt.latest_step()


def remove_all(directory: str | os.PathLike[str]) -> None:
  """Removes a run's checkpoints from ``directory``, and nothing else.

  Only the steps orbax wrote (or was writing) and the damaged ones moved
  aside go; any other file or folder in ``directory`` is kept, and
  ``directory`` itself is removed only if that leaves it empty. A symlink is
  removed, never followed.

  Args:
    directory: a run's checkpoints folder (it may be absent).

  Raises:
    CheckpointError: a checkpoint cannot be removed.

  Examples:
    >>> import os, tempfile
    >>> from bort_jax.experiments.checkpoints import remove_all
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoints")
    >>> os.makedirs(os.path.join(path, "5", "state"))
    >>> open(os.path.join(path, "notes.txt"), "w").close()
    >>> remove_all(path)
    >>> os.listdir(path)
    ['notes.txt']
  """
  path = os.fspath(directory)
  try:
    if os.path.islink(path):
      os.unlink(path)
      return
    if not os.path.isdir(path):
      return
    for name in os.listdir(path):
      if not _ours(path, name):
        continue
      entry = os.path.join(path, name)
      if os.path.isdir(entry) and not os.path.islink(entry):
        shutil.rmtree(entry)
      else:
        os.unlink(entry)
    if not os.listdir(path):
      os.rmdir(path)
  except OSError as e:
    raise CheckpointError(
        f"Cannot remove checkpoint {e.filename or path!r}: "
        f"{e.strerror or e}.") from None

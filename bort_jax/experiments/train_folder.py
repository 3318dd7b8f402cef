"""A training run's folder: when it may be used, and the files it holds.

A training run folder holds ``config.json``, ``metrics.json``,
``metrics.csv``, ``checkpoints/`` and ``tensorboard/`` (TensorBoard's
event files); it is recognised by its
``config.json``, which must parse as a
:class:`~bort_jax.experiments.config.TrainConfig`. :func:`open_run` applies
the rules below under the folder's lock (:class:`workdir.RunFolder`):

- a new run needs an absent or empty folder, or one that holds the same run
  with no checkpoint yet (it was stopped before its first one);
- ``resume`` needs the run's ``config.json``; without a checkpoint the run
  starts from step 0;
- ``overwrite`` removes the run's files, and only them (in
  ``checkpoints/``, only the steps saved there), and only from a folder
  whose ``config.json`` is a training config (of ``tensorboard/``, only
  the event files);
- ``tensorboard/`` must be a plain folder (not a link, not a file), checked
  before anything is removed.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
from typing import Any, Callable

from bort_jax.experiments import checkpoints as checkpoints_lib
from bort_jax.experiments import config as config_lib
from bort_jax.experiments import workdir
from bort_jax.experiments.workdir import RunDirectoryError

#: The files a run folder holds; ``overwrite`` removes only these (and of
#: ``checkpoints/``, only the checkpoints, see ``checkpoints.remove_all``).
RUN_FILES = ("config.json", "metrics.json", "metrics.csv", "checkpoints")

#: The run folder's TensorBoard folder (``tensorboard --logdir <out>``).
TENSORBOARD_DIR = "tensorboard"
#: How TensorBoard event files are named (what ``overwrite`` removes).
EVENT_FILE_PREFIX = "events.out.tfevents."
#: Our event files end in :func:`event_file_suffix`'s ``.<pid>.<8 hex>``:
#: another tool's in the folder are kept.
_OUR_EVENT_FILE = re.compile(re.escape(EVENT_FILE_PREFIX)
                             + r".*\.\d+\.[0-9a-f]{8}")


def event_file_suffix() -> str:
  """The end of this start's event file name: tensorboardX names files by
  the second and opens them with ``"wb"``, so two starts in one second
  would collide without it."""
  return f".{os.getpid()}.{secrets.token_hex(4)}"

_CSV_FIELDS = (
    "epoch", "step", "learning_rate", "train_loss", "train_accuracy",
    "dbort_energy",
    "test_loss", "test_accuracy", "constraint_error", "max_cosine",
    "norm_spread", "step_time_ms", "epoch_time_s", "wall_time_s",
)


def _saved_config(folder: workdir.RunFolder
                  ) -> tuple[config_lib.TrainConfig | None, str]:
  """The folder's training config, or ``None`` and why not."""
  text = folder.read_text("config.json")
  if text is None:
    return None, "it has no config.json"
  try:
    return config_lib.TrainConfig.from_json(text), ""
  except (TypeError, ValueError) as e:
    return None, f"its config.json is not a training config ({e})"


def load_config(run_dir: str | os.PathLike[str]) -> config_lib.TrainConfig:
  """The :class:`TrainConfig` saved in a run folder.

  Args:
    run_dir: the run folder.

  Returns:
    The configuration the run was started with.

  Raises:
    RunDirectoryError: the folder holds no (valid) ``config.json``.
  """
  path = os.path.join(run_dir, "config.json")
  if not os.path.lexists(path):
    raise RunDirectoryError(
        f"Nothing to resume in {os.fspath(run_dir)!r}: no config.json.")
  try:
    with open(path, encoding="utf-8") as f:
      return config_lib.TrainConfig.from_json(f.read())
  except (OSError, TypeError, ValueError) as e:
    raise RunDirectoryError(
        f"Cannot resume {os.fspath(run_dir)!r}: its config.json is not a "
        f"training config ({e}).") from None


def tensorboard_path(run_dir: str | os.PathLike[str]) -> str:
  """``<run>/tensorboard``, refused when it is not a plain folder."""
  path = os.path.join(os.path.abspath(os.fspath(run_dir)), TENSORBOARD_DIR)
  if os.path.islink(path) or (os.path.lexists(path)
                              and not os.path.isdir(path)):
    raise RunDirectoryError(
        f"{path!r} is not a folder (a link or a file), so no TensorBoard "
        "events are written there; move it away and run again.")
  return path


def _remove_event_files(path: str) -> None:
  """Removes our event files from ``path`` (and it, if then empty)."""
  if not os.path.isdir(path):
    return
  for name in os.listdir(path):
    entry = os.path.join(path, name)
    if (_OUR_EVENT_FILE.fullmatch(name) and os.path.isfile(entry)
        and not os.path.islink(entry)):
      os.unlink(entry)
  if not os.listdir(path):
    os.rmdir(path)


def checkpoint_path(run_dir: str | os.PathLike[str]) -> str:
  """The checkpoints folder of ``run_dir``, without opening the folder.

  The processes of a multi-process run other than process 0 checkpoint there
  while process 0 holds the folder.
  """
  return os.path.join(os.path.abspath(os.fspath(run_dir)), "checkpoints")


def open_run(
    run_dir: str | os.PathLike[str],
    config: config_lib.TrainConfig,
    *,
    resume: bool,
    overwrite: bool,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[workdir.RunFolder, bool]:
  """Opens and locks a run folder by the rules of the module docstring.

  Args:
    run_dir: the run folder.
    config: the configuration to run.
    resume: continue the run saved there.
    overwrite: start over, replacing the run saved there.
    log: told what is done (a stale lock cleared, a restart).

  Returns:
    ``(folder, restore)``: the locked folder, and whether a checkpoint is to
    be restored.

  Raises:
    RunDirectoryError: the folder may not be used as asked.
    ConfigError: ``resume`` with a config that differs from the saved one.
  """
  if resume and overwrite:
    raise RunDirectoryError("Pass either --resume or --overwrite, not both.")
  tensorboard_path(run_dir)  # before the folder is created
  folder = workdir.RunFolder.open(run_dir)
  try:
    for note in folder.notes:
      log(note)
    restore = _apply_rules(folder, config, resume=resume, overwrite=overwrite,
                           log=log)
  except BaseException:
    folder.close(remove_if_empty=True)
    raise
  return folder, restore


def _apply_rules(folder, config, *, resume, overwrite, log) -> bool:
  where = str(folder.path)
  tensorboard = tensorboard_path(folder.path)  # again, under the lock
  if not folder.entries():
    if resume:
      raise RunDirectoryError(
          f"Nothing to resume in {where!r}: no config.json. Start the run "
          "without --resume.")
    return False
  saved, why_not = _saved_config(folder)
  if overwrite:
    if saved is None:
      raise RunDirectoryError(
          f"--overwrite refused: {where!r} is not a bort-jax training run "
          f"({why_not}), so nothing in it is deleted; choose another --out.")
    checkpoints_lib.remove_all(checkpoint_path(folder.path))
    _remove_event_files(tensorboard)
    folder.clear([name for name in RUN_FILES if name != "checkpoints"])
    return False
  has_checkpoint = checkpoints_lib.latest_step(
      checkpoint_path(folder.path)) is not None
  if resume:
    if saved is None:
      raise RunDirectoryError(f"Nothing to resume in {where!r}: {why_not}.")
    diff = config_lib.differences(saved, config)
    if diff:
      raise config_lib.ConfigError(
          "Cannot resume with a different configuration; differences "
          f"(saved vs given): {config_lib.describe_differences(diff)}.")
    if not has_checkpoint:
      log(f"{where!r} has no checkpoint yet: starting the run from step 0.")
    return has_checkpoint
  if saved is not None and not has_checkpoint:
    diff = config_lib.differences(saved, config)
    if not diff:
      log(f"{where!r} holds this run with no checkpoint yet: starting it "
          "again from step 0.")
      return False
  if saved is None:  # neither flag would take it
    raise RunDirectoryError(
        f"{where!r} is not empty and is not a bort-jax training run "
        f"({why_not}), so nothing in it is changed; choose another --out.")
  raise RunDirectoryError(
      f"Run folder {where!r} already exists and is not empty. Pass --resume "
      "to continue that run, or --overwrite to start over (this deletes its "
      "checkpoints and metrics, and nothing else).")


def write_metrics(folder: workdir.RunFolder, config: config_lib.TrainConfig,
                  history: list[dict[str, Any]],
                  summary: dict[str, Any] | None = None) -> None:
  """Writes ``metrics.json`` (strict JSON) and ``metrics.csv`` atomically.

  Args:
    folder: the run folder.
    config: the run's configuration.
    history: one dict per epoch.
    summary: optional final numbers (e.g. per-layer orthogonality errors).
  """
  folder.write_json("metrics.json", {
      "config": config.to_dict(), "history": history,
      "summary": summary or {}})
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=_CSV_FIELDS, extrasaction="ignore")
  writer.writeheader()
  for record in workdir.strict_json(history):
    writer.writerow({k: ("" if record.get(k) is None else record[k])
                     for k in _CSV_FIELDS})
  folder.write_text("metrics.csv", text.getvalue())

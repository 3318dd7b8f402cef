"""The training loop: restore or initialise, run epochs, measure, checkpoint.

The initialisation is the model's, then (``init="orthogonal"``) its Bort
kernels projected on the constraint; the Bort selection leaves the head out
when ``bort_head`` is false, in the optimizer, the init and the
orthogonality metrics alike.

:func:`train` runs the experiments of the Bort paper (Zhang et al., "Bort:
Towards Explainable Neural Networks with Bounded Orthogonal Constraint",
ICLR 2023) on small data: :func:`bort_jax.experiments.steps.train_step` over
``nnx.Optimizer(model, tx, wrt=nnx.Param)``, an evaluation and an
orthogonality measurement per epoch, metrics as JSON and CSV and as
TensorBoard scalars (``tensorboard/``, one event file per start of the run,
written by tensorboardX; a resumed run hides the events after its
checkpoint's last epoch and writes that epoch again), and orbax
checkpoints that hold everything needed to continue bit for bit: the model,
the optimizer state, the step, the epoch's running metrics and the data
order (a permutation drawn from ``(seed, epoch)``, so the step alone places
the iterator). Ctrl-C or SIGTERM stops after the current step and saves a
checkpoint (the result is not ``finished`` and names the signal in
``stopped_by``); ``train(..., resume=True)`` continues from the newest readable
checkpoint, after checking that the config and the data are the saved run's.
A non-finite training loss, or weights that overflow (a non-finite test
loss or constraint error), stops the run (:class:`DivergedError`).

With a :class:`~bort_jax.experiments.distributed.DataParallel` layout (given,
or the default whenever ``jax.distributed`` runs several processes), the same
loop runs data-parallel on a global mesh: the state replicated (or, with
``shard_params``, each array split over the devices), each global batch split
over the devices, process 0 alone writing the run folder, every process
checkpointing and restoring (see
:mod:`bort_jax.experiments.distributed` for the launch).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import tensorboardX

import bort_jax
from bort_jax.experiments import checkpoints as checkpoints_lib
from bort_jax.experiments import config as config_lib
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import distributed
from bort_jax.experiments import models as models_lib
from bort_jax.experiments import optimizers as optimizers_lib
from bort_jax.experiments import train_data
from bort_jax.experiments import train_folder
from bort_jax.experiments import signals
from bort_jax.experiments import steps as steps_lib
from bort_jax.experiments import text
from bort_jax.experiments.config import TrainConfig
from bort_jax.experiments.errors import DivergedError  # noqa: F401 (re-export)
from bort_jax.experiments.train_data import DataError  # noqa: F401 (re-export)
from bort_jax.experiments.workdir import RunDirectoryError
from bort_jax.experiments.workdir import strict_json


#: The history's numbers written as TensorBoard scalars, one per epoch.
SCALARS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss",
           "constraint_error", "max_cosine", "norm_spread", "dbort_energy",
           "learning_rate", "step_time_ms")


class _Scalars:
  """The history as TensorBoard scalars, step = epoch (process 0 only).

  The event file is opened at the first row, not before: a run refused
  before its first epoch leaves its folder as it was. ``purge_epoch`` hides
  the events from that epoch on that an earlier start wrote after its last
  checkpoint (TensorBoard's ``purge_step``).
  """

  def __init__(self, path: str, purge_epoch: int | None = None):
    self._path = path
    self._purge_epoch = purge_epoch
    self._writer = None
    self._last_epoch = None

  def write(self, row: dict[str, Any]) -> None:
    if row["epoch"] == self._last_epoch:
      return  # metrics.json rewritten (a divergence): no second point
    self._last_epoch = row["epoch"]
    if self._writer is None:
      self._writer = tensorboardX.SummaryWriter(
          self._path, purge_step=self._purge_epoch,
          filename_suffix=train_folder.event_file_suffix())
    for name in SCALARS:
      value = row.get(name)
      if value is not None and math.isfinite(value):
        self._writer.add_scalar(name, value, global_step=row["epoch"])
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class TrainResult(NamedTuple):
  """What :func:`train` returns.

  Attributes:
    model: the trained model.
    optimizer: its ``nnx.Optimizer``.
    history: one dict of metrics per epoch (epoch 0: before training).
    step: the number of steps done.
    finished: whether every epoch ran (``False`` after an interruption or
      ``max_steps``; resume to continue).
    run_dir: the run folder (``None`` without one; process 0 alone writes
      it).
    dataset: the data it trained on.
    stopped_by: the signal that stopped the run before its end
      (``"SIGINT"``, ``"SIGTERM"``, or ``"peer"`` when another process of a
      multi-process run got it), else ``None``; a command maps it to its
      exit status with :func:`bort_jax.experiments.signals.exit_status`.
  """

  model: nnx.Module
  optimizer: nnx.Optimizer
  history: list[dict[str, Any]]
  step: int
  finished: bool
  run_dir: str | None
  dataset: data_lib.Dataset
  stopped_by: str | None = None


@dataclasses.dataclass
class _State:
  """What changes during training (all of it is checkpointed)."""
  model: Any
  optimizer: Any
  metrics: steps_lib.Metrics
  step: int
  history: list[dict[str, Any]]


class _Static(NamedTuple):
  """What does not change: the graphs, the schedule and the loss."""
  model_def: Any
  optimizer_def: Any
  eval_def: Any
  schedule: Callable[[int], Any]
  objective: steps_lib.Objective
  unconstrained: tuple[str, ...] = ()  # kept out of the orthogonality metrics


def _init(config: TrainConfig, data: train_data.RunData, classes: int,
          parallel: distributed.DataParallel | None = None
          ) -> tuple[_Static, _State]:
  """The model and optimizer built from the seed alone (on ``parallel``'s
  mesh if given, as its :meth:`~DataParallel.place` lays them out)."""
  model = models_lib.make_model(
      config.model, tuple(data.train_images.shape[1:]), classes,
      width=config.width, rngs=nnx.Rngs(config.seed))
  dimension_numbers = bort_jax.flax_dimension_numbers(model)
  mask = models_lib.bort_mask(config.model, model, head=config.bort_head)
  if config.init == "orthogonal":  # Bort's kernels on W Wᵀ = cI, before
    # the first checkpoint (c: config.orthogonal_start's, "ada" for a run
    # without Bort, so a baseline starts from the same weights).
    amplitude, _ = config_lib.orthogonal_start(config)
    nnx.update(model, bort_jax.project_to_constraint(
        nnx.state(model, nnx.Param), amplitude,
        dimension_numbers=dimension_numbers, bort_mask=mask))
  schedule = optimizers_lib.make_schedule(config, data.steps_per_epoch)
  tx = optimizers_lib.optimizer_from_config(
      config, schedule, steps_per_epoch=data.steps_per_epoch,
      dimension_numbers=dimension_numbers, bort_mask=mask)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  model_def, model_state = nnx.split(model)
  optimizer_def, optimizer_state = nnx.split(optimizer)
  # An optimizer may hold the params themselves in its state (prodigy's
  # params0): donated beside the model, one buffer was donated twice.
  optimizer_state = jax.tree.map(jnp.copy, optimizer_state)
  unconstrained = (() if config.bort_head
                   else (models_lib.head_prefix(config.model, model),))
  static = _Static(model_def, optimizer_def, steps_lib.eval_graphdef(model),
                   schedule, steps_lib.Objective.from_config(config),
                   unconstrained)
  state = _State(model_state, optimizer_state, steps_lib.Metrics.zeros(), 0,
                 [])
  if parallel is not None:
    state = dataclasses.replace(state, **parallel.place(
        {"model": state.model, "optimizer": state.optimizer,
         "metrics": state.metrics}))
  return static, state


def _arrays(state: _State) -> dict[str, Any]:
  return {"model": state.model, "optimizer": state.optimizer,
          "metrics": state.metrics._asdict()}


def _meta(config: TrainConfig, data: train_data.RunData,
          state: _State) -> dict[str, Any]:
  epoch, position = divmod(state.step, data.steps_per_epoch)
  return {"step": state.step, "epoch": epoch, "position": position,
          "steps_per_epoch": data.steps_per_epoch, "config": config.to_dict(),
          "config_sha256": config_lib.fingerprint(config),
          "data": data.fingerprint,
          "history": strict_json(state.history)}


def _restore(ckpt, config, data, state, log) -> _State:
  # Restored as the fresh state is laid out (one device, or the mesh's).
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding), _arrays(state))
  # The settings first: an edited width is not a damaged checkpoint.
  step, arrays, meta = ckpt.restore(abstract, log=log, check=lambda meta: (
      train_data.check_saved_run(config, data, meta)))
  return _State(arrays["model"], arrays["optimizer"],
                steps_lib.Metrics(**arrays["metrics"]), int(step),
                list(meta["history"]))


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The data order of an epoch: a function of (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def _postfix(metrics: steps_lib.Metrics) -> str:
  means = metrics.compute()
  return f"loss {means['loss']:.3f} acc {means['accuracy']:.3f}"


@dataclasses.dataclass
class _Run:
  """One start of a run: what it trains on, where it writes, how it reports.

  Everything the epochs share and that does not change while they run; the
  training state itself (:class:`_State`) is passed from step to step.
  ``folder`` and ``scalars`` exist on process 0 of a run with a folder,
  ``checkpoints`` on every process of a run with a folder.
  """

  config: TrainConfig
  data: train_data.RunData
  static: _Static
  say: Callable[[str], None]
  folder: Any = None
  checkpoints: checkpoints_lib.Checkpoints | None = None
  scalars: _Scalars | None = None
  parallel: distributed.DataParallel | None = None
  progress: bool = False
  on_step: Callable[[int], None] | None = None
  # The wall clock of the history: this start's, after the earlier starts'.
  wall_offset: float = 0.0
  wall_start: float = 0.0

  @property
  def total_steps(self) -> int:
    return self.config.epochs * self.data.steps_per_epoch

  def check_finite(self, state: _State, row: dict[str, Any] | None = None
                   ) -> None:
    """Stops a run that diverged: its training loss became non-finite, or,
    in an epoch's ``row``, its test loss or constraint error (weights that
    overflowed while the training loss can still be finite)."""
    figures = {"training loss": float(state.metrics.loss)}
    if row is not None:
      figures = {name.replace("_", " "): row[name]
                 for name in ("test_loss", "constraint_error")
                 if row[name] is not None}
    for what, value in figures.items():
      if not math.isfinite(value):
        epoch = max(state.step - 1, 0) // self.data.steps_per_epoch + 1
        raise DivergedError(
            f"The {what} became {value} by step {state.step} (epoch "
            f"{epoch}): the run diverged and is stopped; earlier checkpoints "
            "are kept. Lower --lr (or --gamma) and start over with "
            "--overwrite.")

  def measure(self, state: _State, record: dict[str, Any]) -> dict[str, Any]:
    """One history row: the test metrics, orthogonality and times."""
    static, data = self.static, self.data
    row = {"epoch": state.step // data.steps_per_epoch, "step": state.step,
           "learning_rate": float(static.schedule(max(state.step - 1, 0))),
           **record}
    splits = {"test": (data.test_images, data.test_labels)}
    if data.holdout_images is not None:
      splits["holdout"] = (data.holdout_images, data.holdout_labels)
    for split, (images, labels) in splits.items():
      metrics = steps_lib.evaluate_state(static.eval_def, state.model, images,
                                         labels, self.config.eval_batch_size)
      means = metrics.compute()
      row[f"{split}_loss"], row[f"{split}_accuracy"] = (
          means["loss"], means["accuracy"])
    params = nnx.merge(static.model_def, state.model)
    mean_error, _ = steps_lib.orthogonality(nnx.state(params, nnx.Param),
                                            static.unconstrained)
    for field in ("constraint_error", "max_cosine", "norm_spread"):
      row[field] = (None if mean_error is None
                    else float(getattr(mean_error, field)))
    row["wall_time_s"] = (self.wall_offset + time.perf_counter()
                          - self.wall_start)
    return row

  def save(self, state: _State) -> None:
    # A stop on a checkpoint_every step finds that step saved already.
    if (self.checkpoints is not None
        and self.checkpoints.latest_step() != state.step):
      self.check_finite(state)  # never checkpoint a diverged state
      self.checkpoints.save(state.step, _arrays(state),
                            _meta(self.config, self.data, state))

  def write(self, state: _State, summary: dict | None = None) -> None:
    if self.folder is not None:
      train_folder.write_metrics(self.folder, self.config, state.history,
                                 summary)
    if self.scalars is not None and summary is None:
      self.scalars.write(state.history[-1])

  def end_epoch(self, state: _State, record: dict[str, Any]) -> _State:
    """Measures, logs, checkpoints and writes an epoch that ended; the
    running metrics start again from zero.

    Weights that overflowed (a non-finite test loss or constraint error,
    while the training loss can still be finite) stop the run as a
    divergence, written but not checkpointed.
    """
    row = self.measure(state, record)
    state.history.append(row)
    zeros = steps_lib.Metrics.zeros()
    if self.parallel is not None:
      zeros = self.parallel.replicate(zeros)
    state = dataclasses.replace(state, metrics=zeros)
    self.say(_summary_line(row, self.config.epochs))
    try:
      self.check_finite(state, row)
    except DivergedError:
      self.write(state)
      raise
    self.save(state)
    self.write(state)
    return state

  def progress_bar(self, epoch: int, position: int):
    if not self.progress:
      return None
    from tqdm.auto import tqdm
    return tqdm(total=self.data.steps_per_epoch, initial=position,
                file=sys.stderr, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                leave=True, dynamic_ncols=True)

  def run_epoch(self, state: _State, stop_at: int,
                stop: signals.StopRequest) -> tuple[_State, dict | None]:
    """Steps to the end of the epoch (or ``stop_at``, or a stop request).

    Returns the state and, when the epoch ended, its training numbers.
    """
    data, config, static = self.data, self.config, self.static
    epoch, position = divmod(state.step, data.steps_per_epoch)
    bar = self.progress_bar(epoch, position)
    order = _epoch_order(config.seed, epoch, data.train_labels.shape[0])
    epoch_start, timed_start, timed_steps, shown = (
        time.perf_counter(), None, 0, 0.0)
    while position < data.steps_per_epoch and state.step < stop_at:
      index = order[position * data.batch_size:
                    (position + 1) * data.batch_size]
      if self.parallel is not None:
        index = self.parallel.batch_index(index)
      model, optimizer, metrics = steps_lib.train_step(
          static.model_def, static.optimizer_def, state.model,
          state.optimizer, state.metrics, data.train_images,
          data.train_labels, index, static.objective)
      state = dataclasses.replace(state, model=model, optimizer=optimizer,
                                  metrics=metrics, step=state.step + 1)
      position += 1
      if timed_start is None:  # the first step of a process compiles
        jax.block_until_ready(metrics)
        timed_start = time.perf_counter()
      else:
        timed_steps += 1
      if bar is not None:
        if time.perf_counter() - shown > 0.5:  # a sync: not every step
          shown = time.perf_counter()
          if self.parallel is None:  # processes stop together, at the end
            self.check_finite(state)
          bar.set_postfix_str(_postfix(metrics))
        bar.update(1)
      if self.on_step is not None:
        self.on_step(state.step)
      if (position < data.steps_per_epoch and config.checkpoint_every
          and state.step % config.checkpoint_every == 0):
        self.save(state)
      if stop.should_stop(state.step):
        break
    jax.block_until_ready(state.metrics)
    self.check_finite(state)
    if bar is not None:
      bar.set_postfix_str(_postfix(state.metrics))
      bar.close()
    if position < data.steps_per_epoch:
      return state, None
    now = time.perf_counter()
    means = state.metrics.compute()
    return state, {
        "train_loss": means["loss"], "train_accuracy": means["accuracy"],
        "dbort_energy": means["dbort_energy"] if config.dbort_weight else None,
        "step_time_ms": (1000 * (now - timed_start) / timed_steps
                         if timed_steps else None),
        "epoch_time_s": now - epoch_start}

  def epochs(self, state: _State, max_steps: int | None
             ) -> tuple[_State, bool, str | None]:
    """Runs the epochs; checkpoints and writes metrics as they end.

    Returns the state, whether every epoch ran, and the signal that stopped
    the run before its end (or ``None``).
    """
    total = self.total_steps
    # A finished run resumed trains nothing: its files keep what it ran
    # with (a new --eval-batch-size was recorded for epochs measured
    # without it).
    done = state.step >= total
    if done:
      self.say(f"The run is finished (step {state.step}): nothing to train, "
               "nothing rewritten.")
    elif self.folder is not None and (
        self.folder.read_text("config.json") != self.config.to_json()):
      # A new run, a resume with new values of its resumable fields, or a
      # resume of an older version's config.json.
      self.folder.write_text("config.json", self.config.to_json())
    self.wall_start = time.perf_counter()
    self.wall_offset = state.history[-1]["wall_time_s"] if state.history else 0.0
    if state.history and state.step < total and self.scalars is not None:
      # Resumed: the last epoch again, after the events an earlier start
      # may have written past its checkpoint (hidden by the purge).
      self.scalars.write(state.history[-1])
    if not state.history:
      state.history.append(self.measure(state, {
          "train_loss": None, "train_accuracy": None, "dbort_energy": None,
          "step_time_ms": None, "epoch_time_s": None}))
      self.say(_summary_line(state.history[-1], self.config.epochs))
      self.save(state)
      self.write(state)
    stop_at = total if max_steps is None else min(max_steps, total)
    parallel = self.parallel
    agree = (parallel.any if parallel is not None and parallel.multiprocess
             else None)
    with signals.StopRequest(agree=agree) as stop:
      while state.step < stop_at and not stop.stopping:
        try:
          state, record = self.run_epoch(state, stop_at, stop)
        except DivergedError:
          self.write(state)
          raise
        if record is None:
          self.save(state)  # interrupted or max_steps: keep every step done
          continue
        state = self.end_epoch(state, record)
      if stop.stopping:
        self.say(f"Stopped by {stop.requested or 'a signal to another process'}"
                 f" at step {state.step}; a checkpoint is saved.")
    finished = state.step >= total
    stopped_by = None if finished else stop.stopped_by
    if finished and not done and self.checkpoints is not None:  # the mesh
      _, per_kernel = steps_lib.orthogonality(
          nnx.state(nnx.merge(self.static.model_def, state.model), nnx.Param),
          self.static.unconstrained)
      self.write(state, {"orthogonality": {
          path: {f: float(v) for f, v in e._asdict().items()}
          for path, e in per_kernel.items()}})
    return state, finished, stopped_by

  def close(self) -> None:
    if self.checkpoints is not None:
      self.checkpoints.close()
    if self.scalars is not None:
      self.scalars.close()


def train(
    config: TrainConfig,
    run_dir: str | None = None,
    *,
    dataset: data_lib.Dataset | None = None,
    download: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    max_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    parallel: distributed.DataParallel | None = None,
    on_start: Callable[[], None] | None = None,
    holdout: data_lib.Split | None = None,
) -> TrainResult:
  """Trains a classifier; writes metrics and checkpoints; resumes exactly.

  Resuming restores the model, optimizer state, step, the epoch's running
  metrics and the data position, so ``k`` steps, an interruption and a
  resume give the same parameters as an uninterrupted run (bitwise on one
  machine). The run folder follows
  :func:`bort_jax.experiments.train_folder.open_run`
  and is checked and locked before the data load.

  With ``parallel`` (by default whenever ``jax.distributed`` runs several
  processes), the run is data-parallel over its mesh: every process calls
  :func:`train` with the same arguments; process 0 alone opens, locks and
  writes the run folder (and tells the others if it refused it), all of them
  save and restore the checkpoints, and ``log`` is called on process 0.

  Args:
    config: what to train (:class:`TrainConfig`).
    run_dir: where to write ``config.json``, metrics and ``checkpoints/``;
      ``None`` to write nothing (no resume).
    dataset: the data; default ``data.load_splits(config.data)``.
    download: allow the data loader to download.
    resume: continue the run in ``run_dir`` from its newest checkpoint.
    overwrite: start over in a ``run_dir`` that holds a run.
    progress: show a tqdm progress bar on stderr.
    max_steps: stop (and checkpoint) once this many steps are done overall.
    on_step: called with the step count after every step.
    log: called with a one-line summary after every epoch, and with notes.
    parallel: a :class:`~bort_jax.experiments.distributed.DataParallel`
      layout; ``None``: one device, or every device of every process when
      ``jax.distributed`` runs several.
    on_start: called (on process 0) once every check that can refuse the
      run has passed (the folder, the data, a resumed checkpoint), right
      before the first step or measurement.
    holdout: a further split measured after every epoch besides the test
      split, as ``holdout_accuracy`` and ``holdout_loss`` in the history
      (the frontier's test set, where the run's own test split is its
      validation split); it changes no step of the run.

  Returns:
    A :class:`TrainResult`.

  Raises:
    RunDirectoryError: the run folder may not be used as asked.
    ConfigError: ``config`` differs from the saved run's on resume.
    DataError: the data are too small, or differ from the saved run's.
    DivergedError: the training loss became non-finite, or the weights
      overflowed.
    CheckpointError: no checkpoint can be saved or restored.
    DistributedError: the batch does not split over the devices, the
      processes were given other settings or data, or (on processes other
      than 0) process 0 refused the run.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig
    >>> from bort_jax.experiments.loop import train
    >>> config = TrainConfig(data="digits", model="mlp", width=32, epochs=1,
    ...                      batch_size=64, learning_rate=3e-3)
    >>> result = train(config)
    >>> [r["epoch"] for r in result.history], result.step
    ([0, 1], 21)
    >>> result.history[1]["test_accuracy"] > result.history[0]["test_accuracy"]
    True
  """
  if parallel is None and jax.process_count() > 1:
    parallel = distributed.DataParallel()
  if parallel is not None:
    parallel.check_alike("settings", config.to_dict())
    parallel.check_batch_size(config.batch_size)
  primary = parallel is None or parallel.primary
  say = (log if primary else None) or (lambda line: None)
  if resume and run_dir is None:
    raise RunDirectoryError("resume needs a run folder.")
  folder = restore = None
  if run_dir is not None:
    def open_run():
      return train_folder.open_run(run_dir, config, resume=resume,
                                   overwrite=overwrite, log=say)
    if parallel is None:
      folder, restore = open_run()
    else:  # process 0 decides; the others learn whether to restore
      opened, restore = parallel.on_primary(open_run, lambda r: int(r[1]))
      folder = None if opened is None else opened[0]
      restore = bool(restore)
  try:
    if parallel is None:
      if dataset is None:
        dataset = data_lib.load_splits(config.data, download=download)
      data = train_data.prepare(config, dataset, holdout=holdout)
    else:
      dataset, data = _load_alike(parallel, config, dataset, download,
                                  holdout)
    static, state = _init(config, data, models_lib.num_classes(dataset),
                          parallel)
    run = _Run(config, data, static, say, folder=folder, parallel=parallel,
               progress=progress and primary, on_step=on_step)
    try:
      if run_dir is not None:
        run.checkpoints = checkpoints_lib.Checkpoints(
            train_folder.checkpoint_path(run_dir))
        if restore:
          state = _restore(run.checkpoints, config, data, state, say)
      if folder is not None:
        purge = state.history[-1]["epoch"] if state.history else None
        run.scalars = _Scalars(train_folder.tensorboard_path(folder.path),
                               purge)
      if primary and on_start is not None:
        on_start()
      state, finished, stopped_by = run.epochs(state, max_steps)
    finally:
      run.close()
  finally:
    if folder is not None:
      folder.close(remove_if_empty=True)
  where = None if run_dir is None else os.path.abspath(os.fspath(run_dir))
  return TrainResult(nnx.merge(static.model_def, state.model),
                     nnx.merge(static.optimizer_def, state.optimizer),
                     state.history, state.step, finished, where, dataset,
                     stopped_by)


def _load_alike(parallel: distributed.DataParallel, config: TrainConfig,
                dataset: data_lib.Dataset | None, download: bool,
                holdout: data_lib.Split | None
                ) -> tuple[data_lib.Dataset, train_data.RunData]:
  """The data, checked alike on every process before they are placed; a
  process that fails to load them stops the others (one line each) instead
  of leaving them waiting."""
  checked = []

  def put(arrays):
    checked.append(True)
    parallel.check_alike("data", train_data.data_fingerprint(arrays))
    return parallel.replicate(arrays)

  try:
    if dataset is None:
      dataset = data_lib.load_splits(config.data, download=download)
    return dataset, train_data.prepare(config, dataset, put=put,
                                       holdout=holdout)
  except Exception as e:
    if not checked:  # the others wait in check_alike: tell them
      parallel.check_alike("data", error=e)
    raise


def _summary_line(record: dict, epochs: int) -> str:
  parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}"]
  if record.get("train_accuracy") is not None:
    parts.append(f"train_acc {record['train_accuracy']:.4f}")
  number = lambda key: text.number(record[key], ".4f", "nan")
  parts.append(f"test_acc {number('test_accuracy')}")
  parts.append(f"test_loss {number('test_loss')}")
  if record.get("constraint_error") is not None:
    parts.append(f"constraint {record['constraint_error']:.4f}")
  if record.get("step_time_ms") is not None:
    parts.append(f"{record['step_time_ms']:.2f} ms/step")
  return "  ".join(parts)

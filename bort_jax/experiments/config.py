"""The training configuration: one frozen dataclass, its checks and JSON form.

:class:`TrainConfig` is the single place the command line, the demo, the
examples and ``config.json`` read a run's settings and defaults from. Each
field carries its command-line flag and help in its metadata, so that
``bort-jax train`` generates one flag per field (see
:mod:`bort_jax.experiments.cli`). Building a config checks every value with
:mod:`bort_jax.validation`, the library's one place for input checks;
nothing here touches a file.

The module itself imports no JAX (its choices come from
:mod:`bort_jax.experiments.choices`), so that the parser, built from the
fields, answers ``--help`` at once; the checks that build an optimizer import
it when a config is built.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import types
import typing
import warnings
from typing import Any, Callable, Sequence

import numpy as np

import bort_jax
from bort_jax import validation
from bort_jax.experiments import choices
from bort_jax.experiments import data as data_lib
from bort_jax.experiments import errors
from bort_jax.experiments.data import arrays as data_arrays


class ConfigError(errors.ExperimentError, ValueError):
  """A configuration value is invalid (also a ``ValueError``)."""


def _number_or(word: str, text: str) -> float | str:
  if text == word:
    return text
  try:
    return float(text)
  except ValueError:
    raise ValueError(f"expected a number or {word!r}, got {text!r}") from None


def parse_amplitude(text: str) -> float | str:
  """The command line's amplitude: ``"ada"`` or a number."""
  return _number_or(validation.ADA, text)


def parse_tau(text: str) -> float | str:
  """The command line's Huber width: ``"step"`` or a number."""
  return _number_or(validation.STEP_TAU, text)


def _option(default: Any, help: str, *, flag: str | None = None,
            parse: Callable[[str], Any] | None = None, bort: bool = False,
            alias: str | None = None, resumable: bool = False) -> Any:
  """A field with its command-line flag (``--<name>`` by default).

  A field whose type is a ``Literal`` takes its values as the flag's
  choices (:func:`choices_of`).

  ``bort``: the field matters only with a Bort optimizer
  (:data:`BORT_FIELDS`); ``alias``: it is also that argument of the Bort
  alias (``every`` of :func:`bort_jax.bort_adamw` for ``bort_every``),
  passed to it as it is, so that a new alias setting is one field here.
  ``resumable``: the field changes no step of the run, so a resumed run
  may take a new value (:data:`RESUMABLE`).
  """
  return dataclasses.field(default=default, metadata={
      "help": help, "flag": flag, "parse": parse,
      "bort": bort or alias is not None, "alias": alias,
      "resumable": resumable})


#: The seeds numpy's generators take (``np.random.default_rng`` orders the
#: data from the seed): 0 … 2**32 − 1.
MAX_SEED = 2**32 - 1

#: The largest ``bort_every``: the step counter it divides is an int32.
MAX_BORT_EVERY = 2**31 - 1

#: The smallest positive float32 normal (~1.18e-38): a positive value below
#: it is 0 (or a denormal, flushed to 0) in the float32 arithmetic of a run.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)

#: The largest finite float32 (~3.4e38): a larger value is inf in a run.
FLOAT32_MAX = float(np.finfo(np.float32).max)

#: Fields' earlier names in a saved ``config.json`` (``dbort_outputs``
#: until 0.2, the name of a library function too).
RENAMED = {"dbort_outputs": "dbort_on"}


def _recommended(field: str) -> str:
  """The placements' recommended values of ``field``, in words."""
  values = {p: getattr(r, field) for p, r in bort_jax.RECOMMENDED.items()}
  if len(set(values.values())) == 1:
    return f"{next(iter(values.values()))} for either placement"
  return ", ".join(f"{v} {p}" for p, v in values.items())


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What to train and how; saved as ``config.json`` in the run folder.

  Every value is checked when the config is built (a ``ConfigError``, which
  is a ``ValueError``, names the field and the fix). The Bort fields
  (:data:`BORT_FIELDS`) must keep their defaults unless ``optimizer`` is a
  Bort optimizer, so that a setting is never silently ignored.

  Attributes:
    data: the dataset name (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
      ``"digits"``).
    model: one of :data:`bort_jax.experiments.models.MODELS`.
    optimizer: ``sgd``, ``adamw``, ``bort-sgd``, ``bort-adamw``, the name
      of an optax or ``optax.contrib`` optimizer (``lion``, ``muon``, …), or
      ``bort-<that name>``.
    mode: the Bort mode (one of :data:`bort_jax.MODES`); ``None``: the
      placement's recommended one (:data:`bort_jax.RECOMMENDED`), as for
      ``amplitude`` and ``gamma``. Non-Bort optimizers keep ``None``.
    amplitude: the Bort amplitude ``c > 0`` or ``"ada"``.
    gamma: the Bort strength ``γ ≥ 0`` (a positive γ of at least float32's
      smallest normal, :data:`FLOAT32_TINY`, as for the learning rate, the
      weight decay and the DBort weight: a smaller one is 0 in the run).
      ``None``: the placement's recommended γ; for a decoupled
      ``bort-<optax>`` (per-step strength ``lr·γ``), ``DEFAULT_STRENGTH /
      lr``, so that Muon at 0.02 or Lion at 1e-4 gets the per-step
      strength of :func:`bort_jax.with_bort`'s default.
    placement: ``"coupled"`` or ``"decoupled"`` for ``bort-<optax>``
      (default decoupled); ``None`` otherwise.
    gamma_warmup: a linear ramp of γ from 0, in epochs (Bort only).
    bort_every: apply the correction, ``k·γ·Δ``, on every k-th step only
      (Bort only; 1: every step, at most :data:`MAX_BORT_EVERY`). The
      stability limit multiplies by k: for the l2 modes keep ``lr·k·γ·c``
      below about 1.
    bort_lagged: with ``bort_every`` k > 1, compute Δ on every k-th step
      only and apply ``γ·Δ`` of the last one on every step, so the per-step
      strength and stability limit are those of every step (Bort only).
    bort_start_on_constraint: the optimizer's first step lands every Bort
      kernel on the constraint (:func:`bort_jax.start_on_constraint`),
      whatever ``init`` (Bort only; ``None``: the placement's recommended
      value, :data:`bort_jax.RECOMMENDED`). Unlike ``init="orthogonal"``,
      it is the optimizer's, so a baseline of the same seed starts from the
      model's initialisation. A Bort config saved before this field reads
      as false (those runs did not start on the constraint).
    bort_lr_scale: multiplies the whole update of the Bort kernels (the
      learning rate of those leaves only; > 0, Bort only).
    gamma_schedule: γ over the run (Bort only): ``"constant"``; ``"late"``,
      ``γ·gamma_late_factor`` before the switch and γ from it on (late
      tightening); ``"anneal"``, γ before the switch, then linear to 0 at
      the end of the run (as SRIP anneals its penalty: the constraint is
      not held tight at the end). ``gamma_warmup``'s ramp multiplies it.
    gamma_switch: where ``"late"`` and ``"anneal"`` switch, as a fraction
      of the run's steps, in (0, 1] (the step ``round(gamma_switch ·
      epochs · steps_per_epoch)``).
    gamma_late_factor: ``"late"``'s factor on γ before the switch, in
      [0, 1].
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``,
      or ``"step"``, the zone that follows the per-step correction
      (:func:`bort_jax.bort_adamw`) (the library's default;
      ``huber-fullrow``/``huber-fullcol`` only, as a setting no other mode
      reads is refused).
    bort_head: whether the classifier head (the model's last linear
      layer, :func:`bort_jax.experiments.models.head_path`) is one of the
      run's Bort kernels; ``False`` leaves it to the base optimizer alone,
      out of the orthogonal init and of the orthogonality metrics. A
      baseline takes it too, so that it starts and is measured on the same
      kernels as its Bort run.
    learning_rate: the peak learning rate; ``None``: the optimizer's default
      (:data:`~bort_jax.experiments.optimizers.DEFAULT_LEARNING_RATES`).
    schedule: ``"cosine"`` (warmup, then cosine decay to 0) or
      ``"constant"`` (warmup, then constant).
    weight_decay: the weight decay, or ``None`` for the optimizer's default.
    momentum: SGD's momentum.
    label_smoothing: the cross-entropy's label smoothing ``α``.
    dbort_weight: DBort's ``λ`` (0: no DBort term); the loss is
      ``CE − λ Σ (mean y²)^p``.
    dbort_power: DBort's power ``p``: the default of
      :func:`bort_jax.dbort.dbort_loss` (:data:`bort_jax.dbort.DBORT_POWER`,
      the published experiments' 1e-4); the recipe ``authors-mnist`` sets
      their MNIST script's 0.1.
    dbort_on: the outputs ``y``: ``"logits"`` or ``"layers"`` (every
      layer with a kernel of two or more axes, the head included, whatever
      the optimizer and ``bort_head``).
    epochs: the number of epochs.
    batch_size: the training batch size (the last partial batch of an epoch
      is dropped, so every step has the same shape).
    warmup: the linear warmup's length in epochs (may be fractional; at
      most ``epochs``).
    seed: seeds the initialisation and the data order (0 …
      :data:`MAX_SEED`).
    width: the model's width; ``None`` for the model's default.
    init: ``"default"`` (the model's initialisation) or ``"orthogonal"``:
      the kernels Bort would correct (its default selection, without the
      head when ``bort_head`` is false) are then put on the constraint
      right after initialisation, with the run's amplitude when it is a
      number, else ``"ada"`` (also for non-Bort optimizers, so a baseline
      and an ``"ada"`` Bort run of the same seed start from the same
      weights).
    eval_batch_size: the evaluation batch size.
    checkpoint_every: also checkpoint every this many steps (0: only at the
      end of each epoch and on interruption).
    train_limit: train on the first ``train_limit`` examples only (at most
      the dataset's training set); ``None`` for all.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig
    >>> config = TrainConfig(model="mlp", epochs=2)
    >>> TrainConfig.from_json(config.to_json()) == config
    True
    >>> TrainConfig(optimizer="adamw", gamma=0.5)
    Traceback (most recent call last):
    ...
    bort_jax.experiments.config.ConfigError: gamma applies to Bort ...
  """

  data: data_arrays.Dataset = _option("digits", "dataset")
  model: choices.Model = _option("mlp", "model")
  optimizer: str = _option(
      "bort-adamw", "sgd, adamw, bort-sgd, bort-adamw, an optax or "
      "optax.contrib optimizer (lion, lamb, muon, ...) or bort-<that name>")
  mode: bort_jax.Mode | None = _option(
      None, "Bort mode (default: the placement's recommended one, "
      f"{_recommended('mode')})", alias="mode")
  amplitude: float | str | None = _option(
      None, "Bort amplitude c > 0 or 'ada' (default: the placement's "
      f"recommended one, {_recommended('amplitude')})",
      parse=parse_amplitude, alias="amplitude")
  gamma: float | None = _option(
      None, "Bort strength >= 0 (default: the placement's recommended one, "
      f"{_recommended('gamma')}; a decoupled bort-<optax> takes "
      f"{bort_jax.DEFAULT_STRENGTH:g} / lr, the per-step strength of the "
      "library's with_bort)", parse=float, bort=True)
  placement: bort_jax.Placement | None = _option(
      None, "where Bort enters a bort-<optax optimizer> (default: "
      "decoupled; bort-sgd is always coupled and bort-adamw decoupled)",
      bort=True)
  gamma_warmup: float | None = _option(
      None, "ramp gamma linearly from 0 over this many epochs (default: 0, "
      "no ramp)", parse=float, bort=True)
  bort_every: int | None = _option(
      None, "apply k*gamma*Delta on every k-th step only, to amortise the "
      "correction's cost (default: 1, every step)", parse=int, alias="every")
  bort_lagged: bool = _option(
      False, "with --bort-every k: compute Delta on every k-th step only and "
      "apply gamma*Delta of the last one on every step (the per-step "
      "strength of every step, at the cost of every k-th)", alias="lagged")
  bort_start_on_constraint: bool | None = _option(
      None, "make the optimizer's first step land every Bort kernel on the "
      "constraint W W^T = cI, whatever the init (the library's "
      "start_on_constraint; default: the placement's recommended, "
      f"{_recommended('start_on_constraint')})",
      alias="start_on_constraint")
  bort_lr_scale: float = _option(
      1.0, "multiply the learning rate (the whole update) of the Bort "
      "kernels by this factor > 0", parse=float, bort=True)
  gamma_schedule: choices.GammaSchedule = _option(
      "constant", "gamma over the run: constant; late (gamma * "
      "gamma_late_factor until the switch, then gamma); anneal (gamma until "
      "the switch, then linear to 0 at the end, not tight at the end)",
      bort=True)
  gamma_switch: float = _option(
      0.8, "where the late and anneal gamma schedules switch, as a fraction "
      "of the run's steps in (0, 1]", parse=float, bort=True)
  gamma_late_factor: float = _option(
      0.1, "the late gamma schedule's factor on gamma before the switch, in "
      "[0, 1]", parse=float, bort=True)
  bort_head: bool = _option(
      True, "let Bort constrain the classifier head (the last linear "
      "layer); --no-bort-head leaves it to the base optimizer, out of the "
      "orthogonal init and the orthogonality metrics (of a baseline too)")
  tau: float | str = _option(
      0.01, "the Huber modes' width relative to the amplitude, "
      "tau * c, or 'step': 2.5 * every * the per-step strength (lr * gamma "
      "for bort-adamw), a zone that narrows as the learning rate decays "
      "(huber-fullrow and huber-fullcol only)", parse=parse_tau,
      alias="tau")
  learning_rate: float | None = _option(
      None, "peak learning rate (default: the optimizer's: "
      f"{choices.describe_learning_rates()})", flag="--lr", parse=float)
  schedule: choices.Schedule = _option(
      "cosine", "learning-rate schedule: warmup then cosine decay to 0, or "
      "constant after the warmup")
  weight_decay: float | None = _option(
      None, "weight decay (default: the optimizer's own: 0 for sgd and "
      "bort-sgd, 1e-4 for adamw and bort-adamw, the optax signature's "
      "default for another optimizer, none if it takes no weight decay)",
      parse=float)
  momentum: float = _option(0.9, "SGD momentum", parse=float)
  label_smoothing: float = _option(
      0.0, "label smoothing of the cross-entropy", parse=float)
  dbort_weight: float = _option(
      0.0, "DBort weight lambda: the loss is CE - lambda * sum "
      "(mean y^2)^p (0: off)", parse=float)
  dbort_power: float = _option(
      1e-4, "DBort power p (bort_jax.dbort.dbort_loss's; the authors' "
      "MNIST script, recipe authors-mnist, uses 0.1 on the logits)",
      parse=float)
  dbort_on: choices.DBortOn = _option(
      "logits", "the outputs y of the DBort term: the logits (as the "
      "authors do) or every layer's with a kernel of 2+ axes (the head "
      "too)")
  epochs: int = _option(5, "epochs", parse=int)
  batch_size: int = _option(128, "batch size", parse=int)
  warmup: float = _option(
      0.0, "linear warmup before the cosine decay, in epochs", parse=float)
  seed: int = _option(0, "random seed", parse=int)
  width: int | None = _option(
      None, "model width (MLP units, CNN/ResNet channels, ViT dimension; "
      "default: the model's own)", parse=int)
  init: choices.Init = _option(
      "default", "initialisation: the model's, or orthogonal (Bort's "
      "kernels put on the constraint W W^T = cI after it, c the amplitude "
      "or 'ada'; for any optimizer)")
  eval_batch_size: int = _option(1000, "evaluation batch size", parse=int,
                                 resumable=True)
  checkpoint_every: int = _option(
      0, "also checkpoint every N steps (0: each epoch)", parse=int,
      resumable=True)
  train_limit: int | None = _option(
      None, "train on the first N examples only (default: all of them)",
      parse=int)

  def __post_init__(self):
    try:
      _fill_defaults(self)
      check_config(self)
    except (TypeError, ValueError) as e:
      if isinstance(e, ConfigError):
        raise
      raise ConfigError(str(e)) from None

  def to_dict(self) -> dict[str, Any]:
    """The fields as a dict of JSON values."""
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    """The config as indented JSON (what ``config.json`` holds)."""
    return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

  @classmethod
  def from_dict(cls, values: Any) -> "TrainConfig":
    """A config from :meth:`to_dict`'s output; unknown keys are refused.

    A field's earlier name (:data:`RENAMED`) reads as its new one, so the
    run folders of earlier versions still resume.
    """
    if not isinstance(values, dict):
      raise ConfigError(
          f"a training config is a JSON object, got {type(values).__name__}.")
    values = {RENAMED.get(k, k): v for k, v in values.items()}
    optimizer = values.get("optimizer")
    if (choices.is_bort(optimizer) and "gamma" in values
        and values["gamma"] is None):
      # Saved before γ was filled, when every Bort run took its placement's
      # recommended γ (a decoupled bort-<optax> now takes its lr's).
      from bort_jax.experiments import optimizers as optimizers_lib
      values["gamma"] = bort_jax.RECOMMENDED[optimizers_lib.placement_of(
          optimizer, values.get("placement"))].gamma
    if choices.is_bort(optimizer):
      # Saved before the optimizer could start on the constraint.
      values.setdefault("bort_start_on_constraint", False)
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
      raise ConfigError(
          f"unknown config fields {', '.join(map(repr, unknown))}; known "
          f"fields are {', '.join(field_names())}.")
    return cls(**values)

  @classmethod
  def from_json(cls, text: str) -> "TrainConfig":
    """A config from :meth:`to_json`'s output."""
    try:
      values = json.loads(text)
    except ValueError as e:
      raise ConfigError(f"not valid JSON ({e}).") from None
    return cls.from_dict(values)


#: The fields that matter only with a Bort optimizer (``bort-…``, marked
#: ``bort`` or ``alias`` in their metadata): a non-Bort run keeps their
#: defaults (``None`` for the first six, which a Bort run fills with the
#: values it uses: the placement's recommended mode, amplitude and γ, the
#: placement of a ``bort-<optax>`` optimizer, no γ warm-up and a correction
#: every step). ``bort_head`` is not one: it also says which kernels the
#: orthogonal init and the metrics take, for a baseline too.
BORT_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                    if f.metadata["bort"])


#: The fields a resumed run may change (marked ``resumable``): they change
#: no training step (how large the evaluation batches are, how often a
#: checkpoint is taken), so ``--resume --eval-batch-size 100`` continues the
#: same run; every other field defines the run and must match.
RESUMABLE = tuple(f.name for f in dataclasses.fields(TrainConfig)
                  if f.metadata["resumable"])

#: Every field's default, by name (read-only).
DEFAULTS = types.MappingProxyType(
    {f.name: f.default for f in dataclasses.fields(TrainConfig)})


@functools.cache
def _type_hints() -> dict[str, Any]:
  """The fields' types, their annotations evaluated once."""
  return typing.get_type_hints(TrainConfig)


def type_hint(name: str) -> Any:
  """A field's type (``bool | None`` for ``bort_start_on_constraint``)."""
  return _type_hints()[name]


def choices_of(name: str) -> tuple[str, ...] | None:
  """The values a field's ``Literal`` type admits (``None`` if it has none).

  Examples:
    >>> from bort_jax.experiments.config import choices_of
    >>> choices_of("schedule"), choices_of("epochs")
    (('cosine', 'constant'), None)
  """
  hint = _type_hints()[name]
  for option in (hint, *typing.get_args(hint)):  # X or X | None
    if typing.get_origin(option) is typing.Literal:
      return typing.get_args(option)
  return None


def field_names() -> tuple[str, ...]:
  """The names of :class:`TrainConfig`'s fields, in order."""
  return tuple(f.name for f in dataclasses.fields(TrainConfig))


def _fill_defaults(config: "TrainConfig") -> None:
  """Replaces ``None`` by the values the run uses, so ``config.json`` is
  explicit.

  The learning rate and the weight decay default per optimizer
  (:func:`default_weight_decay`); a Bort optimizer's mode, amplitude and γ
  default to its placement's recommended values
  (:data:`bort_jax.RECOMMENDED`), the same values the library's aliases
  use, and a ``bort-<optax>`` optimizer's placement to ``"decoupled"``
  (``bort-sgd`` and ``bort-adamw`` keep ``None``: their placement is fixed,
  coupled and decoupled, and ``make_optimizer`` takes none). A non-Bort
  optimizer keeps ``None`` in the Bort fields, which it does not use. A
  ``config.json`` written with ``None`` in these fields means the same
  values, so an older run folder still resumes.
  """
  # Imported when a config is built, not with the module: the command
  # line's parser reads the fields and must not load JAX.
  from bort_jax.experiments import optimizers as optimizers_lib

  def fill(name, value):
    if getattr(config, name) is None:
      object.__setattr__(config, name, value)

  if not isinstance(config.optimizer, str):
    return  # check_config names the problem
  fill("learning_rate", optimizers_lib.default_learning_rate(config.optimizer))
  fill("weight_decay", default_weight_decay(config.optimizer))
  if optimizers_lib.is_bort(config.optimizer):
    if config.placement not in (None, *validation.PLACEMENTS):
      return  # check_config names the problem
    placement = optimizers_lib.placement_of(config.optimizer,
                                            config.placement)
    if optimizers_lib.base_name(config.optimizer) not in ("sgd", "adamw"):
      fill("placement", placement)
    recommended = bort_jax.RECOMMENDED[placement]
    fill("mode", recommended.mode)
    fill("amplitude", recommended.amplitude)
    lr = config.learning_rate
    if (placement == "decoupled"
        and optimizers_lib.base_name(config.optimizer) != "adamw"
        and isinstance(lr, numbers.Real) and not isinstance(lr, bool)
        and 0 < lr < math.inf):
      # bort-<optax> keeps bort-adamw's lr·γ: the library's default step.
      fill("gamma", bort_jax.DEFAULT_STRENGTH / lr)
    fill("gamma", recommended.gamma)
    fill("gamma_warmup", 0.0)
    fill("bort_every", 1)
    fill("bort_start_on_constraint", recommended.start_on_constraint)


def default_weight_decay(optimizer: str) -> float | None:
  """The weight decay an optimizer uses when none is given.

  SGD (and Bort-SGD) take none (0); AdamW and Bort-AdamW the default of
  their signatures (``optax.adamw``, :func:`bort_jax.bort_adamw`: 1e-4);
  another optax optimizer (or ``bort-<optax>``) its signature's default, or
  ``None`` when it takes no weight decay.

  Args:
    optimizer: the optimizer's name.

  Returns:
    The weight decay, or ``None`` (no weight decay parameter, or an
    unknown name, which the config's check then names).

  Examples:
    >>> from bort_jax.experiments.config import default_weight_decay
    >>> [default_weight_decay(name) for name in ("sgd", "bort-adamw", "adam")]
    [0.0, 0.0001, None]
  """
  # Imported when a config is built (see _fill_defaults).
  import inspect

  from bort_jax.experiments import optimizers as optimizers_lib
  base = optimizers_lib.base_name(optimizer)
  if base == "sgd":
    return 0.0  # make_optimizer: ``weight_decay or 0.0``
  try:
    function = (bort_jax.bort_adamw if optimizer == "bort-adamw"
                else optimizers_lib.optax_alias(base))
  except ValueError:
    return None  # an unknown name, which the config's check names
  parameter = inspect.signature(function).parameters.get("weight_decay")
  default = None if parameter is None else parameter.default
  if isinstance(default, bool) or not isinstance(default, numbers.Real):
    return None
  return float(default)


def _check_train_limit(config: TrainConfig) -> None:
  """Refuses a ``train_limit`` above the named dataset's training set."""
  size = data_arrays.SIZES.get(config.data)
  if config.train_limit is None or size is None:
    return  # an unknown dataset is named by check_choice
  if config.train_limit > size.train:
    # Silently clipped, it would make the run look like another one.
    raise ValueError(
        f"train_limit {config.train_limit} is above the {size.train} "
        f"training examples of {config.data!r}; use at most {size.train}, "
        "or drop it to train on all of them.")


def _check_float32(name: str, value: Any) -> None:
  """Refuses a positive value that float32 arithmetic turns into 0 or inf."""
  if not isinstance(value, numbers.Real) or isinstance(value, bool):
    return
  if value > FLOAT32_MAX:
    raise ValueError(
        f"{name} {value:g} is inf in float32 (above {FLOAT32_MAX:.3g}), the "
        "precision the run computes in; use a smaller value.")
  if 0 < value < FLOAT32_TINY:
    off = "" if name == "learning_rate" else "0 to turn it off, or "
    raise ValueError(
        f"{name} {value:g} is 0 in float32 (below its smallest normal, "
        f"{FLOAT32_TINY:.3g}), the precision the run computes in; use "
        f"{off}a value of at least {FLOAT32_TINY:.3g}.")


def bort_only_fields(values: dict[str, Any]) -> list[str]:
  """The fields of ``values`` that only a Bort optimizer may set.

  Those of :data:`BORT_FIELDS` that are present and not at their default.

  Examples:
    >>> from bort_jax.experiments.config import bort_only_fields
    >>> bort_only_fields({"gamma": 0.1, "bort_lr_scale": 1.0})
    ['gamma']
  """
  return [name for name in BORT_FIELDS
          if name in values and values[name] != DEFAULTS[name]]


def check_dbort_only(given: Any, weight: float,
                     name: Callable[[str], str] = str) -> None:
  """Refuses the DBort settings ``given`` without a DBort term (weight 0),
  which would be silently ignored; ``name`` names a field (a flag).

  Examples:
    >>> check_dbort_only(["dbort_power"], 0.0)
    Traceback (most recent call last):
    ...
    bort_jax.experiments.config.ConfigError: dbort_power applies with a ...
  """
  for field in ("dbort_power", "dbort_on"):  # read only by a DBort term
    if field in given and weight == 0:
      raise ConfigError(
          f"{name(field)} applies with a DBort term only, but the DBort "
          f"weight is 0; drop it, or pass {name('dbort_weight')}.")


def check_bort_only(optimizer: str, given: Sequence[str],
                    name: Callable[[str], str] = str) -> None:
  """Refuses Bort-only settings (``given``) for a plain ``optimizer``.

  The one check of this rule: the config runs it on the fields
  :func:`bort_only_fields` finds, and the command line on the Bort flags
  given explicitly, named as flags (``name``).

  Args:
    optimizer: the optimizer's name.
    given: the Bort-only settings that were set.
    name: how a field is named in the message (e.g. as its flag).

  Raises:
    ConfigError: ``optimizer`` is not a Bort optimizer and ``given`` is not
      empty.

  Examples:
    >>> from bort_jax.experiments.config import check_bort_only
    >>> check_bort_only("adamw", ["gamma"])
    Traceback (most recent call last):
    ...
    bort_jax.experiments.config.ConfigError: gamma applies to Bort ...
  """
  from bort_jax.experiments import optimizers as optimizers_lib
  if given and not optimizers_lib.is_bort(optimizer):
    named = ", ".join(map(name, given))
    raise ConfigError(
        f"{named} applies to Bort optimizers only, but {name('optimizer')} "
        f"is {optimizer!r}; drop {named}, or choose a Bort optimizer "
        f"(bort-{optimizer}).")


def _check_levers(config: TrainConfig) -> None:
  """The Bort learning-rate scale, the γ schedule and the head switch."""
  validation.check_real("bort_lr_scale", config.bort_lr_scale, low=0,
                        low_inclusive=False)
  validation.check_choice("gamma_schedule", config.gamma_schedule,
                          choices.GAMMA_SCHEDULES)
  validation.check_real("gamma_switch", config.gamma_switch, low=0, high=1,
                        low_inclusive=False)
  validation.check_real("gamma_late_factor", config.gamma_late_factor, low=0,
                        high=1)
  for name in ("bort_head", "bort_lagged", "bort_start_on_constraint"):
    value = getattr(config, name)
    if not isinstance(value, bool) and not (
        value is None and name == "bort_start_on_constraint"):
      raise TypeError(
          f"{name} must be true or false, got {getattr(config, name)!r}.")
  if config.tau != validation.STEP_TAU:  # None would fall back to 0.01
    validation.check_real("tau", config.tau, low=0, low_inclusive=False)
  if (config.tau != TrainConfig.tau and config.mode is not None
      and not config.mode.startswith("huber")):
    raise ValueError(
        f"tau applies to the huber modes only, but mode is {config.mode!r}; "
        "drop tau, or choose mode huber-fullrow.")
  # A setting the schedule does not read would be silently ignored.
  uses = {"gamma_switch": ("late", "anneal"), "gamma_late_factor": ("late",)}
  for name, schedules in uses.items():
    if (getattr(config, name) != DEFAULTS[name]
        and config.gamma_schedule not in schedules):
      raise ValueError(
          f"{name} applies to gamma_schedule {' or '.join(schedules)} only, "
          f"but gamma_schedule is {config.gamma_schedule!r}; drop {name}, or "
          f"set gamma_schedule to {schedules[0]!r}.")


def check_config(config: TrainConfig) -> None:
  """Raises ``TypeError``/``ValueError`` naming the first bad field.

  Args:
    config: the configuration.
  """
  # Imported when a config is built (see _fill_defaults).
  from bort_jax.experiments import optimizers as optimizers_lib
  for name in ("epochs", "batch_size", "eval_batch_size"):
    validation.check_positive_int(name, getattr(config, name))
  validation.check_nonnegative_int("checkpoint_every", config.checkpoint_every)
  if isinstance(config.seed, bool) or not isinstance(config.seed, int):
    raise TypeError(f"seed must be an integer, got {config.seed!r}.")
  if not 0 <= config.seed <= MAX_SEED:
    raise ValueError(
        f"seed must be in 0..{MAX_SEED} (2**32 - 1, the range numpy seeds "
        f"take), got {config.seed}.")
  for name in ("width", "train_limit"):
    if getattr(config, name) is not None:
      validation.check_positive_int(name, getattr(config, name))
  _check_train_limit(config)
  validation.check_real("learning_rate", config.learning_rate, low=0,
                        low_inclusive=False)
  validation.check_real("warmup", config.warmup, low=0)
  if config.warmup > config.epochs:
    # make_schedule would clip it to the run, a schedule nobody asked for.
    raise ValueError(
        f"warmup of {config.warmup:g} epochs is longer than the run "
        f"({config.epochs} epochs); use at most {config.epochs}, or raise "
        "epochs.")
  validation.check_real("label_smoothing", config.label_smoothing, low=0,
                        high=1, high_inclusive=False)
  validation.check_real("dbort_weight", config.dbort_weight, low=0)
  validation.check_real("dbort_power", config.dbort_power, low=0,
                        low_inclusive=False)
  validation.check_choice("dbort_on", config.dbort_on, choices.DBORT_ON)
  validation.check_choice("schedule", config.schedule, choices.SCHEDULES)
  validation.check_real("momentum", config.momentum, low=0, high=1,
                        high_inclusive=False)
  if (config.momentum != TrainConfig.momentum
      and optimizers_lib.base_name(str(config.optimizer)) != "sgd"):
    raise ValueError(
        f"momentum applies to sgd and bort-sgd only (the others have their "
        f"own), but optimizer is {config.optimizer!r}; drop momentum.")
  if config.weight_decay is not None:
    validation.check_real("weight_decay", config.weight_decay, low=0)
  validation.check_choice("model", config.model, choices.MODELS)
  validation.check_choice("data", config.data, data_lib.DATASETS)
  validation.check_choice("init", config.init, choices.INITS)
  _check_levers(config)
  check_bort_only(config.optimizer, bort_only_fields(config.to_dict())[:1])
  if optimizers_lib.is_bort(config.optimizer):
    validation.check_mode(config.mode)
    validation.check_strength(config.gamma, "gamma")
    validation.check_real("gamma_warmup", config.gamma_warmup, low=0)
    if config.gamma_warmup > config.epochs:
      raise ValueError(
          f"gamma_warmup of {config.gamma_warmup:g} epochs is longer than "
          f"the run ({config.epochs} epochs): gamma would never reach its "
          f"value; use at most {config.epochs}, or raise epochs.")
    validation.check_positive_int("bort_every", config.bort_every)
    if config.bort_every > MAX_BORT_EVERY:
      raise ValueError(
          f"bort_every must be at most {MAX_BORT_EVERY} (2**31 - 1, the "
          f"int32 step counter's range), got {config.bort_every}.")
    if config.bort_lagged and config.bort_every in (None, 1):
      raise ValueError(
          "bort_lagged holds a correction computed every bort_every steps, "
          "but bort_every is 1 (every step): drop bort_lagged, or set "
          "bort_every above 1.")
    amplitude = config.amplitude
    if callable(amplitude) or isinstance(amplitude, bool):
      amplitude = repr(amplitude)  # a schedule cannot be saved as JSON
    try:
      validation.check_amplitude(amplitude)
    except (TypeError, ValueError):
      raise ValueError(
          f"amplitude must be a positive number or 'ada', got "
          f"{config.amplitude!r}.") from None
    if config.placement is not None:
      validation.check_placement(config.placement)
  for name in ("learning_rate", "gamma", "weight_decay", "dbort_weight",
               "dbort_power", "bort_lr_scale", "label_smoothing"):
    _check_float32(name, getattr(config, name))
  # Builds (and discards) the optimizer: the library's own checks, once.
  # Its warnings (a strong per-step correction) belong to the run's build.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tx = optimizers_lib.optimizer_from_config(config, config.learning_rate)
    if optimizers_lib.base_name(config.optimizer) not in ("sgd", "adamw"):
      optimizers_lib.check_plain_update(tx, config.optimizer)


def orthogonal_start(config: TrainConfig) -> tuple[float | str, bool]:
  """What ``init="orthogonal"`` reads of a run: the amplitude the kernels
  are projected to (the run's when it is a number, else ``"ada"``, the
  init's own scale, as for a run without Bort) and whether the head is
  among them. Two runs of one seed and model start from the same weights
  when these agree.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig, orthogonal_start
    >>> orthogonal_start(TrainConfig(optimizer="adamw", init="orthogonal"))
    ('ada', True)
  """
  amplitude = config.amplitude
  if not isinstance(amplitude, numbers.Real) or isinstance(amplitude, bool):
    amplitude = "ada"
  return amplitude, config.bort_head


def differences(saved: TrainConfig, given: TrainConfig
                ) -> dict[str, tuple[Any, Any]]:
  """The fields that define the run and differ, as ``{name: (saved value,
  given value)}``; those a resume may change (:data:`RESUMABLE`) are left
  out.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig, differences
    >>> differences(TrainConfig(gamma=0.1), TrainConfig(gamma=0.5))
    {'gamma': (0.1, 0.5)}
  """
  return {name: (getattr(saved, name), getattr(given, name))
          for name in field_names()
          if name not in RESUMABLE
          and getattr(saved, name) != getattr(given, name)}


def describe_differences(diff: dict[str, tuple[Any, Any]]) -> str:
  """``"gamma 0.1 vs 0.5, epochs 3 vs 4"`` (saved value first)."""
  return ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())


def fingerprint(config: TrainConfig) -> str:
  """The sha256 of the config's canonical JSON (sorted keys)."""
  text = json.dumps(config.to_dict(), sort_keys=True, allow_nan=False)
  return hashlib.sha256(text.encode()).hexdigest()

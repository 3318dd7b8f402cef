"""Optimizers by their command-line names, and the learning-rate schedule.

Names: ``sgd`` (coupled L2 decay, then ``optax.sgd``), ``adamw``,
``bort-sgd`` (:func:`bort_jax.bort_sgd`), ``bort-adamw``
(:func:`bort_jax.bort_adamw`), any optax optimizer taking a learning rate
(``lion``, ``lamb``, …) and ``bort-<optax optimizer>`` (Bort added by
:func:`bort_jax.with_bort`, decoupled unless ``placement="coupled"``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import optax

import bort_jax

#: The prefix that adds Bort to an optimizer's name.
BORT_PREFIX = "bort-"


def is_bort(name: Any) -> bool:
  """Whether an optimizer name asks for Bort (``bort-…``).

  Examples:
    >>> from bort_jax.experiments.optimizers import is_bort
    >>> is_bort("bort-lion"), is_bort("adamw")
    (True, False)
  """
  return isinstance(name, str) and name.startswith(BORT_PREFIX)


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
    dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  """An optimizer by its command-line name, with or without Bort.

  Args:
    name: the optimizer's name (see the module docstring).
    learning_rate: a scalar or an optax schedule.
    gamma: the Bort strength (Bort optimizers only).
    mode: the Bort mode.
    amplitude: the Bort amplitude (a number or ``"ada"``).
    placement: ``"coupled"`` or ``"decoupled"``, for ``bort-<name>`` only.
    weight_decay: the weight decay; ``None`` for the optimizer's default.
    momentum: SGD's momentum (``sgd`` and ``bort-sgd``).
    dimension_numbers: handed to the Bort alias (e.g.
      ``bort_jax.flax_dimension_numbers(model)``); ``None`` for its default.

  Returns:
    An :class:`optax.GradientTransformation`.

  Raises:
    ValueError: for an unknown name or a bad Bort argument.

  Examples:
    >>> import jax.numpy as jnp
    >>> from bort_jax.experiments.optimizers import make_optimizer
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
  bort = is_bort(name)
  base = name[len(BORT_PREFIX):] if bort else name
  if placement is not None and (not bort or base in ("sgd", "adamw")):
    raise ValueError(
        "placement applies to bort-<optax optimizer> only: bort-sgd is "
        "coupled and bort-adamw decoupled by definition.")
  bort_kwargs = dict(gamma=gamma, mode=mode, amplitude=amplitude)
  if dimension_numbers is not None:
    bort_kwargs["dimension_numbers"] = dimension_numbers
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
    config: Any, learning_rate: optax.ScalarOrSchedule, *,
    dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  """:func:`make_optimizer` with a :class:`TrainConfig`'s arguments.

  Args:
    config: a :class:`~bort_jax.experiments.config.TrainConfig`.
    learning_rate: a scalar or an optax schedule.
    dimension_numbers: as in :func:`make_optimizer`.

  Returns:
    An :class:`optax.GradientTransformation`.
  """
  return make_optimizer(
      config.optimizer, learning_rate, gamma=config.gamma, mode=config.mode,
      amplitude=config.amplitude, placement=config.placement,
      weight_decay=config.weight_decay, momentum=config.momentum,
      dimension_numbers=dimension_numbers)


def make_schedule(config: Any, steps_per_epoch: int) -> optax.Schedule:
  """The cosine learning-rate schedule with linear warmup of a run.

  Args:
    config: the run's configuration (``learning_rate``, ``warmup`` in epochs,
      ``epochs``).
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    ``optax.warmup_cosine_decay_schedule`` from 0 to ``learning_rate`` over
    the warmup, then down to 0 at the last step.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig
    >>> from bort_jax.experiments.optimizers import make_schedule
    >>> schedule = make_schedule(TrainConfig(epochs=2, warmup=1.0), 10)
    >>> [round(float(schedule(s)), 5) for s in (0, 10, 20)]
    [0.0, 0.001, 0.0]
  """
  total = config.epochs * steps_per_epoch
  warmup = min(int(round(config.warmup * steps_per_epoch)), total - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=warmup, decay_steps=total, end_value=0.0)

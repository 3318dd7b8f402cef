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
from bort_jax._src import defaults

#: The prefix that adds Bort to an optimizer's name.
BORT_PREFIX = "bort-"

#: The learning-rate schedules: warmup then cosine decay to 0, or warmup then
#: constant (the authors' MNIST/CIFAR script uses no schedule).
SCHEDULES = ("cosine", "constant")

#: The default peak learning rate per base optimizer (SGD with momentum 0.9
#: wants a far larger step than the adaptive methods); any other optax
#: optimizer gets :data:`DEFAULT_LEARNING_RATE`.
DEFAULT_LEARNING_RATES = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_LEARNING_RATE = 1e-3


def base_name(name: str) -> str:
  """The optimizer without Bort: ``"bort-lion"`` → ``"lion"``."""
  return name[len(BORT_PREFIX):] if is_bort(name) else name


def default_learning_rate(name: str) -> float:
  """The default peak learning rate of an optimizer, with or without Bort.

  Examples:
    >>> from bort_jax.experiments.optimizers import default_learning_rate
    >>> default_learning_rate("bort-sgd"), default_learning_rate("lion")
    (0.05, 0.001)
  """
  return DEFAULT_LEARNING_RATES.get(base_name(name), DEFAULT_LEARNING_RATE)


def placement_of(name: str, placement: str | None = None) -> str:
  """Where Bort enters an optimizer: ``bort-sgd`` is coupled, the rest
  decoupled unless ``placement`` says otherwise.

  Examples:
    >>> from bort_jax.experiments.optimizers import placement_of
    >>> placement_of("bort-sgd"), placement_of("bort-lion", "coupled")
    ('coupled', 'coupled')
  """
  if base_name(name) == "sgd":
    return "coupled"
  return placement or "decoupled"


def correction_strength(name: str, learning_rate: float, gamma: float,
                        momentum: float = 0.9,
                        placement: str | None = None) -> float:
  """The per-step size of the Bort correction, relative to ``Δ(W)``.

  Decoupled, the update holds ``lr·γ·Δ``. Coupled, ``γΔ`` enters the
  gradient, and momentum ``μ`` sums it over steps: about ``lr·γ/(1 − μ)``
  for a slowly changing ``Δ`` (for SGD; an adaptive base optimizer rescales
  it further).

  Examples:
    >>> from bort_jax.experiments.optimizers import correction_strength
    >>> round(correction_strength("bort-sgd", 0.05, 0.003), 6)
    0.0015
    >>> correction_strength("bort-adamw", 1e-3, 1.0)
    0.001
  """
  strength = learning_rate * gamma
  if placement_of(name, placement) == "coupled" and base_name(name) == "sgd":
    strength /= 1.0 - momentum
  return strength


def is_bort(name: Any) -> bool:
  """Whether an optimizer name asks for Bort (``bort-…``).

  Examples:
    >>> from bort_jax.experiments.optimizers import is_bort
    >>> is_bort("bort-lion"), is_bort("adamw")
    (True, False)
  """
  return isinstance(name, str) and name.startswith(BORT_PREFIX)


#: Per-step correction strengths outside which ``bort-jax`` warns, per
#: penalty family: ``(weak, strong)``. From the MNIST frontier
#: (docs/RESULTS.md): l1 "full" corrections do not shrink near the
#: constraint (their size is about √m·‖w‖), so a strength of 5e-2 collapsed
#: Bort-SGD to a constant prediction, while below about 5e-4 the constraint
#: stays loose; the l2 corrections shrink as the constraint is met and
#: tolerate larger steps (their stability limit is lr·γ·c ≲ 1).
STRENGTH_LIMITS = {"l1": (5e-4, 1e-2), "l2": (1e-3, 0.1)}


def strength_report(config: Any) -> tuple[str, list[str]]:
  """One line on the effective Bort strength of a config, and warnings.

  Args:
    config: a :class:`~bort_jax.experiments.config.TrainConfig` with a Bort
      optimizer.

  Returns:
    ``(line, warnings)``.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig
    >>> from bort_jax.experiments.optimizers import strength_report
    >>> line, warnings = strength_report(TrainConfig(optimizer="bort-sgd",
    ...                                              gamma=0.1))
    >>> print(line)
    Bort coupled, l1-fullrow, amplitude ada, gamma 0.1: per-step correction ~ lr*gamma/(1-momentum) = 0.05
    >>> print(warnings[0])  # doctest: +ELLIPSIS
    warning: a per-step l1 correction of 0.05 is above 0.01, where ...
  """
  placement = placement_of(config.optimizer, config.placement)
  strength = correction_strength(config.optimizer, config.learning_rate,
                                 config.gamma, config.momentum, placement)
  how = ("lr*gamma/(1-momentum)" if placement == "coupled"
         and base_name(config.optimizer) == "sgd" else "lr*gamma")
  line = (f"Bort {placement}, {config.mode}, amplitude {config.amplitude}, "
          f"gamma {config.gamma:g}: per-step correction ~ {how} = "
          f"{strength:.3g}")
  every = config.bort_every or 1
  if every > 1:  # k·γ·Δ every k-th step: the stability limit sees k times it
    line += f", applied as {every} x {strength:.3g} every {every} steps"
  family = config.mode.split("-")[0]
  weak, strong = STRENGTH_LIMITS[family]
  warnings = []
  applied = strength * every
  if applied > strong:
    warnings.append(
        f"warning: a per-step {family} correction of {applied:.3g} is above "
        f"{strong:g}, where the MNIST frontier collapses or diverges; lower "
        "--gamma" + (" or --bort-every" if every > 1 else "") +
        " (see docs/RESULTS.md).")
  elif 0 < strength < weak:
    warnings.append(
        f"warning: a per-step {family} correction of {strength:.3g} is below "
        f"{weak:g}, where the MNIST frontier leaves the constraint loose; "
        "raise --gamma for an orthogonal network.")
  return line, warnings


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
    gamma: optax.ScalarOrSchedule | None = None,
    mode: str | None = None,
    amplitude: float | str | None = None,
    placement: str | None = None,
    weight_decay: float | None = None,
    momentum: float = 0.9,
    dimension_numbers: Any = None,
    every: int | None = None,
) -> optax.GradientTransformation:
  """An optimizer by its command-line name, with or without Bort.

  Args:
    name: the optimizer's name (see the module docstring).
    learning_rate: a scalar or an optax schedule.
    gamma: the Bort strength, a number or a schedule (Bort optimizers only;
      ``None``: the placement's recommended value, as are ``mode`` and
      ``amplitude``).
    mode: the Bort mode.
    amplitude: the Bort amplitude (a number or ``"ada"``).
    placement: ``"coupled"`` or ``"decoupled"``, for ``bort-<name>`` only.
    weight_decay: the weight decay; ``None`` for the optimizer's default.
    momentum: SGD's momentum (``sgd`` and ``bort-sgd``).
    dimension_numbers: handed to the Bort alias (e.g.
      ``bort_jax.flax_dimension_numbers(model)``); ``None`` for its default.
    every: the Bort alias's ``every`` (``k·γ·Δ`` on every k-th step);
      ``None`` or 1: every step.

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
  base = base_name(name)
  if placement is not None and (not bort or base in ("sgd", "adamw")):
    raise ValueError(
        "placement applies to bort-<optax optimizer> only: bort-sgd is "
        "coupled and bort-adamw decoupled by definition.")
  recommended = defaults.RECOMMENDED[placement_of(name, placement)]
  bort_kwargs = dict(
      gamma=recommended.gamma if gamma is None else gamma,
      mode=recommended.mode if mode is None else mode,
      amplitude=recommended.amplitude if amplitude is None else amplitude)
  if dimension_numbers is not None:
    bort_kwargs["dimension_numbers"] = dimension_numbers
  if every is not None:
    bort_kwargs["every"] = every
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
    steps_per_epoch: int = 1,
    dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  """:func:`make_optimizer` with a :class:`TrainConfig`'s arguments.

  A ``gamma_warmup`` of ``e`` epochs ramps γ linearly from 0 over
  ``e · steps_per_epoch`` steps.

  Args:
    config: a :class:`~bort_jax.experiments.config.TrainConfig`.
    learning_rate: a scalar or an optax schedule.
    steps_per_epoch: optimizer steps per epoch (for the γ ramp).
    dimension_numbers: as in :func:`make_optimizer`.

  Returns:
    An :class:`optax.GradientTransformation`.
  """
  gamma = config.gamma
  if config.gamma_warmup:
    ramp = max(1, int(round(config.gamma_warmup * steps_per_epoch)))
    gamma = optax.linear_schedule(0.0, config.gamma, ramp)
  return make_optimizer(
      config.optimizer, learning_rate, gamma=gamma, mode=config.mode,
      amplitude=config.amplitude, placement=config.placement,
      weight_decay=config.weight_decay, momentum=config.momentum,
      dimension_numbers=dimension_numbers, every=config.bort_every)


def make_schedule(config: Any, steps_per_epoch: int) -> optax.Schedule:
  """The cosine learning-rate schedule with linear warmup of a run.

  Args:
    config: the run's configuration (``learning_rate``, ``warmup`` in epochs,
      ``epochs``).
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    From 0 to ``learning_rate`` linearly over the warmup, then (``schedule``
    ``"cosine"``) a cosine decay to 0 at the last step, or (``"constant"``)
    ``learning_rate`` to the end.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig
    >>> from bort_jax.experiments.optimizers import make_schedule
    >>> schedule = make_schedule(TrainConfig(epochs=2, warmup=1.0), 10)
    >>> [round(float(schedule(s)), 5) for s in (0, 10, 20)]
    [0.0, 0.001, 0.0]
  """
  total = config.epochs * steps_per_epoch
  warmup = min(int(round(config.warmup * steps_per_epoch)), total - 1)
  if config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup),
         optax.constant_schedule(config.learning_rate)], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=warmup, decay_steps=total, end_value=0.0)

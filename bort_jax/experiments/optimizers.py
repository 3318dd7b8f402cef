"""Optimizers by their command-line names, and the learning-rate schedule.

Names: ``sgd`` (coupled L2 decay, then ``optax.sgd``), ``adamw``,
``bort-sgd`` (:func:`bort_jax.bort_sgd`), ``bort-adamw``
(:func:`bort_jax.bort_adamw`), any optax or ``optax.contrib`` optimizer
taking a learning rate (``lion``, ``lamb``, ``muon``, …) and
``bort-<optax optimizer>`` (Bort added by
:func:`bort_jax.with_bort`, decoupled unless ``placement="coupled"``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import optax

import bort_jax
from bort_jax import validation

# The names and default rates, defined without JAX for the parser.
from bort_jax.experiments.choices import base_name
from bort_jax.experiments.choices import is_bort
from bort_jax.experiments.choices import DEFAULT_LEARNING_RATE
from bort_jax.experiments.choices import DEFAULT_LEARNING_RATES


def default_learning_rate(name: str) -> float:
  """The default peak learning rate of an optimizer, with or without Bort:
  ours where we tuned one, else optax's own default where it has one (the
  learning-rate-free ``prodigy`` and ``dadapt_adamw``: 1, a factor on
  their estimate), else 1e-3.

  Examples:
    >>> from bort_jax.experiments.optimizers import default_learning_rate
    >>> default_learning_rate("bort-sgd"), default_learning_rate("lion")
    (0.05, 0.001)
    >>> [default_learning_rate(n) for n in ("prodigy", "dog", "cocob")]
    [1.0, 1.0, 1.0]
  """
  base = base_name(name)
  if base in DEFAULT_LEARNING_RATES:
    return DEFAULT_LEARNING_RATES[base]
  try:
    own = inspect.signature(optax_alias(base)).parameters[
        "learning_rate"].default
  except ValueError:  # not an optax optimizer: refused where it is built
    own = None
  if isinstance(own, (int, float)) and not isinstance(own, bool) and own > 0:
    return float(own)
  return DEFAULT_LEARNING_RATE


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


#: Per-step correction strengths outside which ``bort-jax`` warns, per
#: penalty family: ``(weak, strong)``. From the MNIST frontier
#: (docs/RESULTS.md): l1 "full" corrections do not shrink near the
#: constraint (their size is about √m·‖w‖), so a strength of 5e-2 collapsed
#: Bort-SGD to a constant prediction, while below about 5e-4 the constraint
#: stays loose; the l2 corrections shrink as the constraint is met and
#: tolerate larger steps (their stability limit is lr·γ·c ≲ 1). The strong
#: l1 limit is the library's :data:`bort_jax.MAX_STEP_STRENGTH`, on which
#: its aliases warn too.
STRENGTH_LIMITS = {"l1": (5e-4, bort_jax.MAX_STEP_STRENGTH), "l2": (1e-3, 0.1)}


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
  # Decoupled, the update holds lr·γ·Δ; coupled (SGD), momentum μ sums γΔ
  # over steps: about lr·γ/(1 − μ) for a slowly changing Δ.
  strength, how = config.learning_rate * config.gamma, "lr*gamma"
  if base_name(config.optimizer) == "sgd":  # bort-sgd is always coupled
    strength /= 1.0 - config.momentum
    how = "lr*gamma/(1-momentum)"
  if config.bort_lr_scale != 1.0:  # the Bort kernels' whole update
    strength *= config.bort_lr_scale
    how += "*bort_lr_scale"
  # Coupled into any other optimizer, γΔ joins the gradient, which the
  # optimizer then rescales (Adam's moments, Lion's sign): no estimate.
  rescaled = placement == "coupled" and base_name(config.optimizer) != "sgd"
  line = (f"Bort {placement}, {config.mode}, amplitude {config.amplitude}, "
          f"gamma {config.gamma:g}: " + (
              f"gamma*Delta joins the gradient, which "
              f"{base_name(config.optimizer)} rescales (no per-step "
              "estimate, no strength warning)" if rescaled else
              f"per-step correction ~ {how} = {strength:.3g}"))
  every, lagged = config.bort_every, config.bort_lagged
  if every > 1 and lagged:
    line += f", with Delta computed every {every} steps"
  elif every > 1:  # k·γ·Δ every k-th step: the stability limit sees k times
    line += f", applied as {every} x {strength:.3g} every {every} steps"
  if config.mode.startswith("huber"):
    line += f"; tau {config.tau}"
  if config.gamma_schedule == "late":
    line += (f"; gamma late: {config.gamma * config.gamma_late_factor:g} "
             f"until {config.gamma_switch:.0%} of the steps, then "
             f"{config.gamma:g}")
  elif config.gamma_schedule == "anneal":
    line += (f"; gamma anneal: {config.gamma:g} until "
             f"{config.gamma_switch:.0%} of the steps, then linear to 0 at "
             "the end (not tight at the end)")
  if config.bort_lr_scale != 1.0:
    line += f"; Bort kernels' learning rate x{config.bort_lr_scale:g}"
  if not config.bort_head:
    line += "; classifier head not constrained"
  family = config.mode.split("-")[0]
  # The Huber modes are the smooth l1: sign-like outside their zone.
  weak, strong = STRENGTH_LIMITS["l2" if family == "l2" else "l1"]
  warnings = []
  if rescaled:
    return line, warnings
  # The library's rule: k·s at once decoupled, s coupled or lagged.
  burst = validation.steps_per_application(every, lagged, placement)
  applied = strength * burst
  if applied > strong:
    warnings.append(
        f"warning: a per-step {family} correction of {applied:.3g} is above "
        f"{strong:g}, where the MNIST frontier collapses or diverges; lower "
        "--gamma" + (" or --bort-every" if burst > 1 else "") +
        " (see docs/RESULTS.md).")
  elif 0 < strength < weak:
    warnings.append(
        f"warning: a per-step {family} correction of {strength:.3g} is below "
        f"{weak:g}, where the MNIST frontier leaves the constraint loose; "
        "raise --gamma for an orthogonal network.")
  return line, warnings


def make_gamma_schedule(config: Any, steps_per_epoch: int
                        ) -> optax.ScalarOrSchedule:
  """The γ of a Bort run, step by step: its schedule times its warm-up.

  With ``T = epochs · steps_per_epoch`` steps and the switch step
  ``s = round(gamma_switch · T)``:

  - ``"constant"``: γ;
  - ``"late"``: ``γ · gamma_late_factor`` for steps ``t < s``, then γ;
  - ``"anneal"``: γ for ``t < s``, then ``γ · (1 − (t − s)/(T − s))``, which
    reaches 0 at ``T``: the last steps barely correct, so the constraint is
    not tight at the end of the run.

  A ``gamma_warmup`` of ``e`` epochs multiplies this by a ramp from 0 to 1
  over ``w = max(1, round(e · steps_per_epoch))`` steps (``min(t/w, 1)``).
  Built from optax schedules, so it is traced by the step counter, with no
  Python branch on its value.

  Args:
    config: a :class:`~bort_jax.experiments.config.TrainConfig` with a Bort
      optimizer.
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    γ as a number (constant, no warm-up) or an optax schedule.

  Examples:
    >>> from bort_jax.experiments.config import TrainConfig
    >>> from bort_jax.experiments.optimizers import make_gamma_schedule
    >>> config = TrainConfig(gamma=0.5, gamma_schedule="late", epochs=1,
    ...                      gamma_switch=0.5, gamma_late_factor=0.1)
    >>> gamma = make_gamma_schedule(config, 10)
    >>> [round(float(gamma(t)), 6) for t in (0, 4, 5, 9)]
    [0.05, 0.05, 0.5, 0.5]
  """
  gamma = config.gamma
  ramp = 0
  if config.gamma_warmup:
    ramp = max(1, int(round(config.gamma_warmup * steps_per_epoch)))
  if config.gamma_schedule == "constant":
    # The warm-up alone keeps its one schedule (runs made before the
    # schedules existed resume bit for bit).
    return optax.linear_schedule(0.0, gamma, ramp) if ramp else gamma
  total = config.epochs * steps_per_epoch
  switch = int(round(config.gamma_switch * total))
  if config.gamma_schedule == "late":
    pieces = [optax.constant_schedule(gamma * config.gamma_late_factor),
              optax.constant_schedule(gamma)]
  else:  # "anneal"
    pieces = [optax.constant_schedule(gamma),
              optax.linear_schedule(gamma, 0.0, max(1, total - switch))]
  schedule = optax.join_schedules(pieces, [switch])
  if not ramp:
    return schedule
  warm = optax.linear_schedule(0.0, 1.0, ramp)
  return lambda count: warm(count) * schedule(count)


def bort_leaves(dimension_numbers: Any = None, bort_mask: Any = None
                ) -> Callable[[Any], Any]:
  """A callable mask: true at the leaves Bort corrects, false elsewhere.

  A leaf is a Bort leaf when the dimension numbers select it (``None``: the
  default selection, :func:`bort_jax.flax_dimension_numbers` of the tree)
  and ``bort_mask`` (a tree or callable of booleans, or ``None``) keeps it,
  the selection of :func:`bort_jax.add_bort_correction`. A callable, so that
  it fits both trees ``nnx.Optimizer`` hands a transformation.

  Args:
    dimension_numbers: as in :func:`make_optimizer`.
    bort_mask: as in :func:`make_optimizer`.

  Returns:
    ``params -> tree of bool`` of ``params``' structure.

  Examples:
    >>> import jax.numpy as jnp
    >>> from bort_jax.experiments.optimizers import bort_leaves
    >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    >>> bort_leaves()(params)
    {'bias': False, 'kernel': True}
  """
  def is_view(x):
    return x is None or isinstance(x, bort_jax.BortDimensionNumbers)

  def mask(params):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    numbers = dimension_numbers
    if numbers is None:
      numbers = bort_jax.flax_dimension_numbers(params)
    elif callable(numbers):
      numbers = numbers(params)
    if isinstance(numbers, bort_jax.BortDimensionNumbers):
      views = [numbers] * len(leaves)
    else:
      views = jax.tree_util.tree_leaves(numbers, is_leaf=is_view)
    keep = [True] * len(leaves)
    if bort_mask is not None:
      keep = jax.tree_util.tree_leaves(
          bort_mask(params) if callable(bort_mask) else bort_mask)
    if not len(views) == len(keep) == len(leaves):
      raise ValueError(
          "bort_leaves: the dimension numbers or bort_mask do not match the "
          f"parameter tree ({len(views)} and {len(keep)} leaves for "
          f"{len(leaves)}); build them from the same model.")
    return treedef.unflatten([view is not None and bool(k)
                              for view, k in zip(views, keep)])

  return mask


def optax_alias(name: str) -> Callable[..., optax.GradientTransformation]:
  """The optax optimizer called ``name``, from ``optax`` or ``optax.contrib``.

  Args:
    name: an optimizer's name without ``bort-`` (``"lion"``, ``"muon"``).

  Returns:
    The function, which takes ``learning_rate`` first.

  Raises:
    ValueError: no optax optimizer taking a learning rate has that name.

  Examples:
    >>> from bort_jax.experiments.optimizers import optax_alias
    >>> optax_alias("lion").__name__, optax_alias("muon").__module__
    ('lion', 'optax.contrib._muon')
  """
  found = [getattr(module, name, None) for module in (optax, optax.contrib)]
  fn = next((f for f in found if callable(f) and not isinstance(f, type)),
            None)
  try:
    params = list(inspect.signature(fn).parameters)
  except (TypeError, ValueError):  # not a function (or none was found)
    params = []
  if name.startswith("_") or params[:1] != ["learning_rate"]:
    raise ValueError(
        f"Unknown optimizer {name!r}: expected sgd, adamw, bort-sgd, "
        "bort-adamw, the name of an optax or optax.contrib optimizer taking a "
        "learning rate (e.g. lion, lamb, adam, rmsprop, muon), or "
        "bort-<that name>.")
  return fn


def _optax_optimizer(name, learning_rate, weight_decay, momentum):
  fn = optax_alias(name)
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


def _product(a: Any, b: Any) -> Any:
  """``a · b`` for numbers or schedules (a schedule if either is one)."""
  if not callable(a) and not callable(b):
    return a * b
  value = lambda x, count: x(count) if callable(x) else x
  return lambda count: value(a, count) * value(b, count)


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    gamma: optax.ScalarOrSchedule | None = None,
    placement: str | None = None,
    weight_decay: float | None = None,
    momentum: float = 0.9,
    bort_lr_scale: float = 1.0,
    **bort_kwargs: Any,
) -> optax.GradientTransformation:
  """An optimizer by its command-line name, with or without Bort.

  Args:
    name: the optimizer's name (see the module docstring).
    learning_rate: a scalar or an optax schedule.
    gamma: the Bort strength, a number or a schedule (Bort optimizers only;
      ``None``: the placement's recommended value, as for ``mode`` and
      ``amplitude``, :data:`bort_jax.RECOMMENDED`).
    placement: ``"coupled"`` or ``"decoupled"``, for ``bort-<name>`` only.
    weight_decay: the weight decay; ``None`` for the optimizer's default.
    momentum: SGD's momentum (``sgd`` and ``bort-sgd``).
    bort_lr_scale: multiplies the whole update of the Bort leaves
      (:func:`bort_leaves`) by this factor, last in the chain (Bort
      optimizers only; 1: unchanged).
    **bort_kwargs: passed as they are to the Bort alias
      (:func:`bort_jax.bort_sgd`, :func:`bort_jax.bort_adamw` or
      :func:`bort_jax.with_bort`): ``mode``, ``amplitude``, ``tau``,
      ``every``, ``lagged``, ``dimension_numbers`` (e.g.
      ``bort_jax.flax_dimension_numbers(model)``), ``bort_mask`` (e.g. to
      leave the classifier head out), …; a ``None`` is left out, so the
      alias's default holds (Bort optimizers only).

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
  bort_kwargs = {k: v for k, v in bort_kwargs.items() if v is not None}
  if not bort and (bort_kwargs or bort_lr_scale != 1.0):
    given = next(iter(bort_kwargs), "bort_lr_scale")
    raise ValueError(
        f"{given} applies to Bort optimizers only; drop it, or use "
        f"bort-{name}.")
  recommended = bort_jax.RECOMMENDED[placement_of(name, placement)]
  bort_kwargs.setdefault("mode", recommended.mode)
  bort_kwargs.setdefault("amplitude", recommended.amplitude)
  bort_kwargs["gamma"] = recommended.gamma if gamma is None else gamma
  if bort and base == "sgd":
    tx = bort_jax.bort_sgd(
        learning_rate, momentum or None, weight_decay=weight_decay or 0.0,
        **bort_kwargs)
  elif bort and base == "adamw":
    wd = {} if weight_decay is None else {"weight_decay": weight_decay}
    tx = bort_jax.bort_adamw(learning_rate, **wd, **bort_kwargs)
  else:
    optimizer = _optax_optimizer(base, learning_rate, weight_decay, momentum)
    if not bort:
      return optimizer
    placement = placement or "decoupled"
    # The command line keeps bort-adamw's parametrisation for every
    # bort-<optax>: decoupled, the per-step strength is lr·γ (it follows the
    # learning-rate schedule, as AdamW's decay does); coupled, it is γ.
    gamma = bort_kwargs.pop("gamma")
    strength = gamma
    if placement == "decoupled":
      strength = _product(learning_rate, gamma)
    tx = bort_jax.with_bort(optimizer, placement=placement, strength=strength,
                            **bort_kwargs)
  if bort_lr_scale == 1.0:
    return tx
  # Last in the chain: the Bort leaves' whole step (gradient part, decay and
  # correction) scales, as a per-group learning rate would.
  return optax.chain(tx, optax.masked(
      optax.scale(bort_lr_scale),
      bort_leaves(bort_kwargs.get("dimension_numbers"),
                  bort_kwargs.get("bort_mask"))))


def check_plain_update(tx: optax.GradientTransformation, name: str) -> None:
  """Refuses an optimizer whose ``update`` needs more than the gradients, or
  whose weights are not the params.

  The training step calls ``update(grads, state, params)``; L-BFGS's line
  search also needs ``value``, ``grad`` and ``value_fn``, and failed inside
  the first jitted step. A schedule-free optimizer trains, but its weights
  are an average it keeps (``optax.contrib.schedule_free_eval_params``),
  which the loop does not evaluate: its accuracy read low, silently. Traced
  once on a 2×2 kernel (no arithmetic).

  Args:
    tx: the optimizer.
    name: its command-line name, for the message.

  Raises:
    ValueError: the update asks for more arguments, or the weights to
      evaluate are not the params
      (:func:`bort_jax.validation.weights_of_their_own`).

  Examples:
    >>> import optax
    >>> from bort_jax.experiments.optimizers import check_plain_update
    >>> check_plain_update(optax.adam(1e-3), "adam")
    >>> check_plain_update(optax.lbfgs(), "lbfgs")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: optimizer 'lbfgs' cannot be trained by bort-jax: its update ...
  """
  params = {"kernel": jax.numpy.eye(2), "bias": jax.numpy.zeros(2)}
  state = jax.eval_shape(tx.init, params)
  own = validation.weights_of_their_own(state, evaluated=True)
  if own is not None:
    raise ValueError(
        f"optimizer {name!r} cannot be trained by bort-jax: it keeps "
        f"weights of its own ({own}), which the training loop does not "
        "evaluate (it evaluates the params it steps: the accuracy would "
        "read low); choose another optimizer.")
  try:
    jax.eval_shape(lambda p, s: tx.update(p, s, p), params, state)
  except TypeError as e:
    if "missing" not in str(e) or "argument" not in str(e):
      raise
    needs = str(e).splitlines()[0].split("missing", 1)[1].strip()
    raise ValueError(
        f"optimizer {name!r} cannot be trained by bort-jax: its update "
        f"needs more than the gradients (missing {needs}), which the "
        "training step does not pass; choose another optimizer.") from None


def optimizer_from_config(
    config: Any, learning_rate: optax.ScalarOrSchedule, *,
    steps_per_epoch: int = 1,
    dimension_numbers: Any = None,
    bort_mask: Any = None,
) -> optax.GradientTransformation:
  """:func:`make_optimizer` with a :class:`TrainConfig`'s arguments.

  γ follows :func:`make_gamma_schedule` (its schedule, with the
  ``gamma_warmup`` ramp); ``bort_lr_scale`` scales the Bort leaves' update.

  Args:
    config: a :class:`~bort_jax.experiments.config.TrainConfig`.
    learning_rate: a scalar or an optax schedule.
    steps_per_epoch: optimizer steps per epoch (for the γ schedule).
    dimension_numbers: as in :func:`make_optimizer`.
    bort_mask: as in :func:`make_optimizer` (the training loop passes
      :func:`bort_jax.experiments.models.bort_mask`'s, which leaves the head
      out when ``bort_head`` is false).

  Returns:
    An :class:`optax.GradientTransformation`.
  """
  if not is_bort(config.optimizer):
    return make_optimizer(
        config.optimizer, learning_rate, weight_decay=config.weight_decay,
        momentum=config.momentum)
  # The fields marked as the alias's arguments go to it under their names.
  alias = {f.metadata["alias"]: getattr(config, f.name)
           for f in dataclasses.fields(config) if f.metadata.get("alias")}
  return make_optimizer(
      config.optimizer, learning_rate,
      gamma=make_gamma_schedule(config, steps_per_epoch),
      placement=config.placement, weight_decay=config.weight_decay,
      momentum=config.momentum, bort_lr_scale=config.bort_lr_scale,
      dimension_numbers=dimension_numbers, bort_mask=bort_mask, **alias)


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

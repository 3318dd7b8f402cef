"""Bort-SGD, Bort-AdamW and Bort on any optax optimizer: chains of parts."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax.numpy as jnp
import optax

from bort_jax._src import penalty
from bort_jax._src import projection
from bort_jax._src import validation
from bort_jax._src import defaults
from bort_jax._src.defaults import Mode
from bort_jax._src.defaults import Placement
from bort_jax._src.dimension_numbers import DimensionNumbersLike
from bort_jax._src.transform import _correction_transform
from bort_jax._src.transform import check_every
from bort_jax._src.transform import hyperparameter_value

MaskOrFn = Any | Callable[[optax.Params], Any] | None


def _check_decay(name: str, value: Any) -> None:
  """A decay rate in [0, 1) (``b1``, ``b2``, ``momentum``), or traced."""
  validation.check_scalar_or_schedule(name, value, low=0, high=1,
                                      high_inclusive=False)
  if callable(value):
    raise validation.ArgumentTypeError(
        f"{name} must be a number in [0, 1), got the callable {value!r}; "
        "optax takes no schedule here.")


def _zone(tau: Any, every: Any, per_step: Callable[[Any], Any]) -> Any:
  """``tau``, with ``"step"`` made the schedule ``2.5 · every · s_t`` of the
  per-step strength ``s_t = per_step(count)`` (:data:`defaults.STEP_TAU`)."""
  if not (isinstance(tau, str) and tau == defaults.STEP_TAU):
    return tau
  factor = defaults.STEP_TAU_FACTOR * check_every(every)
  return lambda count: factor * per_step(count)


def _correction(strength: Any, mode: Any, amplitude: Any,
                dimension_numbers: Any, kernel_options: Any, bort_mask: Any,
                every: Any, tau: Any, lagged: Any, start: Any,
                coupled: bool, per_step: Callable[[Any], Any] | None,
                schedules: tuple = ()) -> optax.GradientTransformationExtraArgs:
  """The aliases' correction. With the start, it skips step 0 (the landing)
  where a correction then would outlive it: in a coupled optimizer's state,
  or held by ``lagged`` between refreshes (``lagged`` with ``every`` 1 is
  the plain correction); a decoupled one is replaced with the weights.

  ``per_step(count)`` is the per-step strength ``s_t`` where the alias
  knows it (``schedules``: the hyperparameters it reads): a sign step then
  changes a Gram entry by ``2 · s_t · c`` (``every`` times that in a
  burst), and the l1 modes' rounding zone narrows to that change, so that
  a step too small to move the weights beyond rounding is taken.
  """
  every = check_every(every)
  lagged = validation.check_bool("lagged", lagged)
  after_landing = (validation.check_bool("start_on_constraint", start)
                   and (coupled or (lagged and every > 1)))
  sign_step = None
  if per_step is not None:
    factor = 2.0 * (1 if lagged else every)
    sign_step = ((lambda count: factor * per_step(count))
                 if any(map(callable, schedules)) else factor * per_step(0))
  return _correction_transform(
      strength, mode, amplitude, dimension_numbers, kernel_options,
      bort_mask, every, tau, lagged, after_landing=after_landing,
      sign_step=sign_step)


def _refusing_own_weights(
    optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """``optimizer``, whose ``init`` refuses a state with weights of its own
  (:func:`validation.weights_of_their_own`)."""

  def init_fn(params):
    state = optimizer.init(params)
    own = validation.weights_of_their_own(state)
    if own is not None:
      raise ValueError(
          f"with_bort: the optimizer keeps weights of its own ({own}) and "
          "rebuilds the params from them on every step, so Bort's "
          "correction and start never reach them and the constraint does "
          "not hold; use Bort with an optimizer that updates the params "
          "themselves, e.g. with_bort(optax.adamw(lr)).")
    return state

  return optimizer._replace(init=init_fn)


def _started(tx: optax.GradientTransformation, start: Any, strength: Any,
             amplitude: Any, dimension_numbers: Any, bort_mask: Any,
             kernel_options: penalty.KernelOptions) -> Any:
  """``tx``, followed by :func:`start_on_constraint` when ``start``, unless
  the Bort strength is a literal 0 (no Bort: the base optimizer exactly)."""
  if not validation.check_bool("start_on_constraint", start):
    return tx
  if isinstance(strength, numbers.Real) and strength == 0:
    return tx
  # An array (optax.inject_hyperparams' γ) may be a zero known only then.
  gate = None if callable(strength) or isinstance(
      strength, numbers.Real) else strength
  return optax.chain(tx, projection.landing(
      amplitude, dimension_numbers=dimension_numbers, bort_mask=bort_mask,
      kernel_options=kernel_options, warn=False, unless_zero=gate))


def bort_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    gamma: optax.ScalarOrSchedule = 0.003,
    mode: Mode = "l1-fullrow",
    amplitude: optax.ScalarOrSchedule | str = "ada",
    tau: optax.ScalarOrSchedule | str = 0.01,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: MaskOrFn = None,
    kernel_options: penalty.KernelOptions | None = None,
    every: int | None = None,
    lagged: bool = False,
    start_on_constraint: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """SGD with the coupled Bort correction (the paper's Bort-SGD).

  The correction joins the gradient before weight decay and momentum, so it
  flows through the momentum buffer like L2 decay:

  .. math::
    g ← ∇L + γ Δ(W) + wd · W,  \\quad b ← μ b + g,  \\quad W ← W − lr · b

  (``b = g`` on the first step; Nesterov uses ``g + μ b``). The positional
  arguments are :func:`optax.sgd`'s, everything else is keyword-only; with
  ``gamma=0`` and ``weight_decay=0`` this is exactly :func:`optax.sgd`.

  Args:
    learning_rate: a scalar ``>= 0`` or schedule.
    momentum: the momentum ``μ ∈ [0, 1)``, or ``None`` for none (as in
      ``optax.sgd``).
    nesterov: Nesterov momentum.
    accumulator_dtype: the momentum buffer's dtype.
    weight_decay: the coupled (L2) decay ``wd >= 0``, a scalar or schedule.
    weight_decay_mask: optional mask for weight decay (``optax.masked``).
    gamma: the Bort strength ``γ ≥ 0``, a scalar or schedule. The default
      and ``mode``'s and ``amplitude``'s are the recommended coupled setting,
      :data:`bort_jax.RECOMMENDED` ``["coupled"]`` (chosen at lr 0.05,
      momentum 0.9). The paper's parametrisation is kept (γ joins the
      gradient, so the per-step correction is about ``lr · γ / (1 − μ)``):
      a concrete setting whose per-step strength exceeds
      :data:`bort_jax.MAX_STEP_STRENGTH` warns at construction, naming a γ
      that works (with ``every``, still per step: momentum spreads the
      burst).
    mode: the Bort mode (see :func:`add_bort_correction`).
    amplitude: ``c > 0``, a schedule, or ``"ada"``.
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``:
      a number ``> 0``, a schedule, or ``"step"``, the zone that follows the
      per-step correction ``s_t = lr_t · γ_t / (1 − μ)``:
      ``tau_t = 2.5 · every · s_t`` (see :func:`bort_adamw`). Without
      momentum each correction removes 0.8 of a residual inside the zone;
      momentum carries it on for about ``1 / (1 − μ)`` steps, so the
      residual rings through zero before it settles.
    dimension_numbers: which leaves are Bort matrices (default: Flax kernels).
    bort_mask: optional mask selecting the leaves Bort may act on
      (``optax.masked``). Under ``optax.inject_hyperparams``, which calls
      every callable argument as a schedule of the step, name a callable
      mask (or callable ``dimension_numbers``) in its ``static_args``:
      ``static_args=("bort_mask",)``.
    kernel_options: how the full modes' products are computed.
    every: ``None`` (every step) or k: apply ``k · γ · Δ`` on every k-th step
      only (see :func:`add_bort_correction`).
    lagged: with ``every = k``, compute Δ every k-th step only and apply
      ``γ · Δ`` of the last one on every step (see
      :func:`add_bort_correction`); with ``every`` 1, the plain correction.
    start_on_constraint: make the first step land every Bort matrix on the
      constraint (:func:`bort_jax.start_on_constraint`, last in the chain),
      whatever the initialisation; the correction then holds it there
      (a full column mode on fewer units than fan-in cannot: ``init``
      warns). Off by default (:data:`bort_jax.RECOMMENDED`
      ``["coupled"]``): on the MNIST MLPs it made Bort-SGD exact (error
      4e-6 instead of 0.04) and as accurate or more after 3 epochs; it
      was withheld on one seed of 300 digits steps at lr 0.1 (4 pp behind
      SGD), which over 5 seeds is −0.7 pp [−2.8, +1.5] with the start
      against −1.0 pp [−2.6, +0.6] without (README). A literal zero γ (no
      Bort) has no start either.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a bad learning rate, momentum, weight decay or Bort
      argument (see :func:`add_bort_correction`).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, bort_jax
    >>> params = {"kernel": jnp.array([[1.0, 1.0], [0.0, 1.0]])}
    >>> tx = bort_jax.bort_sgd(0.1, momentum=0.9, gamma=0.5, mode="l2-full",
    ...                        amplitude=1.0)
    >>> @jax.jit
    ... def step(params, state):  # zero data loss: only Bort acts
    ...   grads = jax.tree.map(jnp.zeros_like, params)
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   params, state = step(params, state)
    >>> jnp.round(params["kernel"] @ params["kernel"].T, 3) + 0.0  # no -0.
    Array([[1., 0.],
           [0., 1.]], dtype=float32)
  """
  validation.check_learning_rate(learning_rate)
  if momentum is not None:
    _check_decay("momentum", momentum)
  kernel_options = validation.check_bort_arguments(
      gamma, mode, amplitude, kernel_options, tau, step_known=True)
  # Momentum sums the correction over about 1 / (1 − μ) steps.
  steps = 1.0 / (1.0 - (validation.concrete_number(momentum) or 0.0))
  lr = validation.concrete_number(learning_rate)
  mu = 0.0 if momentum is None else momentum  # may be traced

  def per_step(count):
    return (hyperparameter_value(learning_rate, count)
            * hyperparameter_value(gamma, count) / (1.0 - mu))

  tau = _zone(tau, every, per_step)
  validation.warn_if_step_strength_collapses(
      "bort_sgd", "gamma", gamma, lambda g: lr * g * steps, mode,
      lambda g: defaults.DEFAULT_STRENGTH / (lr * steps))
  validation.check_bool("nesterov", nesterov)
  validation.check_dtype("accumulator_dtype", accumulator_dtype)
  validation.check_strength(weight_decay, "weight_decay")
  weight_decay_mask = validation.check_mask("weight_decay_mask",
                                            weight_decay_mask)
  parts = [
      _correction(gamma, mode, amplitude, dimension_numbers,
                  kernel_options, bort_mask, every, tau, lagged,
                  start_on_constraint, coupled=True, per_step=per_step,
                  schedules=(learning_rate, gamma)),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
  ]
  if momentum is not None:
    parts.append(
        optax.trace(
            decay=momentum,
            nesterov=nesterov,
            accumulator_dtype=accumulator_dtype,
        )
    )
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return _started(optax.chain(*parts), start_on_constraint, gamma,
                  amplitude, dimension_numbers, bort_mask, kernel_options)


def bort_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    gamma: optax.ScalarOrSchedule = 1.0,
    mode: Mode = "l1-fullrow",
    amplitude: optax.ScalarOrSchedule | str = "ada",
    tau: optax.ScalarOrSchedule | str = 0.01,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: MaskOrFn = None,
    kernel_options: penalty.KernelOptions | None = None,
    every: int | None = None,
    lagged: bool = False,
    start_on_constraint: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """AdamW with the decoupled Bort correction (the paper's Bort-AdamW).

  Adam's moments see only the data gradient; the correction is applied like
  AdamW's decoupled weight decay:

  .. math::
    W ← W − lr · (\\hat m / (\\sqrt{\\hat v} + ε) + wd · W + γ Δ(W))

  It is ``chain(scale_by_adam, add_decayed_weights, add_bort_correction,
  scale_by_learning_rate)``, then :func:`start_on_constraint` (by default:
  the first step lands the Bort matrices on ``W Wᵀ = cI``); with
  ``gamma=0`` it is exactly :func:`optax.adamw`. Arguments up to ``mask`` (the weight-decay mask) and
  ``nesterov`` are :func:`optax.adamw`'s.

  Args:
    learning_rate: a scalar ``>= 0`` or schedule.
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: added to the denominator, ``>= 0``.
    eps_root: added inside the square root, ``>= 0``.
    mu_dtype: the first moment's dtype.
    weight_decay: the decoupled weight decay ``wd >= 0``.
    mask: the weight-decay mask, as in :func:`optax.adamw`.
    nesterov: Nesterov momentum in Adam.
    gamma: the Bort strength ``γ ≥ 0``, a scalar or schedule. The default
      and ``mode``'s and ``amplitude``'s are the recommended decoupled
      setting, :data:`bort_jax.RECOMMENDED` ``["decoupled"]`` (chosen at lr
      1e-3). The paper's parametrisation is kept (γ is multiplied by the
      learning rate, so the per-step correction is ``lr · γ``): a concrete
      setting whose strength per application (``every`` times the per-step
      one, unless ``lagged``) exceeds :data:`bort_jax.MAX_STEP_STRENGTH`
      warns at construction, naming a γ that works. For a per-step strength
      that does not follow the learning rate, use
      ``with_bort(optax.adamw(lr))``.
    mode: the Bort mode (see :func:`add_bort_correction`).
    amplitude: ``c > 0``, a schedule, or ``"ada"``.
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``:
      a number ``> 0``, a schedule, or ``"step"``, the zone that follows the
      per-step correction ``s_t = lr_t · γ_t``: ``tau_t = 2.5 · every ·
      s_t``. A correction ``every · s_t · Δ`` then changes the Gram by about
      ``−2 · every · s_t · c · clip(R/τ, −1, 1)``: it removes 0.8 of a
      residual ``R`` inside the zone, so it never overshoots, and moves as
      far as ``every`` steps of ``l1-fullrow`` outside it; as the learning
      rate decays, the zone narrows toward the l1 limit.
    dimension_numbers: which leaves are Bort matrices (default: Flax kernels).
    bort_mask: optional mask selecting the leaves Bort may act on
      (``optax.masked``). Under ``optax.inject_hyperparams``, which calls
      every callable argument as a schedule of the step, name a callable
      mask (or callable ``dimension_numbers``) in its ``static_args``:
      ``static_args=("bort_mask",)``.
    kernel_options: how the full modes' products are computed.
    every: ``None`` (every step) or k: apply ``k · γ · Δ`` on every k-th step
      only (see :func:`add_bort_correction`).
    lagged: with ``every = k``, compute Δ every k-th step only and apply
      ``γ · Δ`` of the last one on every step (see
      :func:`add_bort_correction`); with ``every`` 1, the plain correction.
    start_on_constraint: make the first step land every Bort matrix on the
      constraint (:func:`bort_jax.start_on_constraint`, last in the chain),
      whatever the initialisation; the correction then holds it there
      (a full column mode on fewer units than fan-in cannot: ``init``
      warns).
      The default is :data:`bort_jax.RECOMMENDED`'s: on the MNIST MLPs it
      made the every-step default tight (error 4e-7 to 6e-5 at the end of
      a cosine decay, instead of 0.03) and as accurate or more, for 2–4 %
      of the step (its ``lax.cond`` runs on every step). Pass ``False``
      to keep trained weights as they are (fine-tuning: the correction
      then brings them to the constraint step by step) or to save that
      time. A literal zero strength (no Bort) has no start either; under :func:`optax.inject_hyperparams` the strength
      is known only as its value at each step, so there a γ that is 0 at
      step 0 (a warm-up from 0) has no start, while the same schedule
      passed here directly starts. A learning rate of 0 still lands the
      weights (the start is a projection, not a step of the learning rate).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for a bad learning rate, beta, eps, weight decay or Bort
      argument (see :func:`add_bort_correction`).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, bort_jax
    >>> params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
    >>> tx = bort_jax.bort_adamw(1e-3, gamma=0.1, mode="l1-fullrow",
    ...                          amplitude="ada")
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["kernel"].shape
    (4, 3)
  """
  validation.check_learning_rate(learning_rate)
  _check_decay("b1", b1)
  _check_decay("b2", b2)
  validation.check_scalar_or_schedule("eps", eps, low=0)
  validation.check_scalar_or_schedule("eps_root", eps_root, low=0)
  validation.check_dtype("mu_dtype", mu_dtype)
  validation.check_strength(weight_decay, "weight_decay")
  validation.check_bool("nesterov", nesterov)
  mask = validation.check_mask("mask", mask)
  kernel_options = validation.check_bort_arguments(
      gamma, mode, amplitude, kernel_options, tau, step_known=True)
  lr = validation.concrete_number(learning_rate)

  def per_step(count):
    return (hyperparameter_value(learning_rate, count)
            * hyperparameter_value(gamma, count))

  tau = _zone(tau, every, per_step)
  validation.warn_if_step_strength_collapses(
      "bort_adamw", "gamma", gamma, lambda g: lr * g, mode,
      lambda g: defaults.DEFAULT_STRENGTH / lr,
      validation.steps_per_application(check_every(every), lagged,
                                       "decoupled"))
  adamw = optax.chain(
      optax.scale_by_adam(
          b1=b1,
          b2=b2,
          eps=eps,
          eps_root=eps_root,
          mu_dtype=mu_dtype,
          nesterov=nesterov,
      ),
      optax.add_decayed_weights(weight_decay, mask),
      _correction(gamma, mode, amplitude, dimension_numbers,
                  kernel_options, bort_mask, every, tau, lagged,
                  start_on_constraint, coupled=False, per_step=per_step,
                  schedules=(learning_rate, gamma)),
      optax.scale_by_learning_rate(learning_rate),
  )
  return _started(adamw, start_on_constraint, gamma, amplitude,
                  dimension_numbers, bort_mask, kernel_options)


def with_bort(
    optimizer: optax.GradientTransformation,
    *,
    strength: optax.ScalarOrSchedule = 1e-3,
    mode: Mode = "l1-fullrow",
    amplitude: optax.ScalarOrSchedule | str = "ada",
    placement: Placement = "decoupled",
    tau: optax.ScalarOrSchedule | str = 0.01,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: MaskOrFn = None,
    kernel_options: penalty.KernelOptions | None = None,
    every: int | None = None,
    lagged: bool = False,
    start_on_constraint: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Adds Bort to any optax optimizer, at a per-step strength of its own.

  - ``placement="decoupled"`` (the default): the optimizer sees only ``∇L``
    and its update is followed by the correction,
    ``W ← W + update − s · Δ(W)``. ``s`` is the per-step strength itself,
    not a factor of the optimizer's learning rate, so the same ``s`` is safe
    whatever the optimizer and its learning rate (Muon at 0.02, Lion at
    1e-4, SGD at 0.5): the paper's ``lr · γ`` rule gives ``γ = 1`` a per-step
    0.02 at Muon's lr, where the l1 correction diverges. The default
    ``s = 1e-3`` is the recommended decoupled setting's ``lr · γ``
    (:data:`bort_jax.DEFAULT_STRENGTH`). Optimizers whose own steps are
    much smaller (Lion at 1e-4, LAMB at 1e-3) are held on the constraint
    from the first steps and train more slowly at first: give them the
    steps they need (the composition guide has the numbers).
  - ``placement="coupled"``: ``chain(add_bort_correction(s), optimizer)``:
    the optimizer sees ``∇L + s Δ(W)`` as its gradient (momentum, adaptive
    scaling and trust ratios all act on the correction), so the per-step
    strength depends on the optimizer (``lr · s / (1 − μ)`` for SGD with
    momentum ``μ``); :func:`bort_sgd` is this placement over SGD, with
    ``start_on_constraint=False``, its default.

  Either chain is followed by :func:`start_on_constraint` (the default):
  the first step lands the Bort matrices on ``W Wᵀ = cI``. The defaults are
  the decoupled setting's whatever the placement; the coupled row of
  :data:`bort_jax.RECOMMENDED` (the command line's coupled ``bort-<optax>``,
  as :func:`bort_sgd`) is ``strength=0.003, start_on_constraint=False``. A
  concrete decoupled ``s`` (``every · s`` per application, unless
  ``lagged``) above :data:`bort_jax.MAX_STEP_STRENGTH` (where the l1 and
  Huber corrections stop constraining or diverge) warns.

  Args:
    optimizer: any :class:`optax.GradientTransformation`, built
      (``optax.lion(1e-4)``, not ``optax.lion``).
    strength: ``s ≥ 0``, a scalar or a schedule of the step count: the
      per-step strength (decoupled) or the coefficient added to the gradient
      (coupled).
    mode: the Bort mode (see :func:`add_bort_correction`); the default and
      ``amplitude``'s are :data:`bort_jax.RECOMMENDED`'s.
    amplitude: ``c > 0``, a schedule, or ``"ada"``.
    placement: ``"decoupled"`` (the default, as the command line's
      ``bort-<optax>``) or ``"coupled"``.
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``:
      a number ``> 0``, a schedule, or (decoupled only) ``"step"``, the zone
      that follows the per-step strength, ``tau_t = 2.5 · every · s_t`` (see
      :func:`bort_adamw`).
    dimension_numbers: which leaves are Bort matrices (default: Flax kernels).
    bort_mask: optional mask selecting the leaves Bort may act on
      (``optax.masked``). Under ``optax.inject_hyperparams``, which calls
      every callable argument as a schedule of the step, name a callable
      mask (or callable ``dimension_numbers``) in its ``static_args``:
      ``static_args=("bort_mask",)``.
    kernel_options: how the full modes' products are computed.
    every: ``None`` (every step) or k: apply ``k · s · Δ`` on every k-th step
      only (see :func:`add_bort_correction`).
    lagged: with ``every = k``, compute Δ every k-th step only and apply
      ``s · Δ`` of the last one on every step (see
      :func:`add_bort_correction`); with ``every`` 1, the plain correction.
    start_on_constraint: make the first step land every Bort matrix on the
      constraint (:func:`bort_jax.start_on_constraint`, last in the chain);
      the default is the decoupled :data:`bort_jax.RECOMMENDED`'s, and
      :func:`bort_adamw` says what it buys and costs, and when to turn it
      off.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: for an optimizer that is not a built transformation, a bad
      placement or a bad Bort argument (see :func:`add_bort_correction`);
      at ``init``, for an optimizer that keeps weights of its own
      (schedule-free's ``z``, lookahead's slow weights, COCOB's starting
      point, SAM's cached params; see
      :func:`bort_jax.validation.weights_of_their_own`): it rebuilds the
      weights from them, which the correction and the start never reach.

  Examples:
    >>> import jax.numpy as jnp, optax, bort_jax
    >>> muon = bort_jax.with_bort(optax.contrib.muon(0.02))  # decoupled, 1e-3
    >>> lion = bort_jax.with_bort(optax.lion(1e-4), strength=0.1,
    ...                           placement="coupled")
    >>> params = {"kernel": jnp.ones((3, 2))}
    >>> updates, _ = lion.update(params, lion.init(params), params)
    >>> updates["kernel"].shape
    (3, 2)
  """
  validation.check_transformation(optimizer, "with_bort")
  validation.check_placement(placement)
  kernel_options = validation.check_bort_arguments(
      strength, mode, amplitude, kernel_options, tau, gamma_name="strength",
      step_known=placement == "decoupled")
  optimizer = _refusing_own_weights(optimizer)

  def per_step(count):
    return hyperparameter_value(strength, count)

  tau = _zone(tau, every, per_step)
  if placement == "decoupled":
    validation.warn_if_step_strength_collapses(
        "with_bort", "strength", strength, lambda s: s, mode,
        lambda s: defaults.DEFAULT_STRENGTH,
        validation.steps_per_application(check_every(every), lagged,
                                         placement))

    # The optimizer's output is already a step: the correction is subtracted.
    def signed(count):
      return -jnp.asarray(hyperparameter_value(strength, count))

    # A number (or traced value) stays one, so a literal 0 skips the work.
    applied = signed if callable(strength) else -strength
  else:
    applied = strength
  coupled = placement == "coupled"  # the optimizer's step is not known
  bort = _correction(applied, mode, amplitude, dimension_numbers,
                     kernel_options, bort_mask, every, tau, lagged,
                     start_on_constraint, coupled=coupled,
                     per_step=None if coupled else per_step,
                     schedules=(strength,))
  chain = (optax.chain(bort, optimizer) if placement == "coupled"
           else optax.chain(optimizer, bort))
  return _started(chain, start_on_constraint, strength, amplitude,
                  dimension_numbers, bort_mask, kernel_options)

"""The one place that checks user input, so bad values fail at construction.

Every checker raises :class:`ArgumentTypeError` (a ``TypeError`` that is
also a ``ValueError``, so ``except ValueError`` catches every bad argument) for
a value of the wrong type and ``ValueError`` for a value out of range, with a one-sentence message that
names the argument and says what to pass instead. They return the value,
normalised (a Python ``int``/``float``, filled-in options), so a caller can
write ``steps = check_positive_int("steps", steps)``.

Stable names, for the library, the application and DBort alike:

- generic: ``check_positive_int(name, value)``,
  ``check_nonnegative_int(name, value)``,
  ``check_real(name, value, *, low=None, high=None, low_inclusive=True,
  high_inclusive=True, dtype=None)``, ``check_choice(name, value, choices)``,
  ``check_bool(name, value)``, ``check_dtype(name, value, *, kind="floating",
  allow_none=True)``, ``check_mask(name, value)``;
- scalars or schedules (a callable of the step count is accepted unchecked,
  as is a value traced under ``optax.inject_hyperparams``):
  ``check_scalar_or_schedule(name, value, *, low=None, high=None,
  low_inclusive=True, high_inclusive=True)``,
  ``check_learning_rate(value, name="learning_rate")``;
- Bort: ``check_mode(value, name="mode")``,
  ``check_strength(value, name="gamma")``,
  ``check_amplitude(value, name="amplitude")``,
  ``check_kernel_options(options, name="kernel_options")`` (returns the
  options, defaults filled in), ``check_placement(value, name="placement")``,
  ``check_bort_arguments(gamma, mode, amplitude, kernel_options, tau=0.01)``,
  ``warn_if_step_strength_collapses(where, name, value, per_step, mode,
  works)`` (a warning, not an error: the bound is measured, not a law).

Values produced by a schedule, or traced under ``optax.inject_hyperparams``,
cannot be checked here: they are used as they come (a negative γ then pushes
the weights away from orthogonality, a negative learning rate ascends).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bort_jax._src import defaults
from bort_jax._src.products import KernelOptions

#: Bort's scalars must stay finite (and positive ones positive) in float32,
#: the narrowest dtype the corrections are computed in.
COMPUTE_DTYPE = np.float32


class ArgumentTypeError(TypeError, ValueError):
  """An argument of the wrong type (catchable as TypeError or ValueError)."""


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _is_integer(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (numbers.Integral, np.integer)):
    return True
  return (isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
          and jnp.issubdtype(value.dtype, jnp.integer))


def _check_int(name: str, value: Any, low: int, what: str) -> int:
  if not _is_integer(value):
    raise ArgumentTypeError(f"{name} must be {what} integer, got {value!r}.")
  number = int(value)
  if number < low:
    raise ValueError(f"{name} must be {what} integer, got {number}.")
  return number


def check_positive_int(name: str, value: Any) -> int:
  """An integer ``>= 1`` (NumPy integers accepted, bool refused).

  Examples:
    >>> check_positive_int("steps", np.int64(3))
    3
  """
  return _check_int(name, value, 1, "a positive")


def check_nonnegative_int(name: str, value: Any) -> int:
  """An integer ``>= 0`` (NumPy integers accepted, bool refused)."""
  return _check_int(name, value, 0, "a non-negative")


def _bounds(low, high, low_inclusive, high_inclusive) -> str:
  parts = []
  if low is not None:
    parts.append(f"{'>=' if low_inclusive else '>'} {low}")
  if high is not None:
    parts.append(f"{'<=' if high_inclusive else '<'} {high}")
  return " and ".join(parts)


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    dtype: Any = None,
) -> float:
  """A finite real scalar within bounds, as a Python float.

  Python and NumPy numbers and 0-d arrays are accepted; bools, strings,
  complex numbers and arrays with more than one element are not. With
  ``dtype``, the value must also be finite (and, when it must be positive,
  non-zero) once cast to it: ``1e300`` is finite in Python but ``inf`` in
  float32.

  Examples:
    >>> check_real("beta", np.float32(0.5), low=0, high=1)
    0.5
    >>> check_real("beta", 2.0, low=0, high=1)
    Traceback (most recent call last):
    ...
    ValueError: beta must be >= 0 and <= 1, got 2.0.
  """
  if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(
      value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
    raise ArgumentTypeError(f"{name} must be a real number, got {value!r}.")
  array = np.asarray(value)
  if array.ndim != 0:
    raise ValueError(
        f"{name} must be a scalar, got an array of shape {array.shape}.")
  if not (jnp.issubdtype(array.dtype, jnp.floating)
          or jnp.issubdtype(array.dtype, jnp.integer)):
    raise ArgumentTypeError(
        f"{name} must be a real number, got {value!r} of dtype {array.dtype}.")
  number = float(array)
  bounds = _bounds(low, high, low_inclusive, high_inclusive)
  if not np.isfinite(number):
    want = f"{bounds} and finite" if bounds else "a finite number"
    raise ValueError(f"{name} must be {want}, got {value!r}.")
  if dtype is not None:
    with np.errstate(over="ignore", under="ignore"):
      cast = np.asarray(number).astype(dtype)
    if not np.isfinite(cast):
      raise ValueError(
          f"{name} = {value!r} overflows {np.dtype(dtype).name}; pass a "
          "smaller value.")
    if number != 0 and cast == 0 and low == 0 and not low_inclusive:
      raise ValueError(
          f"{name} = {value!r} is zero in {np.dtype(dtype).name}; pass a "
          "larger value.")
  below = low is not None and (number < low if low_inclusive else number <= low)
  above = high is not None and (
      number > high if high_inclusive else number >= high)
  if below or above:
    raise ValueError(f"{name} must be {bounds}, got {value!r}.")
  return number


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
  """One of ``choices``.

  Examples:
    >>> check_choice("placement", "after", ("coupled", "decoupled"))
    Traceback (most recent call last):
    ...
    ValueError: placement must be one of 'coupled', 'decoupled', got 'after'.
  """
  choices = tuple(choices)
  try:
    ok = value in choices
  except TypeError:  # unhashable or incomparable
    ok = False
  if not ok:
    listed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {listed}, got {value!r}.")
  return value


def check_bool(name: str, value: Any) -> bool:
  """``True`` or ``False`` (NumPy bools and concrete 0-d bool arrays
  accepted)."""
  if not _is_bool_leaf(value):
    raise ArgumentTypeError(f"{name} must be True or False, got {value!r}.")
  return bool(value)


def _is_bool_leaf(x: Any) -> bool:
  if isinstance(x, (bool, np.bool_)):
    return True
  return (isinstance(x, (np.ndarray, jax.Array)) and x.ndim == 0
          and x.dtype == np.bool_ and not _is_traced(x))


def _check_mask_tree(name: str, tree: Any, what: str) -> Any:
  leaves = jax.tree.leaves(tree)
  bad = next((x for x in leaves if not _is_bool_leaf(x)), None)
  if not leaves or bad is not None:
    got = tree if bad is None else bad
    raise ArgumentTypeError(
        f"{name} must be a pytree of True/False matching the params or a "
        f"callable returning one, {what} {type(got).__name__} {got!r}.")
  return tree


def check_mask(name: str, value: Any) -> Any:
  """A mask for :func:`optax.masked`: ``None``, a pytree of bools, or a
  callable of the params returning one (checked when it is called).

  Examples:
    >>> check_mask("bort_mask", {"kernel": True, "bias": False})
    {'kernel': True, 'bias': False}
    >>> try:
    ...   check_mask("bort_mask", "x")
    ... except TypeError as e:
    ...   print(e)
    bort_mask must be a pytree of True/False matching the params or a callable returning one, got str 'x'.
  """
  if value is None:
    return None
  leaves = jax.tree.leaves(value)
  if callable(value) and leaves and leaves != [value]:
    # A callable pytree (an Equinox module of bools): optax.masked would call
    # it on the params instead of reading it.
    raise ArgumentTypeError(
        f"{name} is a callable pytree ({type(value).__name__}), which "
        "optax.masked would call instead of read; pass a function returning "
        f"the mask, e.g. {name}=lambda params: <your mask tree>.")
  if callable(value):
    def checked(params):
      return _check_mask_tree(name, value(params), "but it returned")
    return checked
  return _check_mask_tree(name, value, "got")


def check_transformation(value: Any, caller: str) -> Any:
  """An ``optax.GradientTransformation`` for ``caller``, or one line naming
  the fix: call a factory, or unwrap ``optax.MultiSteps``.

  Examples:
    >>> import optax
    >>> try:
    ...   check_transformation(optax.MultiSteps(optax.sgd(0.1), 2), "f")
    ... except TypeError as e:
    ...   print(str(e).split("; ")[1])
    pass its .gradient_transformation() (MultiSteps is a wrapper object, not a transformation).
  """
  if isinstance(value, optax.GradientTransformation):
    return value
  if callable(getattr(value, "gradient_transformation", None)):
    hint = (f"; pass its .gradient_transformation() ({type(value).__name__} "
            "is a wrapper object, not a transformation)")
  elif callable(value):
    name = getattr(value, "__qualname__", repr(value))
    if getattr(value, "__module__", "").startswith("optax"):
      name = f"optax.{name}"
    hint = f"; call the factory first, e.g. {caller}({name}(...), ...)"
  else:
    hint = ""
  raise ArgumentTypeError(
      f"{caller} needs an optax.GradientTransformation, got "
      f"{type(value).__name__} {value!r}{hint}.")


def check_dtype(name: str, value: Any, *, kind: str = "floating",
                allow_none: bool = True) -> Any:
  """A dtype of the given kind (``"floating"``: real floats), or ``None``."""
  if value is None:
    if allow_none:
      return None
    raise ArgumentTypeError(
        f"{name} must be a dtype such as jnp.float32, got None.")
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise ArgumentTypeError(
        f"{name} must be a dtype such as jnp.bfloat16 or None, got "
        f"{value!r}.") from e
  if kind == "floating" and not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{name} must be a floating dtype (real, e.g. jnp.bfloat16) or None, "
        f"got {value!r}.")
  return value


def check_scalar_or_schedule(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Any:
  """A real scalar within bounds, finite in float32, or a schedule.

  A callable (a schedule of the step count) and a value traced under
  ``optax.inject_hyperparams`` are returned unchecked.
  """
  if callable(value):
    return value
  if _is_traced(value):
    return value
  if isinstance(value, (str, bytes)):
    raise ArgumentTypeError(
        f"{name} must be a number or a schedule (a callable of the step "
        f"count), got the string {value!r}.")
  try:
    check_real(name, value, low=low, high=high, low_inclusive=low_inclusive,
               high_inclusive=high_inclusive, dtype=COMPUTE_DTYPE)
  except TypeError as e:
    raise ArgumentTypeError(
        f"{name} must be a number or a schedule (a callable of the step "
        f"count), got {value!r}.") from e
  return value


def check_learning_rate(value: Any, name: str = "learning_rate") -> Any:
  """A learning rate ``>= 0``, finite in float32, or a schedule."""
  return check_scalar_or_schedule(name, value, low=0)


def check_mode(value: Any, name: str = "mode") -> str:
  """One of :data:`bort_jax.MODES`."""
  if not isinstance(value, str) or value not in defaults.MODES:
    raise ValueError(
        f"Unknown Bort {name} {value!r}; valid modes are: "
        f"{', '.join(defaults.MODES)}.")
  return value


def check_strength(value: Any, name: str = "gamma") -> Any:
  """A strength ``γ >= 0``, finite in float32, or a schedule."""
  return check_scalar_or_schedule(name, value, low=0)


def check_amplitude(value: Any, name: str = "amplitude") -> Any:
  """A positive number (finite and non-zero in float32), a schedule or
  ``"ada"``."""
  fix = f"{name} must be a positive number, a schedule or 'ada'"
  if isinstance(value, str):
    if value != defaults.ADA:
      raise ValueError(f"{fix}, got {value!r}.")
    return value
  try:
    return check_scalar_or_schedule(name, value, low=0, low_inclusive=False)
  except TypeError as e:
    raise ArgumentTypeError(f"{fix}, got {value!r}.") from e
  except ValueError as e:
    raise ValueError(f"{fix}, got {value!r} ({e})") from e


def _check_precision(name: str, precision: Any, gram_dtype: Any) -> None:
  """Traces one tiny product, so a bad precision fails now, not at update."""
  dtype = jnp.float32 if gram_dtype is None else gram_dtype
  x = jax.ShapeDtypeStruct((2, 2), dtype)
  try:
    jax.eval_shape(
        lambda a: jax.lax.dot_general(
            a, a, (((1,), (0,)), ((), ())), precision=precision,
            preferred_element_type=jnp.float32), x)
  except Exception as e:  # JAX raises ValueError, TypeError or its own errors
    raise ValueError(
        f"{name}.precision must be None, a jax.lax.Precision or its name "
        f"(e.g. 'highest'), got {precision!r}.") from e


def check_kernel_options(options: Any,
                         name: str = "kernel_options") -> KernelOptions:
  """A :class:`~bort_jax.KernelOptions` (``None``: the defaults), checked.

  Returns:
    The options with ``block_size`` as a Python int.
  """
  if options is None:
    return KernelOptions()
  if not isinstance(options, KernelOptions):
    raise ArgumentTypeError(
        f"{name} must be a bort_jax.KernelOptions or None, got "
        f"{type(options).__name__} {options!r}; write e.g. "
        "bort_jax.KernelOptions(block_size=1024).")
  block = options.block_size
  if block is not None:
    try:
      block = check_positive_int(f"{name}.block_size", block)
    except (TypeError, ValueError) as e:
      raise type(e)(f"{e.args[0][:-1]} (or None for no blocks).") from e
  if options.batch_products is not None:
    check_bool(f"{name}.batch_products", options.batch_products)
  check_dtype(f"{name}.gram_dtype", options.gram_dtype)
  _check_precision(name, options.precision, options.gram_dtype)
  try:
    hash(options.axis_name)
  except TypeError as e:
    raise ArgumentTypeError(
        f"{name}.axis_name must be a mesh axis name (a hashable) or None, "
        f"got {options.axis_name!r}.") from e
  return options._replace(block_size=block)


def check_placement(value: Any, name: str = "placement") -> str:
  """``"coupled"`` or ``"decoupled"``."""
  return check_choice(name, value, defaults.PLACEMENTS)


def check_tau(value: Any, name: str = "tau") -> Any:
  """The Huber width ``tau`` (relative to ``c``): ``> 0``, finite and non-zero
  in float32, or traced."""
  if _is_traced(value):
    return value
  return check_real(name, value, low=0, low_inclusive=False,
                    dtype=COMPUTE_DTYPE)


def check_tau_setting(value: Any, *, step_known: bool) -> Any:
  """A transformation's ``tau``: a number as :func:`check_tau`, a schedule, or
  ``"step"`` where the per-step strength is known (``step_known``)."""
  if isinstance(value, str) and value == defaults.STEP_TAU:
    if step_known:
      return value
    raise ValueError(
        "tau='step' follows the per-step strength, which only bort_adamw, "
        "bort_sgd and with_bort(placement='decoupled') know; here pass a "
        "number > 0 or a schedule of the step count.")
  if isinstance(value, (str, bytes)) or value is None:
    allowed = ("a number > 0, a schedule or 'step'" if step_known
               else "a number > 0 or a schedule")
    raise ArgumentTypeError(f"tau must be {allowed}, got {value!r}.")
  if callable(value):
    return value
  return check_tau(value)


def check_bort_arguments(
    gamma: Any, mode: Any, amplitude: Any, kernel_options: Any,
    tau: Any = defaults.DEFAULT_TAU, *, gamma_name: str = "gamma",
    step_known: bool = False,
) -> KernelOptions:
  """Checks every Bort argument; returns the kernel options (defaults filled).

  ``step_known``: the caller knows the per-step strength, so ``tau`` may be
  ``"step"``.
  """
  check_mode(mode)
  check_strength(gamma, gamma_name)
  check_amplitude(amplitude)
  check_tau_setting(tau, step_known=step_known)
  return check_kernel_options(kernel_options)


def concrete_number(value: Any) -> float | None:
  """A Python float for a plain number, ``None`` for a schedule or tracer."""
  if callable(value) or _is_traced(value) or isinstance(value, (bool, str)):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def steps_per_application(every: int, lagged: bool, placement: str) -> int:
  """The steps one application of the correction stands for, as the strength
  limit reads it.

  Decoupled, ``every = k`` applies ``k · s`` at once: ``k``. Where
  ``lagged`` applies the held Δ on every step, or coupled, where momentum
  spreads the burst over about ``1/(1 − μ)`` steps, 1 (on digits,
  ``examples/step_strength_limit.py``, coupled every 8 trained at ``5e-2``
  per application, decoupled every 8 left 17 %).

  Args:
    every: the correction's period (1 for every step).
    lagged: whether the held Δ is applied on every step.
    placement: ``"decoupled"`` or ``"coupled"``.

  Returns:
    The factor from the per-step strength to the strength per application.

  Examples:
    >>> steps_per_application(8, False, "decoupled")
    8
    >>> steps_per_application(8, True, "decoupled")
    1
    >>> steps_per_application(8, False, "coupled")
    1
    >>> steps_per_application(8, False, "Decoupled")
    Traceback (most recent call last):
    ...
    ValueError: placement must be one of 'coupled', 'decoupled', got 'Decoupled'.
  """
  every = check_positive_int("every", every)
  lagged = check_bool("lagged", lagged)
  placement = check_placement(placement)
  return every if placement == "decoupled" and not lagged else 1


def weights_of_their_own(state: Any, *, evaluated: bool = False
                         ) -> str | None:
  """What weights an optimizer state keeps of its own, or ``None``.

  A schedule-free optimizer keeps ``z`` and rebuilds the params from it on
  every step (its weights to evaluate are an average,
  ``optax.contrib.schedule_free_eval_params``); lookahead keeps slow
  weights; COCOB sets the params to its starting point plus its bets on
  every step; SAM (``opaque_mode=False``) restores the params it cached
  before its adversarial steps. A change made to the params (Bort's
  correction and start) does not last there. A loop that evaluates the
  params evaluates COCOB's weights, but not schedule-free's average,
  lookahead's slow weights, or SAM's between two syncs (an adversarial
  point).

  Args:
    state: an optimizer state, or its shapes (``jax.eval_shape``).
    evaluated: only the states whose params are not the weights to
      evaluate (all but COCOB's).

  Returns:
    ``"schedule-free's z"``, ``"lookahead's slow weights"``, ``"COCOB's
    starting point"``, ``"SAM's cached params"`` or ``None``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> params = {"w": jnp.ones(2)}
    >>> weights_of_their_own(optax.adam(1e-3).init(params)) is None
    True
    >>> tx = optax.contrib.schedule_free_adamw(1e-3)
    >>> weights_of_their_own(tx.init(params))
    "schedule-free's z"
    >>> cocob = optax.contrib.cocob().init(params)
    >>> weights_of_their_own(cocob), weights_of_their_own(cocob, evaluated=True)
    ("COCOB's starting point", None)
  """
  kinds = {optax.contrib.ScheduleFreeState: "schedule-free's z",
           optax.LookaheadState: "lookahead's slow weights",
           optax.contrib.SAMState: "SAM's cached params"}
  if not evaluated:
    kinds[optax.contrib.COCOBState] = "COCOB's starting point"

  def own(x):  # an opaque SAM caches nothing; what it wraps is looked at
    return type(x) in kinds and not (
        isinstance(x, optax.contrib.SAMState) and x.cache is None)

  for part in jax.tree.leaves(state, is_leaf=own):
    if own(part):
      return kinds[type(part)]
  return None


def warn_if_step_strength_collapses(
    where: str, name: str, value: Any, per_step: Callable[[float], float],
    mode: str, works: Callable[[float], float], every: int = 1) -> None:
  """Warns, once per construction, when a concrete setting's Bort strength
  per application exceeds :data:`bort_jax.MAX_STEP_STRENGTH` for a
  sign-like mode.

  The decoupled amortised correction applies ``every · s`` once every
  ``every`` steps, so its strength per application is ``every · s``: on
  digits (the measurement behind the limit,
  ``examples/step_strength_limit.py``), ``s = 6.25e-3`` every 8 steps
  (``5e-2`` per application) left 17 % test accuracy, where ``s`` alone is
  below the limit. (Coupled, momentum spreads the burst over about
  ``1/(1 − μ)`` steps: every 8 trained at ``5e-2`` per application, its
  constraint as loose as at ``1e-2``; the coupled alias passes 1.)

  Args:
    where: the function, e.g. ``"bort_adamw"``.
    name: the argument, e.g. ``"gamma"``.
    value: its value; a schedule or a traced value is not checked.
    per_step: the per-step strength of a value (e.g. ``lr · γ``).
    mode: the Bort mode; the l2 modes have their own limit
      (``lr · γ · c < 1``, see :func:`bort_jax.add_bort_correction`) and are
      not checked.
    works: the value whose per-step strength is
      :data:`bort_jax.DEFAULT_STRENGTH`.
    every: the steps between applications of a decoupled correction (1 for
      the plain correction, for ``lagged``, which applies ``s · Δ`` on
      every step, and for the coupled placement).
  """
  number = concrete_number(value)
  if number is None or not str(mode).startswith(("l1", "huber")):
    return
  try:
    strength = per_step(number) * every
  except TypeError:  # a schedule or a traced learning rate: no concrete step
    return
  # A relative margin, so that 0.1 · 0.1 (0.010000000000000002) is at it.
  if strength > defaults.MAX_STEP_STRENGTH * (1 + 1e-9):
    default = defaults.DEFAULT_STRENGTH
    if every == 1:
      setting, what = f"{name}={number:g}", "a per-step Bort correction"
      fix = f"{name}={works(number):.3g} (a per-step {default:g})"
    else:
      setting = f"{name}={number:g} with every={every}"
      what = "a Bort correction per application (every·s)"
      fix = (f"{name}={works(number):.3g} (a per-step {default:g}) with every "
             f"<= {math.floor(defaults.MAX_STEP_STRENGTH / default + 1e-9)}")
    warnings.warn(
        f"{where}: {setting} is {what} of {strength:.3g}, above "
        f"{defaults.MAX_STEP_STRENGTH:g}, where the {mode} correction stops "
        f"constraining or diverges; pass e.g. {fix}.", UserWarning,
        stacklevel=3)

"""The Bort correction as an optax gradient transformation.

Glues the penalty mathematics (:mod:`penalty`) to the parameter view
(:mod:`dimension_numbers`): every selected leaf is seen as a batch of matrices,
leaves whose matrices have the same shape are stacked and corrected in one
batched product, and ``gamma · Δ(param)`` is added to the leaf's update.
"""

from __future__ import annotations

import collections
import functools
import numbers
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bort_jax._src import eager
from bort_jax._src import penalty
from bort_jax._src import validation
from bort_jax._src.defaults import ADA
from bort_jax._src.defaults import DEFAULT_AMPLITUDE
from bort_jax._src.defaults import DEFAULT_MODE
from bort_jax._src.defaults import DEFAULT_TAU
from bort_jax._src.defaults import Mode
from bort_jax._src.dimension_numbers import BortDimensionNumbers
from bort_jax._src.dimension_numbers import DimensionNumbersLike
from bort_jax._src.dimension_numbers import entries_by_path
from bort_jax._src.dimension_numbers import in_embedding_of
from bort_jax._src.dimension_numbers import is_weight_matrix
from bort_jax._src.dimension_numbers import MISSING
from bort_jax._src.dimension_numbers import path_string
from bort_jax._src.dimension_numbers import resolve_views
from bort_jax._src.dimension_numbers import under_bort_mask
from bort_jax._src.dimension_numbers import value_at_path
from bort_jax._src.flax_selection import FlaxDimensionNumbers
from bort_jax._src.flax_selection import is_nnx_module

NO_PARAMS_MSG = (
    "The Bort correction depends on the parameters: call "
    "`update(updates, state, params)` with the current params."
)


class BortState(NamedTuple):
  """The step count, kept only when gamma, the amplitude or a Huber mode's
  tau is a schedule, or the correction is amortised (``every > 1``)."""

  count: jax.Array  # shape=(), dtype=jnp.int32


class BortLaggedState(NamedTuple):
  """The step count and the held correction of a lagged amortisation
  (``every > 1, lagged=True``): Δ of the last scheduled step, per leaf
  (``None`` at the leaves Bort does not correct)."""

  count: jax.Array  # shape=(), dtype=jnp.int32
  deltas: Any


NO_BORT_PARAMS_MSG = (
    "The Bort transform selects no parameter of this tree, so it does "
    "nothing. By default it selects leaves named 'kernel' with at least two "
    "axes (Flax Linear/Conv/attention); pass dimension_numbers= (e.g. "
    "bort_jax.flax_dimension_numbers(model)) to choose others, or one "
    "bort_jax.BortDimensionNumbers.out_in() for every (out, in) weight "
    "(Equinox, the PyTorch layout), or one bort_jax.BortDimensionNumbers() "
    "for every (in, out) weight of another name (Haiku's 'w')."
)


#: The most unreached parameters one warning names.
MAX_NAMED = 5

def _is_default_selection(dimension_numbers: Any) -> bool:
  """Whether leaves are chosen by rules (by name, by module type) rather
  than by the user's own tree or callable, whose ``None`` are deliberate."""
  return (dimension_numbers is None
          or isinstance(dimension_numbers, BortDimensionNumbers)
          or isinstance(dimension_numbers, FlaxDimensionNumbers)
          or is_nnx_module(dimension_numbers))


def _looks_like_a_matrix(path, leaf, embedding: bool) -> bool:
  """A weight matrix by the rule one BortDimensionNumbers applies (no bias,
  norm scale or embedding by name or module type), with two axes longer
  than 1."""
  shape = getattr(leaf, "shape", ())
  return (sum(d > 1 for d in shape) >= 2
          and is_weight_matrix(path, leaf, masked=False, embedding=embedding))


def check_bort_leaves(params: Any, views, dimension_numbers: Any = None,
                      warn: bool = True) -> None:
  """Refuses selected leaves that are not real floating arrays; warns, once,
  when nothing is selected or when a weight matrix is left out.

  Called at ``init`` (so once per optimizer). Leaves that ``bort_mask``
  excludes never reach it; a ``None`` in the user's own dimension numbers is
  deliberate and not reported. ``warn=False`` only refuses (a second
  transform of a chain whose correction already warned).
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  in_embedding = in_embedding_of(params)
  selected = 0
  unreached = []
  for (path, leaf), view in zip(leaves, views):
    if view is None:
      if _looks_like_a_matrix(path, leaf, in_embedding(path)):
        unreached.append(path_string(path))
      continue
    selected += 1
    dtype = jnp.dtype(leaf.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"Bort parameter {path_string(path)!r} has dtype {dtype}; Bort "
          "corrects real floating weights only (complex, integer and bool "
          "leaves have no real orthogonality penalty): skip it with "
          "dimension_numbers (None at that leaf) or bort_mask.")
    if dtype.itemsize < 2:
      raise ValueError(
          f"Bort parameter {path_string(path)!r} has dtype {dtype}, which "
          "has no arithmetic with float32: keep a float32 or bfloat16 "
          "copy of the weights to optimize, or skip the leaf with "
          "dimension_numbers (None at that leaf) or bort_mask.")
  if not warn:
    return
  if leaves and not selected:  # (optax.tree_map_params inits on no leaves)
    warnings.warn(NO_BORT_PARAMS_MSG, stacklevel=3)
  elif unreached and _is_default_selection(dimension_numbers):
    named = ", ".join(repr(p) for p in unreached[:MAX_NAMED])
    more = len(unreached) - MAX_NAMED
    if more > 0:
      named += f" and {more} more"
    if dimension_numbers is None:
      selection = "the default selection (Flax kernels)"
      include = ("one bort_jax.BortDimensionNumbers.out_in() reaches every "
                 "(out, in) weight, whatever its name")
    else:
      selection = "these dimension numbers"
      include = ("a dict of BortDimensionNumbers by path for the weights "
                 "these do not fit")
    warnings.warn(
        f"The Bort transform does not reach {named}: weights with two or "
        f"more axes that {selection} do not select get no Bort correction. "
        f"Pass dimension_numbers= to include them ({include}), or exclude "
        "them on purpose with bort_mask= (or None at their leaf in a "
        "dimension_numbers tree).", stacklevel=3)


def warn_scale_mismatch(params: Any, views, mode: str, amplitude: Any
                        ) -> None:
  """Warns, once at ``init``, where a column mode cannot hold a matrix.

  The full column modes (``l1-fullcol``, ``huber-fullcol``) ask
  ``Wᵀ W = cI``, which no matrix with fewer units than fan-in (``m < n``,
  rank at most ``m``) satisfies, whatever the amplitude: from the start's
  ``W Wᵀ = cI`` the l1 and Huber corrections take such weights to errors
  above 0.1 within 300 steps (a 64 → 16 kernel under
  ``bort_adamw(1e-3)`` and no data gradient, in the tests).
  For the column modes "ada" is ``c = (mean_i ‖w_i‖)²`` over the units
  (rows), as in the published code. With more units than fan-in
  (``m > n``) that ``c`` lies below the columns' squared norms, and the
  column modes shrink the weights toward zero, step after step; with fewer
  units than fan-in the column-norm modes' targets exceed what the rows
  allow, and they grow without bound. The row and full modes on the units
  keep the scale on every shape (on ``m > n`` they constrain the feasible
  side, with "ada" over the columns).
  """
  rules = penalty.check_mode(mode)
  if rules.on_units:
    return
  ada = isinstance(amplitude, str) and amplitude == ADA
  shrink, grow, infeasible = [], [], []
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for path, view in zip(paths, views):
    if view is None:
      continue
    _, m, n = view.matrix_shape
    where = f"{path_string(path)!r} ({m} units, fan-in {n})"
    if m < n and rules.uses_gram:
      infeasible.append(where)
    elif m > n and ada:
      shrink.append(where)
    elif m < n and ada:
      grow.append(where)
  fixed = "Pass a fixed amplitude (e.g. amplitude=1.0), use"
  for found, what, advice in (
      (infeasible, "asks Wᵀ W = cI of {}, which no matrix with fewer units "
       "than fan-in satisfies: the correction takes them off W Wᵀ = cI, "
       "where the start lands them", "Use"),
      (shrink, "with amplitude='ada' pulls {} toward zero: with more units "
       "than fan-in, ada's c (the units' squared mean norm) lies below the "
       "columns' squared norms", fixed),
      (grow, "with amplitude='ada' grows {} without bound: with fewer units "
       "than fan-in, the columns cannot all reach the squared norm ada's c "
       "(the units' squared mean norm) sets them", fixed)):
    if found:
      named = ", ".join(found[:MAX_NAMED])
      if len(found) > MAX_NAMED:
        named += f" and {len(found) - MAX_NAMED} more"
      warnings.warn(
          f"Bort's mode {mode!r} {what.format(named)}. {advice} a row or "
          "full mode on the units (e.g. 'l1-fullrow', which constrains the "
          "feasible side), or leave these weights out with bort_mask.",
          stacklevel=3)


def _not_one_value(mask: Any, params: Any) -> Any:
  """``mask``, unless it is one True/False for several parameters.

  ``optax.inject_hyperparams`` calls every callable argument with the step
  count, as a schedule: a mask of the params then comes back as one value
  (``False`` from a path test), and every matrix was left out silently.
  """
  if (jax.tree_util.treedef_is_leaf(jax.tree.structure(mask))
      and len(jax.tree.leaves(params)) > 1):
    raise ValueError(
        f"bort_mask is one value ({mask!r}) for every parameter; give a "
        "pytree of True/False matching the params. Under "
        "optax.inject_hyperparams, which calls a callable argument with the "
        "step count, pass a callable mask with static_args=('bort_mask',).")
  return mask


def mask_by_path(bort_mask: Any) -> Any:
  """``bort_mask`` as :func:`optax.masked` takes it, matched by path.

  A callable is kept. A tree becomes a callable that reads each parameter's
  True/False at its path (or a prefix of it), compared by names, so a mask
  built on one container fits another with the same names: a plain dict, or
  a mask mapped over ``nnx.state(model, nnx.Param)``, under
  ``nnx.Optimizer``, which hands ``init`` Variables and ``update`` arrays.

  Raises:
    ValueError: (when the mask is applied) a parameter has no entry, or one
      True/False stands for several parameters (what a callable mask
      becomes under ``optax.inject_hyperparams`` without ``static_args``).

  Examples:
    >>> import jax.numpy as jnp
    >>> select = mask_by_path({"dense": {"kernel": True, "bias": False}})
    >>> select({"dense": {"bias": jnp.zeros(2), "kernel": jnp.ones((2, 2))}})
    {'dense': {'bias': False, 'kernel': True}}
  """
  if bort_mask is None:
    return None
  if callable(bort_mask):
    def call(params):
      return _not_one_value(bort_mask(params), params)
    return call
  entries = entries_by_path(bort_mask)

  def select(params):
    _not_one_value(bort_mask, params)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = []
    for path, _ in leaves_with_path:
      value = value_at_path(entries, path)
      if value is MISSING:
        raise ValueError(
            f"bort_mask has no True/False for the parameter "
            f"{path_string(path)!r}; give every parameter one (the mask is "
            "matched by path; a prefix tree may cover a whole module), or "
            "pass a callable of the params.")
      chosen.append(bool(value))
    return treedef.unflatten(chosen)

  return select


#: The step counter is int32: a larger period would overflow it.
MAX_EVERY = 2**31 - 1


def check_every(every: Any) -> int:
  """``every``: ``None`` (every step) or an int in [1, 2**31 - 1], not traced."""
  if every is None:
    return 1
  if isinstance(every, jax.core.Tracer):
    raise validation.ArgumentTypeError(
        "every must be a positive integer known when tracing; under "
        "optax.inject_hyperparams pass static_args=('every',).")
  every = validation.check_positive_int("every", every)
  if every > MAX_EVERY:
    raise ValueError(
        f"every must be at most 2**31 - 1 = {MAX_EVERY} (the step counter is "
        f"int32), got {every}; pass a smaller period.")
  return every


def _scalar(value: Any, name: str) -> jax.Array:
  """A hyperparameter's value (possibly from a schedule), refused if not 0-d."""
  value = jnp.asarray(value)
  if value.ndim != 0:
    raise ValueError(
        f"{name} must be a scalar, but its value (or its schedule's) has "
        f"shape {value.shape}; return one number per step.")
  return value


def tree_correction(
    params: Any,
    mode: Mode = DEFAULT_MODE,
    amplitude: penalty.Amplitude = DEFAULT_AMPLITUDE,
    *,
    dimension_numbers: DimensionNumbersLike = None,
    kernel_options: penalty.KernelOptions = penalty.KernelOptions(),
    tau: float = 0.01,
) -> Any:
  """Δ(param) for every Bort parameter of a pytree, ``None`` elsewhere.

  Leaves are viewed as batches of matrices by their dimension numbers, in
  Flax's own layout (a reshape, no transpose). For the Gram modes on
  accelerators (``KernelOptions.batch_products``), leaves of equal matrix
  shape, dtype and sharding are concatenated so that each shape costs one
  batched product, not one per leaf.

  Args:
    params: a pytree of parameters.
    mode: one of the nine Bort modes (:data:`bort_jax.MODES`).
    amplitude: a number, a scalar array or ``"ada"`` (per matrix).
    dimension_numbers: see :func:`resolve_views`; ``None`` selects Flax kernels.
    kernel_options: how the full modes' products are computed.
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``
      (``> 0``; the other modes ignore it).

  Returns:
    A pytree of params' structure: Δ in float32 (or the params' wider dtype) at
    Bort leaves, ``None`` at the others.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"kernel": 2 * jnp.eye(2), "bias": jnp.ones(2)}
    >>> tree_correction(params)["kernel"]  # (4 − 1) · 2 on the diagonal
    Array([[6., 0.],
           [0., 6.]], dtype=float32)
  """
  if not isinstance(amplitude, str) and jnp.ndim(amplitude) != 0:
    raise ValueError(
        f"amplitude must be a number, a scalar array or 'ada' (one c for "
        f"every matrix of the tree), got an array of shape "
        f"{jnp.shape(amplitude)}; use bort_correction for one c per matrix "
        "of a stack.")
  return _tree_correction(params, mode, amplitude, dimension_numbers,
                          kernel_options, penalty.check_tau(tau))


def _tree_correction(params, mode, amplitude, dimension_numbers,
                     kernel_options, tau, zone_cap=None) -> Any:
  """:func:`tree_correction` with ``tau`` unchecked (a schedule's value),
  and the l1 modes' rounding zone narrowed to ``zone_cap`` if given."""
  kernels = penalty.check_mode(mode)
  leaves, treedef = jax.tree.flatten(params)
  views = resolve_views(dimension_numbers, params)
  # On accelerators each product call costs a launch: same-shape matrices
  # share one batched product. Elementwise modes gain nothing from batching.
  batch = kernels.uses_gram and kernel_options.batched()
  # A fan-in over several axes (a conv's kh, kw, in) is contracted in place
  # unless batched with others: merging the axes by a reshape would gather
  # the kernel when a minor one is split under Auto sharding.
  in_place = not batch or _auto_sharded()
  deltas = [None] * len(leaves)
  groups = collections.defaultdict(list)
  for i, (leaf, view) in enumerate(zip(leaves, views)):
    if view is None:
      continue
    if (in_place and view.spec is None and not view.batch_axes
        and view.groups == 1 and len(view.reduction_axes) > 1
        and penalty.corrects_in_place(
            mode, leaf.shape, view.reduction_axes, view.output_axes,
            kernel_options)):
      deltas[i] = penalty.correction_over_axes(
          leaf, mode, amplitude, kernel_options, view.reduction_axes,
          view.output_axes[0], tau=tau, zone_cap=zone_cap)
      continue
    dtype = jnp.dtype(penalty.compute_dtype(leaf.dtype))
    # A matrix whole on every device is not batched with split ones.
    key = ((view.matrix_shape[1:], dtype, view.spec, penalty.split_axis(
        leaf, kernel_options.axis_name)) if batch else i)
    groups[key].append(i)

  for members in groups.values():
    # Flax layout (batch, fan_in, out): a reshape, no transpose, for kernels.
    dtype = penalty.compute_dtype(leaves[members[0]].dtype)
    matrices = [views[i].to_kernel_layout(leaves[i]).astype(dtype)
                for i in members]
    stacked = matrices[0] if len(members) == 1 else jnp.concatenate(matrices)
    delta = penalty.correction(
        stacked, mode, amplitude, kernel_options, units=penalty.COLS,
        tau=tau, zone_cap=zone_cap)
    start = 0
    for i, matrix in zip(members, matrices):
      stop = start + matrix.shape[0]
      deltas[i] = views[i].from_kernel_layout(delta[start:stop])
      start = stop
  return treedef.unflatten(deltas)


def _auto_sharded() -> bool:
  """Whether a mesh with Auto axes of more than one device is in context."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and any(
      t == jax.sharding.AxisType.Auto and size > 1
      for t, size in zip(mesh.axis_types, mesh.axis_sizes))


def hyperparameter_value(hyperparameter, count):
  return hyperparameter(count) if callable(hyperparameter) else hyperparameter


class _Program(NamedTuple):
  """What the correction's update does, but its numbers (see
  :func:`_correction_transform`): hashable when its parts are."""
  mode: str
  dimension_numbers: Any
  masked: bool
  kernel_options: penalty.KernelOptions
  every: int
  lagged: bool
  after_landing: bool
  counted: bool  # the state holds the step count
  # The strength, amplitude, τ and sign step that are not numbers (a
  # schedule, "ada", None), by name; the numbers are the update's arguments.
  fixed: tuple[tuple[str, Any], ...]


def _reused(program: _Program) -> bool:
  """Whether one compiled update may serve every equal ``program``: its
  selection and fixed values are plain data, held safely by a cache."""
  dims = program.dimension_numbers
  # Ints only: 0.0 == 0 and True == 1, so a bad one (refused at init) would
  # take the cache entry of the good one, and be refused there too.
  exact = lambda v: v is None or (
      isinstance(v, numbers.Integral) and not isinstance(v, bool)) or (
          isinstance(v, tuple) and all(exact(a) for a in v))
  plain = dims is None or (isinstance(dims, BortDimensionNumbers)
                           and all(exact(v) for v in dims))
  if not plain or any(callable(v) for _, v in program.fixed):
    return False
  try:
    hash(program)
  except TypeError:
    return False
  return True


def _correction_program(program: _Program) -> tuple[Callable[..., Any],
                                                     Callable[..., Any]]:
  """``corrected(numbers, updates, state, params)``, the update of
  ``program`` given its numbers, compiled once when called eagerly, and
  ``deltas_of(hyper, params, count)``, the Δ it adds."""
  selection = under_bort_mask(program.dimension_numbers, program.masked)
  fixed = dict(program.fixed)
  every, lagged, after_landing = (program.every, program.lagged,
                                  program.after_landing)

  def deltas_of(hyper, params, count):
    c = hyperparameter_value(hyper["amplitude"], count)
    if not isinstance(c, str):
      c = _scalar(c, "amplitude")
    # A schedule's τ is not checked, as γ's: 0 (a zero learning rate under
    # tau="step") is the l1 limit.
    tau = hyper["tau"]
    width = _scalar(tau(count), "tau") if callable(tau) else tau
    cap = hyperparameter_value(hyper["sign_step"], count)
    return _tree_correction(params, program.mode, c, selection,
                            program.kernel_options, width, cap)

  def add(updates, deltas, factor):
    return jax.tree.map(
        lambda u, d: u if d is None else (u + factor * d).astype(u.dtype),
        updates, deltas, is_leaf=lambda x: x is None)

  @eager.jit_when_eager
  def corrected(numbers_, updates, state, params):
    hyper = {**fixed, **numbers_}
    count = state.count if program.counted else None
    due = None if count is None else count % every == 0
    if after_landing:
      due = due & (count > 0)
    if lagged:
      # Δ is refreshed on steps 0, k, 2k, … and held in between.
      deltas = jax.lax.cond(due,
                            lambda: deltas_of(hyper, params, count),
                            lambda: state.deltas)
      new_state = BortLaggedState(optax.safe_increment(count), deltas)
    else:
      new_state = (state if count is None
                   else BortState(optax.safe_increment(count)))
    scale = _scalar(hyperparameter_value(hyper["strength"], count), "gamma")
    if lagged:
      return add(updates, deltas, scale), new_state
    if every == 1:
      if after_landing:  # no cond on the update path: 0 · Δ on step 0
        scale = jnp.where(due, scale, jnp.zeros_like(scale))
      return add(updates, deltas_of(hyper, params, count), scale), new_state
    updates = jax.lax.cond(
        due,
        lambda u: add(u, deltas_of(hyper, params, count), every * scale),
        lambda u: u, updates)
    return updates, new_state

  return corrected, deltas_of


# One compiled update per configuration, across transformations:
# optax.inject_hyperparams builds the transformation anew on every update,
# which eagerly would compile it every time.
_shared_program = functools.lru_cache(maxsize=64)(_correction_program)


def _correction_transform(
    strength: optax.ScalarOrSchedule,
    mode: str,
    amplitude: Any,
    dimension_numbers: DimensionNumbersLike,
    kernel_options: penalty.KernelOptions,
    bort_mask: Any = None,
    every: int = 1,
    tau: optax.ScalarOrSchedule = 0.01,
    lagged: bool = False,
    after_landing: bool = False,
    sign_step: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Adds ``strength · Δ(params)`` to the updates; no checks on strength.

  With ``every = k > 1``, adds ``k · strength · Δ`` on steps 0, k, 2k, … only
  (``lax.cond``: the other steps compute no correction); with ``lagged``
  too, computes Δ on those steps only and adds ``strength · Δ`` of the last
  of them on every step. ``after_landing``: step 0 is the start's landing
  (:func:`bort_jax.start_on_constraint`), which replaces the weights, so it
  gets no correction: one would outlive the landing in a coupled
  optimizer's momentum or moments, or held by ``lagged``, pulling the landed
  weights by Δ of the weights they replaced (a lagged Δ is first computed
  on step k). ``sign_step``: the change one sign step makes to a Gram
  entry, relative to c (a number, or a function of the count), which the
  sign's rounding zone narrows to (l1 modes, and Huber modes with τ below
  it; the aliases know it; ``None``: the full zone).

  The numbers among strength, amplitude, τ and the sign step are the
  compiled update's arguments, so transformations that differ only in
  them share one compiled update (:func:`_reused`).
  """
  bort_mask = validation.check_mask("bort_mask", bort_mask)
  lagged = lagged and every > 1  # every step, a held Δ is the fresh one
  if callable(tau) and not mode.startswith("huber"):
    tau = DEFAULT_TAU  # the other modes ignore it: no count needed
  if mode.startswith("l2"):
    sign_step = None  # no sign, no zone
  has_schedule = (callable(strength) or callable(amplitude) or callable(tau)
                  or every > 1 or after_landing or callable(sign_step))
  hyper = {"strength": strength, "amplitude": amplitude, "tau": tau,
           "sign_step": sign_step}
  # A schedule, "ada" or None is part of the program; a number (a float,
  # an array, a tracer of inject_hyperparams) is an argument of it.
  fixed = tuple((k, v) for k, v in hyper.items()
                if v is None or isinstance(v, str) or callable(v))
  # A number committed to one device would tie the compiled update to it
  # (params on a mesh: "incompatible devices"); as a constant it did not.
  numbers_ = {k: (np.asarray(v) if eager.concrete(v) and isinstance(
      v, jax.Array) and v.committed else v)
              for k, v in hyper.items() if k not in dict(fixed)}
  program = _Program(mode, dimension_numbers, bort_mask is not None,
                     kernel_options, every, lagged, after_landing,
                     has_schedule, fixed)
  corrected, deltas_of = (_shared_program if _reused(program)
                          else _correction_program)(program)

  def init_fn(params):
    # Bad dimension numbers and dtypes fail now; a weight left out warns.
    views = resolve_views(under_bort_mask(dimension_numbers,
                                          bort_mask is not None), params)
    check_bort_leaves(params, views, dimension_numbers)
    warn_scale_mismatch(params, views, mode, amplitude)
    count = jnp.zeros([], jnp.int32)
    if lagged:  # zeros of Δ's shape and dtype, laid out like the params
      shapes = jax.eval_shape(
          lambda p, n: deltas_of(hyper, p, n), params, count)
      held = jax.tree.map(
          lambda d, p: None if d is None else jnp.zeros_like(p, d.dtype),
          shapes, params, is_leaf=lambda x: x is None)
      return BortLaggedState(count=count, deltas=held)
    if has_schedule:
      return BortState(count=count)
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    # A literal zero skips the work; a traced zero (inject_hyperparams) adds 0.
    if isinstance(strength, numbers.Real) and strength == 0:
      if has_schedule:
        state = state._replace(count=optax.safe_increment(state.count))
      return updates, state
    return corrected(numbers_, updates, state, params)

  tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  return (optax.masked(tx, mask_by_path(bort_mask)) if bort_mask is not None
          else tx)


def add_bort_correction(
    gamma: optax.ScalarOrSchedule,
    mode: Mode = DEFAULT_MODE,
    amplitude: optax.ScalarOrSchedule | str = DEFAULT_AMPLITUDE,
    *,
    tau: optax.ScalarOrSchedule = 0.01,
    dimension_numbers: DimensionNumbersLike = None,
    bort_mask: Any | Callable[[optax.Params], Any] | None = None,
    kernel_options: penalty.KernelOptions | None = None,
    every: int | None = None,
    lagged: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Adds the Bort correction ``gamma · Δ(param)`` to each Bort leaf's update.

  Bort keeps every layer bounded and orthogonal, ``W Wᵀ ≈ cI``, by adding to
  the update the (sub)gradient of a penalty on ``W Wᵀ − cI``, where row ``i``
  of ``W`` is output unit ``i``'s weights. Like
  :func:`optax.add_decayed_weights` it reads the params: place it first in a
  chain for the coupled placement (the correction flows through momentum and
  adaptive scaling like L2 decay) or just before the learning rate for the
  decoupled one (like AdamW's decay); see :func:`bort_sgd`, :func:`bort_adamw`
  and :func:`with_bort`.

  Args:
    gamma: the strength ``γ ≥ 0``, a scalar or a schedule of the step count
      (no default: a building block does not know the learning rate that
      will scale it).
    mode: ``l2-full`` (default), ``l2-row``, ``l2-col``, ``l1-fullrow``,
      ``l1-fullcol``, ``l1-row``, ``l1-col``, ``huber-fullrow`` or
      ``huber-fullcol``. The default (with ``amplitude=1.0``) differs from
      the aliases' l1-fullrow ``"ada"`` (:data:`bort_jax.RECOMMENDED`) on
      purpose, as optax's building blocks keep literal defaults while its
      aliases carry tuned ones: ``¼‖WWᵀ − I‖²`` has the textbook gradient
      the paper's formulas and the float64 references are written for.
    amplitude: the target squared row norm ``c > 0``, a schedule, or ``"ada"``
      for ``c = (mean_i ‖w_i‖)²`` per matrix and step (only equal norms and
      orthogonality are enforced, not the scale).
    tau: the Huber modes' width relative to the amplitude, ``τ = tau · c``,
      ``> 0``, or a schedule of the step count (the other modes ignore it).
      The aliases also take ``"step"``, a zone that follows their per-step
      strength (:func:`bort_adamw`); this building block does not know it.
    dimension_numbers: which leaves are Bort parameters and how each is a
      matrix: ``None`` (Flax kernels by name, see
      :func:`flax_dimension_numbers`); one :class:`BortDimensionNumbers` for
      every default leaf; a pytree of them (``None`` skips a leaf; an entry
      over a subtree reaches its weight matrices, not its biases, norm
      scales or embeddings; matched by path when its containers differ
      from the params', as ``nnx.State`` under ``nnx.Optimizer``); a
      callable building such a pytree from the params; or an
      ``nnx.Module``, whose layer types decide (needed for layers stacked
      by ``nnx.vmap``/``nnx.scan`` and for grouped convolutions).
    bort_mask: a pytree of booleans matching the params, or a callable of
      the params returning one, selecting the leaves Bort may act on, handed
      to :func:`optax.masked` (anything else raises).
    kernel_options: precision, reduced-precision Gram and block size of the
      full modes (:class:`KernelOptions`).
    every: ``None`` (every step) or k: amortise the correction, applying
      ``every · gamma · Δ`` on every ``every``-th step (steps 0, k, 2k, …)
      and nothing on the others, through ``lax.cond`` (no work on the
      skipped steps, no recompilation; schedules are read at the step
      count). ``every`` multiplies the stability limit:
      for the l2 modes, ``lr · every · γ · c`` must stay below about 1 (with
      the coupled placement, ``lr`` is the optimizer's effective step).
    lagged: with ``every = k``, compute Δ on steps 0, k, 2k, … only, hold it
      in the state, and add ``gamma · Δ_held`` on *every* step: the
      per-step strength and stability limit are those of ``every=None``,
      at the products' cost of ``every=k`` and one held Δ per Bort leaf of
      memory. ``False`` (default): the burst form above. With ``every``
      1, the held Δ is always the fresh one: ``lagged`` is the plain
      correction.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (extra arguments to
    ``update``, e.g. ``value=loss``, are accepted and ignored).

  Raises:
    ValueError: at construction for an unknown mode, a gamma that is not a
      number ``>= 0`` finite in float32 or a schedule, an amplitude that is
      not a positive number, a schedule or ``"ada"``, a tau that is not a
      number ``> 0`` or a schedule, bad kernel options, an ``every`` outside
      [1, 2**31 - 1] or a ``bort_mask`` that is not a tree of bools or a
      callable; at ``init`` for dimension numbers that do not fit a leaf or
      a selected leaf that is not real floating; at ``update`` without
      params or when a schedule returns a non-scalar.

  Values a schedule returns, and values traced under
  :func:`optax.inject_hyperparams`, are not checked: a negative γ pushes the
  weights away from ``W Wᵀ = cI`` (anti-orthogonalises), a negative amplitude
  targets an infeasible Gram, a τ of 0 is the l1 limit and a negative or NaN
  τ makes the correction NaN (which :func:`bort_jax.skip_nonfinite_steps`
  catches). A tree in which nothing is selected, or in
  which the default selection leaves a weight matrix out, gets one warning
  at ``init``.

  Non-finite params give non-finite corrections for their leaf only; nothing
  raises. The l2 corrections are cubic in the weights, so a large γ · lr can
  also overflow from finite weights and finite gradients. Wrap the optimizer
  in :func:`bort_jax.skip_nonfinite_steps`, which checks the updates it
  produces; :func:`optax.apply_if_finite` checks only the incoming gradients
  and misses both cases.

  Examples:
    >>> import jax.numpy as jnp, optax, bort_jax
    >>> params = {"kernel": jnp.array([[2.0, 0.0], [0.0, 1.0]])}
    >>> tx = optax.chain(bort_jax.add_bort_correction(0.1), optax.sgd(0.5))
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.zeros((2, 2))}
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["kernel"] + 0.0  # −0.5 · 0.1 · (4 − 1) · 2 on the first row
    Array([[-0.3,  0. ],
           [ 0. ,  0. ]], dtype=float32)

  References:
    Zhang, Zheng, Zhou, Lu, "Bort: Towards Explainable Neural Networks with
    Bounded Orthogonal Constraint", ICLR 2023.
  """
  kernel_options = validation.check_bort_arguments(
      gamma, mode, amplitude, kernel_options, tau
  )
  every = check_every(every)
  lagged = validation.check_bool("lagged", lagged)
  return _correction_transform(
      gamma, mode, amplitude, dimension_numbers, kernel_options, bort_mask,
      every, tau, lagged,
  )
